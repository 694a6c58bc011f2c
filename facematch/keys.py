"""API keys: what each key may do (``Grant``), the ring of configured keys (``KeyRing``) and the
rules every configured key or token follows.

Keys are off when none are configured (local use; production sets them). Two ways to set them:

- **Scoped keys**, from the TOML file ``FACEMATCH_KEYS_FILE`` (read with the standard library),
  one table per key: ``id`` (shown in logs and the audit trail, never the key), ``sha256`` (the
  hex SHA-256 of the key: the file holds no key), ``roles`` (any of ``verify``, ``enrol``,
  ``admin``) and ``galleries`` (glob patterns, default ``["*"]``).
- **The simple mode**: keys in ``FACEMATCH_API_KEYS`` (comma-separated) and the file
  ``FACEMATCH_API_KEYS_FILE`` (one key per line, ``#`` comments) hold every role on every
  gallery; their id is ``key-`` and 8 hex digits of a hash of the key.

A request presents a key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Its SHA-256
is compared, in constant time, with every configured digest, so neither the timing nor the
answer tells which part was wrong. ``KeyRing.reload`` re-reads the files (Gunicorn's HUP: key
rotation without dropping requests); a malformed file is a ``ConfigError`` that names the key's
position, never a hash or a key.

In the base beside ``config`` and ``errors`` because two floors check keys: the API on every
request (``api.security``) and ``GET /metrics`` (``observability.prometheus``). Pure: strings
in, ``Grant``, ``Unauthorized`` or ``ConfigError`` out; a key is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from facematch.config import ConfigError, Settings
from facematch.errors import Unauthorized

#: Keys shorter than this are refused at start-up (a guessable key protects nothing).
MIN_KEY_LENGTH = 16
#: The roles a key may hold: what each allows is ``api.security.ROLE_OF``.
ROLES = ("verify", "enrol", "admin")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = {"id", "sha256", "roles", "galleries"}
_UNAUTHORIZED_MESSAGE = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"


@dataclass(frozen=True)
class Grant:
    """What one key may do: its public ``id``, its ``roles`` and the ``galleries`` (glob
    patterns) it may touch."""

    id: str
    roles: frozenset[str]
    galleries: tuple[str, ...] = ("*",)

    def holds(self, role: str) -> bool:
        return role in self.roles

    def covers(self, gallery: str) -> bool:
        """Whether ``gallery`` matches one of the key's patterns (case-sensitive, like ids)."""
        return any(fnmatchcase(gallery, pattern) for pattern in self.galleries)

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "roles": [role for role in ROLES if role in self.roles],
            "galleries": list(self.galleries),
        }


#: Everyone, when no key is configured.
ANONYMOUS = Grant("anonymous", frozenset(ROLES))


def split_keys(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]


def check_lengths(keys: Iterable[str], variable: str) -> None:
    for index, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{variable}: key #{index} is shorter than {MIN_KEY_LENGTH} characters"
            )


def digest(key: str) -> bytes:
    """The SHA-256 of ``key``, as the keys file's ``sha256`` holds it (in hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def simple_key_id(key: str) -> str:
    """The id of a simple-mode key: ``key-`` and 8 hex digits of a domain-separated hash."""
    return "key-" + hashlib.sha256(b"facematch-api-key-id\0" + key.encode()).hexdigest()[:8]


def _read(path_text: str, variable: str) -> str:
    try:
        return Path(path_text).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{variable} cannot be read: {type(error).__name__}") from None


def simple_keys(settings: Settings) -> list[str]:
    """The simple mode's keys: ``api_keys``, then the lines of ``api_keys_file``."""
    keys = split_keys(settings.api_keys)
    if settings.api_keys_file:
        text = _read(settings.api_keys_file, "FACEMATCH_API_KEYS_FILE")
        lines = [line.strip() for line in text.splitlines()]
        from_file = [line for line in lines if line and not line.startswith("#")]
        if not from_file:
            raise ConfigError("FACEMATCH_API_KEYS_FILE holds no key")
        keys += from_file
    return keys


def parse_keys_file(text: str) -> list[tuple[bytes, Grant]]:
    """The ``(digest, grant)`` of every ``[[keys]]`` table in a keys file's TOML ``text``;
    ``ConfigError`` naming the table (by position and id) for anything malformed."""
    variable = "FACEMATCH_KEYS_FILE"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{variable} is not valid TOML: {error}") from None
    tables = document.get("keys")
    if set(document) != {"keys"} or not isinstance(tables, list) or not tables:
        raise ConfigError(f"{variable} must hold one or more [[keys]] tables and nothing else")
    entries: list[tuple[bytes, Grant]] = []
    for index, table in enumerate(tables, 1):
        entries.append(_entry(table, f"{variable}: key #{index}"))
    _check_unique(entries, variable)
    return entries


