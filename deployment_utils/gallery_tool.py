"""Fill, export and import galleries: a folder of photos in, a gallery moved between backends.

    python -m deployment_utils.gallery_tool enrol PHOTOS --gallery staff
    python -m deployment_utils.gallery_tool export --gallery staff staff.fmg
    python -m deployment_utils.gallery_tool import staff.fmg [--gallery staff-copy]

The database is ``FACEMATCH_GALLERY_URL`` (default: the SQLite file in ``FACEMATCH_DATA_DIR``)
or ``--url``; the engine and its model are the service's (``FACEMATCH_*``), so an enrolled
embedding is the one the service's ``POST /galleries/<g>/subjects/<s>/faces`` would store.

``enrol``: ``PHOTOS/<subject>/<photo>``: every photo's primary face is enrolled as a face of
``<subject>`` (the folder's name, a valid subject id); photos that cannot be decoded or hold no
face, and folders whose names are not ids, are listed at the end (exit status 1).

``export`` writes a gallery as JSON lines (format ``facematch-gallery`` version 1):

- line 1, the header: ``{"format": "facematch-gallery", "version": 1, "gallery", "model",
  "exported"}``;
- one line per subject: ``{"subject", "name", "metadata", "faces": [{"vector", "box",
  "probability", "image_width", "image_height", "created"}]}``; ``vector`` is the 512 float32
  little-endian bytes, base64 (exact);
- the last line: ``{"end": {"subjects": n, "faces": m}, "signature": "v1.<key id>.<mac>"}``.

With ``FACEMATCH_SIGNING_KEYS`` set the signature is an HMAC-SHA256, with the first key, over
``b"facematch-gallery-v1\\0"`` and every byte of the file before the last line (key id and token
as ``facematch.api.security.ReferenceSigner``'s); without keys it is null. ``import`` checks
the whole file before writing anything: with keys set it refuses a file that is unsigned,
altered or signed by a key it does not hold; it refuses embeddings of a model other than the
service's (``FACEMATCH_MODEL``), and a gallery that already holds faces. It then writes in
transactions of ``--batch`` faces: face ids are new (the database chooses them) and so are the
times; names, metadata and sources are kept. If an import stops midway, delete the gallery and
run it again.

Every write and the export are in the gallery's audit trail as the key ``gallery_tool``: each
enrolled face an ``enrol`` event, each import transaction an ``import`` event (its counts, in
that transaction), an export one ``export`` event (its counts) once the file is written.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from facematch.config import Settings
from facematch.errors import FacematchError
from facematch.gallery.opening import store_from_settings
from facematch.gallery.store import (
    EMBEDDING_DIM,
    ID_PATTERN,
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
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
_SIGNED_PREFIX = b"facematch-gallery-v1\0"
BATCH = 500
ACTOR = "gallery_tool"  # the key id this tool's writes and exports are audited as


class ToolError(Exception):
    """A file or gallery this tool refuses, with the reason to print."""


# --- enrol --------------------------------------------------------------------------------------


@dataclass
class Enrolled:
    """What an enrolment did: faces stored per subject, and what it skipped (path -> why)."""

    faces: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def find_photos(folder: Path) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """``(subject, photo)`` for each photo in ``folder/<subject>/``, sorted; and the entries
    that cannot be enrolled (a folder name that is not an id, a file outside a subject folder)."""
    photos, skipped = [], {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            skipped[entry.name] = "not inside a subject folder"
            continue
        if not ID_PATTERN.fullmatch(entry.name):
            skipped[entry.name + "/"] = "folder name is not a subject id ([A-Za-z0-9._-]{1,128})"
            continue
        for photo in sorted(entry.iterdir()):
            if photo.is_file() and photo.suffix.lower() in PHOTO_SUFFIXES:
                photos.append((entry.name, photo))
    return photos, skipped


def enrol_folder(
    store: GalleryStore,
    engine,
    gallery: str,
    folder: Path,
    max_pixels: int,
    batch: int = 32,
    progress: bool = True,
) -> Enrolled:
    """Enrol the primary face of every photo under ``folder/<subject>/`` into ``gallery``,
    ``batch`` faces per transaction; what was enrolled and skipped."""
    from facematch.engine.decoding import decode_image

    check_id("gallery", gallery)
    started = time.perf_counter()
    photos, skipped = find_photos(folder)
    done = Enrolled(skipped=skipped)
    pending: list[tuple[str, np.ndarray, FaceSource]] = []

    def flush() -> None:
        for subject, _, _ in pending:
            done.faces[subject] = done.faces.get(subject, 0) + 1
        store.add_faces(gallery, pending, engine.model_name, actor=ACTOR)
        pending.clear()

    for subject, photo in tqdm(photos, desc="enrolling", unit="photo", disable=not progress):
        name = photo.relative_to(folder).as_posix()
        try:
            image = decode_image(photo.read_bytes(), max_pixels, name)
        except (FacematchError, OSError) as error:
            done.skipped[name] = getattr(error, "message", None) or str(error)
            continue
        found = engine.detect(image)
        if found.primary is None:
            done.skipped[name] = "no face found"
            continue
        vector = engine.embed([found.primary.crop]).vectors[0]
        source = FaceSource(found.primary.box, found.primary.probability, found.width, found.height)
        pending.append((subject, vector, source))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    done.seconds = time.perf_counter() - started
    return done


# --- signing ------------------------------------------------------------------------------------


class ExportSigner:
    """HMAC-SHA256 of an export under the signing keys (the first signs, any verifies), as
    ``facematch.api.security.ReferenceSigner`` signs references: token ``v1.<key id>.<mac>``."""

    def __init__(self, secrets: list[str]):
        from facematch.api.security import ReferenceSigner, key_id

        ReferenceSigner(secrets)  # the same checks: length, distinct key ids
        self._keys = {key_id(s): s.encode() for s in dict.fromkeys(secrets)}
        self._signing = key_id(secrets[0])

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportSigner | None:
        secrets = [k.strip() for k in settings.signing_keys.split(",") if k.strip()]
        return cls(secrets) if secrets else None

    def mac(self, key: str | None = None):
        """A running HMAC (``.update(bytes)``) under ``key`` (a key id; the signing key)."""
        secret = self._keys.get(key or self._signing)
        if secret is None:
            return None
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        mac.update(_SIGNED_PREFIX)
        return mac

    def token(self, mac) -> str:
        text = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
        return f"v1.{self._signing}.{text}"

    def verify(self, token: Any, content: Iterator[bytes]) -> None:
        """Raise ``ToolError`` unless ``token`` is a valid signature of ``content``."""
        parts = token.split(".") if isinstance(token, str) else []
        mac = self.mac(parts[1]) if len(parts) == 3 and parts[0] == "v1" else None
        if mac is None:
            raise ToolError(
                "the export is unsigned or signed by a key this installation does not hold "
                "(FACEMATCH_SIGNING_KEYS)"
            )
        for chunk in content:
            mac.update(chunk)
        expected = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
        if not hmac.compare_digest(expected, parts[2]):
            raise ToolError("the export's signature does not verify: the file was altered")


# --- export -------------------------------------------------------------------------------------


def _vector_text(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


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


def export_gallery(
    store: GalleryStore,
    gallery: str,
    out: BinaryIO,
    signer: ExportSigner | None,
    progress: bool = True,
) -> dict:
    """Write ``gallery`` to ``out`` in the export format; the counts written."""
    model = gallery_model(store, gallery)
    mac = signer.mac() if signer else None
    total = store.gallery_size(gallery)

    def write(record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        out.write(line)
        if mac is not None:
            mac.update(line)

    exported = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    write(
        {
            "format": FORMAT,
            "version": VERSION,
            "gallery": gallery,
            "model": model,
            "exported": exported,
        }
    )
    counts = {"subjects": 0, "faces": 0}
    with tqdm(total=total, desc="exporting", unit="face", disable=not progress) as bar:
        for subject in _subjects(store, gallery):
            detail = store.get_subject(gallery, subject.subject)
            vectors = store.subject_vectors(gallery, subject.subject, model) if model else []
            if len(vectors) != len(detail.faces):
                raise ToolError(f"subject {subject.subject!r} changed during the export; rerun")
            faces = [
                {
                    "vector": _vector_text(vector),
                    "box": list(face.source.box) if face.source.box else None,
                    "probability": face.source.probability,
                    "image_width": face.source.image_width,
                    "image_height": face.source.image_height,
                    "created": face.created,
                }
                for face, vector in zip(detail.faces, vectors, strict=True)
            ]
            record = {"subject": subject.subject, "name": subject.name}
            write({**record, "metadata": subject.metadata, "faces": faces})
            counts["subjects"] += 1
            counts["faces"] += len(faces)
            bar.update(len(faces))
    last = {"end": counts, "signature": signer.token(mac) if signer else None}
    out.write(json.dumps(last, separators=(",", ":")).encode() + b"\n")
    store.record(gallery, "export", counts, actor=ACTOR)
    return counts


# --- import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportHeader:
    gallery: str
    model: str | None
    subjects: int
    faces: int


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        yield from stream


def check_export(path: Path, signer: ExportSigner | None) -> ExportHeader:
    """Read the whole export once: its form, its counts and (with keys) its signature.
    ``ToolError`` for anything wrong; nothing is written."""
    header: dict | None = None
    last: bytes | None = None
    subjects = faces = 0
    for number, line in enumerate(_lines(path), 1):
        if last is not None:
            record = _record(last, number - 1)
            if header is None:
                header = record
                if header.get("format") != FORMAT or header.get("version") != VERSION:
                    raise ToolError(f"{path} is not a {FORMAT} version {VERSION} export")
            else:
                subjects += 1
                faces += len(_faces_of(record, number - 1))
                check_id("subject", record["subject"])
                check_name(record.get("name"))
                encode_metadata(record.get("metadata"))
        last = line
    if header is None or last is None:
        raise ToolError(f"{path} is not a complete {FORMAT} export")
    end = _record(last, subjects + 2)
    if end.get("end") != {"subjects": subjects, "faces": faces}:
        raise ToolError(f"{path} is incomplete (its end line does not match its content)")
    if signer is not None:
        signer.verify(end.get("signature"), _without_last(path))
    return ExportHeader(str(header.get("gallery")), header.get("model"), subjects, faces)


def _without_last(path: Path) -> Iterator[bytes]:
    previous = None
    for line in _lines(path):
        if previous is not None:
            yield previous
        previous = line


def _record(line: bytes, number: int) -> dict:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ToolError(f"line {number} is not JSON") from None
    if not isinstance(record, dict):
        raise ToolError(f"line {number} is not a JSON object")
    return record


def _faces_of(record: dict, number: int) -> list[tuple[np.ndarray, FaceSource]]:
    faces = record.get("faces")
    if not isinstance(record.get("subject"), str) or not isinstance(faces, list):
        raise ToolError(f"line {number} is not a subject")
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
        except (KeyError, TypeError, ValueError):
            raise ToolError(f"line {number} holds a face that cannot be read") from None
        if vector.shape != (EMBEDDING_DIM,):
            raise ToolError(f"line {number} holds a vector that is not {EMBEDDING_DIM} float32")
        out.append((check_vector(vector), check_source(source)))
    return out


def import_gallery(
    store: GalleryStore,
    path: Path,
    model: str,
    signer: ExportSigner | None,
    gallery: str | None = None,
    batch: int = BATCH,
    progress: bool = True,
) -> dict:
    """Check the export at ``path`` (``check_export``), then write it into ``gallery`` (default:
    the exported gallery's name), which must hold no face; the counts written."""
    header = check_export(path, signer)
    target = check_id("gallery", gallery or header.gallery)
    if header.faces and header.model != model:
        raise ToolError(
            f"the export holds embeddings of model {header.model!r}; this installation runs "
            f"{model!r} (FACEMATCH_MODEL): enrol the photos again with this model instead"
        )
    if store.gallery_size(target):
        raise ToolError(f"gallery {target!r} already holds faces: delete it or choose --gallery")
    pending: list[tuple[str, np.ndarray, FaceSource]] = []
    with tqdm(total=header.faces, desc="importing", unit="face", disable=not progress) as bar:
        for number, line in enumerate(_without_last(path), 1):
            if number == 1:
                continue
            record = _record(line, number)
            subject = record["subject"]
            faces = _faces_of(record, number)
            described = record.get("name") is not None or record.get("metadata") is not None
            if described or not faces:  # a subject without faces is kept too
                name, metadata = record.get("name"), record.get("metadata")
                store.put_subject(target, subject, name, metadata, actor=ACTOR, action="import")
            for vector, source in faces:
                pending.append((subject, vector, source))
            if len(pending) >= batch:
                store.add_faces(target, pending, model, actor=ACTOR, action="import")
                bar.update(len(pending))
                pending.clear()
        if pending:
            store.add_faces(target, pending, model, actor=ACTOR, action="import")
            bar.update(len(pending))
    return {"gallery": target, "subjects": header.subjects, "faces": header.faces}


# --- the command --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="the gallery database (FACEMATCH_GALLERY_URL)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    commands = parser.add_subparsers(dest="command", required=True)
    enrol = commands.add_parser("enrol", help="enrol PHOTOS/<subject>/<photo> into a gallery")
    enrol.add_argument("photos", type=Path)
    enrol.add_argument("--gallery", required=True)
    export = commands.add_parser("export", help="write a gallery to a file")
    export.add_argument("--gallery", required=True)
    export.add_argument("out", type=Path)
    import_ = commands.add_parser("import", help="read an export into a gallery")
    import_.add_argument("file", type=Path)
    import_.add_argument("--gallery", default=None, help="default: the exported gallery's name")
    import_.add_argument("--batch", type=int, default=BATCH, help="faces per transaction")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    settings = Settings.from_env()
    if args.url:
        settings = settings.replace(gallery_url=args.url)
    store = store_from_settings(settings)
    progress = not args.quiet
    try:
        if args.command == "enrol":
            if not args.photos.is_dir():
                parser.error(f"{args.photos} is not a folder")
            from facematch.engine.engine import FaceEngine

            engine = FaceEngine.from_settings(settings)
            done = enrol_folder(
                store, engine, args.gallery, args.photos, settings.max_pixels, progress=progress
            )
            for name, reason in done.skipped.items():
                print(f"skipped {name}: {reason}", file=sys.stderr)
            print(
                f"enrolled {sum(done.faces.values())} face(s) of {len(done.faces)} subject(s) "
                f"into gallery {args.gallery!r} in {done.seconds:.1f} s; "
                f"skipped {len(done.skipped)}; the gallery holds "
                f"{store.gallery_size(args.gallery)} face(s)",
                file=sys.stderr,
            )
            return 1 if done.skipped else 0
        signer = ExportSigner.from_settings(settings)
        if args.command == "export":
            with args.out.open("wb") as out:
                counts = export_gallery(store, args.gallery, out, signer, progress)
            signed = "signed" if signer else "unsigned (no FACEMATCH_SIGNING_KEYS)"
            print(
                f"exported {counts['faces']} face(s) of {counts['subjects']} subject(s) "
                f"to {args.out}, {signed}",
                file=sys.stderr,
            )
            return 0
        if signer is None:
            warning = "warning: FACEMATCH_SIGNING_KEYS is unset: the signature is not checked"
            print(warning, file=sys.stderr)
        counts = import_gallery(
            store, args.file, settings.model, signer, args.gallery, args.batch, progress
        )
        print(
            f"imported {counts['faces']} face(s) of {counts['subjects']} subject(s) into "
            f"gallery {counts['gallery']!r}",
            file=sys.stderr,
        )
        return 0
    except (ToolError, FacematchError) as error:
        print(f"error: {getattr(error, 'message', None) or error}", file=sys.stderr)
        return 2
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
