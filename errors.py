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
