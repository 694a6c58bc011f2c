"""The steps of a request's path that every route shares: read an upload, decode it, detect,
embed, check a reference's signature, and turn the ``Outcome`` into the answer's common parts.

``app`` (the 1:1 routes) and ``gallery_routes`` (the gallery routes) call the same steps, so a
photo or an embedding is read, checked and recorded one way whichever route receives it. Each
step notes what it did in the request's ``Outcome`` (``g.outcome``) and raises a ``FacematchError``
for bad input. The services a step needs (engine, policy, signer, settings) are the app's
``Services``, reached through ``services()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np
from flask import current_app, g, request

from facematch.api.security import ReferenceSigner, reference_claims
from facematch.config import Settings
from facematch.decision import quality
from facematch.decision.calibration import Calibration
from facematch.decision.policy import Decision, DecisionPolicy, convert_threshold
from facematch.decision.quality import FaceQuality, QualityGate
from facematch.engine.decoding import DecodedPhoto, decode_photo
from facematch.engine.engine import DetectedFace, FaceEngine, PhotoFaces
from facematch.errors import LowQuality, MissingField, NoFace
from facematch.observability.outcome import InputPhoto, Outcome
from facematch.observability.publisher import Publisher


@dataclass(frozen=True)
class Services:
    """What the routes share, reached only through ``services()``."""

    settings: Settings
    engine: FaceEngine
    policy: DecisionPolicy
    signer: ReferenceSigner | None  # None: signing is off
    publisher: Publisher  # also started by gunicorn_hooks in each worker
    calibration: Calibration | None = None  # None: no table for this configuration
    gate: QualityGate = QualityGate()


def services() -> Services:
    """The app's shared services."""
    return current_app.extensions["facematch"]


def outcome() -> Outcome:
    """What this request did so far."""
    return g.outcome


def decision() -> Decision:
    """The operator's policy applied to this request's ``metric``, ``threshold`` and
    ``sample_faces`` (every 1:1 deciding route starts here)."""
    decided = services().policy.for_request(request.form)
    outcome().decision = decided
    return decided


def bytes_field(name: str, allow_text: bool = False) -> bytes:
    """The uploaded file ``name`` (or, if ``allow_text``, a form field of that name) as bytes."""
    upload = request.files.get(name)
    if upload is not None:
        return upload.read()
    if allow_text and name in request.form:
        return request.form[name].encode()
    kind = "a file or form field" if allow_text else "a file"
    raise MissingField(f"'{name}' is required ({kind} in a multipart/form-data request)")


def verify_reference(data: bytes, vector: np.ndarray) -> None:
    """With signing on, accept only a reference signed for the serving model.

    The signature and model come from the form fields ``signature`` and ``reference_model``
    (how a .npy, .pt or array reference carries them), else from the JSON object's own
    ``signature`` and ``model`` keys (so /embeddings' JSON is accepted unchanged).
    """
    signer = services().signer
    if signer is None:
        return
    signature, model = reference_claims(data)
    signature = request.form.get("signature") or signature
    model = request.form.get("reference_model") or model
    signer.verify(vector, services().engine.model_name, signature, model)


def image_field(name: str) -> DecodedPhoto:
    """The upload ``name`` decoded into an upright RGB photo (with ``FACEMATCH_REDUCED_DECODE``
    a large JPEG at the reduced scale the detector needs: ``decode_photo``); noted in the
    outcome with its full size."""
    data = bytes_field(name)
    start = time.perf_counter()
    shared = services()
    min_side = shared.engine.options.decode_min_side
    photo = decode_photo(data, shared.settings.max_pixels, name, min_side)
    done = outcome()
    done.times.decode += (time.perf_counter() - start) * 1000
    done.photos[name] = InputPhoto(photo.width, photo.height)
    return photo


def find_faces(role: str, photo: DecodedPhoto) -> PhotoFaces:
    """Every face in the photo ``role``, primary first (none is not an error here); noted in
    the outcome."""
    found = services().engine.detect(photo)
    done = outcome()
    done.times.detection += found.detection_ms
    done.photos[role].found = found
    return found


def detect(role: str, photo: DecodedPhoto) -> PhotoFaces:
    """Detect and measure faces, note them in the outcome, and refuse a photo without any
    (422 ``no_face``) or, with the gate on ``reject``, one whose primary face is below the
    quality bars (422 ``low_quality`` with the reasons)."""
    return _accepted(role, photo, find_faces(role, photo))


