"""Fuzzing of image decoding and reference parsing (issue 10, acceptance): mutations of valid
files (photos of a face as JPEG, PNG and WebP; the JSON, .npy and .pt references /embeddings
made of it) with a fixed seed and a fixed count: byte flips, truncation, insertion, duplicated
runs, boundary values written over the first bytes, and header fields changed with the file
kept consistent (PNG chunk CRCs recomputed, the .pt archive rewritten, the .npy header re-padded).
Every case goes through the app in-process; every tenth also through a real Gunicorn. No answer
may be a 5xx, and each 4xx must be one the API documents for that slot. Bursts (issue 25): each
mutated photo is also sent as the second sample of a /cached_match burst."""

from __future__ import annotations

import io
import random
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator

import pytest
import requests
from PIL import Image

from tests import crafted_files
from tests.support import SAME, embedding_of, image_bytes

SEED = 10
CASES = 100  # per seed file: 600 in all
THROUGH_GUNICORN = 10  # every tenth case
BOUNDARY_VALUES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
#: status -> error code a photo slot may answer (200: decoded, a face found).
PHOTO_ANSWERS = {200: None, 413: "image_too_large", 415: "unsupported_image", 422: "no_face"}
#: status -> error code for a reference; 422: the reference was accepted, the sample is blank.
REFERENCE_ANSWERS = {400: "invalid_embedding", 422: "no_face"}
#: a burst of a good photo and a mutated one: the good one is always used, so never no_face;
#: a mutation that moves the face off its person is refused as not one person.
BURST_ANSWERS = {
    200: None,
    413: "image_too_large",
    415: "unsupported_image",
    422: "inconsistent_samples",
}
BLANK_SAMPLE = image_bytes(Image.new("RGB", (32, 32), (200, 180, 160)), "PNG")


