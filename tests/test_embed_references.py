"""The reference-precomputing CLI writes files that /cached_match accepts unchanged."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facematch.api.app import create_app
from tests.support import SAME, assert_error, files, image_bytes, photo_match

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fmt", ["json", "pt"])
def test_folder_of_photos_becomes_embeddings_that_cached_match_accepts(
    client, face_bytes, tmp_path, fmt
):
    photos = tmp_path / "photos"
    (photos / "staff").mkdir(parents=True)
    (photos / "staff" / "aaron.jpg").write_bytes(face_bytes(SAME[0]))
    (photos / "blank.png").write_bytes(image_bytes(Image.new("RGB", (200, 200)), "PNG"))
    (photos / "notes.jpg").write_text("not a photo")
    out = tmp_path / "out"

    run = run_cli(photos, out, fmt)

    assert run.returncode == 1  # two photos could not be used
    assert "skipped blank.png: no face found" in run.stderr
    assert "skipped notes.jpg" in run.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"staff/aaron.{fmt}"]
    reference = (out / "staff" / f"aaron.{fmt}").read_bytes()
    cached = client.post(
        "/cached_match",
        data={
            "reference": (io.BytesIO(reference), f"aaron.{fmt}"),
            **files(sample=face_bytes(SAME[1])),
        },
    )
    expected = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    assert cached.json["distance"] == pytest.approx(expected["distance"], abs=1e-5)


def run_cli(photos: Path, out: Path, fmt: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "deployment_utils.embed_references",
            str(photos),
            str(out),
            "--format",
            fmt,
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("fmt", ["json", "npy"])
def test_references_are_signed_when_signing_keys_are_set(
    settings, engine, face_bytes, tmp_path, fmt
):
    key = "k" * 32
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "aaron.jpg").write_bytes(face_bytes(SAME[0]))
    assert run_cli(photos, tmp_path / "out", fmt, FACEMATCH_SIGNING_KEYS=key).returncode == 0
    reference = (tmp_path / "out" / f"aaron.{fmt}").read_bytes()
    signed = create_app(settings.replace(signing_keys=key), engine=engine).test_client()
    form = {
        "reference": (io.BytesIO(reference), f"aaron.{fmt}"),
        **files(sample=face_bytes(SAME[1])),
    }
    if fmt != "json":
        form["signature"] = (tmp_path / "out" / f"aaron.{fmt}.sig").read_text()  # as-is
    assert signed.post("/cached_match", data=form).json["match"] is True
    other = create_app(settings.replace(signing_keys="o" * 32), engine=engine).test_client()
    form["reference"] = (io.BytesIO(reference), f"aaron.{fmt}")
    form["sample"] = (io.BytesIO(face_bytes(SAME[1])), "sample.jpg")
    assert_error(other.post("/cached_match", data=form), 403, "bad_signature")
