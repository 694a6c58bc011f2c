"""Crafted files that gave 500s (issue 10, section 2) and the limits that replace them, through a
real Gunicorn: images only as JPEG, PNG or WebP, every decoder failure a 415; references checked
for structure before anything is allocated, every failure a 400. The files are generated here
(tests/crafted_files.py); none is committed."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from facematch.engine.decoding import MAX_JPEG_SCANS, decode_image
from facematch.errors import ImageTooLarge, UnsupportedImage
from tests import crafted_files
from tests.support import SAME, image_bytes


@pytest.fixture(scope="module")
def url(module_gunicorn):
    return module_gunicorn().url


@pytest.fixture(scope="module")
def face(face_bytes) -> Image.Image:
    return Image.open(io.BytesIO(face_bytes(SAME[1]))).convert("RGB")


def _post_photo(url: str, upload: bytes) -> requests.Response:
    return requests.post(url + "/embeddings", files={"photo": ("p.jpg", upload)}, timeout=60)


@pytest.mark.parametrize("name", sorted(crafted_files.CRAFTED_IMAGES))
def test_crafted_image_gets_a_4xx_not_a_500_through_gunicorn(url, name):
    make, status, code = crafted_files.CRAFTED_IMAGES[name]
    response = _post_photo(url, make())
    assert response.status_code == status, (name, response.text)
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("name", sorted(crafted_files.CRAFTED_REFERENCES))
def test_crafted_reference_is_400_invalid_embedding_through_gunicorn(url, face_bytes, name):
    reference = crafted_files.CRAFTED_REFERENCES[name]()
    response = requests.post(
        url + "/cached_match",
        files={"reference": ("r.bin", reference), "sample": ("s.jpg", face_bytes(SAME[1]))},
        timeout=60,
    )
    assert response.status_code == 400, (name, response.text)
    assert response.json()["error"]["code"] == "invalid_embedding"


@pytest.mark.parametrize("stray", [b"", b"\x00", b"junk"])
def test_jpeg_of_thousands_of_scans_is_415_before_it_is_decoded(url, face, stray):
    """Stray bytes between the scans (libjpeg skips them) do not hide scans from the count."""
    bomb = crafted_files.jpeg_with_scans(face, 5000, stray)
    response = _post_photo(url, bomb)
    assert response.status_code == 415, response.text
    assert f"at most {MAX_JPEG_SCANS}" in response.json()["error"]["message"]


def test_progressive_jpeg_with_a_usual_number_of_scans_is_decoded(url, face):
    assert _post_photo(url, crafted_files.jpeg_with_scans(face, MAX_JPEG_SCANS)).status_code == 200
    assert _post_photo(url, image_bytes(face, "JPEG", progressive=True)).status_code == 200


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "ICO", "PPM", "TGA"])
def test_a_format_cameras_do_not_produce_is_415_even_when_valid(face, fmt):
    with pytest.raises(UnsupportedImage, match="JPEG, PNG or WebP"):
        decode_image(image_bytes(face, fmt), 40_000_000, "photo")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_camera_formats_are_decoded(face, fmt):
    assert decode_image(image_bytes(face, fmt), 40_000_000, "photo").size == face.size


def test_image_under_the_pixel_limit_but_over_the_decode_budget_is_413(face):
    """The budget is what an RGB image of max_pixels costs (8 bytes a pixel): a grey+alpha PNG
    (4 bytes a pixel in Pillow, then an RGBA copy and a white background) or a progressive 4:4:4
    JPEG (libjpeg holds 6 bytes of coefficients a pixel) of max_pixels costs more."""
    pixels = face.width * face.height
    with pytest.raises(ImageTooLarge, match="MiB to decode"):
        decode_image(image_bytes(face.convert("LA"), "PNG"), pixels, "photo")
    full_chroma = image_bytes(face, "JPEG", progressive=True, subsampling=0)
    with pytest.raises(ImageTooLarge, match="MiB to decode"):
        decode_image(full_chroma, pixels, "photo")
    for fits in (image_bytes(face, "JPEG", subsampling=0), image_bytes(face, "PNG")):
        assert decode_image(fits, pixels, "photo").size == face.size
    assert decode_image(image_bytes(face.convert("LA"), "PNG"), 2 * pixels, "photo")
