"""The one table from the service's errors to HTTP: the status each answers with, and the JSON
body every error has, ``{"error": {"code": ..., "message": ...}}`` (plus what the error adds,
such as a low-quality face's ``reasons``). The domain (``facematch.errors``) says what went
wrong; only this module knows HTTP.
"""

from __future__ import annotations

from facematch import errors
from facematch.errors import FacematchError

STATUS: dict[type[FacematchError], int] = {
    errors.MissingField: 400,
    errors.InvalidParameter: 400,
    errors.InvalidEmbedding: 400,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedImage: 415,
    errors.ImageTooLarge: 413,
    errors.NoFace: 422,
    errors.InvalidId: 400,
    errors.NotFound: 404,
    errors.ModelMismatch: 409,
    errors.GalleryFull: 409,
    errors.GalleryUnavailable: 503,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.UnsignedReference: 400,
    errors.BadSignature: 403,
    errors.WrongModel: 422,
    errors.ThresholdNotAllowed: 403,
    errors.SampleFacesNotAllowed: 403,
    errors.TooManyParts: 413,
    errors.RuleNotAllowed: 403,
    errors.NoReferences: 409,
    errors.UnreachableTarget: 400,
    errors.LowQuality: 422,
    errors.TooManySamples: 400,
    errors.InconsistentSamples: 422,
}


class HttpError(FacematchError):
    """An answer that exists only in HTTP (Werkzeug's own refusals, an internal error): it
    carries its status."""

    def __init__(self, message: str, code: str, status: int):
        super().__init__(message, code)
        self.status = status


def status_of(error: FacematchError) -> int:
    """The HTTP status ``error`` is answered with (400 for an error the table does not name)."""
    if isinstance(error, HttpError):
        return error.status
    return next((STATUS[cls] for cls in type(error).__mro__ if cls in STATUS), 400)


def error_body(error: FacematchError) -> dict:
    """The JSON body of ``error``'s answer."""
    return {"error": {"code": error.code, "message": error.message, **error.details()}}
