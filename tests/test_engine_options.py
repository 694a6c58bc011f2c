"""FaceEngine's speed options give the same faces and embeddings as the plain path."""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarking_utils.inputs import place_on_canvas
from deployment_utils.weights import load_state_dict, resolve_weights
from photo_inferencing import (
    EMBEDDING_CENTERS,
    FaceEngine,
    combine_flipped,
    decode_center,
    int8_path,
)

PHOTO = "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
OTHER = "Abel_Pacheco/Abel_Pacheco_0001.jpg"


@pytest.fixture(scope="module")
def state_dict(settings):
    return load_state_dict(resolve_weights(settings.model, settings.weights, settings.data_path))


def build(state_dict, **options) -> FaceEngine:
    return FaceEngine(state_dict, "casia-webface", torch.device("cpu"), **options)


@pytest.fixture(scope="module")
def torch_engine(state_dict):
    return build(state_dict, embed_backend="torch", detect_backend="torch")


@pytest.fixture(scope="module")
def onnx_engine(state_dict):
    return build(state_dict, embed_backend="onnx", detect_backend="onnx", threads=1)


@pytest.fixture(scope="module")
def photo(lfw) -> Image.Image:
    with Image.open(lfw / "images" / PHOTO) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def other(lfw) -> Image.Image:
    with Image.open(lfw / "images" / OTHER) as image:
        return image.convert("RGB")


@contextmanager
def detect_max_side(engine: FaceEngine, side: int):
    previous, engine.detect_max_side = engine.detect_max_side, side
    try:
        yield engine
    finally:
        engine.detect_max_side = previous


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080), (4032, 3024)])
def test_detection_on_a_downscaled_copy_finds_the_full_size_box(torch_engine, photo, size):
    canvas = place_on_canvas(photo, size, PHOTO)
    with detect_max_side(torch_engine, 0):
        full = torch_engine.detect(canvas).primary
    with detect_max_side(torch_engine, 640):
        fast = torch_engine.detect(canvas).primary
    side = full.box[2] - full.box[0]
    assert side > 100
    assert np.max(np.abs(np.subtract(fast.box, full.box))) <= 0.06 * side
    cosine = float(np.dot(*torch_engine.embed([full.crop, fast.crop]).vectors))
    assert cosine > 0.97


def test_downscaled_detection_crops_from_the_original_pixels(torch_engine, photo):
    canvas = place_on_canvas(photo, (1920, 1080), PHOTO)
    with detect_max_side(torch_engine, 640):
        search, scale = torch_engine.search_image(canvas)
        face = torch_engine.detect(canvas).primary
    assert search.size == (640, 360) and scale == pytest.approx(1 / 3)
    assert torch.equal(face.crop, torch_engine._crop(canvas, face.box))


def test_a_photo_smaller_than_detect_max_side_is_searched_as_it_is(torch_engine, photo):
    with detect_max_side(torch_engine, 640):
        search, scale = torch_engine.search_image(photo)
    assert search is photo and scale == 1.0


def test_onnx_embedding_matches_torch_within_1e_4(torch_engine, onnx_engine, photo, other):
    crops = [torch_engine.detect(photo).primary.crop, torch_engine.detect(other).primary.crop]
    expected = torch_engine.embed(crops).vectors
    got = onnx_engine.embed(crops).vectors
    assert got.shape == (2, 512) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) < 1e-4


def test_onnx_detector_finds_the_torch_boxes_and_landmarks(torch_engine, onnx_engine, photo):
    expected = torch_engine.find_faces(photo)
    got = onnx_engine.find_faces(photo)
    assert got.boxes.shape == expected.boxes.shape
    assert np.allclose(got.boxes, expected.boxes, atol=0.05)
    assert np.allclose(got.landmarks, expected.landmarks, atol=0.05)
    assert np.allclose(got.probs, expected.probs, atol=1e-4)


@pytest.fixture(scope="module")
def pil_engine(state_dict):
    return build(state_dict, embed_backend="torch", detect_backend="onnx-pil", threads=1)


@pytest.mark.parametrize("name", [PHOTO, OTHER])
def test_pillow_detector_finds_the_torch_faces_within_its_resampling_jitter(
    torch_engine, pil_engine, lfw, name
):
    """The ONNX path resamples with Pillow's exact-area filter, facenet-pytorch with whole-pixel
    windows; boxes move by up to a few percent of their side (the chin edge most), as MTCNN's do
    between image scales. LFW accuracy with each is in the README."""
    with Image.open(lfw / "images" / name) as image:
        image = image.convert("RGB")
    expected = torch_engine.detect(image).primary
    got = pil_engine.detect(image).primary
    side = expected.box[2] - expected.box[0]
    assert np.max(np.abs(np.subtract(got.box, expected.box))) <= 0.08 * side
    assert np.max(np.abs(got.landmarks - expected.landmarks)) <= 0.05 * side
    assert got.probability == pytest.approx(expected.probability, abs=1e-2)
    cosine = float(np.dot(*torch_engine.embed([expected.crop, got.crop]).vectors))
    assert cosine > 0.97


