"""The gallery routes: enrol faces of subjects, list, read and delete them, verify a photo against
a subject's faces and identify who is in a photo (1:N, open set).

A Flask extension: ``init_app(app, settings)`` registers the ``gallery`` blueprint and keeps a
``GalleryAccess`` (``gallery.service``) in ``app.extensions["facematch_gallery"]``. The store is
opened without connecting, so the service starts while its database is down; only these routes
touch it. Photos and embeddings are read, checked and embedded by the same steps as the 1:1
routes (``steps``), and the threshold goes through the same decision policy: verify is a
1:1 decision (``for_request``), identify uses the 1:N threshold (``for_identify``). Gallery
distances are cosine distances, so ``metric`` may only be ``cosine`` here.

Every write and every decision names the acting API key (``_actor``, the one read of
``g.key_id``, which the API-key check sets) for the gallery's audit trail, which
``GET /galleries/<g>/audit`` pages through. ``GET /galleries/<g>/export`` streams a gallery in
``gallery.transfer``'s format (signed with the first signing key when signing is on) and
``POST /galleries/<g>/import`` takes one (checked whole first; its size bounded by
``FACEMATCH_MAX_UPLOAD_MB``, as every body).

Errors are the usual JSON errors; an unavailable database is 503 ``gallery_unavailable`` with
``Retry-After``. What each request did goes into its ``Outcome`` (``GalleryWork``: gallery
size, candidates, best distance; the search time in its stage times) for the metrics record.
"""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, stream_with_context

from facematch import bounded_json
from facematch.api import answers, steps
from facematch.api.codec import parse_embedding
from facematch.api.errors import error_body, status_of
from facematch.api.security import export_signer, reference_claims
from facematch.config import Settings
from facematch.decision.gallery_scoring import MAX_TOP_K, Identification, VerifyRule
from facematch.decision.policy import Decision
from facematch.decision.scores import MatchResult
from facematch.errors import (
    GalleryUnavailable,
    InvalidParameter,
    MissingField,
    NoReferences,
    WrongModel,
)
from facematch.gallery.audit import AuditEvent
from facematch.gallery.service import GalleryAccess
from facematch.gallery.store import MAX_K, Face, FaceSource, Subject, check_id
from facematch.observability.record import GalleryWork

bp = Blueprint("gallery", __name__)
DEFAULT_LIMIT = 100
DEFAULT_TOP_K = 5
#: The largest PUT subject body: room for 4 KB of metadata and a name, however escaped.
MAX_SUBJECT_BODY_BYTES = 64 * 1024
_DIGITS = re.compile(r"[0-9]{1,7}")
_ENROL_FIELDS = "'photo' (a file) or 'embedding' (a file or form field)"


def init_app(app: Flask, settings: Settings) -> GalleryAccess:
    """Register the gallery routes on ``app`` with the store ``settings`` configure (opened
    on first use). Returns the ``GalleryAccess``; ``ConfigError`` for an unusable URL."""
    access = GalleryAccess.from_settings(settings)
    app.extensions["facematch_gallery"] = access
    app.extensions["facematch_gallery_export"] = export_signer(settings)
    app.register_blueprint(bp)
    return access


def _access() -> GalleryAccess:
    return current_app.extensions["facematch_gallery"]


def _actor() -> str:
    """The acting API key's id, as the API-key check left it ("anonymous" when keys are off)."""
    return g.get("key_id", "anonymous")


@bp.before_request
def _begin_gallery_work() -> None:
    outcome = steps.context().outcome
    outcome.gallery = GalleryWork()
    outcome.times.search = 0.0


@bp.errorhandler(GalleryUnavailable)
def _unavailable(error: GalleryUnavailable):
    outcome = g.get("outcome")
    if outcome is not None:
        outcome.error_code = error.code
    response = jsonify(error_body(error))
    response.status_code = status_of(error)
    response.headers["Retry-After"] = str(_access().seconds_to_retry())
    return response


# --- enrolling ---


