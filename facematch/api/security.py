"""Who may do what, and signed reference embeddings: the checks at facematch's trust boundary.

Keys and roles (``facematch.keys``: ``KeyRing``, ``Grant``; in the base, ``GET /metrics`` checks
keys too)
    Before every request to an endpoint that is not open, the request's key is looked up (401
    ``unauthorized`` without a configured key), then the role its endpoint needs (``ROLE_OF``)
    and, on a gallery route, the gallery against the key's patterns: 403 ``forbidden`` naming
    what the key lacks, the same answer whether or not the gallery exists (decided before the
    store is touched). The key's id is ``g.key_id`` for the logs and the audit trail. ``GET /key``
    tells a client what its key may do (the page shows only that).

``ReferenceSigner``
    With ``FACEMATCH_SIGNING_KEYS`` set (comma-separated; the first signs, all verify, so a key
    can be rotated in before the old one is retired), ``/embeddings`` returns each reference with
    an HMAC-SHA256 over (model name, the 512 float32 values), and ``/cached_match`` refuses a
    reference that is unsigned, altered, signed by an unknown key, or made by another model. A
    client can then no longer match a photo of itself against an embedding it computed itself.

    The signature is one token, ``v1.<key id>.<mac>``: the key id is the first 8 hex digits of
    SHA-256 over the key (so the server picks the key without trying each, and an operator can
    see which key signed), the mac is the unpadded base64url HMAC. The signed message is
    ``b"facematch-reference-v1\\0" + model + b"\\0" + the vector as little-endian float32``, so
    the JSON, ``.npy`` and ``.pt`` forms of one reference carry the same signature (JSON floats
    written from float32 round-trip exactly).

The checks are pure: they take strings and bytes, raise ``errors.FacematchError`` subclasses, and
never log a key, a signature or an embedding. ``init_app(app, settings, keys)`` attaches them to
a Flask app the way Flask extensions do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Flask, current_app, g, request

from facematch import bounded_json
from facematch.api.codec import MAX_REFERENCE_BYTES
from facematch.config import ConfigError, Settings
from facematch.errors import (
    BadSignature,
    Forbidden,
    InvalidParameter,
    UnsignedReference,
    WrongModel,
)
from facematch.gallery.transfer import ExportSigner
from facematch.keys import Grant, KeyRing, check_lengths, split_keys

SIGNATURE_VERSION = "v1"
_SIGNED_PREFIX = b"facematch-reference-v1\0"
_TOKEN = re.compile(r"v1\.([0-9a-f]{8})\.([A-Za-z0-9_-]{43})")  # the whole token: fullmatch
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SigningKey:
    key_id: str
    secret: bytes


def key_id(secret: str) -> str:
    """The public id of a signing key: the first 8 hex digits of SHA-256 over it."""
    return hashlib.sha256(b"facematch-key-id\0" + secret.encode()).hexdigest()[:8]


class ReferenceSigner:
    """Signs references with the first key and verifies them with any configured key."""

    def __init__(self, secrets: Iterable[str]):
        secrets = list(dict.fromkeys(secrets))
        if not secrets:
            raise ValueError("ReferenceSigner needs at least one key")
        check_lengths(secrets, "FACEMATCH_SIGNING_KEYS")
        keys = [_SigningKey(key_id(s), s.encode()) for s in secrets]
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise ConfigError("FACEMATCH_SIGNING_KEYS: two keys share a key id; replace one")
        self._keys = {k.key_id: k for k in keys}
        self._signing = keys[0]

    @classmethod
    def from_settings(cls, settings: Settings) -> ReferenceSigner | None:
        """The signer ``signing_keys`` configure, or None when signing is off."""
        secrets = split_keys(settings.signing_keys)
        return cls(secrets) if secrets else None

    @property
    def signing_key_id(self) -> str:
        return self._signing.key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    @staticmethod
    def message(vector: np.ndarray, model: str) -> bytes:
        """The bytes the HMAC covers: a version prefix, the model name, the float32 vector."""
        values = np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1))
        return _SIGNED_PREFIX + model.encode() + b"\0" + values.tobytes()

    def _mac(self, key: _SigningKey, vector: np.ndarray, model: str) -> bytes:
        return hmac.new(key.secret, self.message(vector, model), hashlib.sha256).digest()

    def sign(self, vector: np.ndarray, model: str) -> str:
        """The token ``v1.<key id>.<mac>`` for ``vector`` made by ``model``."""
        mac = base64.urlsafe_b64encode(self._mac(self._signing, vector, model)).rstrip(b"=")
        return f"{SIGNATURE_VERSION}.{self._signing.key_id}.{mac.decode()}"

    def verify(
        self,
        vector: np.ndarray,
        serving_model: str,
        signature: str | None,
        claimed_model: str | None = None,
    ) -> None:
        """Accept ``vector`` for ``serving_model`` or raise.

        ``UnsignedReference`` (400) without a signature (none, or blank); ``BadSignature`` (403)
        for anything but the exact token ``sign`` writes (no space or line end around it, the one
        base64url spelling of its mac), an unknown key id or a mac that does not verify (one
        message for the last three: no oracle); ``WrongModel`` (422) for an authentic reference
        whose signed model (the ``claimed_model`` it says it was made by) is not the serving
        model.
        """
        if signature is None or not signature.strip():
            raise UnsignedReference(
                "this server only accepts signed references: send the 'signature' that "
                "/embeddings returned with this reference"
            )
        if signature != signature.strip():
            # only the exact token sign() wrote verifies: a form field arrives as sent, so a
            # space or line end around it is the client's, and one token has one spelling
            raise BadSignature(
                "the signature has spaces or line breaks around it: send exactly the token "
                "/embeddings returned"
            )
        match = _TOKEN.fullmatch(signature)
        key = self._keys.get(match.group(1)) if match else None
        if key is None:
            raise BadSignature(_BAD_SIGNATURE)
        presented = base64.urlsafe_b64decode(match.group(2) + "=")
        if base64.urlsafe_b64encode(presented).rstrip(b"=").decode() != match.group(2):
            # 43 characters carry 258 bits for a 256-bit mac: the last one's low 2 bits are
            # padding, so 4 spellings decode to the same mac. Only the one sign() writes counts.
            raise BadSignature(_BAD_SIGNATURE)
        model = claimed_model if claimed_model is not None else serving_model
        if not hmac.compare_digest(presented, self._mac(key, vector, model)):
            raise BadSignature(_BAD_SIGNATURE)
        if model != serving_model:
            raise WrongModel(
                f"the reference was made by model '{_printable(model)}'; this server runs "
                f"'{serving_model}': embed the reference photo again here"
            )


_BAD_SIGNATURE = (
    "the reference's signature does not verify: the reference was altered, or it "
    "was signed by a key this server does not accept"
)


def _printable(text: str, limit: int = 64) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:limit] + ("..." if len(cleaned) > limit else "")


def export_signer(settings: Settings) -> ExportSigner | None:
    """The signer of gallery exports (``FACEMATCH_SIGNING_KEYS``: the first signs, any
    verifies), its keys checked as references' keys are; None when signing is off. The export
    routes' and the gallery tool's."""
    secrets = list(dict.fromkeys(split_keys(settings.signing_keys)))
    if not secrets:
        return None
    ReferenceSigner(secrets)  # lengths, distinct key ids
    return ExportSigner({key_id(secret): secret for secret in secrets})


def reference_claims(data: bytes) -> tuple[str | None, str | None]:
    """``(signature, model)`` stated inside a JSON object reference (as ``/embeddings`` returns
    it); ``(None, None)`` for any other form. Values that are not strings are ignored."""
    if not data.lstrip().startswith(b"{"):
        return None, None
    try:
        body = bounded_json.loads(data, what="the reference", max_bytes=MAX_REFERENCE_BYTES)
    except InvalidParameter:
        return None, None
    if not isinstance(body, dict):
        return None, None
    signature, model = body.get("signature"), body.get("model")
    return (
        signature if isinstance(signature, str) else None,
        model if isinstance(model, str) else None,
    )


#: The role each endpoint needs (``verify``: decisions and embeddings; ``enrol``: writing and
#: reading subjects; ``admin``: deleting, the audit trail, export and import).
ROLE_OF: dict[str, str] = {
    "api.photo_match": "verify",
    "api.cached_match": "verify",
    "api.embeddings": "verify",
    "api.faces": "verify",
    "gallery.verify": "verify",
    "gallery.identify": "verify",
    "gallery.add_face": "enrol",
    "gallery.put_subject": "enrol",
    "gallery.get_subject": "enrol",
    "gallery.list_subjects": "enrol",
    "gallery.delete_face": "admin",
    "gallery.delete_subject": "admin",
    "gallery.delete_gallery": "admin",
    "gallery.audit": "admin",
    "gallery.export_gallery": "admin",
    "gallery.import_gallery": "admin",
}
#: Endpoints any configured key may call, whatever its roles (they hold no gallery data).
ANY_ROLE = frozenset({"api.health", "api.openapi", "security.key"})
#: An endpoint named nowhere needs this role: a new route is closed until it is classified.
UNCLASSIFIED_ROLE = "admin"

bp = Blueprint("security", __name__)


def required_role(endpoint: str | None) -> str | None:
    """The role ``endpoint`` needs; None for any key (and for no endpoint: a 404 or 405)."""
    if endpoint is None or endpoint in ANY_ROLE:
        return None
    return ROLE_OF.get(endpoint, UNCLASSIFIED_ROLE)


def authorize(grant: Grant, endpoint: str | None, gallery: str | None) -> None:
    """Raise ``Forbidden`` (403) unless ``grant`` holds the role of ``endpoint`` and, for a
    gallery route, covers ``gallery``. Neither check looks at the store."""
    role = required_role(endpoint)
    if role is not None and not grant.holds(role):
        raise Forbidden(f"this key ('{grant.id}') lacks the '{role}' role this route needs")
    if gallery is not None and not grant.covers(gallery):
        # the gallery is not named: the answer is the same whether or not it exists
        raise Forbidden(f"this key ('{grant.id}') may not use this gallery")


@bp.get("/key")
def key():
    """What the request's key may do: its id, roles and gallery patterns."""
    keys: KeyRing = current_app.extensions["facematch_security"]["api_keys"]
    return {"keys": "on" if keys.enabled else "off", **g.grant.as_json()}


