"""The facematch HTTP API: an app factory, one blueprint of routes, JSON errors.

Data flows one way per request: read the upload, decode it (``engine.decoding``), find and
crop faces and embed them (``engine.engine``), score (``decision.scores``) under the operator's
policy (``decision.policy``), respond. What the request did is kept in an ``Outcome``
(``observability.outcome``); the JSON answer is built from it, and so is the metrics record,
which the monitoring extension (``observability.request_metrics``) publishes after the response.
API keys and reference signing attach themselves the same way (``security.init_app``), and so do
the gallery routes (``gallery_routes.init_app``) and the web page (``web.init_app``, open
without a key: it holds no data). The steps the routes share are in ``steps``; what ``/faces``
answers is built by ``faces``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from functools import cached_property, lru_cache
from pathlib import Path
from typing import IO

from flask import Blueprint, Flask, Request, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_input_stream

from facematch.api import answers, gallery_routes, security, steps, web
from facematch.api import faces as face_listing
from facematch.api.codec import FORMATS, encode_embedding, parse_embedding
from facematch.api.errors import HttpError, error_body, status_of
from facematch.api.steps import Services
from facematch.config import Settings
from facematch.decision import calibration, scores
from facematch.decision.policy import Decision, DecisionPolicy
from facematch.decision.quality import QualityGate
from facematch.engine.engine import FaceEngine
from facematch.errors import FacematchError, InvalidParameter, PayloadTooLarge, TooManyParts
from facematch.gallery import search as gallery_search
from facematch.keys import KeyRing
from facematch.observability import prometheus, request_metrics
from facematch.observability.outcome import Outcome

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)
# answered without an API key: /ping, the page and its static files (which hold no data);
# /metrics checks its own token (observability.prometheus)
OPEN_ENDPOINTS = ("api.ping", prometheus.ENDPOINT, *web.OPEN_ENDPOINTS)
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "openapi.json"
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
    gate = QualityGate.from_settings(settings)
    app = _App(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_upload_bytes,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
    )
    app.json.sort_keys = False
    engine = engine or FaceEngine.from_settings(settings)
    engine.kernel_check()  # each fast path checked on this CPU before the fork (kernel_checks)
    gallery_search.kernel_check()
    table = calibration.for_settings(settings, engine.options)
    policy = DecisionPolicy.from_settings(settings, table)
    build = prometheus.BuildInfo.of(engine.options)
    keys = KeyRing.from_settings(settings)
    publisher = request_metrics.init_app(app, settings, build, keys)
    app.register_blueprint(bp)  # its hooks run before the API-key check: 401s are recorded
    signer = security.init_app(app, settings, keys, OPEN_ENDPOINTS)
    app.extensions["facematch"] = Services(
        settings, engine, policy, signer, publisher, calibration=table, gate=gate
    )
    gallery_routes.init_app(app, settings)  # the gallery routes; the store opens on first use
    web.init_app(app)  # the page at / and its static files
    app.register_error_handler(FacematchError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _calibration_health(services: Services) -> dict:
    """Whether decisions carry calibrated rates, and from which table (or why not)."""
    options = services.engine.options
    table = services.calibration
    if table is None:
        return {
            "available": False,
            "key": calibration.embedding_key(options),
            "reason": f"no calibration table for model '{options.model}' with these engine "
            f"options (key {calibration.embedding_key(options)}); build one with "
            "python -m deployment_utils.calibration",
        }
    return {
        "available": True,
        "key": table.key,
        "table": table.source,
        "population": table.population,
        "pairs": table.pairs,
        "smallest_far": table.smallest_far,
    }


class _InMemoryRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): Werkzeug would otherwise spool
    files over 500 KB to a temporary file, and photos must never touch the disk. A body of at
    most the cap is read whole, as nginx's ``client_max_body_size`` lets it through (``stream``).
    """

    @cached_property
    def stream(self) -> IO[bytes]:
        """The body, limited to its ``Content-Length`` once that is within the cap (413 over it).

        Werkzeug's own stream under Gunicorn (which terminates the input) is limited to the cap
        instead and refuses any read once the cap's bytes are in: a body of exactly the cap
        then fails wherever it is read to its end. A chunked body (no length) may hold the cap's
        bytes and not one more: its limit is one byte over the cap, refused if reached."""
        cap = self.max_content_length
        length = self.content_length
        if length is None or cap is None:
            cap = None if cap is None else cap + 1
            return get_input_stream(self.environ, max_content_length=cap)
        if length > cap:
            raise RequestEntityTooLarge()
        return LimitedStream(self.environ["wsgi.input"], length)

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


