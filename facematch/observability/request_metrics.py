"""Request metrics as a Flask extension: ``init_app(app, settings, build)``.

Attaches the metrics publisher (``publisher``) and the Prometheus metrics
(``prometheus``, ``GET /metrics``) to an app: after each response to a recorded endpoint
(``/photo_match``, ``/cached_match``, ``/embeddings``, ``/faces`` and every gallery route, errors
included; no other route publishes) it builds one ``RequestRecord`` from the request's
``Outcome`` (the values the response was built from) and hands that same record to the
publisher, which never blocks, and to the Prometheus metrics. The record is filled here and
nowhere else; routes never touch it.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from flask import Flask, Response, g, request

from facematch.config import Settings
from facematch.keys import KeyRing
from facematch.observability import prometheus as prometheus_metrics
from facematch.observability.message import ROLES
from facematch.observability.outcome import Outcome
from facematch.observability.prometheus import BuildInfo
from facematch.observability.publisher import Publisher, create_publisher
from facematch.observability.record import FaceSummary, RequestRecord

#: The endpoints whose requests are recorded (verifying, embedding, listing faces) ...
RECORDED_ENDPOINTS = ("api.photo_match", "api.cached_match", "api.embeddings", "api.faces")
#: ... and every route of these blueprints (the galleries).
RECORDED_BLUEPRINTS = ("gallery",)
log = logging.getLogger(__name__)


def init_app(app: Flask, settings: Settings, build: BuildInfo, keys: KeyRing) -> Publisher:
    """Create the publisher ``settings`` ask for and the Prometheus metrics of ``build``, feed
    both one record per recorded request of ``app``, and return the publisher (also
    ``app.extensions["facematch_metrics"]``)."""
    publisher = create_publisher(settings)
    app.extensions["facematch_metrics"] = publisher
    prometheus = prometheus_metrics.init_app(app, settings, build, keys)

    @app.after_request
    def publish_record(response: Response) -> Response:
        if request.endpoint in RECORDED_ENDPOINTS or request.blueprint in RECORDED_BLUEPRINTS:
            outcome = g.get("outcome") or Outcome()
            # the route's pattern, not the path: gallery and subject ids stay out of the metrics
            route = request.url_rule.rule if request.url_rule else request.path
            record = record_from(outcome, route, build.model, response.status_code)
            publisher.publish(record)
            try:
                prometheus.observe(record)
                prometheus.observe_publisher(publisher.stats())
            except Exception:  # the request must never fail because of metrics
                log.exception("Prometheus metrics: recording %s failed", route)
        return response

    return publisher


def record_from(outcome: Outcome, endpoint: str, model: str, status: int) -> RequestRecord:
    """The metrics record of a request that answered ``status`` after doing ``outcome``."""
    result = outcome.result
    faces = [
        FaceSummary(
            role=role,
            count=photo.count,
            probability=photo.primary.probability if photo.primary else None,
            box=[round(v, 1) for v in photo.primary.box] if photo.primary else None,
            image_width=photo.width,
            image_height=photo.height,
        )
        for role, photo in outcome.photos.items()
        if role in ROLES  # a burst's first sample is ``sample``; its others are not recorded
    ]
    return RequestRecord(
        endpoint=endpoint,
        started=outcome.started_at,
        status=status,
        error_code=outcome.error_code,
        match=result.match if result else None,
        distance=result.distance if result else None,
        threshold=result.threshold if result else None,
        metric=result.metric if result else None,
        model=model,
        faces=faces,
        latency=replace(outcome.times, total=outcome.elapsed_ms()),
        gallery=replace(outcome.gallery) if outcome.gallery is not None else None,
    )
