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

``export`` writes a gallery in the format of ``facematch.gallery.transfer`` (JSON lines,
``facematch-gallery`` version 1, signed with the first of ``FACEMATCH_SIGNING_KEYS`` when set);
``import`` checks the whole file first (with keys set it refuses a file that is unsigned, altered
or signed by a key it does not hold), refuses another model's embeddings and a gallery that
already holds faces, then writes in transactions of ``--batch`` faces: face ids and times are
new; names, metadata and sources are kept. If an import stops midway, delete the gallery and run
it again.

Every write and the export are in the gallery's audit trail as the key ``gallery_tool``: each
enrolled face an ``enrol`` event, each import transaction an ``import`` event (its counts, in
that transaction), an export one ``export`` event (its counts) before the file's last line.

With ``--server URL`` the three commands go through a running service's API instead of the
database, with the key in ``--key-file`` (a file, so the key is not in the process list): the
key's roles and galleries apply (``enrol`` to enrol, ``admin`` to export and import; a refusal
stops the command with the API's message) and the audit trail names that key.

    python -m deployment_utils.gallery_tool --server https://fm.example --key-file clerk.key \
        enrol PHOTOS --gallery site-a
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import requests
from tqdm import tqdm

from facematch.api.security import export_signer
from facematch.config import Settings
from facematch.errors import FacematchError
from facematch.gallery.opening import store_from_settings
from facematch.gallery.store import ID_PATTERN, FaceSource, GalleryStore, check_id
from facematch.gallery.transfer import (
    BATCH,
    ExportSigner,
    Transferred,
    export_lines,
    import_export,
)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
ACTOR = "gallery_tool"  # the key id this tool's writes and exports are audited as


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


# --- export and import (the format is facematch.gallery.transfer's) ----------------------------


def export_gallery(
    store: GalleryStore,
    gallery: str,
    out: BinaryIO,
    signer: ExportSigner | None,
    progress: bool = True,
) -> Transferred:
    """Write ``gallery`` to ``out`` in the export format; the counts written."""
    total = store.gallery_size(gallery)
    with tqdm(total=total, desc="exporting", unit="face", disable=not progress) as bar:
        lines = export_lines(store, gallery, signer, ACTOR, bar.update)
        for line in lines:
            out.write(line)
    end = json.loads(line)["end"]
    return Transferred(gallery, end["subjects"], end["faces"])


def import_gallery(
    store: GalleryStore,
    path: Path,
    model: str,
    signer: ExportSigner | None,
    gallery: str | None = None,
    batch: int = BATCH,
    progress: bool = True,
) -> Transferred:
    """Check the export at ``path``, then write it into ``gallery`` (default: the exported
    gallery's name), which must hold no face; the counts written."""

    def lines() -> Iterator[bytes]:
        with path.open("rb") as stream:
            yield from stream

    with tqdm(desc="importing", unit="face", disable=not progress) as bar:
        return import_export(store, lines, model, signer, gallery, batch, ACTOR, bar.update)


# --- over the API (--server) --------------------------------------------------------------------


class RemoteError(Exception):
    """The service refused a request: its status and its error message."""


