"""FaceEngine's options: validated once, and each speed option gives the plain path's faces and
embeddings. Engines with other options are built from ``dataclasses.replace`` of the options."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from facenet_pytorch import MTCNN
from PIL import Image

from deployment_utils.lfw import place_on_canvas
from deployment_utils.quantize import (
    build_int8_graph,
    calibration_crops,
    devtrain_sample,
    read_crops,
    write_crops,
    write_probe,
)
from facematch.config import ConfigError
from facematch.engine.backends.graph_files import current_graph
from facematch.engine.backends.onnx_int8_runtime import INT8_RECIPE, probe_path
from facematch.engine.backends.onnx_runtime import OnnxRuntime
from facematch.engine.backends.pytorch_runtime import TorchRuntime
from facematch.engine.detection import RETRY_MIN_FACE_SIZE
from facematch.engine.embedding import CENTERS_FILE, combine_flipped, load_centers
from facematch.engine.engine import FaceEngine
from facematch.engine.options import EngineOptions
from facematch.engine.weights import WeightsError, load_state_dict, resolve_weights

PHOTO = "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
OTHER = "Abel_Pacheco/Abel_Pacheco_0001.jpg"
SAME_PERSON = "Aaron_Peirsol/Aaron_Peirsol_0002.jpg"


@pytest.fixture(scope="module")
def weights(settings):
    return resolve_weights(settings.model, settings.weights, settings.data_path)


@pytest.fixture(scope="module")
def state_dict(weights):
    return load_state_dict(weights)


@pytest.fixture(scope="module")
def plain(settings) -> EngineOptions:
    """The plain path: PyTorch everywhere, full-size search from 20 px, no flip, no centring."""
    return EngineOptions.from_settings(
        settings.replace(
            device="cpu",
            torch_threads=1,
            margin=32,
            face_selection="center_weighted_size",
            detect_max_side=0,
            min_face_size=20,
            embed_backend="torch",
            detect_backend="torch",
            flip_embeddings=False,
            center_embeddings=False,
            align_faces=False,
        )
    )


@pytest.fixture(scope="module")
def build(weights, state_dict, plain):
    """An engine on the plain options with ``changes`` applied."""

    def engine(**changes) -> FaceEngine:
        return FaceEngine(dataclasses.replace(plain, **changes), weights, state_dict)

    return engine


@pytest.fixture(scope="module")
def torch_engine(build):
    return build()


@pytest.fixture(scope="module")
def onnx_engine(build):
    return build(embed_backend="onnx", detect_backend="onnx")


@pytest.fixture(scope="module")
def downscaling_engine(build):
    return build(detect_max_side=640)


@pytest.fixture(scope="module")
def pil_engine(build):
    return build(detect_backend="onnx-pil")


@pytest.fixture(scope="module")
def photo(lfw) -> Image.Image:
    with Image.open(lfw / "images" / PHOTO) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def other(lfw) -> Image.Image:
    with Image.open(lfw / "images" / OTHER) as image:
        return image.convert("RGB")


@pytest.mark.parametrize(
    ("option", "value", "variable"),
    [
        ("margin", -1, "FACEMATCH_MARGIN"),
        ("margin", 160, "FACEMATCH_MARGIN"),
        ("face_selection", "biggest", "FACEMATCH_FACE_SELECTION"),
        ("detect_max_side", -1, "FACEMATCH_DETECT_MAX_SIDE"),
        ("min_face_size", 0, "FACEMATCH_MIN_FACE_SIZE"),
        ("threads", 0, "FACEMATCH_TORCH_THREADS"),
        ("embed_backend", "tensorflow", "FACEMATCH_EMBED_BACKEND"),
        ("detect_backend", "tensorrt", "FACEMATCH_DETECT_BACKEND"),
        ("device", "gpu", "FACEMATCH_DEVICE"),
        ("flip_embeddings", "yes", "FACEMATCH_FLIP_EMBEDDINGS"),
    ],
)
def test_an_unusable_option_is_refused_naming_its_variable(plain, option, value, variable):
    with pytest.raises(ConfigError, match=f"^{variable}={value!r}"):
        dataclasses.replace(plain, **{option: value})


def test_settings_with_an_unknown_backend_are_refused_before_anything_loads(settings):
    with pytest.raises(ConfigError, match="FACEMATCH_EMBED_BACKEND='tensorflow'"):
        FaceEngine.from_settings(settings.replace(embed_backend="tensorflow"))


def test_options_are_frozen(plain):
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.margin = 0


def test_onnx_on_another_device_is_switched_to_torch_in_one_logged_line(settings, caplog):
    """torch's ``meta`` device stands for any device but the CPU (there is no GPU here)."""
    with caplog.at_level(logging.WARNING, logger="facematch.engine.options"):
        options = EngineOptions.from_settings(
            settings.replace(device="meta", embed_backend="onnx", detect_backend="onnx-pil")
        )
    assert (options.embed_backend, options.detect_backend, options.device) == (
        "torch",
        "torch",
        "meta",
    )
    (record,) = caplog.records
    assert "FACEMATCH_EMBED_BACKEND=onnx" in record.message
    assert "FACEMATCH_DETECT_BACKEND=onnx-pil" in record.message
    assert "torch on meta" in record.message