@bp.post("/galleries/<gallery>/subjects/<subject>/faces")
def add_face(gallery: str, subject: str):
    """Enrol one face of ``subject`` (created if new): the primary face of ``photo``, or an
    ``embedding`` in any form /cached_match accepts (signed when signing is on)."""
    _ids(gallery=gallery, subject=subject)
    ctx = steps.context()
    model = ctx.services.engine.model_name
    has_photo = "photo" in ctx.files
    has_embedding = "embedding" in ctx.files or "embedding" in ctx.form
    if has_photo and has_embedding:
        raise InvalidParameter(f"send {_ENROL_FIELDS}, not both")
    if has_embedding:
        data = steps.bytes_field(ctx, "embedding", allow_text=True)
        vector = parse_embedding(data)
        steps.verify_reference(ctx, data, vector)
        _check_claimed_model(ctx, data, model)
        source = FaceSource()
    elif has_photo:
        photo = steps.detect(ctx, "photo", steps.image_field(ctx, "photo"))
        vector = steps.embed(ctx, [photo.primary.crop])[0]
        face = photo.primary
        source = FaceSource(
            box=tuple(float(v) for v in face.box),
            probability=float(face.probability),
            image_width=photo.width,
            image_height=photo.height,
        )
    else:
        raise MissingField(f"{_ENROL_FIELDS} is required (multipart/form-data)")
    added = _access().enrol(gallery, subject, vector, model, source, _actor())
    body = {
        "gallery": gallery,
        "subject": subject,
        "face": added.face,
        "faces": added.faces,
        "model": model,
        "source": _source_json(source),
        "latency_ms": answers.latency_json(ctx.outcome),
    }
    return body, 201


def _check_claimed_model(ctx: steps.RequestContext, data: bytes, model: str) -> None:
    """Refuse an embedding that says it was made by another model (with signing on, the
    signature check has already refused it)."""
    claimed = ctx.form.get("reference_model") or reference_claims(data)[1]
    if claimed is not None and claimed != model:
        raise WrongModel(
            f"the embedding was made by model '{claimed[:64]}'; this server runs '{model}': "
            "enrol the photo here"
        )


# --- subjects ---


@bp.get("/galleries/<gallery>/subjects")
def list_subjects(gallery: str):
    """A page of the gallery's subjects in id order; ``next`` is the ``after`` of the next."""
    _ids(gallery=gallery)
    limit = _int_arg(request.args, "limit", DEFAULT_LIMIT, MAX_K)
    after = request.args.get("after") or None
    if after is not None:
        check_id("cursor ('after')", after)
    page = _access().subjects(gallery, limit, after)
    return {
        "gallery": gallery,
        "subjects": [
            {"subject": s.subject, "name": s.name, "faces": s.faces} for s in page.subjects
        ],
        "next": page.next,
    }


@bp.get("/galleries/<gallery>/subjects/<subject>")
def get_subject(gallery: str, subject: str):
    """The subject, its metadata and its faces (no vectors)."""
    _ids(gallery=gallery, subject=subject)
    detail = _access().subject(gallery, subject)
    return {
        **_subject_json(gallery, detail.subject),
        "faces": [_face_json(face) for face in detail.faces],
    }


@bp.put("/galleries/<gallery>/subjects/<subject>")
def put_subject(gallery: str, subject: str):
    """Create the subject or replace its ``name`` and ``metadata`` (a JSON object body)."""
    _ids(gallery=gallery, subject=subject)
    body = None
    if request.is_json:
        body = bounded_json.loads(
            request.get_data(), what="the subject body", max_bytes=MAX_SUBJECT_BODY_BYTES
        )
    if not isinstance(body, dict):
        raise InvalidParameter("the body must be a JSON object with 'name' and/or 'metadata'")
    unknown = sorted(set(body) - {"name", "metadata"})
    if unknown:
        raise InvalidParameter(f"unknown field(s): {', '.join(unknown)[:100]}")
    name, metadata = body.get("name"), body.get("metadata")
    stored = _access().put_subject(gallery, subject, name, metadata, _actor())
    return {**_subject_json(gallery, stored), "faces": stored.faces}


# --- deleting (rows gone for good) ---


@bp.delete("/galleries/<gallery>/subjects/<subject>/faces/<face>")
def delete_face(gallery: str, subject: str, face: str):
    """Delete one face of a subject."""
    _ids(gallery=gallery, subject=subject, face=face)
    deleted = _access().delete_face(gallery, subject, face, _actor())
    return {
        "deleted": {"gallery": gallery, "subject": subject, "face": face, "faces": deleted.faces}
    }


@bp.delete("/galleries/<gallery>/subjects/<subject>")
def delete_subject(gallery: str, subject: str):
    """Delete a subject and every embedding of it."""
    _ids(gallery=gallery, subject=subject)
    deleted = _access().delete_subject(gallery, subject, _actor())
    return {"deleted": {"gallery": gallery, "subject": subject, "faces": deleted.faces}}


@bp.delete("/galleries/<gallery>")
def delete_gallery(gallery: str):
    """Delete a gallery, its subjects and their embeddings."""
    _ids(gallery=gallery)
    deleted = _access().delete_gallery(gallery, _actor())
    return {"deleted": {"gallery": gallery, "subjects": deleted.subjects, "faces": deleted.faces}}


# --- the audit trail ---


@bp.get("/galleries/<gallery>/audit")
def audit(gallery: str):
    """A page of the gallery's audit events in the order they were recorded (a deleted
    gallery's too); ``next`` is the ``after`` of the next page, null at the end."""
    _ids(gallery=gallery)
    limit = _int_arg(request.args, "limit", DEFAULT_LIMIT, MAX_K)
    page = _access().audit(gallery, limit, request.args.get("after") or None)
    return {"events": [_event_json(event) for event in page.events], "next": page.next}


