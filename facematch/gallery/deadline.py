"""A psycopg connection that never waits on its server past a deadline.

A PostgreSQL server that is stopped (SIGSTOP, a frozen host) keeps its connections open: its
kernel still accepts them and acknowledges every byte and keepalive probe, so neither the
server's ``statement_timeout`` (the server is not running to enforce it) nor TCP keepalives end
a call, and a cancel request goes to the postmaster, which is stopped too. libpq would wait for
the answer forever. psycopg makes every wait of an open connection in ``Connection.wait``;
``DeadlineConnection`` gives each of those waits only the time left to its ``deadline``. When it
runs out, the connection is closed (it is in the middle of the protocol, so unusable) and the
call raises ``psycopg.OperationalError``, like any broken connection.
"""

from __future__ import annotations

import math
import time

import psycopg

#: psycopg's own interval between two checks for a signal (Ctrl-C) while it waits.
_INTERVAL_S = 0.1


class DeadlineConnection(psycopg.Connection):
    """A ``psycopg.Connection`` whose waits end at ``deadline`` (``time.monotonic()``; set it
    before each call, ``math.inf`` for none)."""

    deadline: float = math.inf

    def wait(self, gen, interval: float = _INTERVAL_S, timeout: float | None = None):
        """psycopg's ``wait``, bounded by the time left to ``deadline``."""
        left = max(self.deadline - time.monotonic(), 0.0)
        if left != math.inf:
            timeout = left if timeout is None else min(timeout, left)
        try:
            return super().wait(gen, interval, timeout)
        except psycopg.OperationalError as error:
            if time.monotonic() < self.deadline:
                raise
            self.pgconn.finish()  # the answer it waited for may still come: never read it
            raise psycopg.OperationalError("the database did not answer in time") from error