def test_options_that_ask_for_onnx_on_another_device_are_refused(plain):
    with pytest.raises(ConfigError, match="need the CPU"):
        dataclasses.replace(plain, device="cuda", embed_backend="onnx")


def test_settings_choose_the_backends_and_detection_sizes(settings):
    chosen = settings.replace(
        device="cpu",
        embed_backend="onnx",
        detect_backend="torch",
        detect_max_side=800,
        min_face_size=40,
        torch_threads=1,
    )
    engine = FaceEngine.from_settings(chosen)
    options = engine.options
    assert (options.embed_backend, options.detect_backend, options.detect_max_side) == (
        "onnx",
        "torch",
        800,
    )
    assert engine.detector.min_face_size == 40 and engine.detector.detect_max_side == 800
    assert isinstance(engine.embedder.runtime, OnnxRuntime)
    assert all(isinstance(net, TorchRuntime) for net in engine.detector.networks)


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080), (4032, 3024)])
def test_detection_on_a_downscaled_copy_finds_the_full_size_box(
    torch_engine, downscaling_engine, photo, size
):
    canvas = place_on_canvas(photo, size, PHOTO)
    full = torch_engine.detect(canvas).primary
    fast = downscaling_engine.detect(canvas).primary
    side = full.box[2] - full.box[0]
    assert side > 100
    assert np.max(np.abs(np.subtract(fast.box, full.box))) <= 0.06 * side
    cosine = float(np.dot(*torch_engine.embed([full.crop, fast.crop]).vectors))
    assert cosine > 0.97


def test_downscaled_detection_crops_from_the_original_pixels(downscaling_engine, photo):
    canvas = place_on_canvas(photo, (1920, 1080), PHOTO)
    search, scale = downscaling_engine.detector.search_image(canvas)
    face = downscaling_engine.detect(canvas).primary
    assert search.size == (640, 360) and scale == pytest.approx(1 / 3)
    assert np.array_equal(face.crop, downscaling_engine.cropper.plain_crop(canvas, face.box))


def test_a_photo_smaller_than_detect_max_side_is_searched_as_it_is(downscaling_engine, photo):
    search, scale = downscaling_engine.detector.search_image(photo)
    assert search is photo and scale == 1.0


def test_onnx_embedding_matches_torch_within_1e_4(torch_engine, onnx_engine, photo, other):
    crops = [torch_engine.detect(photo).primary.crop, torch_engine.detect(other).primary.crop]
    expected = torch_engine.embed(crops).vectors
    got = onnx_engine.embed(crops).vectors
    assert got.shape == (2, 512) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) < 1e-4


def test_onnx_detector_finds_the_torch_boxes_and_landmarks(torch_engine, onnx_engine, photo):
    expected = torch_engine.detector.find_faces(photo)
    got = onnx_engine.detector.find_faces(photo)
    assert got.boxes.shape == expected.boxes.shape
    assert np.allclose(got.boxes, expected.boxes, atol=0.05)
    assert np.allclose(got.landmarks, expected.landmarks, atol=0.05)
    assert np.allclose(got.probs, expected.probs, atol=1e-4)


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


