"""The parts every answer shares, built from the request's ``Outcome``: the faces found in each
photo, quality warnings, the calibration of a decision, the stage times. Builders only: they read
the context a route passes them and change nothing.
"""

from __future__ import annotations

from dataclasses import replace

from facematch.api.steps import RequestContext
from facematch.decision.policy import convert_threshold
from facematch.observability.outcome import Outcome


def faces_json(ctx: RequestContext) -> dict:
    """Per uploaded photo: faces found, the primary face's probability, box and quality, image
    size, and with the gate on, what of the primary face is below the bars (``below_bar``)."""
    gated = ctx.services.gate.mode != "off"
    return {
        role: {
            "count": photo.count,
            "probability": photo.primary.probability if photo.primary else None,
            "box": [round(v, 1) for v in photo.primary.box] if photo.primary else None,
            "image_size": [photo.width, photo.height],
            "quality": photo.qualities[0].to_json() if photo.qualities else None,
            **({"below_bar": photo.below_bar} if gated else {}),
        }
        for role, photo in ctx.outcome.photos.items()
    }


def quality_warnings(ctx: RequestContext) -> dict:
    """With the gate on ``warn``: ``{"quality_warnings": [...]}`` naming each photo's primary
    face below the bars (``sample: face 38 px wide, needs 60``); else nothing."""
    if ctx.services.gate.mode != "warn":
        return {}
    photos = ctx.outcome.photos
    found = [f"{role}: {r}" for role, photo in photos.items() for r in photo.below_bar]
    return {"quality_warnings": found}


def face_quality_json(done: Outcome, role: str, index: int) -> dict | None:
    """The measured quality of face ``index`` (in ranked order) of photo ``role``."""
    qualities = done.photos[role].qualities
    return qualities[index].to_json() if index < len(qualities) else None


def calibration_json(
    ctx: RequestContext, distance: float | None, threshold: float, metric: str
) -> dict:
    """``{"calibration": {...}}`` for a decision at ``distance`` (None: no candidate) under
    ``threshold`` in ``metric``, from the serving configuration's table; nothing without one."""
    table = ctx.services.calibration
    if table is None:
        return {}
    cosine = None if distance is None else convert_threshold(distance, metric, "cosine")
    return {"calibration": table.describe(cosine, convert_threshold(threshold, metric, "cosine"))}


def latency_json(done: Outcome) -> dict:
    """Milliseconds per stage (``search`` on the gallery routes) and the total, rounded."""
    stages = replace(done.times, total=done.elapsed_ms()).stages()
    return {stage: round(ms, 2) for stage, ms in stages.items()}
