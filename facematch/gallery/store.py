"""Galleries of enrolled faces: the types, the checks and the interface every backend implements.

A *gallery* is a namespace (a site, a tenant); a *subject* is a person in it, with an id chosen by
the client, an optional display name and optional JSON metadata; a *face* is one stored embedding
of a subject (512 float32, unit norm), tagged with the model that made it and where it came from.
No photo is ever stored. A gallery holds the embeddings of one model at a time: adding or
searching with another model raises ``ModelMismatch`` naming both.

``opening.open_gallery_store(url)`` picks the backend: ``sqlite:///PATH`` (``sqlite``,
embedded, one machine) or ``postgresql://...`` (``postgres``, pgvector, any number of nodes).
Opening connects to nothing: the first call does, so a server starts while its database is down,
and every call made while the database is down or unreachable raises ``GalleryUnavailable``
quickly.

Every backend validates its arguments itself (it is the last line): ids, vectors, metadata.
Every write, and every decision the service records, adds an event to the gallery's audit
trail (``audit``): writes in their own transaction, naming the ``actor`` (the acting API key's
id; ``audit.LOCAL_ACTOR`` when a caller names none).

Errors are the ``errors`` module's ``FacematchError`` subclasses (no HTTP here: the API maps
them to statuses), so routes pass them through.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from facematch.errors import InvalidEmbedding, InvalidId, InvalidParameter
from facematch.gallery.audit import LOCAL_ACTOR, AuditPage

# = facematch.api.codec.EMBEDDING_DIM, not imported from there: the gallery never imports the API
EMBEDDING_DIM = 512
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_METADATA_BYTES = 4096  # the metadata's compact JSON encoding, UTF-8
MAX_NAME_CHARS = 256
MAX_MODEL_CHARS = 128
MAX_K = 1000  # the most candidates one search returns


@dataclass(frozen=True)
class StoreLimits:
    """Sizes a store enforces with ``GalleryFull`` (Settings ``gallery_max_*``)."""

    max_faces: int = 1_000_000  # per gallery
    max_subject_faces: int = 100  # per subject

    def __post_init__(self) -> None:
        if self.max_faces < 1 or self.max_subject_faces < 1:
            raise ValueError("gallery limits must be at least 1")


@dataclass(frozen=True)
class FaceSource:
    """Where an embedding came from: the face's box (x1, y1, x2, y2 in pixels), the detector's
    probability and the photo's size; each None when unknown (an enrolled embedding)."""

    box: tuple[float, float, float, float] | None = None
    probability: float | None = None
    image_width: int | None = None
    image_height: int | None = None


@dataclass(frozen=True)
class Face:
    """One stored embedding, without its vector: ``created`` is seconds since the epoch (UTC)."""

    face: str
    model: str
    source: FaceSource
    created: float


@dataclass(frozen=True)
class Subject:
    """A subject and how many faces it holds."""

    subject: str
    name: str | None
    metadata: Any  # any JSON value, None when not set
    faces: int
    created: float
    updated: float


@dataclass(frozen=True)
class SubjectDetail:
    """A subject and its faces, oldest first."""

    subject: Subject
    faces: tuple[Face, ...]


@dataclass(frozen=True)
class FaceAdded:
    """The id of the face just stored and how many faces its subject now holds."""

    face: str
    faces: int


@dataclass(frozen=True)
class Page:
    """Subjects in id order; ``next``: the cursor (``after``) of the next page, None at the end."""

    subjects: tuple[Subject, ...]
    next: str | None


@dataclass(frozen=True)
class Deleted:
    """What a delete removed (rows gone for good)."""

    galleries: int = 0
    subjects: int = 0
    faces: int = 0


@dataclass(frozen=True)
class Candidate:
    """A stored face near the probe: cosine distance in [0, 2], smaller is closer."""

    subject: str
    face: str
    distance: float