def test_flip_embedding_is_the_normalised_sum_of_crop_and_mirror(build, torch_engine, photo):
    crop = torch_engine.detect(photo).primary.crop
    flipping = build(flip_embeddings=True)
    got = flipping.embed([crop]).vectors
    plain = torch_engine.embed([crop, crop[:, :, ::-1]]).vectors
    assert np.allclose(got, combine_flipped(plain[:1], plain[1:]), atol=1e-5)
    assert np.linalg.norm(got[0]) == pytest.approx(1.0, abs=1e-5)
    mirrored = flipping.embed([crop[:, :, ::-1]]).vectors
    assert np.allclose(got, mirrored, atol=1e-5)


def test_a_batch_embeds_each_crop_as_it_would_alone(onnx_engine, photo, other):
    crops = [onnx_engine.detect(photo).primary.crop, onnx_engine.detect(other).primary.crop]
    together = onnx_engine.embed(crops).vectors
    alone = np.concatenate([onnx_engine.embed([c]).vectors for c in crops])
    assert np.allclose(together, alone, atol=1e-5)


def _embed_in_child(engine: FaceEngine, crop: np.ndarray, queue) -> None:
    queue.put(engine.embed([crop]).vectors)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_onnx_engine_built_before_a_fork_works_in_the_child(build, torch_engine, photo, threads):
    """As under Gunicorn's preload: built in the parent, first used in the forked worker."""
    engine = build(embed_backend="onnx", detect_backend="onnx", threads=threads)
    crop = torch_engine.detect(photo).primary.crop
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_embed_in_child, args=(engine, crop, queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(30)
    assert child.exitcode == 0
    assert np.allclose(got, torch_engine.embed([crop]).vectors, atol=1e-4)


@pytest.mark.slow
def test_int8_embedder_built_from_a_few_crops_stays_within_a_small_angle_of_float(
    weights, build, torch_engine, lfw, photo, other, tmp_path
):
    """The int8 graph is built here, as ``python -m deployment_utils.quantize`` builds it, but
    calibrated on eight DevTrain photos (the tool uses 200), then served by the engine."""
    calibration = calibration_crops(torch_engine, devtrain_sample(lfw, 8, seed=0), progress=False)
    graph = tmp_path / "casia-webface.int8.onnx"
    build_int8_graph(weights, calibration, graph, "casia-webface")
    write_probe(graph, weights, "casia-webface")  # the engine checks the graph with it at start
    int8 = build(embed_backend="onnx-int8", int8_graph=graph)
    crops = [torch_engine.detect(photo).primary.crop, torch_engine.detect(other).primary.crop]
    got = int8.embed(crops).vectors
    expected = torch_engine.embed(crops).vectors
    assert np.all(np.sum(got * expected, axis=1) > 0.995)
    assert not np.allclose(got, expected, atol=1e-4)  # it is the quantized graph that ran


def test_int8_backend_without_its_graph_is_refused_naming_the_build_command(build, tmp_path):
    with pytest.raises(ValueError, match="onnx-int8 needs .*deployment_utils.graphs build"):
        build(embed_backend="onnx-int8", int8_graph=tmp_path / "absent.int8.onnx")


def test_an_int8_graph_quantized_another_way_is_refused_until_rebuilt(build, plain, tmp_path):
    """A graph noted with another recipe (as one built before 7-bit weights) is not served."""
    import json
    import shutil

    built = plain.int8_graph
    graph = tmp_path / built.name
    shutil.copy(built, graph)
    shutil.copy(probe_path(built), probe_path(graph))  # its kernel probe goes with it
    note = json.loads(built.with_name(built.name + ".json").read_text())
    assert note["recipe"] == INT8_RECIPE
    graph.with_name(graph.name + ".json").write_text(json.dumps(note))
    assert build(embed_backend="onnx-int8", int8_graph=graph).embedder is not None
    note["recipe"] = {**INT8_RECIPE, "reduce_range": False}
    graph.with_name(graph.name + ".json").write_text(json.dumps(note))
    with pytest.raises(ValueError, match="quantization; rebuild it with .*graphs build"):
        build(embed_backend="onnx-int8", int8_graph=graph)


def test_the_centres_file_holds_each_models_vector_with_its_provenance():
    import json

    entry = json.loads(CENTERS_FILE.read_text())["models"]["casia-webface"]
    center = load_centers()["casia-webface"]
    assert center.shape == (512,) and center.dtype == np.float32
    assert np.array_equal(center.astype(np.float16).astype(np.float32), center)
    assert float(np.linalg.norm(center)) == pytest.approx(entry["norm"], abs=1e-4)
    assert entry["count"] > 3000 and "pairsDevTrain" in entry["images"]
    assert entry["built"]["commit"] and entry["built"]["command"]


def test_centred_embeddings_are_unit_vectors_with_the_centre_removed(build, torch_engine, photo):
    crop = torch_engine.detect(photo).primary.crop
    center = load_centers()["casia-webface"]
    centred = build(center_embeddings=True).embed([crop]).vectors[0]
    plain = torch_engine.embed([crop]).vectors[0]
    assert np.linalg.norm(centred) == pytest.approx(1.0, abs=1e-5)
    expected = (plain - center) / np.linalg.norm(plain - center)
    assert np.allclose(centred, expected, atol=1e-5)


def test_a_face_below_min_face_size_is_found_by_the_search_at_20(build, photo):
    small = photo.resize((120, 120))
    engine = build(min_face_size=200)
    assert len(engine.detector.run_mtcnn(small, 200).boxes) == 0
    assert len(engine.detector.run_mtcnn(small, RETRY_MIN_FACE_SIZE).boxes) > 0
    face = engine.detect(small).primary
    assert face is not None and face.box[2] - face.box[0] > 30


def test_detections_match_facenet_pytorch_mtcnn(torch_engine, photo):
    mtcnn = MTCNN(
        image_size=160,
        margin=32,
        min_face_size=20,
        thresholds=[0.6, 0.7, 0.7],
        factor=0.709,
        post_process=True,
        keep_all=True,
    ).eval()
    boxes, probs, points = mtcnn.detect(photo, landmarks=True)  # largest first
    found = torch_engine.detector.find_faces(photo)
    order = np.argsort(
        -(found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1]),
        kind="stable",
    )
    assert np.allclose(found.boxes[order], np.asarray(boxes, dtype=float), atol=1e-3)
    assert np.allclose(found.probs[order], np.asarray(probs, dtype=float), atol=1e-6)
    assert np.allclose(found.landmarks[order], np.asarray(points, dtype=float), atol=1e-3)


