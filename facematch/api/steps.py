"""The steps of a request's path that every route shares: read an upload, decode it, detect,
embed, check a reference's signature.

``app`` (the 1:1 routes) and ``gallery_routes`` (the gallery routes) call the same steps, so a
photo or an embedding is read, checked and recorded one way whichever route receives it. Each
step takes the request's ``RequestContext`` (the app's ``Services``, the request's ``Outcome``,
its form and files) as its first argument, notes what it did in the outcome and raises a
``FacematchError`` for bad input. ``context()`` is the one place that reads Flask's globals; the
answers' common parts are built in ``answers``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from flask import current_app, g, request
from werkzeug.datastructures import FileStorage, MultiDict

from facematch.api.security import ReferenceSigner, reference_claims
from facematch.config import Settings
from facematch.decision import quality
from facematch.decision.calibration import Calibration
from facematch.decision.fusion import fuse, spread
from facematch.decision.policy import Decision, DecisionPolicy
from facematch.decision.quality import FaceQuality, QualityGate
from facematch.engine.decoding import DecodedPhoto, check_photo, decode_photo
from facematch.engine.engine import DetectedFace, FaceEngine, PhotoFaces
from facematch.errors import (
    InconsistentSamples,
    InvalidParameter,
    LowQuality,
    MissingField,
    NoFace,
    TooManySamples,
)
from facematch.observability.outcome import InputPhoto, Outcome
from facematch.observability.publisher import Publisher


@dataclass(frozen=True)
class Services:
    """What the routes share (``app.extensions["facematch"]``), in each ``RequestContext``."""

    settings: Settings
    engine: FaceEngine
    policy: DecisionPolicy
    signer: ReferenceSigner | None  # None: signing is off
    publisher: Publisher  # also started by gunicorn_hooks in each worker
    calibration: Calibration | None = None  # None: no table for this configuration
    gate: QualityGate = QualityGate()


@dataclass(frozen=True)
class RequestContext:
    """What a step works with: the app's services, what this request did so far (its
    ``Outcome``, filled in by the steps) and its form fields and uploaded files."""

    services: Services
    outcome: Outcome
    form: MultiDict[str, str]
    files: MultiDict[str, FileStorage]


def context() -> RequestContext:
    """This request's context: the one place the steps' inputs are read from Flask."""
    return RequestContext(
        current_app.extensions["facematch"], g.outcome, request.form, request.files
    )


def decision(ctx: RequestContext) -> Decision:
    """The operator's policy applied to this request's ``metric``, ``threshold`` and
    ``sample_faces`` (every 1:1 deciding route starts here)."""
    decided = ctx.services.policy.for_request(ctx.form)
    ctx.outcome.decision = decided
    return decided


def bytes_field(ctx: RequestContext, name: str, allow_text: bool = False) -> bytes:
    """The uploaded file ``name`` (or, if ``allow_text``, a form field of that name) as bytes."""
    upload = ctx.files.get(name)
    if upload is not None:
        return upload.read()
    if allow_text and name in ctx.form:
        return ctx.form[name].encode()
    kind = "a file or form field" if allow_text else "a file"
    raise MissingField(f"'{name}' is required ({kind} in a multipart/form-data request)")


def verify_reference(ctx: RequestContext, data: bytes, vector: np.ndarray) -> None:
    """With signing on, accept only a reference signed for the serving model.

    The signature and model come from the form fields ``signature`` and ``reference_model``
    (how a .npy, .pt or array reference carries them), else from the JSON object's own
    ``signature`` and ``model`` keys (so /embeddings' JSON is accepted unchanged).
    """
    signer = ctx.services.signer
    if signer is None:
        return
    signature, model = reference_claims(data)
    signature = ctx.form.get("signature") or signature
    model = ctx.form.get("reference_model") or model
    signer.verify(vector, ctx.services.engine.model_name, signature, model)


def image_field(ctx: RequestContext, name: str) -> DecodedPhoto:
    """The upload ``name`` decoded into an upright RGB photo (with ``FACEMATCH_REDUCED_DECODE``
    a large JPEG at the reduced scale the detector needs: ``decode_photo``); noted in the
    outcome with its full size."""
    return decode(ctx, name, bytes_field(ctx, name))


def decode(ctx: RequestContext, role: str, data: bytes) -> DecodedPhoto:
    """The photo ``role``'s bytes decoded (``decode_photo``); its time and full size noted in
    the outcome."""
    start = time.perf_counter()
    min_side = ctx.services.engine.options.decode_min_side
    photo = decode_photo(data, ctx.services.settings.max_pixels, role, min_side)
    done = ctx.outcome
    done.times.decode += (time.perf_counter() - start) * 1000
    done.photos[role] = InputPhoto(photo.width, photo.height)
    return photo


def find_faces(ctx: RequestContext, role: str, photo: DecodedPhoto) -> PhotoFaces:
    """Every face in the photo ``role``, primary first (none is not an error here); noted in
    the outcome."""
    found = ctx.services.engine.detect(photo)
    done = ctx.outcome
    done.times.decode += found.decode_ms
    done.times.detection += found.detection_ms
    done.photos[role].found = found
    return found


def detect(ctx: RequestContext, role: str, photo: DecodedPhoto) -> PhotoFaces:
    """Detect and measure faces, note them in the outcome, and refuse a photo without any
    (422 ``no_face``) or, with the gate on ``reject``, one whose primary face is below the
    quality bars (422 ``low_quality`` with the reasons)."""
    return _accepted(ctx, role, photo, find_faces(ctx, role, photo))


def detect_all(ctx: RequestContext, roles: Sequence[str]) -> list[PhotoFaces]:
    """``detect`` for the uploads ``roles``, each photo decoded and detected on its own compute
    thread, at once (Pillow and ONNX Runtime release the GIL). Every upload is read first (a
    missing one is refused before any work); the first photo in order that fails decides the
    error. Noted: ``decode`` is the slowest photo's decodes (a finer one for small faces
    included), ``detection`` the rest of the step."""
    uploads = [bytes_field(ctx, role) for role in roles]
    engine = ctx.services.engine
    work = partial(
        _decode_and_detect, engine, ctx.services.settings.max_pixels, engine.options.decode_min_side
    )
    start = time.perf_counter()
    results = engine.concurrently(work, list(zip(roles, uploads)))
    wall = (time.perf_counter() - start) * 1000
    decode = max(decode_ms for _, _, decode_ms in results)
    done = ctx.outcome
    done.times.decode += decode
    done.times.detection += wall - decode
    for role, (photo, found, _) in zip(roles, results):
        done.photos[role] = InputPhoto(photo.width, photo.height, found)
    return [_accepted(ctx, role, photo, found) for role, (photo, found, _) in zip(roles, results)]


def _decode_and_detect(
    engine: FaceEngine, max_pixels: int, min_side: int, upload: tuple[str, bytes]
) -> tuple[DecodedPhoto, PhotoFaces, float]:
    """One upload (role, bytes) decoded and its faces found, off the request's thread (so it
    touches no request state); with the decode's milliseconds."""
    role, data = upload
    start = time.perf_counter()
    photo = decode_photo(data, max_pixels, role, min_side)
    decode_ms = (time.perf_counter() - start) * 1000
    found = engine.detect(photo)
    return photo, found, decode_ms + found.decode_ms


