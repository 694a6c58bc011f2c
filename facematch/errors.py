"""Client-facing errors: each carries the HTTP status and a stable machine-readable code.

Every failure a client can cause is raised as an ``ApiError`` somewhere on the request path and
turned into ``{"error": {"code": ..., "message": ...}}`` by the server's error handler.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error the client can act on; ``message`` must not leak paths or internals."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class MissingField(ApiError):
    code = "missing_field"


class InvalidParameter(ApiError):
    code = "invalid_parameter"


class InvalidEmbedding(ApiError):
    code = "invalid_embedding"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedImage(ApiError):
    status = 415
    code = "unsupported_image"


class ImageTooLarge(ApiError):
    status = 413
    code = "image_too_large"


class NoFace(ApiError):
    status = 422
    code = "no_face"


class InvalidId(ApiError):
    """A gallery, subject or face id outside ``[A-Za-z0-9._-]{1,128}``."""

    code = "invalid_id"


class NotFound(ApiError):
    """An unknown gallery, subject or face; the message names which."""

    status = 404
    code = "not_found"


class ModelMismatch(ApiError):
    """A gallery holds embeddings of one model and the request brings another (names both)."""

    status = 409
    code = "model_mismatch"


class GalleryFull(ApiError):
    """A configured gallery size limit would be exceeded; the message gives the limit."""

    status = 409
    code = "gallery_full"


class GalleryUnavailable(ApiError):
    """The gallery database is down or unreachable; the routes add ``Retry-After``."""

    status = 503
    code = "gallery_unavailable"


class Unauthorized(ApiError):
    """No API key, or one that is not configured: the message never says which."""

    status = 401
    code = "unauthorized"


class UnsignedReference(ApiError):
    """Signing is on and the reference came without a signature."""

    code = "unsigned_reference"


class BadSignature(ApiError):
    """The reference's signature is malformed, from an unknown key, or does not verify."""

    status = 403
    code = "bad_signature"


class WrongModel(ApiError):
    """An authentic reference made by a model other than the serving one."""

    status = 422
    code = "wrong_model"


class ThresholdNotAllowed(ApiError):
    """A request asked for a threshold looser than the operator's policy allows."""

    status = 403
    code = "threshold_not_allowed"


class SampleFacesNotAllowed(ApiError):
    """A request asked to compare every sample face and the operator has turned that off."""

    status = 403
    code = "sample_faces_not_allowed"


class TooManyParts(ApiError):
    """A multipart form with more parts than the server reads (Werkzeug's ``max_form_parts``)."""

    status = 413
    code = "too_many_parts"


class RuleNotAllowed(ApiError):
    """A gallery verify asked for a rule the operator does not allow (FACEMATCH_VERIFY_RULES)."""

    status = 403
    code = "rule_not_allowed"


class NoReferences(ApiError):
    """A gallery verify against a subject that holds no face of the serving model."""

    status = 409
    code = "no_references"


class UnreachableTarget(ApiError):
    """A ``threshold=far:`` target below the smallest rate the calibration sample resolves."""

    code = "far_unreachable"


class LowQuality(ApiError):
    """A face below the quality bars while ``FACEMATCH_QUALITY=reject`` (the reasons say which)."""

    status = 422
    code = "low_quality"

    def __init__(self, reasons: list[str]):
        super().__init__("the face is below the quality bar: " + "; ".join(reasons))
        self.reasons = reasons

    def to_dict(self) -> dict:
        body = super().to_dict()
        body["error"]["reasons"] = self.reasons
        return body