@bp.before_app_request
def _refuse_a_body_over_the_cap() -> None:
    """A body whose Content-Length is over the cap is 413 on every route, before the key check
    and whether or not the route reads it: what nginx answers for it."""
    length = request.content_length
    if length is not None and length > current_app.config["MAX_CONTENT_LENGTH"]:
        raise RequestEntityTooLarge()


@bp.after_app_request
def _read_rest_of_body(response: Response) -> Response:
    """Read what the app left of a request body within the upload cap (a form refused for too
    many parts, a 401 before the form was read), so the connection stays usable.

    Gunicorn's gthread worker drains at most 64 KiB of an unread body after the response and
    otherwise closes the connection, although the response already said ``keep-alive``: the
    client's next request on it then fails. A body over the cap is not read (refused from its
    Content-Length); the stream ends at the Content-Length (``_InMemoryRequest.stream``)."""
    length = request.content_length
    if length and length <= current_app.config["MAX_CONTENT_LENGTH"]:
        try:
            while request.stream.read(_DRAIN_CHUNK):
                pass
        except ClientDisconnected:
            pass  # the client is gone; Gunicorn closes the connection
    return response


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
    services = steps.context().services
    return {
        "status": "ok",
        "model": services.engine.model_name,
        "device": str(services.engine.device),
        "threshold": services.policy.threshold,
        "metric": services.policy.metric,
        "target_far": services.policy.target_far,
        "calibration": _calibration_health(services),
        "quality": services.gate.mode,
        "kernels": {
            "embedder": services.engine.kernel_check().as_json(),
            "gallery_search": gallery_search.kernel_check().as_json(),
        },
        "metrics": services.publisher.stats(),
    }


@bp.post("/photo_match")
def photo_match():
    """Compare the primary face of ``reference`` with the face(s) of ``sample``."""
    ctx = steps.context()
    decision = steps.decision(ctx)
    reference, sample = steps.detect_all(ctx, ["reference", "sample"])
    compared = steps.sample_faces(ctx, sample, decision)
    embedded = steps.embed(ctx, [reference.primary.crop, *(face.crop for face in compared)])
    _score(ctx.outcome, embedded[0], embedded[1:], decision)
    return _match_json(ctx)


@bp.post("/cached_match")
def cached_match():
    """Compare a precomputed reference embedding with the face(s) of ``sample``, or with a
    burst of ``sample`` photos of one person fused into one embedding (``steps.samples``)."""
    ctx = steps.context()
    decision = steps.decision(ctx)
    reference_bytes = steps.bytes_field(ctx, "reference", allow_text=True)
    reference_vector = parse_embedding(reference_bytes)
    steps.verify_reference(ctx, reference_bytes, reference_vector)
    sample = steps.samples(ctx, decision)
    _score(ctx.outcome, reference_vector, sample.vectors, decision)
    return _match_json(ctx, {"samples": sample.as_json()})