def test_shipped_calibration_crops_round_trip_exactly(torch_engine, photo, other, tmp_path):
    crops = np.stack([torch_engine.detect(p).primary.crop for p in (photo, other)])
    path = tmp_path / "crops.png"
    write_crops(crops, path)
    assert np.array_equal(read_crops(path), crops)
    shipped = read_crops()
    assert shipped.shape == (200, 3, 160, 160) and shipped.dtype == np.float32


@pytest.mark.parametrize("step", [97, 331])
def test_numpy_search_finds_facenet_pytorchs_boxes_within_a_pixel_on_lfw(build, lfw, step):
    """The served search (``mtcnn_search``, NumPy, batched) against facenet-pytorch's own
    ``detect_face`` with the same networks, on LFW photos spread over the alphabet."""
    numpy_engine = build(detect_backend="onnx", min_face_size=40)
    facenet_engine = build(detect_backend="torch", min_face_size=40)
    people = sorted((lfw / "images").iterdir())[::step]
    for person in people:
        path = sorted(person.iterdir())[0]
        with Image.open(path) as image:
            image = image.convert("RGB")
        got = numpy_engine.detector.find_faces(image)
        expected = facenet_engine.detector.find_faces(image)
        assert got.boxes.shape == expected.boxes.shape, path.name
        assert np.abs(got.boxes - expected.boxes).max(initial=0) < 1.0, path.name
        assert np.abs(got.landmarks - expected.landmarks).max(initial=0) < 1.0, path.name
        assert np.allclose(got.probs, expected.probs, atol=1e-3), path.name


def test_a_graph_built_from_other_weights_is_not_used(settings, weights, tmp_path):
    assert current_graph(settings.data_path, settings.model, weights) is not None
    other = tmp_path / "other.pt"
    other.write_bytes(weights.read_bytes()[:1000])
    assert current_graph(settings.data_path, settings.model, other) is None
    assert current_graph(tmp_path, settings.model, weights) is None