def detect_all(roles: Sequence[str]) -> list[PhotoFaces]:
    """``detect`` for the uploads ``roles``, each photo decoded and detected on its own compute
    thread, at once (Pillow and ONNX Runtime release the GIL). Every upload is read first (a
    missing one is refused before any work); the first photo in order that fails decides the
    error. Noted: ``decode`` is the slowest photo's decode, ``detection`` the rest of the step."""
    uploads = [bytes_field(role) for role in roles]
    shared = services()
    engine = shared.engine
    work = partial(
        _decode_and_detect, engine, shared.settings.max_pixels, engine.options.decode_min_side
    )
    start = time.perf_counter()
    results = engine.concurrently(work, list(zip(roles, uploads)))
    wall = (time.perf_counter() - start) * 1000
    decode = max(decode_ms for _, _, decode_ms in results)
    done = outcome()
    done.times.decode += decode
    done.times.detection += wall - decode
    for role, (photo, found, _) in zip(roles, results):
        done.photos[role] = InputPhoto(photo.width, photo.height, found)
    return [_accepted(role, photo, found) for role, (photo, found, _) in zip(roles, results)]


def _decode_and_detect(
    engine: FaceEngine, max_pixels: int, min_side: int, upload: tuple[str, bytes]
) -> tuple[DecodedPhoto, PhotoFaces, float]:
    """One upload (role, bytes) decoded and its faces found, off the request's thread (so it
    touches no request state); with the decode's milliseconds."""
    role, data = upload
    start = time.perf_counter()
    photo = decode_photo(data, max_pixels, role, min_side)
    decode_ms = (time.perf_counter() - start) * 1000
    return photo, engine.detect(photo), decode_ms


def _accepted(role: str, photo: DecodedPhoto, found: PhotoFaces) -> PhotoFaces:
    """``found`` once its photo has a face and, with the gate on ``reject``, a primary face
    above the bars; every face's quality noted in the outcome."""
    noted = outcome().photos[role]
    if found.primary is None:
        raise NoFace(f"no face was found in '{role}'")
    noted.qualities = [_quality(photo, face) for face in found.faces]
    gate = services().gate
    if gate.mode != "off":
        noted.below_bar = gate.reasons(noted.qualities[0])
        if noted.below_bar and gate.mode == "reject":
            raise LowQuality([f"{role}: {reason}" for reason in noted.below_bar])
    return found


def _quality(photo: DecodedPhoto, face: DetectedFace) -> FaceQuality:
    """The quality of ``face`` measured in the image it was cut from (a reduced decode keeps
    at least the crop's pixels), its width in the full photo's pixels."""
    sx, sy = photo.scale
    x1, y1, x2, y2 = face.box
    measured = quality.measure(
        photo.image, (x1 / sx, y1 / sy, x2 / sx, y2 / sy), face.landmarks, face.probability
    )
    return replace(measured, width_px=float(x2 - x1))


def sample_faces(sample: PhotoFaces, decided: Decision) -> list:
    """The sample faces to embed and compare: the primary one, or for ``all`` at most the
    policy's bound, best-ranked first."""
    compared = sample.faces[: decided.max_sample_faces]
    outcome().compared = compared
    return compared


def embed(crops) -> np.ndarray:
    """The embeddings of face crops, one row each (the time noted in the outcome)."""
    embedded = services().engine.embed(list(crops))
    outcome().times.embedding += embedded.embedding_ms
    return embedded.vectors


def faces_json(done: Outcome) -> dict:
    """Per uploaded photo: faces found, the primary face's probability, box and quality, image
    size, and with the gate on, what of the primary face is below the bars (``below_bar``)."""
    gated = services().gate.mode != "off"
    return {
        role: {
            "count": photo.count,
            "probability": photo.primary.probability if photo.primary else None,
            "box": [round(v, 1) for v in photo.primary.box] if photo.primary else None,
            "image_size": [photo.width, photo.height],
            "quality": photo.qualities[0].to_json() if photo.qualities else None,
            **({"below_bar": photo.below_bar} if gated else {}),
        }
        for role, photo in done.photos.items()
    }


def quality_warnings(done: Outcome) -> dict:
    """With the gate on ``warn``: ``{"quality_warnings": [...]}`` naming each photo's primary
    face below the bars (``sample: face 38 px wide, needs 60``); else nothing."""
    if services().gate.mode != "warn":
        return {}
    found = [f"{role}: {r}" for role, photo in done.photos.items() for r in photo.below_bar]
    return {"quality_warnings": found}


def face_quality_json(done: Outcome, role: str, index: int) -> dict | None:
    """The measured quality of face ``index`` (in ranked order) of photo ``role``."""
    qualities = done.photos[role].qualities
    return qualities[index].to_json() if index < len(qualities) else None


def calibration_json(distance: float | None, threshold: float, metric: str) -> dict:
    """``{"calibration": {...}}`` for a decision at ``distance`` (None: no candidate) under
    ``threshold`` in ``metric``, from the serving configuration's table; nothing without one."""
    table = services().calibration
    if table is None:
        return {}
    cosine = None if distance is None else convert_threshold(distance, metric, "cosine")
    return {"calibration": table.describe(cosine, convert_threshold(threshold, metric, "cosine"))}


def latency_json(done: Outcome, **more: float) -> dict:
    """Milliseconds per stage, ``more`` stages (e.g. ``search``) and the total, rounded."""
    stages = {**asdict(done.times), **more, "total": done.elapsed_ms()}
    return {k: round(v, 2) for k, v in stages.items()}
