"""Hostile and odd inputs not covered in test_api.py / test_cached_match.py, and the whole set
again through a real Gunicorn: each has its defined answer, none is a 5xx or a dropped
connection.

Already covered elsewhere (not repeated here): empty file, truncated JPEG, PNG declaring a huge
canvas, decompression bomb, CMYK / 16-bit grey / grey / alpha / palette images, EXIF rotation,
text named .jpg, NaN / 511 / 513 floats, pickled .pt, object .npy, JSON body, missing field,
threshold "abc" / "-1" (on /photo_match's sample or /cached_match's reference).
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support import (
    SAME,
    assert_error,
    files,
    image_bytes,
    png_declaring,
)

BLANK = (200, 180, 160)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_16bit_rgb(photo: bytes) -> bytes:
    """The photo as a 48-bit (16 bits per channel) RGB PNG, written by hand (Pillow cannot)."""
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"), np.uint16) * 257
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def animated(fmt: str, first: Image.Image, *others: Image.Image) -> bytes:
    buffer = io.BytesIO()
    first.save(buffer, fmt, save_all=True, append_images=list(others), duration=100, loop=0)
    return buffer.getvalue()


def bad_inputs(face_bytes) -> dict[str, tuple[bytes, int, str | None]]:
    """name -> (upload, expected status, expected error code) for any photo slot."""
    face = Image.open(io.BytesIO(face_bytes(SAME[1]))).convert("RGB")
    blank = Image.new("RGB", face.size, BLANK)
    jpeg = face_bytes(SAME[1])
    return {
        "empty file": (b"", 415, "unsupported_image"),
        "text named .jpg": (b"GIF? no, just text\n", 415, "unsupported_image"),
        "truncated jpeg": (jpeg[: len(jpeg) // 3], 415, "unsupported_image"),
        "png declaring 10^10 pixels": (png_declaring(100_000, 100_000), 413, "image_too_large"),
        "decompression bomb": (
            image_bytes(Image.new("L", (8000, 8000)), "PNG", optimize=True),
            413,
            "image_too_large",
        ),
        "1x1 png": (image_bytes(Image.new("RGB", (1, 1)), "PNG"), 422, "no_face"),
        "19 px tall strip": (image_bytes(Image.new("RGB", (400, 19), BLANK)), 422, "no_face"),
        "animated webp, face first": (animated("WEBP", face, blank, blank), 200, None),
        "animated webp, face later": (animated("WEBP", blank, face), 422, "no_face"),
        "gif (not a camera format)": (animated("GIF", face, blank), 415, "unsupported_image"),
        "16-bit rgb png": (png_16bit_rgb(jpeg), 200, None),
        "grayscale jpeg": (image_bytes(face.convert("L")), 200, None),
        "rgba png": (image_bytes(face.convert("RGBA"), "PNG"), 200, None),
    }


def _check(response_status: int, body: dict, expected: int, code: str | None, what: str) -> None:
    assert response_status == expected, (what, response_status, body)
    if code is not None:
        assert body["error"]["code"] == code, (what, body)
        assert body["error"]["message"]


# --- every photo slot of every endpoint, in-process ---


@pytest.fixture(scope="module")
def stored_reference(settings, engine, face_bytes) -> bytes:
    from facematch.api.app import create_app

    client = create_app(settings, engine=engine).test_client()
    return client.post("/embeddings", data=files(photo=face_bytes(SAME[0]))).get_data()


def slot_requests(face_bytes, reference_json: bytes, upload: bytes):
    """(label, path, form) for each place a photo goes."""
    good = face_bytes(SAME[0])
    return [
        ("photo_match reference", "/photo_match", files(reference=upload, sample=good)),
        ("photo_match sample", "/photo_match", files(reference=good, sample=upload)),
        ("embeddings photo", "/embeddings", files(photo=upload)),
        (
            "cached_match sample",
            "/cached_match",
            {**files(sample=upload), "reference": reference_json.decode()},
        ),
    ]


NAMES = [
    "empty file",
    "text named .jpg",
    "truncated jpeg",
    "png declaring 10^10 pixels",
    "decompression bomb",
    "1x1 png",
    "19 px tall strip",
    "animated webp, face first",
    "animated webp, face later",
    "gif (not a camera format)",
    "16-bit rgb png",
    "grayscale jpeg",
    "rgba png",
]


@pytest.mark.parametrize("name", NAMES)
def test_each_odd_image_gets_its_defined_answer_in_every_photo_slot(
    client, face_bytes, stored_reference, name
):
    table = bad_inputs(face_bytes)
    assert sorted(table) == sorted(NAMES)
    upload, status, code = table[name]
    for label, path, form in slot_requests(face_bytes, stored_reference, upload):
        response = client.post(path, data=form)
        _check(response.status_code, response.json, status, code, f"{name} as {label}")
        if code == "no_face" or code == "unsupported_image":
            assert label.split()[-1] in response.json["error"]["message"]


def test_animated_webp_is_judged_by_its_first_frame(client, face_bytes):
    face = Image.open(io.BytesIO(face_bytes(SAME[1]))).convert("RGB")
    webp = animated("WEBP", face, Image.new("RGB", face.size, BLANK))
    response = client.post("/photo_match", data=files(reference=face_bytes(SAME[0]), sample=webp))
    assert response.status_code == 200
    assert response.json["match"] is True


# --- the request itself is wrong ---


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("text/plain", b"reference=a.jpg"),
        ("application/octet-stream", b"\xff\xd8\xff\xe0" * 100),
        ("application/x-www-form-urlencoded", b"sample=abc&photo=def&threshold=0.5"),
        (
            "multipart/form-data",
            b'--x\r\nContent-Disposition: form-data; name="sample"\r\n\r\n1\r\n--x--',
        ),
        ("multipart/form-data; boundary=x", b"--x\r\nthis is not a part\r\n"),
    ],
)
@pytest.mark.parametrize("path", ["/photo_match", "/cached_match", "/embeddings"])
def test_body_that_is_not_a_usable_multipart_form_is_400_missing_field(
    client, path, content_type, body
):
    response = client.post(path, data=body, headers={"Content-Type": content_type})
    assert_error(response, 400, "missing_field")


def test_part_content_type_is_ignored_and_the_bytes_decide(client, face_bytes):
    data = {
        "reference": (io.BytesIO(face_bytes(SAME[0])), "ref.png", "image/png"),
        "sample": (io.BytesIO(face_bytes(SAME[1])), "notes.txt", "text/plain"),
    }
    response = client.post("/photo_match", data=data)
    assert response.status_code == 200
    assert response.json["match"] is True


@pytest.mark.parametrize("threshold", ["abc", "-1", " ", "0x1", "1e400"])
def test_unusable_threshold_on_cached_match_and_euclidean_is_400(
    client, face_bytes, stored_reference, threshold
):
    form = {
        **files(sample=face_bytes(SAME[1])),
        "reference": stored_reference.decode(),
        "threshold": threshold,
        "metric": "euclidean",
    }
    response = client.post("/cached_match", data=form)
    # only an empty field means "the server's threshold"; a blank one is not an ASCII decimal
    assert_error(response, 400, "invalid_parameter")


@pytest.mark.parametrize(
    "reference",
    [
        json.dumps({"embedding": [0.1] * 511 + [float("nan")]}),
        json.dumps({"embedding": [0.1] * 511, "model": "casia-webface"}),
        json.dumps({"embedding": [True] * 512}),
        json.dumps({"embedding": [[0.1]] * 512}),
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_hostile_json_object_references_are_400(client, face_bytes, reference):
    form = {**files(sample=face_bytes(SAME[1])), "reference": reference}
    response = client.post("/cached_match", data=form)
    assert_error(response, 400, "invalid_embedding")


# --- all of it through Gunicorn: no 5xx, no dropped connection ---


@pytest.fixture(scope="module")
def gunicorn_url(module_gunicorn):
    return module_gunicorn(FACEMATCH_MAX_UPLOAD_MB="2", FACEMATCH_THREADS="2").url


def test_every_bad_input_through_gunicorn_gets_its_answer(gunicorn_url, face_bytes):
    good = face_bytes(SAME[0])
    reference = requests.post(
        gunicorn_url + "/embeddings", files={"photo": ("a.jpg", good)}, timeout=60
    ).content
    seen = []
    for name, (upload, status, code) in bad_inputs(face_bytes).items():
        for path, form in [
            ("/photo_match", {"reference": ("r.jpg", good), "sample": ("s.jpg", upload)}),
            ("/cached_match", {"reference": ("r.json", reference), "sample": ("s.jpg", upload)}),
        ]:
            response = requests.post(gunicorn_url + path, files=form, timeout=60)
            body = response.json()
            _check(response.status_code, body, status, code, f"{name} on {path}")
            seen.append(response.status_code)
    assert len(seen) == 2 * len(NAMES) and max(seen) < 500


def test_upload_over_the_limit_through_gunicorn_is_a_clean_413(gunicorn_url):
    big = b"\xff" * (3 * 1024 * 1024)  # the server above allows 2 MB
    for _ in range(3):
        response = requests.post(
            gunicorn_url + "/embeddings", files={"photo": ("p.jpg", big)}, timeout=60
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    assert requests.get(gunicorn_url + "/ping", timeout=10).status_code == 200
