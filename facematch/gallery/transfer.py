"""A gallery's export format (``facematch-gallery`` version 1): writing one, checking one whole
and importing it, for the gallery tool and the export and import routes alike.

JSON lines:

- line 1, the header: ``{"format": "facematch-gallery", "version": 1, "gallery", "model",
  "exported"}``;
- one line per subject: ``{"subject", "name", "metadata", "faces": [{"vector", "box",
  "probability", "image_width", "image_height", "created"}]}``; ``vector`` is the 512 float32
  little-endian bytes, base64 (exact);
- the last line: ``{"end": {"subjects": n, "faces": m}, "signature": "v1.<key id>.<mac>"}``.

With signing keys the signature is an HMAC-SHA256, with the first key, over
``b"facematch-gallery-v1\\0"`` and every byte before the last line (``ExportSigner``); without
keys it is null. An import checks the whole export before writing anything (form, counts,
signature when keys are set, the model) and refuses a gallery that already holds faces. An
export records its ``export`` audit event before its last line, so an export whose event could
not be stored is incomplete and no import takes it; an import's events are in its transactions.
Errors are the service's (``errors``): the API maps them, the tool prints them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from facematch import bounded_json
from facematch.errors import BadSignature, InvalidParameter, UnsignedReference, WrongModel
from facematch.gallery.audit import LOCAL_ACTOR
from facematch.gallery.store import (
    EMBEDDING_DIM,
    FaceSource,
    GalleryStore,
    check_id,
    check_name,
    check_source,
    check_vector,
    encode_metadata,
)

FORMAT = "facematch-gallery"
VERSION = 1
BATCH = 500  # faces per import transaction
#: The longest line an import reads (a subject of 100 faces is about 300 KB).
MAX_LINE_BYTES = 8 * 1024 * 1024
_SIGNED_PREFIX = b"facematch-gallery-v1\0"

#: A fresh iterator over an export's lines (each with its newline): an import reads it twice.
Lines = Callable[[], Iterable[bytes]]


class ExportSigner:
    """HMAC-SHA256 of an export under signing keys (``key id -> secret``; the first signs, any
    verifies), the token as references' signatures: ``v1.<key id>.<mac>``."""

    def __init__(self, keys: Mapping[str, str]):
        if not keys:
            raise ValueError("an export signer needs at least one key")
        self._keys = {key: secret.encode() for key, secret in keys.items()}
        self._signing = next(iter(self._keys))

    def mac(self, key: str | None = None):
        """A running HMAC (``.update(bytes)``) under ``key`` (a key id; default: the signing
        key), or None for a key this signer does not hold."""
        secret = self._keys.get(key or self._signing)
        if secret is None:
            return None
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        mac.update(_SIGNED_PREFIX)
        return mac

    def token(self, mac) -> str:
        text = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
        return f"v1.{self._signing}.{text}"

    def verify(self, token: Any, content: Iterable[bytes]) -> None:
        """``UnsignedReference`` or ``BadSignature`` unless ``token`` signs ``content``."""
        parts = token.split(".") if isinstance(token, str) else []
        mac = self.mac(parts[1]) if len(parts) == 3 and parts[0] == "v1" else None
        if mac is None:
            raise UnsignedReference(
                "the export is unsigned or signed by a key this installation does not hold "
                "(FACEMATCH_SIGNING_KEYS)"
            )
        for chunk in content:
            mac.update(chunk)
        expected = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
        if not hmac.compare_digest(expected, parts[2]):
            raise BadSignature("the export's signature does not verify: the export was altered")


@dataclass(frozen=True)
class ExportHeader:
    """What a checked export holds: its gallery, model (None: no face) and counts."""

    gallery: str
    model: str | None
    subjects: int
    faces: int


@dataclass(frozen=True)
class Transferred:
    """The gallery an export or import wrote, and its counts."""

    gallery: str
    subjects: int
    faces: int


# --- export --------------------------------------------------------------------------------------


def _subjects(store: GalleryStore, gallery: str) -> Iterator:
    after = None
    while True:
        page = store.list_subjects(gallery, limit=1000, after=after)
        yield from page.subjects
        if page.next is None:
            return
        after = page.next


def gallery_model(store: GalleryStore, gallery: str) -> str | None:
    """The model of the gallery's embeddings (None when it holds no face)."""
    for subject in _subjects(store, gallery):
        detail = store.get_subject(gallery, subject.subject)
        if detail.faces:
            return detail.faces[0].model
    return None