def test_a_graph_stays_current_for_the_same_weights_at_another_path_and_time(
    settings, weights, tmp_path
):
    """The note names the weights by content: another checkout's copy (its own path and
    modification time, e.g. facenet-pytorch installed into another venv) still matches."""
    copy = tmp_path / "copy.pt"
    copy.write_bytes(weights.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert current_graph(settings.data_path, settings.model, copy) is not None


#: What the default image leaves in its builder stage (requirements.txt less
#: requirements-serve.txt): a finder placed before Python's own makes them look not installed.
BUILD_ONLY = ("torch", "torchvision", "facenet_pytorch", "onnx", "tensorboard")
NOT_INSTALLED = (
    "import sys\n"
    f"BUILD_ONLY = {BUILD_ONLY!r}\n"
    "class NotInstalled:\n"
    "    def __init__(self, finder):\n"
    "        self.finder = finder\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if any(name == b or name.startswith(b + '.') for b in BUILD_ONLY):\n"
    "            return None\n"
    "        return self.finder.find_spec(name, path, target)\n"
    "    def __getattr__(self, attr):\n"
    "        return getattr(self.finder, attr)\n"
    "sys.meta_path[:] = [NotInstalled(f) for f in sys.meta_path]\n"
)
SERVE_TWO_PAIRS = (
    "import io, logging, sys\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "from server import create_app\n"
    "app = create_app({'mqtt_host': ''})\n"
    "a, same, other = (open(p, 'rb').read() for p in sys.argv[1:4])\n"
    "for b in (same, other):\n"
    "    r = app.test_client().post('/photo_match', data={'reference': (io.BytesIO(a), 'a.jpg'),"
    " 'sample': (io.BytesIO(b), 'b.jpg')})\n"
    "    assert r.status_code == 200, r.get_json()\n"
    "    print(r.get_json()['match'])\n"
    "print(*(name in sys.modules for name in ('torch', 'facenet_pytorch', 'onnx')))\n"
)


@pytest.mark.parametrize("setup", ["checkout", "image"])
def test_the_default_engine_answers_without_importing_pytorch(settings, setup, tmp_path):
    """With the graphs built at set-up, served requests never import PyTorch (``checkout``:
    everything installed, the weights in the data dir), and they are answered where PyTorch,
    facenet-pytorch, onnx and tensorboard are not installed and the data dir holds the graphs
    without the ``.pt`` weights (``image``: the default image's final stage); there the
    graphs' notes are trusted, and each says so once."""
    env = dict(os.environ)
    script = SERVE_TWO_PAIRS
    if setup == "image":
        script = NOT_INSTALLED + SERVE_TWO_PAIRS
        for built in settings.data_path.iterdir():
            if built.suffix in (".onnx", ".json", ".npz"):
                (tmp_path / built.name).symlink_to(built)
        env["FACEMATCH_DATA_DIR"] = str(tmp_path)
    images = [str(settings_lfw_path(name)) for name in (PHOTO, SAME_PERSON, OTHER)]
    result = subprocess.run(
        [sys.executable, "-c", script, *images],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False", "False", "False"]
    trusted = result.stderr.count("its weights file is not installed here; trusting")
    if setup == "image":
        assert not list(tmp_path.glob("*.pt"))
        assert "no casia-webface weights file in" in result.stderr
        assert trusted == 4  # MTCNN's three networks and the int8 embedder
    else:
        assert trusted == 0


def test_without_the_weights_nor_its_graphs_the_engine_refuses_to_start(settings, tmp_path):
    """Serving the built graphs without the ``.pt`` never hides missing graphs: with neither,
    the start fails with the weights tool's command, as it always did."""
    with pytest.raises(WeightsError, match="deployment_utils.weights build"):
        FaceEngine.from_settings(settings.replace(data_dir=str(tmp_path)))


def settings_lfw_path(name: str):
    from deployment_utils.lfw import lfw_dir

    return lfw_dir() / "images" / name


def test_plain_crop_is_facenet_pytorchs_extract_face(torch_engine, photo):
    from facenet_pytorch.models.utils.detect_face import extract_face

    box = torch_engine.detect(photo).primary.box
    expected = (extract_face(photo, np.asarray(box), 160, 32).numpy() - 127.5) / 128.0
    assert np.array_equal(torch_engine.cropper.plain_crop(photo, box), expected)
