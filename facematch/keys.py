"""API keys: ``ApiKeyCheck`` and the rules every configured key or token follows.

Optional API keys (off when none are configured, for local use; production sets them). Keys come
from ``FACEMATCH_API_KEYS`` (comma-separated) and/or the file named by
``FACEMATCH_API_KEYS_FILE`` (one key per line, ``#`` comments and blank lines ignored). A request
presents one as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Every configured key is
compared, in constant time, with SHA-256 digests of equal length, so neither the timing nor the
answer tells which part was wrong. Keys shorter than ``MIN_KEY_LENGTH`` are refused at start-up.

In the base beside ``config`` and ``errors`` because two floors check keys: the API on every
request (``api.security``) and ``GET /metrics`` (``observability.prometheus``: its token, else
an API key). Pure: strings in, ``Unauthorized`` or ``ConfigError`` out; a key is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from facematch.config import ConfigError, Settings
from facematch.errors import Unauthorized

#: Keys shorter than this are refused at start-up (a guessable key protects nothing).
MIN_KEY_LENGTH = 16
_UNAUTHORIZED_MESSAGE = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"


def split_keys(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]


def check_lengths(keys: Iterable[str], variable: str) -> None:
    for index, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{variable}: key #{index} is shorter than {MIN_KEY_LENGTH} characters"
            )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class ApiKeyCheck:
    """Checks the API key of a request against the configured keys (no keys: everything passes)."""

    def __init__(self, keys: Iterable[str] = ()):
        keys = list(keys)
        check_lengths(keys, "FACEMATCH_API_KEYS")
        self._digests = [_digest(key) for key in dict.fromkeys(keys)]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyCheck:
        """Keys from ``api_keys`` and ``api_keys_file``; a named file that is missing, unreadable
        or holds no key is a ``ConfigError`` (fail closed rather than run without keys)."""
        keys = split_keys(settings.api_keys)
        if settings.api_keys_file:
            path = Path(settings.api_keys_file).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(
                    f"FACEMATCH_API_KEYS_FILE cannot be read: {type(error).__name__}"
                ) from None
            from_file = [
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.strip().startswith("#")
            ]
            if not from_file:
                raise ConfigError("FACEMATCH_API_KEYS_FILE holds no key")
            keys += from_file
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    @staticmethod
    def presented_key(headers: Mapping[str, str]) -> str | None:
        """The key a request presents: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
        authorization = headers.get("Authorization", "")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        key = headers.get("X-API-Key", "").strip()
        return key or None

    def is_valid(self, key: str | None) -> bool:
        """Whether ``key`` is one of the configured keys; compares against every key."""
        if not self._digests:
            return True
        presented = _digest(key or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found and key is not None

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise ``Unauthorized`` (401) unless the request carries a configured key."""
        if self._digests and not self.is_valid(self.presented_key(headers)):
            raise Unauthorized(_UNAUTHORIZED_MESSAGE)