def _line(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def export_lines(
    store: GalleryStore,
    gallery: str,
    signer: ExportSigner | None,
    actor: str = LOCAL_ACTOR,
    on_faces: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The export of ``gallery``, line by line (a subject at a time: a large gallery is never
    held whole). ``NotFound`` for an unknown gallery, before the first line; ``on_faces(n)``
    after each subject's ``n`` faces. The ``export`` event is recorded before the last line."""
    check_id("gallery", gallery)
    store.list_subjects(gallery, limit=1)  # NotFound now, not halfway through a response
    return _export(store, gallery, signer, actor, on_faces)


def _export(store, gallery, signer, actor, on_faces) -> Iterator[bytes]:
    model = gallery_model(store, gallery)
    mac = signer.mac() if signer else None

    def signed(record: dict) -> bytes:
        line = _line(record)
        if mac is not None:
            mac.update(line)
        return line

    exported = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    header = {"format": FORMAT, "version": VERSION, "gallery": gallery}
    yield signed({**header, "model": model, "exported": exported})
    counts = {"subjects": 0, "faces": 0}
    for subject in _subjects(store, gallery):
        detail = store.get_subject(gallery, subject.subject)
        vectors = store.subject_vectors(gallery, subject.subject, model) if model else []
        if len(vectors) != len(detail.faces):
            raise InvalidParameter(f"subject {subject.subject!r} changed during the export; rerun")
        faces = [
            {
                "vector": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode(),
                "box": list(face.source.box) if face.source.box else None,
                "probability": face.source.probability,
                "image_width": face.source.image_width,
                "image_height": face.source.image_height,
                "created": face.created,
            }
            for face, vector in zip(detail.faces, vectors, strict=True)
        ]
        record = {"subject": subject.subject, "name": subject.name}
        yield signed({**record, "metadata": subject.metadata, "faces": faces})
        counts["subjects"] += 1
        counts["faces"] += len(faces)
        if on_faces is not None:
            on_faces(len(faces))
    store.record(gallery, "export", counts, actor=actor)
    yield _line({"end": counts, "signature": signer.token(mac) if signer else None})


# --- import --------------------------------------------------------------------------------------


def check_export(lines: Lines, signer: ExportSigner | None) -> ExportHeader:
    """Read the whole export once: its form, its counts and (with keys) its signature.
    ``InvalidParameter`` (or the signature's errors) for anything wrong; nothing is written."""
    header: dict | None = None
    last: bytes | None = None
    subjects = faces = 0
    for number, line in enumerate(lines(), 1):
        if last is not None:
            record = _record(last, number - 1)
            if header is None:
                header = record
                if header.get("format") != FORMAT or header.get("version") != VERSION:
                    raise InvalidParameter(f"this is not a {FORMAT} version {VERSION} export")
            else:
                subjects += 1
                faces += len(_faces_of(record, number - 1))
                check_id("subject", record["subject"])
                check_name(record.get("name"))
                encode_metadata(record.get("metadata"))
        last = line
    if header is None or last is None:
        raise InvalidParameter(f"this is not a complete {FORMAT} export")
    end = _record(last, subjects + 2)
    if end.get("end") != {"subjects": subjects, "faces": faces}:
        raise InvalidParameter("the export is incomplete (its end line does not match it)")
    if signer is not None:
        signer.verify(end.get("signature"), _without_last(lines))
    model = header.get("model")
    return ExportHeader(str(header.get("gallery")), model, subjects, faces)


def _without_last(lines: Lines) -> Iterator[bytes]:
    previous = None
    for line in lines():
        if previous is not None:
            yield previous
        previous = line


def _record(line: bytes, number: int) -> dict:
    record = bounded_json.loads(line, what=f"line {number} of the export", max_bytes=MAX_LINE_BYTES)
    if not isinstance(record, dict):
        raise InvalidParameter(f"line {number} of the export is not a JSON object")
    return record


def _faces_of(record: dict, number: int) -> list[tuple[np.ndarray, FaceSource]]:
    faces = record.get("faces")
    if not isinstance(record.get("subject"), str) or not isinstance(faces, list):
        raise InvalidParameter(f"line {number} of the export is not a subject")
    out = []
    for face in faces:
        try:
            vector = np.frombuffer(base64.b64decode(face["vector"], validate=True), dtype="<f4")
            box = face.get("box")
            source = FaceSource(
                tuple(box) if box is not None else None,
                face.get("probability"),
                face.get("image_width"),
                face.get("image_height"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InvalidParameter(f"line {number} holds a face that cannot be read") from None
        if vector.shape != (EMBEDDING_DIM,):
            raise InvalidParameter(f"line {number} holds a vector that is not 512 float32")
        out.append((check_vector(vector), check_source(source)))
    return out


def import_export(
    store: GalleryStore,
    lines: Lines,
    model: str,
    signer: ExportSigner | None,
    gallery: str | None = None,
    batch: int = BATCH,
    actor: str = LOCAL_ACTOR,
    on_faces: Callable[[int], None] | None = None,
) -> Transferred:
    """Check the export (``check_export``), then write it into ``gallery`` (default: the
    exported gallery's name), which must hold no face: subjects with a name, metadata or no
    face first, one transaction each, then ``batch`` faces per transaction, each with its
    ``import`` event. Face ids and times are new; names, metadata and sources are kept."""
    header = check_export(lines, signer)
    target = check_id("gallery", gallery or header.gallery)
    if header.faces and header.model != model:
        raise WrongModel(
            f"the export holds embeddings of model {header.model!r}; this installation runs "
            f"{model!r} (FACEMATCH_MODEL): enrol the photos again with this model instead"
        )
    if store.gallery_size(target):
        raise InvalidParameter(
            f"gallery {target!r} already holds faces: delete it or import under another name"
        )
    pending: list[tuple[str, np.ndarray, FaceSource]] = []

    def flush() -> None:
        store.add_faces(target, pending, model, actor=actor, action="import")
        if on_faces is not None:
            on_faces(len(pending))
        pending.clear()

    for number, line in enumerate(_without_last(lines), 1):
        if number == 1:
            continue
        record = _record(line, number)
        subject = record["subject"]
        faces = _faces_of(record, number)
        name, metadata = record.get("name"), record.get("metadata")
        if name is not None or metadata is not None or not faces:  # a faceless one is kept too
            store.put_subject(target, subject, name, metadata, actor=actor, action="import")
        pending.extend((subject, vector, source) for vector, source in faces)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return Transferred(target, header.subjects, header.faces)