def _accepted(ctx: RequestContext, role: str, photo: DecodedPhoto, found: PhotoFaces) -> PhotoFaces:
    """``found`` once its photo has a face and, with the gate on ``reject``, a primary face
    above the bars; every face's quality noted in the outcome."""
    noted = ctx.outcome.photos[role]
    if found.primary is None:
        raise NoFace(f"no face was found in '{role}'")
    noted.qualities = [_quality(found.source or photo, face) for face in found.faces]
    gate = ctx.services.gate
    if gate.mode != "off":
        noted.below_bar = gate.reasons(noted.qualities[0])
        if noted.below_bar and gate.mode == "reject":
            raise LowQuality([f"{role}: {reason}" for reason in noted.below_bar])
    return found


def _quality(photo: DecodedPhoto, face: DetectedFace) -> FaceQuality:
    """The quality of ``face`` measured in the image it was cut from (``photo``: a reduced
    decode keeps at least the crop's pixels), its width in the full photo's pixels."""
    sx, sy = photo.scale
    x1, y1, x2, y2 = face.box
    measured = quality.measure(
        photo.image, (x1 / sx, y1 / sy, x2 / sx, y2 / sy), face.landmarks, face.probability
    )
    return replace(measured, width_px=float(x2 - x1))


def sample_faces(ctx: RequestContext, sample: PhotoFaces, decided: Decision) -> list:
    """The sample faces to embed and compare: the primary one, or for ``all`` at most the
    policy's bound, best-ranked first."""
    compared = sample.faces[: decided.max_sample_faces]
    ctx.outcome.compared = compared
    return compared


