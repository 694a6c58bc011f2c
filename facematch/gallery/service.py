"""The gallery operations behind the routes: the store opened on first use, held off for a
moment after an outage, and verify/identify on top of the store and the rules.

``GalleryAccess`` opens the configured store without connecting (``opening``), so the
service starts while its database is down, and the 1:1 routes never touch it. When a call finds
the database unavailable, this process answers every gallery call at once with
``GalleryUnavailable`` for ``retry_after`` seconds (the ``Retry-After`` the routes send) instead
of letting each request wait on the database's timeouts: worker threads stay free for the
routes that do not need it. Every operation the routes need is a method (``enrol``,
``verify``, ``identify``, the reads and deletes); ``verify`` and ``identify`` return the rules'
results (``decision.gallery_scoring``) with the time the store took. Each write and each
decision names its ``actor`` (the acting API key's id, which the API passes down) for the
audit trail; a decision whose event cannot be stored raises instead of being answered.
No Flask here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from facematch.config import ConfigError, Settings
from facematch.decision import gallery_scoring
from facematch.decision.gallery_scoring import Identification, Neighbour, VerifyResult, VerifyRule
from facematch.errors import GalleryUnavailable
from facematch.gallery import transfer
from facematch.gallery.audit import AuditPage
from facematch.gallery.opening import store_from_settings
from facematch.gallery.store import (
    Deleted,
    FaceAdded,
    FaceSource,
    GalleryStore,
    Page,
    Subject,
    SubjectDetail,
)

T = TypeVar("T")


class GalleryAccess:
    """One process's way to the gallery store (each Gunicorn worker has its own state)."""

    def __init__(self, store: GalleryStore, retry_after: int = 5):
        if retry_after < 1:
            raise ConfigError("FACEMATCH_GALLERY_RETRY_AFTER must be at least 1 second")
        self.store = store
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down_until = 0.0  # time.monotonic(): no call before it reaches the database

    @classmethod
    def from_settings(cls, settings: Settings) -> GalleryAccess:
        """The access ``settings`` configure (``ConfigError`` for an unusable URL); connects
        to nothing."""
        try:
            store = store_from_settings(settings)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(store, settings.gallery_retry_after)

    # --- the store's operations, each held off while the database is unavailable ----------

    def enrol(
        self,
        gallery: str,
        subject: str,
        vector: np.ndarray,
        model: str,
        source: FaceSource,
        actor: str,
    ) -> FaceAdded:
        """Store one embedding of ``subject`` (gallery and subject created if new)."""
        return self._call(
            lambda store: store.add_face(gallery, subject, vector, model, source, actor=actor)
        )

    def put_subject(
        self, gallery: str, subject: str, name: str | None, metadata: Any, actor: str
    ) -> Subject:
        """Create the subject or replace its name and metadata."""
        return self._call(
            lambda store: store.put_subject(gallery, subject, name, metadata, actor=actor)
        )

    def subject(self, gallery: str, subject: str) -> SubjectDetail:
        """The subject and its faces (never vectors)."""
        return self._call(lambda store: store.get_subject(gallery, subject))

    def subjects(self, gallery: str, limit: int = 100, after: str | None = None) -> Page:
        """A page of the gallery's subjects, in id order."""
        return self._call(lambda store: store.list_subjects(gallery, limit, after))

    def size(self, gallery: str) -> int:
        """How many faces the gallery holds (0 for an unknown one)."""
        return self._call(lambda store: store.gallery_size(gallery))

    def references(self, gallery: str, subject: str, model: str) -> np.ndarray:
        """The subject's embeddings of ``model``, (n, 512)."""
        return self._call(lambda store: store.subject_vectors(gallery, subject, model))

    def delete_face(self, gallery: str, subject: str, face: str, actor: str) -> Deleted:
        return self._call(lambda store: store.delete_face(gallery, subject, face, actor=actor))

    def delete_subject(self, gallery: str, subject: str, actor: str) -> Deleted:
        return self._call(lambda store: store.delete_subject(gallery, subject, actor=actor))

    def delete_gallery(self, gallery: str, actor: str) -> Deleted:
        return self._call(lambda store: store.delete_gallery(gallery, actor=actor))

    def export(
        self, gallery: str, signer: transfer.ExportSigner | None, actor: str
    ) -> Iterator[bytes]:
        """The gallery's export, line by line (``NotFound`` at once for an unknown gallery);
        its ``export`` event is recorded before its last line."""
        return self._call(lambda store: transfer.export_lines(store, gallery, signer, actor))

    def import_export(
        self,
        gallery: str,
        lines: transfer.Lines,
        model: str,
        signer: transfer.ExportSigner | None,
        actor: str,
    ) -> transfer.Transferred:
        """Check an export whole, then write it into ``gallery`` (which must hold no face)."""
        return self._call(
            lambda store: transfer.import_export(store, lines, model, signer, gallery, actor=actor)
        )

    def audit(self, gallery: str, limit: int = 100, after: str | None = None) -> AuditPage:
        """A page of the gallery's audit events, in the order they were recorded."""
        return self._call(lambda store: store.audit_events(gallery, limit, after))

    def verify(
        self,
        gallery: str,
        subject: str,
        references: np.ndarray,
        sample: np.ndarray,
        model: str,
        threshold: float,
        rule: VerifyRule,
        actor: str,
    ) -> Searched:
        """Verify ``sample`` against the subject's ``references`` (``references()``) with
        ``rule`` at cosine ``threshold``; ``knn`` also searches the gallery for its neighbours.
        The decision is recorded (``verify``) before it is returned."""

        def verify(store: GalleryStore) -> Searched:
            start = time.perf_counter()
            neighbours: list[Neighbour] = []
            if rule.name == "knn":
                found = store.search(gallery, sample, model, rule.k)
                neighbours = [Neighbour(c.subject, c.distance) for c in found]
            search_ms = (time.perf_counter() - start) * 1000
            result = gallery_scoring.verify(
                sample, references, threshold, rule, subject, neighbours
            )
            outcome = {"match": bool(result.match), "distance": float(result.distance)}
            recorded = time.perf_counter()
            store.record(gallery, "verify", outcome, actor=actor, subject=subject)
            return Searched(result, search_ms, _ms_since(recorded))

        return self._call(verify)

    def identify(
        self,
        gallery: str,
        sample: np.ndarray,
        model: str,
        threshold: float,
        top_k: int,
        actor: str,
    ) -> Searched:
        """The open-set identification of ``sample`` among the gallery's subjects: the ``top_k``
        nearest subjects (each by its nearest face) at cosine ``threshold``. The decision (who
        was identified, or null, and the nearest distance) is recorded before it is returned."""

        def identify(store: GalleryStore) -> Searched:
            start = time.perf_counter()
            found = store.search_subjects(gallery, sample, model, top_k)
            search_ms = (time.perf_counter() - start) * 1000
            distances = np.array([c.distance for c in found], dtype=np.float64)
            subjects = [c.subject for c in found]
            result = gallery_scoring.identify(distances, subjects, threshold, top_k)
            nearest = float(result.candidates[0].distance) if result.candidates else None
            outcome = {"identified": result.identified, "distance": nearest}
            recorded = time.perf_counter()
            store.record(gallery, "identify", outcome, actor=actor, subject=result.identified)
            return Searched(result, search_ms, _ms_since(recorded))

        return self._call(identify)

    def _call(self, operation: Callable[[GalleryStore], T]) -> T:
        """``operation(store)``'s result. ``GalleryUnavailable`` without trying while the
        database was found unavailable less than ``retry_after`` seconds ago."""
        if time.monotonic() < self._down_until:
            raise GalleryUnavailable("the gallery database is unavailable; retry later")
        try:
            return operation(self.store)
        except GalleryUnavailable:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after
            raise

    def seconds_to_retry(self) -> int:
        """Whole seconds until this process tries the database again (at least 1)."""
        return max(1, math.ceil(self._down_until - time.monotonic()))


@dataclass(frozen=True)
class Searched:
    """A result of the rules, the milliseconds the store took to give what they needed, and
    those it took to record the decision in the audit trail."""

    result: VerifyResult | Identification
    search_ms: float
    audit_ms: float


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
