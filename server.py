"""The facematch HTTP API: an app factory, one blueprint of routes, JSON errors.

Data flows one way per request: read the upload, decode it (``image_decoding``), find and crop
faces and embed them (``photo_inferencing``), score (``score_service``) under the operator's
policy (``decision_policy``), respond. What the request did is kept in an ``Outcome``
(``request_outcome``); the JSON answer is built from it, and so is the metrics record, which
the monitoring extension (``request_metrics``) publishes after the response. API keys and
reference signing attach themselves the same way (``security.init_app``).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from flask import Blueprint, Flask, Request, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

import request_metrics
import score_service
import security
from config import Settings
from decision_policy import Decision, DecisionPolicy
from embedding_codec import FORMATS, encode_embedding, parse_embedding
from errors import ApiError, InvalidParameter, MissingField, NoFace, PayloadTooLarge, TooManyParts
from image_decoding import DecodedPhoto, decode_photo
from monitoring.publisher import Publisher
from photo_inferencing import FaceEngine, PhotoFaces
from request_outcome import InputPhoto, Outcome
from security import ReferenceSigner, reference_claims

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)
OPEN_ENDPOINTS = ("api.ping",)  # answered without an API key
OPENAPI_PATH = Path(__file__).resolve().with_name("openapi.json")
#: Werkzeug's default cap on multipart parts, named here for the 413 that reports it.
MAX_FORM_PARTS = 1000
_DRAIN_CHUNK = 64 * 1024


def create_app(config: Settings | Mapping | None = None, engine: FaceEngine | None = None) -> Flask:
    """Build the Flask app.

    ``config`` is a ``Settings`` or a mapping of overrides on top of the environment; ``engine``
    lets a caller share one loaded ``FaceEngine`` (tests do); otherwise the configured weights are
    loaded here, and a missing or wrong weights file raises ``WeightsError``. Unusable settings
    raise ``ConfigError``.
    """
    settings = config if isinstance(config, Settings) else Settings.from_env(**dict(config or {}))
    policy = DecisionPolicy.from_settings(settings)
    app = _App(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_upload_bytes,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
    )
    app.json.sort_keys = False
    engine = engine or FaceEngine.from_settings(settings)
    publisher = request_metrics.init_app(app, settings, engine.model_name)
    app.register_blueprint(bp)  # its hooks run before the API-key check: 401s are recorded
    signer = security.init_app(app, settings, OPEN_ENDPOINTS)
    app.extensions["facematch"] = Services(settings, engine, policy, signer, publisher)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


@dataclass(frozen=True)
class Services:
    """What the routes share, reached only through ``_services()``."""

    settings: Settings
    engine: FaceEngine
    policy: DecisionPolicy
    signer: ReferenceSigner | None  # None: signing is off
    publisher: Publisher  # also started by gunicorn_hooks in each worker


def _services() -> Services:
    return current_app.extensions["facematch"]


class _InMemoryRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): Werkzeug would otherwise spool
    files over 500 KB to a temporary file, and photos must never touch the disk."""

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()


class _App(Flask):
    """Flask with in-memory uploads and a bodiless ``204`` for ``OPTIONS`` (Flask's own answer
    is a 200 with an empty ``text/html`` body)."""

    request_class = _InMemoryRequest

    def make_default_options_response(self) -> Response:
        allowed = super().make_default_options_response().headers["Allow"]
        response = Response(status=204, headers={"Allow": allowed})
        del response.headers["Content-Type"]
        return response


# --- request lifecycle ---


@bp.before_app_request
def _begin_outcome() -> None:
    g.outcome = Outcome()


@bp.after_app_request
def _read_rest_of_body(response: Response) -> Response:
    """Read what the app left of a request body within the upload cap (a form refused for too
    many parts, a 401 before the form was read), so the connection stays usable.

    Gunicorn's gthread worker drains at most 64 KiB of an unread body after the response and
    otherwise closes the connection, although the response already said ``keep-alive``: the
    client's next request on it then fails. A body over the cap is not read (Werkzeug refuses
    it from its Content-Length)."""
    length = request.content_length
    if length and length <= current_app.config["MAX_CONTENT_LENGTH"]:
        try:
            while request.stream.read(_DRAIN_CHUNK):
                pass
        except (OSError, ClientDisconnected):
            pass  # the client is gone; Gunicorn closes the connection
    return response


def _outcome() -> Outcome:
    return g.outcome


# --- routes ---


