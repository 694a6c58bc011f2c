"""Precompute reference embeddings: a folder of enrolment photos to files ``/cached_match`` takes.

Each photo's primary face is embedded exactly as ``POST /embeddings`` would embed it (same
engine, same settings), and written as ``OUT/<relative path>.<format>``. With
``FACEMATCH_SIGNING_KEYS`` set, each reference is signed as ``/embeddings`` signs it: inside the
JSON object, or for npy/pt in ``<file>.sig``: the token alone, no line end, so its text is sent
as-is as the ``signature`` form field (``curl -F signature=<file.sig``).
Photos without a face are listed at the end and make the exit status 1; the others are written.

    python -m deployment_utils.embed_references PHOTOS OUT [--format json|npy|pt]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from facematch.api.codec import FORMATS, encode_embedding
from facematch.api.security import ReferenceSigner
from facematch.config import Settings
from facematch.engine.decoding import decode_image
from facematch.engine.engine import FaceEngine
from facematch.errors import FacematchError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class Summary:
    """What a run wrote and what it could not."""

    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def find_photos(folder: Path) -> list[Path]:
    """Every photo under ``folder`` (recursively), in a stable order."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
    )


def embed_folder(
    engine: FaceEngine,
    photos_dir: Path,
    out_dir: Path,
    fmt: str,
    max_pixels: int,
    signer: ReferenceSigner | None = None,
    progress: bool = True,
) -> Summary:
    """Embed every photo under ``photos_dir`` into ``out_dir``; returns what was written/failed."""
    summary = Summary()
    photos = find_photos(photos_dir)
    for photo in tqdm(photos, desc="embedding", unit="photo", disable=not progress):
        relative = photo.relative_to(photos_dir)
        try:
            image = decode_image(photo.read_bytes(), max_pixels, str(relative))
        except FacematchError as error:
            summary.failed[str(relative)] = error.message
            continue
        found = engine.detect(image)
        if found.primary is None:
            summary.failed[str(relative)] = "no face found"
            continue
        vector = engine.embed([found.primary.crop]).vectors[0]
        target = out_dir / relative.with_suffix(f".{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        extra = {"model": engine.model_name}
        if signer is not None:
            extra["signature"] = signer.sign(vector, engine.model_name)
            if fmt != "json":
                target.with_name(target.name + ".sig").write_text(extra["signature"])
        target.write_bytes(encode_embedding(vector, fmt, extra))
        summary.written.append(target)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "photos", type=Path, help="folder of reference photos (searched recursively)"
    )
    parser.add_argument("out", type=Path, help="folder to write the embedding files into")
    parser.add_argument("--format", choices=FORMATS, default="json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        parser.error(f"{args.photos} is not a folder")
    logging.basicConfig(level=logging.WARNING)

    settings = Settings.from_env()
    engine = FaceEngine.from_settings(settings)
    summary = embed_folder(
        engine,
        args.photos,
        args.out,
        args.format,
        settings.max_pixels,
        ReferenceSigner.from_settings(settings),
        progress=not args.quiet,
    )
    print(f"wrote {len(summary.written)} {args.format} file(s) to {args.out}", file=sys.stderr)
    for name, reason in summary.failed.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