# --- export and import ---


@bp.get("/galleries/<gallery>/export")
def export_gallery(gallery: str):
    """The gallery as an export (JSON lines), streamed a subject at a time; 404 for an
    unknown gallery. An export that stops midway has no last line: no import takes it."""
    _ids(gallery=gallery)
    signer = current_app.extensions["facematch_gallery_export"]
    lines = _access().export(gallery, signer, _actor())
    headers = {"Content-Disposition": f'attachment; filename="{gallery}.fmg"'}
    return Response(stream_with_context(lines), mimetype="application/x-ndjson", headers=headers)


@bp.post("/galleries/<gallery>/import")
def import_gallery(gallery: str):
    """Import an export (the body) into ``gallery``, which must hold no face: checked whole
    (form, counts, signature when signing is on, the model) before anything is written."""
    _ids(gallery=gallery)
    body = request.get_data(cache=True)
    model = steps.context().services.engine.model_name
    signer = current_app.extensions["facematch_gallery_export"]
    done = _access().import_export(gallery, lambda: io.BytesIO(body), model, signer, _actor())
    return {"gallery": done.gallery, "subjects": done.subjects, "faces": done.faces}, 201


# --- deciding ---


@bp.post("/galleries/<gallery>/subjects/<subject>/verify")
def verify(gallery: str, subject: str):
    """Verify the primary face of ``sample`` (or a burst of ``sample`` photos of one person,
    fused) against every face of ``subject`` with the operator's (or the request's allowed)
    ``rule``: the /photo_match decision."""
    _ids(gallery=gallery, subject=subject)
    ctx = steps.context()
    decision = _gallery_decision(ctx, identify=False)
    rule = VerifyRule(ctx.services.policy.verify_rule(ctx.form))
    model = ctx.services.engine.model_name
    work = ctx.outcome.gallery
    start = time.perf_counter()
    references = _access().references(gallery, subject, model)
    size = _access().size(gallery)
    ctx.outcome.times.search += (time.perf_counter() - start) * 1000
    if not len(references):
        raise NoReferences(
            f"subject {subject!r} holds no face of model '{model}' to verify against"
        )
    work.size = size
    sample = steps.samples(ctx, decision)  # a burst is checked for one person before deciding
    vector = sample.vectors[0]
    searched = _access().verify(
        gallery, subject, references, vector, model, decision.threshold, rule, _actor()
    )
    result = searched.result
    ctx.outcome.times.search += searched.search_ms + searched.audit_ms  # the event's included
    work.candidates = result.references
    work.best_distance = result.distance
    _decided(ctx, [MatchResult(result.match, result.distance, result.threshold, decision.metric)])
    body = {
        "match": result.match,
        "distance": result.distance,
        "threshold": result.threshold,
        "metric": decision.metric,
        "model": model,
        "rule": result.rule,
        "references": result.references,
        **answers.calibration_json(ctx, result.distance, result.threshold, decision.metric),
    }
    if result.votes is not None:
        body.update(votes=result.votes, voters=result.voters)
    return {
        **body,
        "gallery": gallery,
        "subject": subject,
        "faces": answers.faces_json(ctx),
        "samples": sample.as_json(),
        **answers.quality_warnings(ctx),
        "latency_ms": answers.latency_json(ctx.outcome),
    }


@bp.post("/galleries/<gallery>/identify")
def identify(gallery: str):
    """Who is in ``sample``: the ``top_k`` nearest subjects and the identified one (or null)
    for its primary face (or a burst's fused faces), or with ``sample_faces=all`` for each face
    (as many as allowed)."""
    _ids(gallery=gallery)
    ctx = steps.context()
    decision = _gallery_decision(ctx, identify=True)
    top_k = _int_arg(ctx.form, "top_k", DEFAULT_TOP_K, MAX_TOP_K)
    model = ctx.services.engine.model_name
    work = ctx.outcome.gallery
    start = time.perf_counter()
    work.size = _access().size(gallery)
    if work.size == 0:  # an unknown gallery is a 404 before any photo is looked at
        _access().subjects(gallery, 1)
    ctx.outcome.times.search += (time.perf_counter() - start) * 1000
    sample = steps.samples(ctx, decision)  # a burst is checked for one person before deciding
    compared = ctx.outcome.compared
    found: list[Identification] = []
    for vector in sample.vectors:
        searched = _access().identify(gallery, vector, model, decision.threshold, top_k, _actor())
        ctx.outcome.times.search += searched.search_ms + searched.audit_ms  # the event's included
        found.append(searched.result)
    _note_identified(ctx, found, decision)
    common = {"threshold": decision.threshold, "metric": decision.metric, "model": model}
    if decision.sample_faces == "all":
        results = [
            {
                "index": i,
                "box": [round(v, 1) for v in face.box],
                "probability": face.probability,
                "quality": answers.face_quality_json(ctx.outcome, "sample", i),
                **_identification_json(answer),
                **_identify_calibration(ctx, answer, decision),
            }
            for i, (face, answer) in enumerate(zip(compared, found))
        ]
        body = {"results": results, **common}
    else:
        body = {
            **_identification_json(found[0]),
            **common,
            **_identify_calibration(ctx, found[0], decision),
        }
    return {
        **body,
        "gallery": gallery,
        "faces": answers.faces_json(ctx),
        "samples": sample.as_json(),
        **answers.quality_warnings(ctx),
        "latency_ms": answers.latency_json(ctx.outcome),
    }