@bp.get("/ping")
def ping():
    return {"status": "ok"}


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document of this API (the repository's openapi.json)."""
    return Response(_openapi_document(), mimetype="application/json")


@lru_cache(maxsize=1)
def _openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()


@bp.get("/health")
def health():
    services = _services()
    return {
        "status": "ok",
        "model": services.engine.model_name,
        "device": str(services.engine.device),
        "threshold": services.policy.threshold,
        "metric": services.policy.metric,
        "metrics": services.publisher.stats(),
    }


@bp.post("/photo_match")
def photo_match():
    """Compare the primary face of ``reference`` with the face(s) of ``sample``."""
    decision = _decision()
    images = {"reference": _image_field("reference"), "sample": _image_field("sample")}
    reference, sample = _detect_all(images)
    compared = _sample_faces(sample, decision)
    embedded = _embed([reference.primary.crop, *(face.crop for face in compared)])
    _score(embedded[0], embedded[1:], decision)
    return _match_json(_outcome())


@bp.post("/cached_match")
def cached_match():
    """Compare a precomputed reference embedding with the face(s) of ``sample``."""
    decision = _decision()
    reference_bytes = _bytes_field("reference", allow_text=True)
    reference_vector = parse_embedding(reference_bytes, _services().engine.device)
    _verify_reference(reference_bytes, reference_vector)
    sample = _detect("sample", _image_field("sample"))
    compared = _sample_faces(sample, decision)
    _score(reference_vector, _embed([face.crop for face in compared]), decision)
    return _match_json(_outcome())


@bp.post("/embeddings")
def embeddings():
    """The embedding of the primary face of ``photo``, in a form ``/cached_match`` accepts."""
    fmt = request.form.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidParameter(f"'format' must be one of {', '.join(FORMATS)}")
    photo = _detect("photo", _image_field("photo"))
    vector = _embed([photo.primary.crop])[0]
    outcome = _outcome()
    model = _services().engine.model_name
    faces = _faces_json(outcome)
    signer = _services().signer
    signed = {"signature": signer.sign(vector, model)} if signer else {}
    if fmt == "json":
        body = json.loads(encode_embedding(vector, "json", {"model": model, **signed}))
        return {**body, "faces": faces, "latency_ms": _latency_json(outcome)}
    response = Response(encode_embedding(vector, fmt), mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="embedding.{fmt}"'
    response.headers["X-Facematch-Model"] = model
    if signer:
        response.headers["X-Facematch-Signature"] = signed["signature"]
    response.headers["X-Facematch-Faces"] = json.dumps(faces)
    return response


# --- steps of the request path ---


def _decision() -> Decision:
    """The operator's policy applied to this request's ``metric``, ``threshold`` and
    ``sample_faces`` (every deciding route starts here)."""
    decision = _services().policy.for_request(request.form)
    _outcome().decision = decision
    return decision


def _bytes_field(name: str, allow_text: bool = False) -> bytes:
    """The uploaded file ``name`` (or, if ``allow_text``, a form field of that name) as bytes."""
    upload = request.files.get(name)
    if upload is not None:
        return upload.read()
    if allow_text and name in request.form:
        return request.form[name].encode()
    kind = "a file or form field" if allow_text else "a file"
    raise MissingField(f"'{name}' is required ({kind} in a multipart/form-data request)")


def _verify_reference(data: bytes, vector: np.ndarray) -> None:
    """With signing on, accept only a reference signed for the serving model.

    The signature and model come from the form fields ``signature`` and ``reference_model``
    (how a .npy, .pt or array reference carries them), else from the JSON object's own
    ``signature`` and ``model`` keys (so /embeddings' JSON is accepted unchanged).
    """
    signer = _services().signer
    if signer is None:
        return
    signature, model = reference_claims(data)
    signature = request.form.get("signature") or signature
    model = request.form.get("reference_model") or model
    signer.verify(vector, _services().engine.model_name, signature, model)


def _image_field(name: str) -> DecodedPhoto:
    """The upload ``name`` decoded into an RGB photo (with ``FACEMATCH_REDUCED_DECODE`` a large
    JPEG at the reduced scale the detector needs: ``decode_photo``; noted in the outcome)."""
    data = _bytes_field(name)
    start = time.perf_counter()
    services = _services()
    image = decode_photo(
        data, services.settings.max_pixels, name, services.engine.options.decode_min_side
    )
    outcome = _outcome()
    outcome.times.decode += (time.perf_counter() - start) * 1000
    outcome.photos[name] = InputPhoto(image.width, image.height)
    return image


def _detect(role: str, image: DecodedPhoto) -> PhotoFaces:
    """Detect faces, note them in the outcome, and refuse a photo without any (422)."""
    found = _services().engine.detect(image)
    _outcome().times.detection += found.detection_ms
    return _noted(role, found)


def _detect_all(images: dict[str, DecodedPhoto]) -> list[PhotoFaces]:
    """``_detect`` for each photo (role -> image), the photos at once on the engine's compute
    threads (the detection time noted is the wall time of all); the first photo in order
    without a face is refused."""
    engine = _services().engine
    start = time.perf_counter()
    found = engine.concurrently(engine.detect, list(images.values()))
    _outcome().times.detection += (time.perf_counter() - start) * 1000
    return [_noted(role, faces) for role, faces in zip(images, found)]


def _noted(role: str, found: PhotoFaces) -> PhotoFaces:
    """Note a photo's faces in the outcome; refuse a photo without any (422)."""
    _outcome().photos[role].found = found
    if found.primary is None:
        raise NoFace(f"no face was found in '{role}'")
    return found


def _sample_faces(sample: PhotoFaces, decision: Decision) -> list:
    """The sample faces to embed and compare: the primary one, or for ``all`` at most the
    policy's bound, best-ranked first."""
    compared = sample.faces[: decision.max_sample_faces]
    _outcome().compared = compared
    return compared


def _embed(crops) -> np.ndarray:
    embedded = _services().engine.embed(list(crops))
    _outcome().times.embedding += embedded.embedding_ms
    return embedded.vectors


def _score(reference_vector, sample_vectors, decision: Decision) -> None:
    """Score the reference against each compared face; the primary (or, for ``all``, the
    closest) decides."""
    start = time.perf_counter()
    results = [
        score_service.decide(reference_vector, v, decision.threshold, decision.metric)
        for v in sample_vectors
    ]
    outcome = _outcome()
    outcome.results = results
    outcome.decided_by = min(range(len(results)), key=lambda i: results[i].distance)
    outcome.times.scoring = (time.perf_counter() - start) * 1000


# --- responses, built from the outcome ---


def _match_json(outcome: Outcome) -> dict:
    result = outcome.result
    body = {
        "match": result.match,
        "distance": result.distance,
        "threshold": result.threshold,
        "metric": result.metric,
        "model": _services().engine.model_name,
        "faces": _faces_json(outcome),
    }
    if outcome.decision.sample_faces == "all":
        body["sample_faces"] = [
            {
                "index": i,
                "box": [round(v, 1) for v in face.box],
                "probability": face.probability,
                "distance": r.distance,
                "match": r.match,
            }
            for i, (face, r) in enumerate(zip(outcome.compared, outcome.results))
        ]
        body["decided_by"] = outcome.decided_by
    body["latency_ms"] = _latency_json(outcome)
    return body


def _faces_json(outcome: Outcome) -> dict:
    return {
        role: {
            "count": photo.count,
            "probability": photo.primary.probability if photo.primary else None,
            "box": [round(v, 1) for v in photo.primary.box] if photo.primary else None,
            "image_size": [photo.width, photo.height],
        }
        for role, photo in outcome.photos.items()
    }


def _latency_json(outcome: Outcome) -> dict:
    stages = {**asdict(outcome.times), "total": outcome.elapsed_ms()}
    return {k: round(v, 2) for k, v in stages.items()}


# --- errors: always JSON ---


def _api_error(error: ApiError):
    outcome: Outcome | None = g.get("outcome")
    if outcome is not None:
        outcome.error_code = error.code
    return jsonify(error.to_dict()), error.status


def _http_error(error: HTTPException):
    if isinstance(error, RequestEntityTooLarge):
        return _api_error(_too_large())
    code = (error.name or "http_error").lower().replace(" ", "_")
    return _api_error(ApiError(error.description or error.name, code=code, status=error.code))


def _too_large() -> ApiError:
    """What a Werkzeug 413 was about: the body's bytes, or the number of form parts."""
    limit = _services().settings.max_upload_mb
    length = request.content_length
    stream = request.__dict__.get("stream")  # only when Werkzeug got as far as reading
    streamed_past_cap = length is None and getattr(stream, "is_exhausted", True)
    if (length is not None and length > current_app.config["MAX_CONTENT_LENGTH"]) or (
        streamed_past_cap
    ):
        return PayloadTooLarge(f"the upload exceeds the {limit:g} MB limit")
    return TooManyParts(
        f"the form has more than {MAX_FORM_PARTS} parts; send only the fields this route reads"
    )


def _unexpected_error(error: Exception):
    log.exception("unhandled error on %s", request.path)
    return _api_error(ApiError("internal error", code="internal_error", status=500))
