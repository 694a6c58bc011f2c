"""The facematch HTTP API: an app factory, one blueprint of routes, JSON errors.

Data flows one way per request: read the upload, decode it (``image_decoding``), find and crop
faces and embed them (``photo_inferencing``), score (``score_service``), respond. What the
request did is collected in a ``RequestRecord`` and handed to the metrics publisher once, after
the response is built.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from flask import Blueprint, Flask, Request, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import score_service
from config import Settings
from embedding_codec import FORMATS, encode_embedding, parse_embedding
from errors import ApiError, InvalidParameter, MissingField, NoFace, PayloadTooLarge
from image_decoding import decode_image
from monitoring.publisher import create_publisher
from photo_inferencing import FaceEngine, PhotoFaces
from request_record import FaceSummary, RequestRecord
from security import ApiKeyCheck, ReferenceSigner, reference_claims

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)
_RECORDED_ENDPOINTS = ("api.photo_match", "api.cached_match", "api.embeddings")
SAMPLE_FACES = ("primary", "all")
OPEN_ENDPOINTS = ("api.ping",)  # answered without an API key
OPENAPI_PATH = Path(__file__).resolve().with_name("openapi.json")


def create_app(config: Settings | Mapping | None = None, engine: FaceEngine | None = None) -> Flask:
    """Build the Flask app.

    ``config`` is a ``Settings`` or a mapping of overrides on top of the environment; ``engine``
    lets a caller share one loaded ``FaceEngine`` (tests do); otherwise the configured weights are
    loaded here, and a missing or wrong weights file raises ``WeightsError``.
    """
    settings = config if isinstance(config, Settings) else Settings.from_env(**dict(config or {}))
    app = Flask(__name__)
    app.request_class = _InMemoryRequest
    app.extensions["facematch_api_keys"] = ApiKeyCheck.from_settings(settings)
    app.extensions["facematch_signer"] = ReferenceSigner.from_settings(settings)
    if not app.extensions["facematch_api_keys"].enabled:
        log.warning(
            "API keys are off (FACEMATCH_API_KEYS unset): anyone who can reach this "
            "port can use the API; set keys in production"
        )
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_upload_bytes,
    )
    app.json.sort_keys = False
    app.extensions["facematch"] = _Services(
        settings=settings,
        engine=engine or FaceEngine.from_settings(settings),
        publisher=create_publisher(settings),
        threshold=_configured_threshold(settings),
    )
    app.register_blueprint(bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


class _Services:
    """What the routes share: settings, the loaded engine, the metrics publisher."""

    def __init__(self, settings: Settings, engine: FaceEngine, publisher, threshold: float):
        self.settings = settings
        self.engine = engine
        self.publisher = publisher
        self.threshold = threshold


def _services() -> _Services:
    return current_app.extensions["facematch"]


class _InMemoryRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): Werkzeug would otherwise spool
    files over 500 KB to a temporary file, and photos must never touch the disk."""

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        return io.BytesIO()


def _configured_threshold(settings: Settings) -> float:
    if settings.metric not in score_service.METRICS:
        raise ValueError(f"FACEMATCH_METRIC must be one of {score_service.METRICS}")
    if settings.threshold is None:
        return score_service.default_threshold(settings.metric)
    return score_service.check_threshold(settings.threshold, settings.metric)


# --- request lifecycle: one record per verifying request, published after the response ---


@bp.before_app_request
def _start_record() -> None:
    g.started = time.perf_counter()
    if request.endpoint in _RECORDED_ENDPOINTS:
        g.record = RequestRecord(endpoint=request.path, model=_services().engine.model_name)


@bp.after_app_request
def _publish_record(response: Response) -> Response:
    record: RequestRecord | None = g.pop("record", None)
    if record is not None:
        record.status = response.status_code
        record.latency.total = _elapsed_ms()
        _services().publisher.publish(record)
    return response


@bp.before_app_request
def _require_api_key() -> None:
    """401 unless the request carries a configured API key (when keys are on); /ping is open."""
    if request.endpoint not in OPEN_ENDPOINTS:
        current_app.extensions["facematch_api_keys"].check(request.headers)


def _elapsed_ms() -> float:
    return (time.perf_counter() - g.started) * 1000


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
        "threshold": services.threshold,
        "metric": services.settings.metric,
        "metrics": services.publisher.stats(),
    }


@bp.post("/photo_match")
def photo_match():
    """Compare the primary face of ``reference`` with the face(s) of ``sample``."""
    metric, threshold = _decision_params()
    sample_mode = _sample_faces_param()
    reference_image = _image_field("reference")
    sample_image = _image_field("sample")
    reference = _detect("reference", reference_image)
    sample = _detect("sample", sample_image)
    sample_crops = _sample_crops(sample, sample_mode)
    embedded = _embed([reference.primary.crop, *sample_crops])
    return _match_response(embedded[0], embedded[1:], sample, metric, threshold, sample_mode)


@bp.post("/cached_match")
def cached_match():
    """Compare a precomputed reference embedding with the face(s) of ``sample``."""
    metric, threshold = _decision_params()
    sample_mode = _sample_faces_param()
    reference_bytes = _bytes_field("reference", allow_text=True)
    reference_vector = parse_embedding(reference_bytes, _services().engine.device)
    _verify_reference(reference_bytes, reference_vector)
    sample = _detect("sample", _image_field("sample"))
    embedded = _embed(_sample_crops(sample, sample_mode))
    return _match_response(reference_vector, embedded, sample, metric, threshold, sample_mode)