@bp.post("/embeddings")
def embeddings():
    """The embedding of the primary face of ``photo``, in a form ``/cached_match`` accepts."""
    ctx = steps.context()
    fmt = ctx.form.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidParameter(f"'format' must be one of {', '.join(FORMATS)}")
    photo = steps.detect(ctx, "photo", steps.image_field(ctx, "photo"))
    vector = steps.embed(ctx, [photo.primary.crop])[0]
    model = ctx.services.engine.model_name
    faces = answers.faces_json(ctx)
    signer = ctx.services.signer
    signed = {"signature": signer.sign(vector, model)} if signer else {}
    if fmt == "json":
        body = json.loads(encode_embedding(vector, "json", {"model": model, **signed}))
        return {
            **body,
            "faces": faces,
            **answers.quality_warnings(ctx),
            "latency_ms": answers.latency_json(ctx.outcome),
        }
    response = Response(encode_embedding(vector, fmt), mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="embedding.{fmt}"'
    response.headers["X-Facematch-Model"] = model
    if signer:
        response.headers["X-Facematch-Signature"] = signed["signature"]
    response.headers["X-Facematch-Faces"] = json.dumps(faces)
    return response


@bp.post("/faces")
def faces():
    """Every face found in ``photo``, primary first, with boxes, landmarks and (``crops``) the
    crops the model embeds; a photo without a face answers an empty list."""
    ctx = steps.context()
    options = face_listing.FacesOptions.from_form(ctx.form)
    found = steps.find_faces(ctx, "photo", steps.image_field(ctx, "photo"))
    body = face_listing.faces_json(found, options)
    return {**body, "latency_ms": answers.latency_json(ctx.outcome)}


# --- steps of the request path (the shared ones are in steps) ---


def _score(outcome: Outcome, reference_vector, sample_vectors, decision: Decision) -> None:
    """Score the reference against each compared face; the primary (or, for ``all``, the
    closest) decides."""
    start = time.perf_counter()
    results = [
        scores.decide(reference_vector, v, decision.threshold, decision.metric)
        for v in sample_vectors
    ]
    outcome.results = results
    outcome.decided_by = min(range(len(results)), key=lambda i: results[i].distance)
    outcome.times.scoring = (time.perf_counter() - start) * 1000


# --- responses, built from the outcome ---


def _match_json(ctx: steps.RequestContext, extra: dict | None = None) -> dict:
    """The answer of a 1:1 decision; ``extra`` fields go before ``latency_ms``."""
    outcome = ctx.outcome
    result = outcome.result
    body = {
        "match": result.match,
        "distance": result.distance,
        "threshold": result.threshold,
        "metric": result.metric,
        "model": ctx.services.engine.model_name,
        **answers.calibration_json(ctx, result.distance, result.threshold, result.metric),
        "faces": answers.faces_json(ctx),
        **answers.quality_warnings(ctx),
    }
    if outcome.decision.sample_faces == "all":
        body["sample_faces"] = [
            {
                "index": i,
                "box": [round(v, 1) for v in face.box],
                "probability": face.probability,
                "quality": answers.face_quality_json(outcome, "sample", i),
                "distance": r.distance,
                "match": r.match,
                **answers.calibration_json(ctx, r.distance, r.threshold, r.metric),
            }
            for i, (face, r) in enumerate(zip(outcome.compared, outcome.results))
        ]
        body["decided_by"] = outcome.decided_by
    body.update(extra or {})
    body["latency_ms"] = answers.latency_json(outcome)
    return body


# --- errors: always JSON ---


def _api_error(error: FacematchError):
    outcome: Outcome | None = g.get("outcome")
    if outcome is not None:
        outcome.error_code = error.code
    return jsonify(error_body(error)), status_of(error)


def _http_error(error: HTTPException):
    if isinstance(error, RequestEntityTooLarge):
        return _api_error(_too_large())
    code = (error.name or "http_error").lower().replace(" ", "_")
    return _api_error(HttpError(error.description or error.name, code, error.code))


def _too_large() -> FacematchError:
    """What a Werkzeug 413 was about: the body's bytes, or the number of form parts."""
    limit = current_app.extensions["facematch"].settings.max_upload_mb
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
    return _api_error(HttpError("internal error", "internal_error", 500))