def embed(ctx: RequestContext, crops) -> np.ndarray:
    """The embeddings of face crops, one row each (the time noted in the outcome)."""
    embedded = ctx.services.engine.embed(list(crops))
    ctx.outcome.times.embedding += embedded.embedding_ms
    return embedded.vectors


@dataclass(frozen=True)
class Samples:
    """What a request's ``sample`` field(s) give the decision: one embedding per compared face
    (a burst: its one fused embedding), and how many sample photos were sent and used."""

    vectors: np.ndarray
    sent: int
    used: int

    def as_json(self) -> dict:
        return {"sent": self.sent, "used": self.used}


def samples(ctx: RequestContext, decided: Decision) -> Samples:
    """The ``sample`` photo(s) embedded. One photo: its compared faces (``sample_faces``), as
    before. A burst of up to ``FACEMATCH_MAX_SAMPLES`` photos of one person: each photo's
    primary face, fused (``fusion.fuse``) into one embedding.

    A burst is bounded before any work: too many photos is 400 ``too_many_samples`` and each
    photo's size is checked from its header first; the photos are then decoded one at a time and
    only their face crops kept. A photo without a face (or, with the gate on ``reject``, below
    the bars) is not used; none used is that photo's 422 (``no_face``, ``low_quality``). Two
    used faces farther apart than the operator's verify threshold are 422
    ``inconsistent_samples``, before any decision: a burst never combines strangers."""
    uploads = ctx.files.getlist("sample")
    limit = ctx.services.policy.max_samples
    if len(uploads) > limit:
        raise TooManySamples(
            f"{len(uploads)} 'sample' photos sent; this server fuses at most {limit}"
        )
    if len(uploads) <= 1:
        found = detect(ctx, "sample", image_field(ctx, "sample"))
        compared = sample_faces(ctx, found, decided)
        return Samples(embed(ctx, [face.crop for face in compared]), 1, 1)
    if decided.sample_faces == "all":
        raise InvalidParameter("'sample_faces=all' compares the faces of one photo, not a burst")
    settings = ctx.services.settings
    roles = ["sample" if i == 0 else f"sample_{i + 1}" for i in range(len(uploads))]
    data = [upload.read() for upload in uploads]
    for role, photo in zip(roles, data):
        check_photo(photo, settings.max_pixels, role)
    used: list[DetectedFace] = []
    refused: list[NoFace | LowQuality] = []
    for role, photo in zip(roles, data):
        face = _burst_face(ctx, role, photo)
        if isinstance(face, (NoFace, LowQuality)):
            refused.append(face)
        else:
            used.append(face)
    if not used:
        raise next((e for e in refused if isinstance(e, LowQuality)), refused[0])
    ctx.outcome.compared = used[:1]
    vectors = embed(ctx, [face.crop for face in used])
    if spread(vectors, "cosine") > ctx.services.policy.threshold_for("cosine"):
        raise InconsistentSamples(
            "the samples are not all of one person (two are farther apart than the verify "
            "threshold); send photos of one person only"
        )
    return Samples(fuse(vectors)[np.newaxis, :], len(uploads), len(used))


def _burst_face(ctx: RequestContext, role: str, data: bytes) -> DetectedFace | NoFace | LowQuality:
    """The primary face of one burst photo, or the error that keeps it out (noted in the
    outcome either way); the decoded photo is dropped once its faces are cut and measured."""
    photo = decode(ctx, role, data)
    try:
        found = detect(ctx, role, photo)
    except (NoFace, LowQuality) as error:
        return error
    finally:
        noted = ctx.outcome.photos[role]
        if noted.found is not None:
            noted.found = replace(noted.found, source=None)
    return found.primary
