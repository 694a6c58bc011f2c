"""What went wrong, in the service's own words: the errors the decoder, the codec, the engine,
the policy, security and the gallery raise. Each has a stable machine-readable ``code`` and a
``message`` a client may read (never a path or an internal). Which HTTP answer each gets is
the API's business: one table in ``facematch.api.errors``.
"""

from __future__ import annotations


class FacematchError(Exception):
    """An error the client can act on; ``message`` must not leak paths or internals."""

    code = "bad_request"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def details(self) -> dict:
        """What a client gets besides the code and the message (nothing, by default)."""
        return {}


class MissingField(FacematchError):
    code = "missing_field"


class InvalidParameter(FacematchError):
    code = "invalid_parameter"


class InvalidEmbedding(FacematchError):
    code = "invalid_embedding"


class PayloadTooLarge(FacematchError):
    code = "payload_too_large"


class UnsupportedImage(FacematchError):
    code = "unsupported_image"


class ImageTooLarge(FacematchError):
    code = "image_too_large"


class NoFace(FacematchError):
    code = "no_face"


class InvalidId(FacematchError):
    """A gallery, subject or face id outside ``[A-Za-z0-9._-]{1,128}``."""

    code = "invalid_id"


class NotFound(FacematchError):
    """An unknown gallery, subject or face; the message names which."""

    code = "not_found"


class ModelMismatch(FacematchError):
    """A gallery holds embeddings of one model and the request brings another (names both)."""

    code = "model_mismatch"


class GalleryFull(FacematchError):
    """A configured gallery size limit would be exceeded; the message gives the limit."""

    code = "gallery_full"


class GalleryUnavailable(FacematchError):
    """The gallery database is down or unreachable; the routes add ``Retry-After``."""

    code = "gallery_unavailable"


class Unauthorized(FacematchError):
    """No API key, or one that is not configured: the message never says which."""

    code = "unauthorized"


class Forbidden(FacematchError):
    """The request's key lacks the role the route needs, or may not use the gallery."""

    code = "forbidden"


class UnsignedReference(FacematchError):
    """Signing is on and the reference came without a signature."""

    code = "unsigned_reference"


class BadSignature(FacematchError):
    """The reference's signature is malformed, from an unknown key, or does not verify."""

    code = "bad_signature"


class WrongModel(FacematchError):
    """An authentic reference made by a model other than the serving one."""

    code = "wrong_model"


class ThresholdNotAllowed(FacematchError):
    """A request asked for a threshold looser than the operator's policy allows."""

    code = "threshold_not_allowed"


class SampleFacesNotAllowed(FacematchError):
    """A request asked to compare every sample face and the operator has turned that off."""

    code = "sample_faces_not_allowed"


class TooManyParts(FacematchError):
    """A multipart form with more parts than the server reads (Werkzeug's ``max_form_parts``)."""

    code = "too_many_parts"


class RuleNotAllowed(FacematchError):
    """A gallery verify asked for a rule the operator does not allow (FACEMATCH_VERIFY_RULES)."""

    code = "rule_not_allowed"


class NoReferences(FacematchError):
    """A gallery verify against a subject that holds no face of the serving model."""

    code = "no_references"


class UnreachableTarget(FacematchError):
    """A ``threshold=far:`` target below the smallest rate the calibration sample resolves."""

    code = "far_unreachable"


class LowQuality(FacematchError):
    """A face below the quality bars while ``FACEMATCH_QUALITY=reject`` (the reasons say which)."""

    code = "low_quality"

    def __init__(self, reasons: list[str]):
        super().__init__("the face is below the quality bar: " + "; ".join(reasons))
        self.reasons = reasons

    def details(self) -> dict:
        return {"reasons": self.reasons}


class TooManySamples(FacematchError):
    """A burst with more ``sample`` photos than ``FACEMATCH_MAX_SAMPLES`` (the message gives it)."""

    code = "too_many_samples"


class InconsistentSamples(FacematchError):
    """A burst whose samples are not of one person: two of them farther apart than the verify
    threshold. Refused, never fused: a burst must not combine strangers into a match."""

    code = "inconsistent_samples"