class GalleryClient:
    """The gallery tool's commands through a running service's API, with one API key."""

    def __init__(self, url: str, key: str | None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if key:
            self.session.headers["X-API-Key"] = key

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        answer = self.session.request(method, self.url + path, timeout=120, **kwargs)
        if answer.status_code >= 400:
            raise RemoteError(f"{answer.status_code}: {_message(answer)}")
        return answer

    def enrol_folder(self, gallery: str, folder: Path, progress: bool = True) -> Enrolled:
        """``enrol_folder`` through ``POST /galleries/<g>/subjects/<s>/faces``: a photo the
        service refuses for itself (no face, not an image) is skipped; any other refusal (the
        key, the gallery, the service) stops the command."""
        check_id("gallery", gallery)
        started = time.perf_counter()
        photos, skipped = find_photos(folder)
        done = Enrolled(skipped=skipped)
        for subject, photo in tqdm(photos, desc="enrolling", unit="photo", disable=not progress):
            name = photo.relative_to(folder).as_posix()
            path = f"/galleries/{gallery}/subjects/{subject}/faces"
            try:
                self._call("POST", path, files={"photo": (photo.name, photo.read_bytes())})
            except RemoteError as error:
                if not str(error).startswith(_PHOTO_REFUSALS):
                    raise
                done.skipped[name] = str(error)
                continue
            done.faces[subject] = done.faces.get(subject, 0) + 1
        done.seconds = time.perf_counter() - started
        return done

    def export_gallery(self, gallery: str, out: BinaryIO) -> Transferred:
        """``GET /galleries/<g>/export`` into ``out``; the counts of its last line."""
        check_id("gallery", gallery)
        tail = b""  # the last bytes, which hold the last line
        with self._call("GET", f"/galleries/{gallery}/export", stream=True) as answer:
            for chunk in answer.iter_content(64 * 1024):
                out.write(chunk)
                tail = (tail + chunk)[-4096:]
        last = tail.rstrip(b"\n").rpartition(b"\n")[2]
        end = json.loads(last).get("end") if last.startswith(b'{"end"') else None
        if end is None:
            raise RemoteError("the export stopped before its last line; run it again")
        return Transferred(gallery, end["subjects"], end["faces"])

    def import_gallery(self, path: Path, gallery: str | None) -> Transferred:
        """``POST /galleries/<g>/import`` with the file (default gallery: the exported one)."""
        if gallery is None:
            with path.open("rb") as stream:
                gallery = str(json.loads(stream.readline() or b"{}").get("gallery"))
        check_id("gallery", gallery)
        done = self._call("POST", f"/galleries/{gallery}/import", data=path.read_bytes()).json()
        return Transferred(done["gallery"], done["subjects"], done["faces"])


#: The refusals of one photo (415, 413, 422): skipped, not fatal.
_PHOTO_REFUSALS = ("413:", "415:", "422:")


def _message(answer: requests.Response) -> str:
    try:
        return answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return answer.reason or "no message"


# --- the command --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="the gallery database (FACEMATCH_GALLERY_URL)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--server", default="", help="a running service's URL: use its API")
    parser.add_argument("--key-file", type=Path, help="with --server: a file holding the API key")
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

    if args.server:
        return _remote(args, parser)
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
        signer = export_signer(settings)
        if args.command == "export":
            with args.out.open("wb") as out:
                done = export_gallery(store, args.gallery, out, signer, progress)
            signed = "signed" if signer else "unsigned (no FACEMATCH_SIGNING_KEYS)"
            print(
                f"exported {done.faces} face(s) of {done.subjects} subject(s) "
                f"to {args.out}, {signed}",
                file=sys.stderr,
            )
            return 0
        if signer is None:
            warning = "warning: FACEMATCH_SIGNING_KEYS is unset: the signature is not checked"
            print(warning, file=sys.stderr)
        done = import_gallery(
            store, args.file, settings.model, signer, args.gallery, args.batch, progress
        )
        print(
            f"imported {done.faces} face(s) of {done.subjects} subject(s) into "
            f"gallery {done.gallery!r}",
            file=sys.stderr,
        )
        return 0
    except FacematchError as error:
        print(f"error: {getattr(error, 'message', None) or error}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _remote(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The command through the service's API (``--server``)."""
    key = args.key_file.read_text(encoding="utf-8").strip() if args.key_file else None
    client = GalleryClient(args.server, key)
    progress = not args.quiet
    try:
        if args.command == "enrol":
            if not args.photos.is_dir():
                parser.error(f"{args.photos} is not a folder")
            done = client.enrol_folder(args.gallery, args.photos, progress)
            for name, reason in done.skipped.items():
                print(f"skipped {name}: {reason}", file=sys.stderr)
            print(
                f"enrolled {sum(done.faces.values())} face(s) of {len(done.faces)} subject(s) "
                f"into gallery {args.gallery!r} at {args.server} in {done.seconds:.1f} s; "
                f"skipped {len(done.skipped)}",
                file=sys.stderr,
            )
            return 1 if done.skipped else 0
        if args.command == "export":
            with args.out.open("wb") as out:
                done = client.export_gallery(args.gallery, out)
            verb = "exported"
        else:
            done = client.import_gallery(args.file, args.gallery)
            verb = "imported"
        print(
            f"{verb} {done.faces} face(s) of {done.subjects} subject(s) of gallery "
            f"{done.gallery!r} at {args.server}",
            file=sys.stderr,
        )
        return 0
    except (RemoteError, FacematchError, requests.RequestException) as error:
        print(f"error: {getattr(error, 'message', None) or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