class GalleryStore(Protocol):
    """What the gallery routes use; ``sqlite.SqliteGalleryStore`` and
    ``postgres.PostgresGalleryStore`` implement it and behave the same.

    Unknown gallery, subject or face: ``NotFound`` naming which. Bad ids: ``InvalidId``. Database
    down: ``GalleryUnavailable``. Every write is one transaction: all of it or nothing."""

    def add_face(
        self,
        gallery: str,
        subject: str,
        vector: np.ndarray,
        model: str,
        source: FaceSource,
        *,
        actor: str = LOCAL_ACTOR,
    ) -> FaceAdded:
        """Store one embedding of ``subject``, creating the gallery and subject if new (an
        ``enrol`` event). ``GalleryFull`` past a limit, ``ModelMismatch`` if the gallery holds
        another model's."""
        ...

    def add_faces(
        self,
        gallery: str,
        faces: Sequence[tuple[str, np.ndarray, FaceSource]],
        model: str,
        *,
        actor: str = LOCAL_ACTOR,
        action: str = "enrol",
    ) -> list[FaceAdded]:
        """Store several ``(subject, vector, source)`` embeddings in one transaction (all or
        none; many times faster than one ``add_face`` each: an import, a bulk enrolment); one
        ``FaceAdded`` each, in order. Same checks and errors as ``add_face``. ``action``:
        ``enrol`` (an event per face) or ``import`` (one event, the counts)."""
        ...

    def put_subject(
        self,
        gallery: str,
        subject: str,
        name: str | None,
        metadata: Any,
        *,
        actor: str = LOCAL_ACTOR,
        action: str = "update",
    ) -> Subject:
        """Create the subject (and gallery) or replace its name and metadata; the subject.
        ``action``: ``update`` or ``import`` (the event it records)."""
        ...

    def get_subject(self, gallery: str, subject: str) -> SubjectDetail:
        """The subject and its faces (ids, sources, model, time; never vectors)."""
        ...

    def list_subjects(self, gallery: str, limit: int = 100, after: str | None = None) -> Page:
        """Up to ``limit`` subjects with ids greater than ``after``, in id order."""
        ...

    def delete_face(
        self, gallery: str, subject: str, face: str, *, actor: str = LOCAL_ACTOR
    ) -> Deleted:
        """Delete one face of a subject (the subject stays, with fewer faces)."""
        ...

    def delete_subject(self, gallery: str, subject: str, *, actor: str = LOCAL_ACTOR) -> Deleted:
        """Delete a subject and every embedding of it, for good (its events stay)."""
        ...

    def delete_gallery(self, gallery: str, *, actor: str = LOCAL_ACTOR) -> Deleted:
        """Delete a gallery, its subjects and their embeddings, for good (its events stay)."""
        ...

    def record(
        self,
        gallery: str,
        action: str,
        outcome: Any,
        *,
        actor: str = LOCAL_ACTOR,
        subject: str | None = None,
        face: str | None = None,
    ) -> None:
        """Add one audit event that no write carries (a ``verify`` or ``identify`` decision,
        an ``export``), in its own transaction; ``GalleryUnavailable`` if it cannot."""
        ...

    def audit_events(self, gallery: str, limit: int = 100, after: str | None = None) -> AuditPage:
        """Up to ``limit`` of the gallery's events recorded after the cursor ``after``, in
        the order they were recorded (a deleted gallery's too); ``InvalidParameter`` for a
        cursor this store did not give."""
        ...

    def subject_vectors(self, gallery: str, subject: str, model: str) -> np.ndarray:
        """The subject's embeddings made by ``model``, shape (n, 512) float32, oldest first."""
        ...

    def search(self, gallery: str, vector: np.ndarray, model: str, k: int) -> list[Candidate]:
        """The ``k`` faces nearest ``vector`` by cosine distance, nearest first (several may
        belong to one subject)."""
        ...

    def search_subjects(
        self, gallery: str, vector: np.ndarray, model: str, k: int
    ) -> list[Candidate]:
        """The ``k`` subjects whose nearest face is nearest ``vector``: one candidate per
        subject (its nearest face), nearest first."""
        ...

    def gallery_size(self, gallery: str) -> int:
        """How many faces the gallery holds (0 for an unknown gallery)."""
        ...

    def health(self) -> bool:
        """Whether the database answers now (never raises)."""
        ...

    def close(self) -> None:
        """Close this process's connections (the store reconnects if used again)."""
        ...


# --- checks every backend applies ----------------------------------------------------------


def check_id(kind: str, value: Any) -> str:
    """Return ``value`` if it is a valid gallery/subject/face id; ``InvalidId`` naming ``kind``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidId(f"the {kind} id must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    return value


def check_model(model: Any) -> str:
    """Return the model name if it is a non-empty printable string of at most 128 characters."""
    if (
        not isinstance(model, str)
        or not 0 < len(model) <= MAX_MODEL_CHARS
        or not model.isprintable()
    ):
        raise InvalidParameter("the model name must be 1 to 128 printable characters")
    return model


def check_vector(vector: Any) -> np.ndarray:
    """Return ``vector`` as a unit-norm float32 array of shape (512,); ``InvalidEmbedding`` if
    it has another shape, non-finite values or no length."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidEmbedding("the embedding is not a numeric array") from None
    if array.shape not in ((EMBEDDING_DIM,), (1, EMBEDDING_DIM)):
        raise InvalidEmbedding(
            f"the embedding has shape {list(array.shape)}; expected [{EMBEDDING_DIM}]"
        )
    array = array.reshape(EMBEDDING_DIM)
    norm = float(np.linalg.norm(array.astype(np.float64)))
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidEmbedding("the embedding holds NaN or infinite values, or is all zeros")
    return (array / norm).astype(np.float32)


def check_k(k: Any) -> int:
    """Return ``k`` if it is an int in 1..1000."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidParameter(f"k must be an integer from 1 to {MAX_K}")
    return k


def check_limit(limit: Any) -> int:
    """Return a page size ``limit`` if it is an int in 1..1000."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_K:
        raise InvalidParameter(f"limit must be an integer from 1 to {MAX_K}")
    return limit


def check_name(name: Any) -> str | None:
    """Return the display name (None allowed) if it is a string of at most 256 characters."""
    if name is None:
        return None
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise InvalidParameter(f"the name must be a string of at most {MAX_NAME_CHARS} characters")
    return name


def encode_metadata(metadata: Any) -> str | None:
    """The metadata as compact JSON text (None stays None); ``InvalidParameter`` if it is not
    JSON-serialisable (NaN included) or its encoding exceeds 4 KB."""
    if metadata is None:
        return None
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidParameter("the metadata must be JSON") from None
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise InvalidParameter(f"the metadata exceeds {MAX_METADATA_BYTES} bytes as JSON")
    return text


def check_source(source: Any) -> FaceSource:
    """Return ``source`` if its fields are finite numbers of the right kinds."""
    if not isinstance(source, FaceSource):
        raise InvalidParameter("the face source must be a FaceSource")
    numbers = [*(source.box or ()), source.probability]
    if source.box is not None and len(source.box) != 4:
        raise InvalidParameter("the face box must be (x1, y1, x2, y2)")
    for value in numbers:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value)):
            raise InvalidParameter("the face box and probability must be finite numbers")
    for value in (source.image_width, source.image_height):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidParameter("the image size must be integers")
    return source