def init_app(
    app: Flask, settings: Settings, keys: KeyRing, open_endpoints: Iterable[str] = ()
) -> ReferenceSigner | None:
    """Attach ``keys`` and the configured reference signer to ``app``.

    Every request to an endpoint not in ``open_endpoints`` then needs a configured key (401
    ``unauthorized`` otherwise; no keys configured: everything passes, with a warning at start)
    holding the endpoint's role and covering its gallery (403 ``forbidden``). Both objects are
    kept in ``app.extensions["facematch_security"]``; returns the signer, or None when signing
    is off. Raises ``ConfigError`` for unusable signing keys.
    """
    signer = ReferenceSigner.from_settings(settings)
    if not keys.enabled:
        log.warning(
            "API keys are off (FACEMATCH_API_KEYS and FACEMATCH_KEYS_FILE unset): anyone who "
            "can reach this port can use the API; set keys in production"
        )
    app.extensions["facematch_security"] = {"api_keys": keys, "signer": signer}
    app.register_blueprint(bp)
    open_endpoints = frozenset(open_endpoints)

    @app.before_request
    def require_api_key() -> None:
        g.grant, g.key_id = None, None
        if request.endpoint in open_endpoints:
            return
        grant = keys.check(request.headers)
        g.grant, g.key_id = grant, grant.id
        gallery = (request.view_args or {}).get("gallery")
        authorize(grant, request.endpoint, gallery)

    return signer