@bp.post("/embeddings")
def embeddings():
    """The embedding of the primary face of ``photo``, in a form ``/cached_match`` accepts."""
    fmt = request.form.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidParameter(f"'format' must be one of {', '.join(FORMATS)}")
    photo = _detect("photo", _image_field("photo"))
    vector = _embed([photo.primary.crop])[0]
    model = _services().engine.model_name
    faces = {"photo": _face_json(g.record.faces[0])}
    signer: ReferenceSigner | None = current_app.extensions["facematch_signer"]
    signed = {"signature": signer.sign(vector, model)} if signer else {}
    if fmt == "json":
        body = json.loads(encode_embedding(vector, "json", {"model": model, **signed}))
        return {**body, "faces": faces, "latency_ms": _latency_json()}
    response = Response(encode_embedding(vector, fmt), mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="embedding.{fmt}"'
    response.headers["X-Facematch-Model"] = model
    if signer:
        response.headers["X-Facematch-Signature"] = signed["signature"]
    response.headers["X-Facematch-Faces"] = json.dumps(faces)
    return response


# --- steps of the request path ---


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
    signer: ReferenceSigner | None = current_app.extensions["facematch_signer"]
    if signer is None:
        return
    signature, model = reference_claims(data)
    signature = request.form.get("signature") or signature
    model = request.form.get("reference_model") or model
    signer.verify(vector, _services().engine.model_name, signature, model)


def _image_field(name: str):
    data = _bytes_field(name)
    start = time.perf_counter()
    image = decode_image(data, _services().settings.max_pixels, name)
    g.record.latency.decode += (time.perf_counter() - start) * 1000
    g.record.faces.append(
        FaceSummary(role=name, count=0, image_width=image.width, image_height=image.height)
    )
    return image


def _detect(role: str, image) -> PhotoFaces:
    """Detect faces, note them in the record, and refuse a photo without any (422)."""
    found = _services().engine.detect(image)
    g.record.latency.detection += found.detection_ms
    summary = next(s for s in g.record.faces if s.role == role)
    summary.count = len(found.faces)
    if found.primary is None:
        raise NoFace(f"no face was found in '{role}'")
    summary.probability = found.primary.probability
    summary.box = [round(v, 1) for v in found.primary.box]
    return found


def _embed(crops) -> np.ndarray:
    embedded = _services().engine.embed(list(crops))
    g.record.latency.embedding += embedded.embedding_ms
    return embedded.vectors


def _sample_crops(sample: PhotoFaces, mode: str):
    return [face.crop for face in sample.faces] if mode == "all" else [sample.primary.crop]


def _decision_params() -> tuple[str, float]:
    """Metric and threshold for this request: form fields ``metric`` and ``threshold``."""
    services = _services()
    metric = request.form.get("metric", services.settings.metric)
    if metric not in score_service.METRICS:
        raise InvalidParameter(f"'metric' must be one of {', '.join(score_service.METRICS)}")
    raw = request.form.get("threshold")
    if raw is None or raw.strip() == "":
        if metric == services.settings.metric:
            return metric, services.threshold
        return metric, score_service.default_threshold(metric)
    try:
        return metric, score_service.check_threshold(float(raw), metric)
    except ValueError:
        raise InvalidParameter("'threshold' must be a number between 0 and 2") from None


def _sample_faces_param() -> str:
    mode = request.form.get("sample_faces", "primary")
    if mode not in SAMPLE_FACES:
        raise InvalidParameter(f"'sample_faces' must be one of {', '.join(SAMPLE_FACES)}")
    return mode


def _match_response(
    reference_vector, sample_vectors, sample: PhotoFaces, metric: str, threshold: float, mode: str
) -> dict:
    """Score the reference against each sample face; the primary (or, for ``all``, the closest)
    decides."""
    start = time.perf_counter()
    results = [score_service.decide(reference_vector, v, threshold, metric) for v in sample_vectors]
    decided_by = min(range(len(results)), key=lambda i: results[i].distance) if mode == "all" else 0
    result = results[decided_by]
    record: RequestRecord = g.record
    record.latency.scoring = (time.perf_counter() - start) * 1000
    record.match, record.distance = result.match, result.distance
    record.threshold, record.metric = result.threshold, result.metric
    body = {
        "match": result.match,
        "distance": result.distance,
        "threshold": result.threshold,
        "metric": result.metric,
        "model": record.model,
        "faces": {s.role: _face_json(s) for s in record.faces},
    }
    if mode == "all":
        body["sample_faces"] = [
            {
                "index": i,
                "box": [round(v, 1) for v in face.box],
                "probability": face.probability,
                "distance": r.distance,
                "match": r.match,
            }
            for i, (face, r) in enumerate(zip(sample.faces, results))
        ]
        body["decided_by"] = decided_by
    body["latency_ms"] = _latency_json()
    return body


def _face_json(summary: FaceSummary) -> dict:
    return {
        "count": summary.count,
        "probability": summary.probability,
        "box": summary.box,
        "image_size": [summary.image_width, summary.image_height],
    }


def _latency_json() -> dict:
    latency = g.record.latency
    latency.total = _elapsed_ms()
    return {k: round(v, 2) for k, v in asdict(latency).items()}


# --- errors: always JSON ---


def _api_error(error: ApiError):
    if "record" in g:
        g.record.error_code = error.code
    return jsonify(error.to_dict()), error.status


def _http_error(error: HTTPException):
    if isinstance(error, RequestEntityTooLarge):
        limit = _services().settings.max_upload_mb
        return _api_error(PayloadTooLarge(f"the upload exceeds the {limit:g} MB limit"))
    code = (error.name or "http_error").lower().replace(" ", "_")
    return _api_error(ApiError(error.description or error.name, code=code, status=error.code))


def _unexpected_error(error: Exception):
    log.exception("unhandled error on %s", request.path)
    return _api_error(ApiError("internal error", code="internal_error", status=500))