def _gallery_decision(ctx: steps.RequestContext, identify: bool) -> Decision:
    """The operator's policy for this request (cosine only: gallery distances are cosine)."""
    metric = ctx.form.get("metric") or "cosine"
    if metric != "cosine":
        raise InvalidParameter("gallery routes compare cosine distances: 'metric' must be cosine")
    form = {**ctx.form.to_dict(), "metric": metric}
    if not identify:
        form.pop("sample_faces", None)  # verify compares the sample's primary face
    policy = ctx.services.policy
    decision = policy.for_identify(form) if identify else policy.for_request(form)
    ctx.outcome.decision = decision
    return decision


def _decided(ctx: steps.RequestContext, results: list[MatchResult]) -> None:
    """Note the decisions (one per compared face) in the outcome; the closest decides."""
    outcome = ctx.outcome
    outcome.results = results
    outcome.decided_by = min(range(len(results)), key=lambda i: results[i].distance)


def _note_identified(
    ctx: steps.RequestContext, found: list[Identification], decision: Decision
) -> None:
    """Note each face's best candidate as its decision (``match``: someone was identified)."""
    work = ctx.outcome.gallery
    best = [answer.candidates[0] for answer in found if answer.candidates]
    work.candidates = sum(len(answer.candidates) for answer in found)
    if not best:
        return
    work.best_distance = min(c.distance for c in best)
    results = [MatchResult(c.match, c.distance, decision.threshold, decision.metric) for c in best]
    _decided(ctx, results)


# --- request fields ---


def _ids(**ids: str) -> None:
    """400 ``invalid_id`` for a path id outside ``[A-Za-z0-9._-]{1,128}`` (names which)."""
    for kind, value in ids.items():
        check_id(kind, value)


def _int_arg(fields, name: str, default: int, maximum: int) -> int:
    """The whole number in field ``name`` (ASCII digits), 1..``maximum``; ``default`` when
    absent or empty; ``InvalidParameter`` otherwise."""
    raw = fields.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else 0
    if not 1 <= value <= maximum:
        raise InvalidParameter(f"'{name}' must be a whole number from 1 to {maximum}")
    return value


# --- answers ---


def _identify_calibration(
    ctx: steps.RequestContext, answer: Identification, decision: Decision
) -> dict:
    """The calibration of a 1:N answer at its nearest candidate's distance (far is per
    comparison: over a gallery of N subjects the chance of a false match grows with N)."""
    nearest = answer.candidates[0].distance if answer.candidates else None
    return answers.calibration_json(ctx, nearest, decision.threshold, decision.metric)


def _identification_json(answer: Identification) -> dict:
    return {
        "identified": answer.identified,
        "candidates": [
            {"subject": c.subject, "distance": c.distance, "match": c.match}
            for c in answer.candidates
        ],
    }


def _time(seconds: float) -> str:
    """An ISO 8601 UTC time with milliseconds: ``2025-05-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _subject_json(gallery: str, subject: Subject) -> dict:
    return {
        "gallery": gallery,
        "subject": subject.subject,
        "name": subject.name,
        "metadata": subject.metadata,
        "created": _time(subject.created),
        "updated": _time(subject.updated),
    }


def _event_json(event: AuditEvent) -> dict:
    return {
        "at": _time(event.at),
        "key": event.key,
        "action": event.action,
        "gallery": event.gallery,
        "subject": event.subject,
        "face": event.face,
        "outcome": event.outcome,
    }


def _source_json(source: FaceSource) -> dict:
    size = None
    if source.image_width is not None and source.image_height is not None:
        size = [source.image_width, source.image_height]
    return {
        "box": None if source.box is None else [round(v, 1) for v in source.box],
        "probability": source.probability,
        "image_size": size,
    }


def _face_json(face: Face) -> dict:
    return {
        "face": face.face,
        "model": face.model,
        **_source_json(face.source),
        "created": _time(face.created),
    }
