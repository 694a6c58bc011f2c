"""The reference-precomputing CLI writes files that /cached_match accepts unchanged."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from support import image_bytes
from test_api import SAME, files, photo_match

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fmt", ["json", "pt"])
def test_folder_of_photos_becomes_embeddings_that_cached_match_accepts(
        client, face_bytes, tmp_path, fmt):
    photos = tmp_path / "photos"
    (photos / "staff").mkdir(parents=True)
    (photos / "staff" / "aaron.jpg").write_bytes(face_bytes(SAME[0]))
    (photos / "blank.png").write_bytes(image_bytes(Image.new("RGB", (200, 200)), "PNG"))
    (photos / "notes.jpg").write_text("not a photo")
    out = tmp_path / "out"

    run = subprocess.run(
        [sys.executable, "-m", "deployment_utils.embed_references", str(photos), str(out),
         "--format", fmt, "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )

    assert run.returncode == 1  # two photos could not be used
    assert "skipped blank.png: no face found" in run.stderr
    assert "skipped notes.jpg" in run.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"staff/aaron.{fmt}"]
    reference = (out / "staff" / f"aaron.{fmt}").read_bytes()
    cached = client.post("/cached_match", data={
        "reference": (io.BytesIO(reference), f"aaron.{fmt}"), **files(sample=face_bytes(SAME[1]))})
    expected = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    assert cached.json["distance"] == pytest.approx(expected["distance"], abs=1e-5)