def test_faces_carry_their_landmarks_in_original_pixels(torch_engine, photo):
    face = torch_engine.detect(photo).primary
    x1, y1, x2, y2 = face.box
    assert face.landmarks.shape == (5, 2)
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))


def test_flip_embedding_is_the_normalised_sum_of_crop_and_mirror(state_dict, torch_engine, photo):
    crop = torch_engine.detect(photo).primary.crop
    flipping = build(state_dict, flip_embeddings=True)
    got = flipping.embed([crop]).vectors
    plain = torch_engine.embed([crop, torch.flip(crop, dims=[2])]).vectors
    assert np.allclose(got, combine_flipped(plain[:1], plain[1:]), atol=1e-5)
    assert np.linalg.norm(got[0]) == pytest.approx(1.0, abs=1e-5)
    mirrored = flipping.embed([torch.flip(crop, dims=[2])]).vectors
    assert np.allclose(got, mirrored, atol=1e-5)


def test_a_batch_embeds_each_crop_as_it_would_alone(onnx_engine, photo, other):
    crops = [onnx_engine.detect(photo).primary.crop, onnx_engine.detect(other).primary.crop]
    together = onnx_engine.embed(crops).vectors
    alone = np.concatenate([onnx_engine.embed([c]).vectors for c in crops])
    assert np.allclose(together, alone, atol=1e-5)


def test_unknown_backend_is_refused(state_dict):
    with pytest.raises(ValueError, match="embed_backend"):
        build(state_dict, embed_backend="tensorflow")


def test_settings_choose_the_backends_and_detection_sizes(settings):
    chosen = settings.replace(
        embed_backend="onnx",
        detect_backend="torch",
        detect_max_side=800,
        min_face_size=40,
        torch_threads=1,
    )
    engine = FaceEngine.from_settings(chosen)
    assert (engine.embed_backend, engine.detect_backend, engine.detect_max_side) == (
        "onnx",
        "torch",
        800,
    )
    assert engine.min_face_size == 40
    assert engine.onnx_embedder is not None and engine.embedder is None


def _embed_in_child(engine: FaceEngine, crop: torch.Tensor, queue) -> None:
    queue.put(engine.embed([crop]).vectors)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_onnx_engine_built_before_a_fork_works_in_the_child(
    state_dict, torch_engine, photo, threads
):
    """As under Gunicorn's preload: built in the parent, first used in the forked worker."""
    engine = build(state_dict, embed_backend="onnx", detect_backend="onnx", threads=threads)
    crop = torch_engine.detect(photo).primary.crop
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_embed_in_child, args=(engine, crop, queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(30)
    assert child.exitcode == 0
    assert np.allclose(got, torch_engine.embed([crop]).vectors, atol=1e-4)


def test_int8_embedder_stays_within_a_small_angle_of_float(settings, torch_engine, photo, other):
    int8 = settings.replace(
        embed_backend="onnx-int8", detect_backend="torch", torch_threads=1, center_embeddings=False
    )
    if not int8_path(int8).is_file():
        pytest.skip(f"no int8 embedder at {int8_path(int8)}: python -m benchmarking_utils.quantize")
    crops = [torch_engine.detect(photo).primary.crop, torch_engine.detect(other).primary.crop]
    got = FaceEngine.from_settings(int8).embed(crops).vectors
    expected = torch_engine.embed(crops).vectors
    assert np.all(np.sum(got * expected, axis=1) > 0.995)


def test_int8_backend_without_its_graph_is_refused(state_dict):
    with pytest.raises(ValueError, match="int8"):
        build(state_dict, embed_backend="onnx-int8")


def test_centred_embeddings_are_unit_vectors_with_the_centre_removed(
    state_dict, torch_engine, photo
):
    crop = torch_engine.detect(photo).primary.crop
    center = decode_center(EMBEDDING_CENTERS["casia-webface"])
    centred = build(state_dict, center=center).embed([crop]).vectors[0]
    plain = torch_engine.embed([crop]).vectors[0]
    assert np.linalg.norm(centred) == pytest.approx(1.0, abs=1e-5)
    expected = (plain - center) / np.linalg.norm(plain - center)
    assert np.allclose(centred, expected, atol=1e-5)


def test_a_face_below_min_face_size_is_found_by_the_search_at_20(torch_engine, photo):
    small = photo.resize((120, 120))
    torch_engine.min_face_size = 200
    try:
        face = torch_engine.detect(small).primary
        first = torch_engine._mtcnn(small, 200)
    finally:
        torch_engine.min_face_size = 20
    assert len(first.boxes) == 0
    assert face is not None and face.box[2] - face.box[0] > 30


def test_detections_match_facenet_pytorch_mtcnn(torch_engine, photo):
    boxes, probs, points = torch_engine.detector.detect(photo, landmarks=True)  # largest first
    found = torch_engine.find_faces(photo)
    order = np.argsort(
        -(found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1]),
        kind="stable",
    )
    assert np.allclose(found.boxes[order], np.asarray(boxes, dtype=float), atol=1e-3)
    assert np.allclose(found.probs[order], np.asarray(probs, dtype=float), atol=1e-6)
    assert np.allclose(found.landmarks[order], np.asarray(points, dtype=float), atol=1e-3)
