"""The audit trail's types and rules: what an event holds, its checks, paging and retention.

Every gallery write and every gallery decision adds one event (writes: in the transaction of
the write, so a write whose event cannot be stored does not happen). An event names who acted
(the API key's id), the action, the gallery, subject and face ids, and an ``outcome`` of plain
JSON (counts, a decision and its distance): never a photo or an embedding. The SQL lives with
the other statements in ``sql``; this module holds what both backends and the routes share.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from facematch.errors import InvalidParameter

ACTIONS = frozenset(
    {
        "enrol",
        "update",
        "delete_face",
        "delete_subject",
        "delete_gallery",
        "export",
        "import",
        "verify",
        "identify",
    }
)
#: The actor a caller that names none is recorded as (a script, a test: never the API).
LOCAL_ACTOR = "local"
MAX_ACTOR_CHARS = 128
MAX_OUTCOME_BYTES = 1024
_CURSOR = re.compile(r"[0-9]{1,18}")  # an event's row id


@dataclass(frozen=True)
class AuditEvent:
    """One audited action: ``at`` in seconds since the epoch (UTC); ``outcome`` plain JSON."""

    at: float
    key: str
    action: str
    gallery: str
    subject: str | None
    face: str | None
    outcome: Any


@dataclass(frozen=True)
class AuditPage:
    """Events in the order they were recorded; ``next``: the ``after`` of the next page, None
    at the end."""

    events: tuple[AuditEvent, ...]
    next: str | None


@dataclass(frozen=True)
class AuditRetention:
    """How long events are kept (``FACEMATCH_AUDIT_DAYS``) and how often a process prunes."""

    days: int = 365
    prune_every_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.days < 1 or self.prune_every_s <= 0:
            raise ValueError("FACEMATCH_AUDIT_DAYS must be at least 1 (and the prune interval > 0)")


class PruneSchedule:
    """When this process next deletes expired events: at most once per ``prune_every_s``,
    inside a write transaction it already holds (no extra transaction, no extra lock)."""

    def __init__(self, retention: AuditRetention, clock: Callable[[], float] = time.time):
        self.retention = retention
        self.clock = clock
        self._last = float("-inf")

    def due(self) -> float | None:
        """The cut-off time (events before it expire) if a prune is due now, else None; a due
        prune counts as done (one rolled back is retried at the next interval)."""
        now = self.clock()
        if now - self._last < self.retention.prune_every_s:
            return None
        self._last = now
        return now - self.retention.days * 86_400


def check_actor(actor: Any) -> str:
    """Return the acting key's id if it is 1 to 128 printable characters."""
    if not isinstance(actor, str) or not 0 < len(actor) <= MAX_ACTOR_CHARS:
        raise InvalidParameter("the actor must be 1 to 128 characters")
    if not actor.isprintable():
        raise InvalidParameter("the actor must be printable")
    return actor


def check_action(action: Any) -> str:
    if action not in ACTIONS:
        raise InvalidParameter(f"unknown audit action {action!r}")
    return action


def encode_outcome(outcome: Any) -> str:
    """The outcome as compact JSON (at most 1 KB: counts and decisions, nothing bulky)."""
    try:
        text = json.dumps(outcome, separators=(",", ":"), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError):
        raise InvalidParameter("an audit outcome must be JSON") from None
    if len(text) > MAX_OUTCOME_BYTES:
        raise InvalidParameter(f"an audit outcome exceeds {MAX_OUTCOME_BYTES} bytes")
    return text


def check_cursor(after: Any) -> int:
    """The event row an ``after`` cursor names (0: from the start); ``InvalidParameter`` for
    anything that is not one of this store's cursors."""
    if after is None or after == "":
        return 0
    if not isinstance(after, str) or not _CURSOR.fullmatch(after):
        raise InvalidParameter("'after' must be the 'next' of an earlier page")
    return int(after)
