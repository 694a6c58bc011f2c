"""Idle and slow connections (issue 10, section 4): behind the shipped nginx config they cost the
service nothing; against Gunicorn reached directly, as many slow clients as it has request
threads stop it for as long as they keep sending.

The attack is real: 200 TCP connections that send nothing and 8 clients that send a request one
byte a second (slowloris), each reopened as soon as the server closes it, held by one thread
while the good requests run. The bounds on the good requests are the requests' own timeouts:
what is checked is that they are answered at all while the attack goes on (the measured
latencies are in the deployment docs), not how fast.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass

import pytest
import requests

from tests.support import SAME

IDLE = 200
SLOW = 8
#: A request line and the start of a header whose value never ends, sent one byte a second.
SLOW_REQUEST = b"POST /photo_match HTTP/1.1\r\nHost: facematch\r\nX-Slow: " + b"a" * 100_000
#: Bounds on the good requests (their timeouts): /ping, and /photo_match on two LFW photos.
PING_BOUND_S = 5
MATCH_BOUND_S = 60


@dataclass
class _Connection:
    sock: socket.socket
    slow: bool
    sent: int = 0


class Attack:
    """Holds ``idle`` connections that send nothing and ``slow`` slowloris connections open to
    127.0.0.1:``port`` from one background thread, reopening each one the server closes (as an
    attacker would). ``reopened`` counts those reopenings."""

    def __init__(self, port: int, idle: int = IDLE, slow: int = SLOW, interval: float = 1.0):
        self.port = port
        self.idle, self.slow, self.interval = idle, slow, interval
        self.reopened = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Attack:
        for _ in range(self.idle):
            self._open(slow=False)
        for _ in range(self.slow):
            self._open(slow=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.data.sock.close()
        self._selector.close()

    @property
    def open(self) -> int:
        """How many of the attack's connections are open right now."""
        return len(self._selector.get_map())

    def _open(self, slow: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, _Connection(sock, slow))

    def _reopen(self, connection: _Connection) -> None:
        self._selector.unregister(connection.sock)
        connection.sock.close()
        self.reopened += 1
        try:
            self._open(connection.slow)
        except OSError:
            pass  # the next round tries again

    def _run(self) -> None:
        next_byte = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                self._reopen(key.data)  # readable: closed by the server, or an error answer
            missing = self.idle + self.slow - self.open
            for _ in range(missing):
                slow = sum(key.data.slow for key in self._selector.get_map().values())
                try:
                    self._open(slow=slow < self.slow)
                except OSError:
                    break
            if time.monotonic() >= next_byte:
                next_byte += self.interval
                for key in list(self._selector.get_map().values()):
                    connection = key.data
                    if connection.slow:
                        byte = SLOW_REQUEST[connection.sent : connection.sent + 1]
                        try:
                            connection.sock.send(byte)
                            connection.sent += 1
                        except OSError:
                            self._reopen(connection)


def answered(url: str, timeout: float) -> float | None:
    """Seconds ``GET url`` took to answer 200, or None if it did not within ``timeout``."""
    started = time.monotonic()
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def matched(url: str, face_bytes, timeout: float) -> float | None:
    """Seconds a /photo_match of an LFW pair of one person took to say "match", or None."""
    started = time.monotonic()
    try:
        response = requests.post(
            url + "/photo_match",
            timeout=timeout,
            files={
                "reference": ("a.jpg", face_bytes(SAME[0])),
                "sample": ("b.jpg", face_bytes(SAME[1])),
            },
        )
    except requests.RequestException:
        return None
    assert response.status_code == 200, response.text
    assert response.json()["match"] is True
    return time.monotonic() - started


@pytest.fixture(scope="module")
def server(module_gunicorn):
    """facematch under Gunicorn with the fixture's 1 worker x 2 threads: fewer request threads
    than the defaults' 2 x 2, so an attack that misses here misses there too."""
    return module_gunicorn()


def test_behind_nginx_good_requests_are_answered_while_idle_and_slow_clients_are_held(
    server, nginx, face_bytes
):
    proxy = nginx(upstream_port=server.port)
    with Attack(proxy.port) as attack:
        time.sleep(2)  # every slow client has sent its request line and more
        assert attack.open == IDLE + SLOW
        pings, matches = [], []
        deadline = time.monotonic() + 15  # past nginx's 10 s header timeout: clients reopen
        while time.monotonic() < deadline:
            pings.append(answered(proxy.url + "/ping", PING_BOUND_S))
            matches.append(matched(proxy.url, face_bytes, MATCH_BOUND_S))
        assert attack.open >= IDLE  # still held at the end
        reopened = attack.reopened
    assert None not in pings, pings
    assert None not in matches, matches
    assert reopened >= IDLE  # nginx closed the idle and slow clients at its header timeout
    assert server.answers()


def test_slow_clients_as_many_as_request_threads_stall_gunicorn_reached_directly(server):
    """The bounded damage when Gunicorn is exposed without the proxy (1 worker x 2 threads):
    two slowloris clients hold both request threads, and /ping waits while they send; once
    they stop, it is answered again."""
    assert answered(server.url + "/ping", PING_BOUND_S) is not None
    with Attack(server.port, idle=0, slow=2) as attack:
        time.sleep(2)
        assert attack.open == 2
        assert answered(server.url + "/ping", PING_BOUND_S) is None
    assert answered(server.url + "/ping", PING_BOUND_S) is not None
