"""A large JPEG is decoded at the reduced scale the detector needs (``decode_photo``), with
every check of the full decode, and its faces are reported and cut as from the full photo."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from deployment_utils.lfw import place_on_canvas
from facematch.api.app import create_app
from facematch.engine.decoding import MAX_JPEG_SCANS, decode_image, decode_photo
from facematch.engine.engine import FaceEngine
from facematch.engine.weights import resolve_weights
from facematch.errors import ImageTooLarge, UnsupportedImage
from tests import crafted_files
from tests.support import SAME, image_bytes, photo_match

SIDE = 640  # the detector's default FACEMATCH_DETECT_MAX_SIDE
LIMIT = 40_000_000


@pytest.fixture(scope="module")
def portrait(lfw) -> Image.Image:
    with Image.open(lfw / "images" / SAME[0]) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def phone_jpeg(portrait) -> bytes:
    return image_bytes(place_on_canvas(portrait, (4032, 3024), SAME[0]), quality=90)


def test_a_phone_photo_is_decoded_at_a_quarter_and_keeps_its_full_size(phone_jpeg):
    photo = decode_photo(phone_jpeg, LIMIT, "reference", SIDE)
    assert photo.reduction == 4 and photo.image.size == (1008, 756)
    assert (photo.width, photo.height) == (4032, 3024) and photo.scale == (4.0, 4.0)


def test_faces_of_a_reduced_decode_are_in_full_pixels_and_embed_alike(engine, phone_jpeg):
    full = engine.detect(decode_image(phone_jpeg, LIMIT)).primary
    reduced_photo = decode_photo(phone_jpeg, LIMIT, "reference", SIDE)
    reduced = engine.detect(reduced_photo)
    face = reduced.primary
    side = full.box[2] - full.box[0]
    assert (reduced.width, reduced.height) == (4032, 3024)
    assert reduced_photo.reduction == 4  # the face spans more than 160 px at a quarter
    assert np.max(np.abs(np.subtract(face.box, full.box))) <= 0.04 * side
    assert np.max(np.abs(face.landmarks - full.landmarks)) <= 0.04 * side
    assert float(np.dot(*engine.embed([full.crop, face.crop]).vectors)) > 0.98


def test_a_face_too_small_at_a_quarter_is_cut_from_the_full_decode(engine, portrait):
    small = portrait.resize((150, 150))
    canvas = Image.new("RGB", (4032, 3024), (90, 120, 150))
    canvas.paste(small, (1900, 1400))
    data = image_bytes(canvas, quality=90)
    photo = decode_photo(data, LIMIT, "sample", SIDE)
    assert photo.reduction == 4
    found = engine.detect(photo)
    face = found.primary
    assert found.source.reduction == 1 and found.source.image.size == (4032, 3024)
    assert photo.reduction == 4  # the finer decode is a photo of its own: nothing mutated
    expected = engine.cropper.plain_crop(decode_image(data, LIMIT), face.box)
    assert np.array_equal(face.crop, expected)


def test_exif_orientation_turns_the_reduced_decode_as_the_full_one(phone_jpeg):
    with Image.open(io.BytesIO(phone_jpeg)) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # rotated: the camera was held sideways
        data = image_bytes(image, quality=90, exif=exif.tobytes())
    full = decode_image(data, LIMIT)
    photo = decode_photo(data, LIMIT, "reference", SIDE)
    assert full.size == (3024, 4032) == (photo.width, photo.height)
    assert photo.image.size == (756, 1008)
    shrunk = np.asarray(full.resize(photo.image.size, Image.BOX), dtype=float)
    assert np.mean(np.abs(shrunk - np.asarray(photo.image, dtype=float))) < 4


def test_small_jpegs_and_other_formats_are_decoded_in_full(portrait):
    for data in (image_bytes(portrait), image_bytes(portrait.resize((2000, 2000)), "PNG")):
        photo = decode_photo(data, LIMIT, "photo", SIDE)
        assert photo.reduction == 1 and photo.image.size == (photo.width, photo.height)


def test_the_reduced_decode_keeps_the_scan_limit_and_the_memory_budget(portrait):
    canvas = place_on_canvas(portrait, (4032, 3024), SAME[0])
    scans = crafted_files.jpeg_with_scans(canvas, MAX_JPEG_SCANS + 1)
    with pytest.raises(UnsupportedImage, match="scans"):
        decode_photo(scans, LIMIT, "sample", SIDE)
    with pytest.raises(ImageTooLarge):
        decode_photo(image_bytes(canvas, quality=90), 4032 * 3024 - 1, "sample", SIDE)


def test_photo_match_with_reduced_decode_answers_in_full_pixels_like_the_full_decode(
    settings, engine, phone_jpeg, lfw
):
    with Image.open(lfw / "images" / SAME[1]) as image:
        sample = image_bytes(
            place_on_canvas(image.convert("RGB"), (4032, 3024), SAME[1]), quality=90
        )
    options = dataclasses.replace(engine.options, reduced_decode=True)
    weights = resolve_weights(settings.model, settings.weights, settings.data_path)
    reduced_app = create_app(
        settings.replace(reduced_decode=True), engine=FaceEngine(options, weights)
    )
    full_app = create_app(settings, engine=engine)
    full = photo_match(full_app.test_client(), phone_jpeg, sample).json
    reduced = photo_match(reduced_app.test_client(), phone_jpeg, sample).json
    assert full["match"] is reduced["match"] is True
    assert abs(full["distance"] - reduced["distance"]) < 0.05
    for role in ("reference", "sample"):
        a, b = full["faces"][role], reduced["faces"][role]
        assert a["image_size"] == b["image_size"] == [4032, 3024]
        side = a["box"][2] - a["box"][0]
        assert np.max(np.abs(np.subtract(a["box"], b["box"]))) <= 0.04 * side
        width = a["quality"]["width_px"]
        assert abs(width - b["quality"]["width_px"]) <= 0.04 * width  # full pixels, not 1/4