def _flip(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return "flip", bytes(out)


def _truncate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    return "truncate", data[: rng.randrange(len(data))]


def _insert(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    at = rng.randrange(len(data))
    return "insert", data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def _duplicate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    start = rng.randrange(len(data))
    run = data[start : start + rng.randint(1, 512)]
    at = rng.randrange(len(data))
    return "duplicate", data[:at] + run * rng.randint(1, 20) + data[at:]


def _boundary(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A boundary value, 1, 2 or 4 bytes, either endianness, over the first 200 bytes."""
    size = rng.choice((1, 2, 4))
    value = rng.choice(BOUNDARY_VALUES) & ((1 << (8 * size)) - 1)
    encoded = value.to_bytes(size, rng.choice(("big", "little")))
    at = rng.randrange(min(len(data), 200))
    return "boundary", data[:at] + encoded + data[at + size :]


GENERIC = (_flip, _truncate, _insert, _duplicate, _boundary)


# --- header fields, with the file kept otherwise consistent ---


def _png_header(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    fields = list(struct.unpack(">IIBBBBB", data[16:29]))
    index = rng.randrange(len(fields))
    fields[index] = rng.choice(BOUNDARY_VALUES + (2, 3, 4, 6, 8, 16, 100_000))
    fields[index] &= 0xFFFFFFFF if index < 2 else 0xFF
    body = struct.pack(">IIBBBBB", *fields)
    chunk = data[12:16] + body
    return "png IHDR", data[:16] + body + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def _jpeg_header(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Change the start-of-frame's precision, height, width, components or sampling factors."""
    sof = re.search(rb"\xff[\xc0\xc2]", data).start()
    offsets = [sof + 4, sof + 5, sof + 7, sof + 9, sof + 11, sof + 14, sof + 17]
    at = rng.choice(offsets)
    size = 2 if at in (sof + 5, sof + 7) else 1
    value = rng.choice(BOUNDARY_VALUES + (3, 4, 0x11, 0x22, 0x44)) & ((1 << (8 * size)) - 1)
    return "jpeg SOF", data[:at] + value.to_bytes(size, "big") + data[at + size :]


def _webp_header(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Change the RIFF size, the chunk size or the frame's declared dimensions."""
    at = rng.choice((4, 16, 26, 28))
    value = rng.choice(BOUNDARY_VALUES) & (0xFFFF if at >= 26 else 0xFFFFFFFF)
    size = 2 if at >= 26 else 4
    return "webp header", data[:at] + value.to_bytes(size, "little") + data[at + size :]


def _json_field(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    tokens = ("1" * 400, "1" * 5000, "1e400", "-0", "NaN", "[]", '"x"', "true", "null", "{}")
    numbers = [m.span() for m in re.finditer(rb"-?\d[\d.eE+-]*", data)]
    start, end = rng.choice(numbers)
    return "json number", data[:start] + rng.choice(tokens).encode() + data[end:]


def _npy_field(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    shape = rng.choice([(2**40,), (0,), (512, 512), (), (1, 1, 512), (256,), (1, 512), (-1,)])
    descr = rng.choice(["<f4", "|O", "<c8", "<f2", ">f8", "|V4", "<U4", "<i8", "|b1", "<M8"])
    body = data[-2048:][: rng.choice((2048, 1024, 4096, 0))]
    return "npy header", crafted_files.npy_declaring(shape, descr, body, rng.random() < 0.2)


def _pt_field(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Mutate one entry of the archive (its pickle, storage or a version file), or add or drop
    one, and write the archive again so that its CRCs match."""
    source = zipfile.ZipFile(io.BytesIO(data))
    items = source.infolist()
    target_name = rng.choice(items).filename
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for item in items:
            content = source.read(item)
            if item.filename == target_name:
                _, content = rng.choice((_flip, _truncate, _insert, _boundary))(
                    content or b"0", rng
                )
                if rng.random() < 0.1:
                    continue  # drop it
            archive.writestr(item, content)
        if rng.random() < 0.1:
            archive.writestr(items[0].filename.split("/")[0] + "/data/1", b"\0" * 2048)
    return f"pt entry {target_name.split('/', 1)[-1]}", out.getvalue()


def cases(seed_file: bytes, header: Callable, salt: int) -> Iterator[tuple[str, bytes]]:
    """``CASES`` mutations of ``seed_file``: a third of them to header fields."""
    rng = random.Random(SEED * 1000 + salt)
    for index in range(CASES):
        mutate = header if index % 3 == 0 else rng.choice(GENERIC)
        label, data = mutate(seed_file, rng)
        yield f"#{index} {label}", data


# --- the seeds ---


@pytest.fixture(scope="module")
def photos(face_bytes) -> dict[str, bytes]:
    face = Image.open(io.BytesIO(face_bytes(SAME[0]))).convert("RGB")
    return {
        "jpeg": face_bytes(SAME[0]),
        "png": image_bytes(face, "PNG"),
        "webp": image_bytes(face, "WEBP", quality=80),
    }


@pytest.fixture(scope="module")
def references(settings, engine, face_bytes) -> dict[str, bytes]:
    from facematch.api.app import create_app

    client = create_app(settings, engine=engine).test_client()
    return {
        fmt: embedding_of(client, face_bytes(SAME[0]), fmt).get_data()
        for fmt in ("json", "npy", "pt")
    }


@pytest.fixture(scope="module")
def gunicorn_url(module_gunicorn):
    return module_gunicorn().url


def _check(what: str, status: int, body: dict, answers: dict) -> str | None:
    """None if ``status``/``body`` is an answer the slot documents; otherwise what was wrong."""
    if status not in answers:
        return f"{what}: {status} {body}"
    code = answers[status]
    if code is not None and body.get("error", {}).get("code") != code:
        return f"{what}: {status} with code {body}"
    return None


IMAGE_HEADERS = {"jpeg": _jpeg_header, "png": _png_header, "webp": _webp_header}
REFERENCE_HEADERS = {"json": _json_field, "npy": _npy_field, "pt": _pt_field}


@pytest.mark.parametrize("fmt", sorted(IMAGE_HEADERS))
def test_mutated_photos_never_get_a_5xx(client, photos, gunicorn_url, fmt):
    wrong, statuses = [], []
    salt = sorted(IMAGE_HEADERS).index(fmt)
    for index, (label, data) in enumerate(cases(photos[fmt], IMAGE_HEADERS[fmt], salt)):
        response = client.post("/embeddings", data={"photo": (io.BytesIO(data), "p")})
        statuses.append(response.status_code)
        wrong.append(_check(label, response.status_code, response.json, PHOTO_ANSWERS))
        if index % THROUGH_GUNICORN == 0:
            over_http = requests.post(
                gunicorn_url + "/embeddings", files={"photo": ("p", data)}, timeout=60
            )
            wrong.append(
                _check(
                    f"{label} (gunicorn)", over_http.status_code, over_http.json(), PHOTO_ANSWERS
                )
            )
    assert len(statuses) == CASES
    assert [w for w in wrong if w] == []
    assert len(set(statuses)) > 1  # the mutations reach both the decoder's refusals and faces


@pytest.mark.parametrize("fmt", sorted(REFERENCE_HEADERS))
def test_mutated_references_never_get_a_5xx(client, references, gunicorn_url, fmt):
    wrong, statuses = [], []
    salt = 10 + sorted(REFERENCE_HEADERS).index(fmt)
    for index, (label, data) in enumerate(cases(references[fmt], REFERENCE_HEADERS[fmt], salt)):
        form = {"reference": (io.BytesIO(data), "r"), "sample": (io.BytesIO(BLANK_SAMPLE), "s")}
        response = client.post("/cached_match", data=form)
        statuses.append(response.status_code)
        wrong.append(_check(label, response.status_code, response.json, REFERENCE_ANSWERS))
        if index % THROUGH_GUNICORN == 0:
            files = {"reference": ("r", data), "sample": ("s", BLANK_SAMPLE)}
            over_http = requests.post(gunicorn_url + "/cached_match", files=files, timeout=60)
            answer = over_http.json()
            wrong.append(
                _check(f"{label} (gunicorn)", over_http.status_code, answer, REFERENCE_ANSWERS)
            )
    assert len(statuses) == CASES
    assert [w for w in wrong if w] == []
    assert set(statuses) == {400, 422}  # some mutations are refused, some still parse


@pytest.mark.parametrize("fmt", sorted(IMAGE_HEADERS))
def test_mutated_burst_samples_never_get_a_5xx(client, photos, references, gunicorn_url, fmt):
    wrong, used = [], []
    salt = 20 + sorted(IMAGE_HEADERS).index(fmt)
    for index, (label, data) in enumerate(cases(photos[fmt], IMAGE_HEADERS[fmt], salt)):
        burst = [("sample", ("s1", photos["jpeg"])), ("sample", ("s2", data))]
        form = {
            "reference": (io.BytesIO(references["json"]), "r"),
            "sample": [(io.BytesIO(content), name) for _, (name, content) in burst],
        }
        response = client.post("/cached_match", data=form)
        wrong.append(_check(label, response.status_code, response.json, BURST_ANSWERS))
        if response.status_code == 200:
            used.append(response.json["samples"]["used"])
            if response.json["samples"]["sent"] != 2:
                wrong.append(f"{label}: samples {response.json['samples']}")
        if index % THROUGH_GUNICORN == 0:
            files = [("reference", ("r", references["json"])), *burst]
            over_http = requests.post(gunicorn_url + "/cached_match", files=files, timeout=60)
            wrong.append(
                _check(
                    f"{label} (gunicorn)", over_http.status_code, over_http.json(), BURST_ANSWERS
                )
            )
    assert [w for w in wrong if w] == []
    assert set(used) <= {1, 2} and 2 in used  # mutations kept and dropped from the burst


def test_the_fuzzer_is_deterministic(photos):
    first = [data for _, data in cases(photos["png"], _png_header, 0)]
    again = [data for _, data in cases(photos["png"], _png_header, 0)]
    assert first == again
    assert len({zlib.crc32(d) for d in first}) > CASES * 0.75  # header edits may repeat