def _entry(table, where: str) -> tuple[bytes, Grant]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table")
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)[:100]}")
    key_id = table.get("id")
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise ConfigError(f"{where}: 'id' must be 1-64 characters of A-Z a-z 0-9 . _ -")
    where = f"{where} ('{key_id}')"
    sha = table.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ConfigError(f"{where}: 'sha256' must be the 64 hex digits of the key's SHA-256")
    roles = table.get("roles")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(role, str) and role in ROLES for role in roles)
    ):
        raise ConfigError(f"{where}: 'roles' must be a non-empty list of {', '.join(ROLES)}")
    galleries = table.get("galleries", ["*"])
    if (
        not isinstance(galleries, list)
        or not galleries
        or not all(isinstance(p, str) and 0 < len(p) <= 128 for p in galleries)
    ):
        raise ConfigError(f"{where}: 'galleries' must be a non-empty list of glob patterns")
    grant = Grant(key_id, frozenset(roles), tuple(dict.fromkeys(galleries)))
    return bytes.fromhex(sha), grant


def _check_unique(entries: list[tuple[bytes, Grant]], variable: str) -> None:
    seen_ids: set[str] = set()
    seen_digests: dict[bytes, str] = {}
    for key_digest, grant in entries:
        if grant.id in seen_ids:
            raise ConfigError(f"{variable}: two keys share the id '{grant.id}'")
        if key_digest in seen_digests:
            raise ConfigError(
                f"{variable}: keys '{seen_digests[key_digest]}' and '{grant.id}' are one key"
            )
        seen_ids.add(grant.id)
        seen_digests[key_digest] = grant.id


def simple_entries(keys: Iterable[str]) -> list[tuple[bytes, Grant]]:
    """``(digest, grant)`` of plain keys, each with every role on every gallery (length-checked)."""
    keys = list(dict.fromkeys(keys))
    check_lengths(keys, "FACEMATCH_API_KEYS")
    return [(digest(key), Grant(simple_key_id(key), frozenset(ROLES))) for key in keys]


def entries_from_settings(settings: Settings) -> list[tuple[bytes, Grant]]:
    """Every configured key as ``(digest, grant)``: the simple mode's, then the keys file's."""
    entries = simple_entries(simple_keys(settings))
    if settings.keys_file:
        entries += parse_keys_file(_read(settings.keys_file, "FACEMATCH_KEYS_FILE"))
    _check_unique(entries, "FACEMATCH_API_KEYS and FACEMATCH_KEYS_FILE")
    return entries


class KeyRing:
    """The configured keys and what each may do; no keys: every request is ``ANONYMOUS``."""

    def __init__(
        self, entries: Iterable[tuple[bytes, Grant]] = (), settings: Settings | None = None
    ):
        self._entries = tuple(entries)
        self._settings = settings

    @classmethod
    def of_keys(cls, keys: Iterable[str]) -> KeyRing:
        """A ring of plain keys with every role (the simple mode; ``/metrics``' token)."""
        return cls(simple_entries(keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The keys ``settings`` configure; a named file that is missing, unreadable, malformed
        or holds no key is a ``ConfigError`` (fail closed rather than run without keys)."""
        return cls(entries_from_settings(settings), settings)

    def reload(self) -> int:
        """Re-read the configured files (all or nothing: a ``ConfigError`` keeps the keys in
        force); the number of keys now."""
        if self._settings is not None:
            self._entries = tuple(entries_from_settings(self._settings))
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def presented_key(headers: Mapping[str, str]) -> str | None:
        """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
        authorization = headers.get("Authorization", "")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        key = headers.get("X-API-Key", "").strip()
        return key or None

    def grant_of(self, key: str | None) -> Grant | None:
        """The grant of ``key`` (``ANONYMOUS`` with keys off), None for an unknown key; compares
        against every configured digest whatever matches."""
        entries = self._entries  # one snapshot: a reload swaps the tuple
        if not entries:
            return ANONYMOUS
        presented = digest(key or "")
        found = None
        for key_digest, grant in entries:
            if hmac.compare_digest(presented, key_digest) and found is None:
                found = grant
        return found if key is not None else None

    def is_valid(self, key: str | None) -> bool:
        return self.grant_of(key) is not None

    def check(self, headers: Mapping[str, str]) -> Grant:
        """The grant of the request's key; ``Unauthorized`` (401) without a configured key."""
        grant = self.grant_of(self.presented_key(headers))
        if grant is None:
            raise Unauthorized(_UNAUTHORIZED_MESSAGE)
        return grant
