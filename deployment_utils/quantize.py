"""Build the int8 embedder for ``FACEMATCH_EMBED_BACKEND=onnx-int8`` (opt-in; see the README).

InceptionResnetV1 is exported to ONNX from the configured weights and quantized statically with
ONNX Runtime (QDQ, int8 weights per output channel, uint8 activations). The activation ranges
are calibrated on primary-face crops of ``--images`` LFW View 1 DevTrain photos (a seeded
sample; View 2 is never used). The graph goes to ``<data dir>/<model>.int8.onnx`` (where the
engine reads it) beside a JSON note of how it was built; ``benchmarking_utils.accuracy``
measures what it costs in accuracy.

    python -m deployment_utils.quantize [--images 200]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from PIL import Image
from tqdm import tqdm

from config import Settings
from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs
from engine_options import EngineOptions
from face_embedding import load_network
from model_weights import load_state_dict, resolve_weights
from photo_inferencing import FaceEngine
from runtime_backends.onnx_int8_runtime import int8_graph_path
from runtime_backends.onnx_runtime import export_onnx

BATCH = 8


class Crops(CalibrationDataReader):
    """Feeds the calibration crops to the quantizer in batches."""

    def __init__(self, crops: np.ndarray):
        self.batches = iter([{"x": crops[i : i + BATCH]} for i in range(0, len(crops), BATCH)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def calibration_crops(engine: FaceEngine, photos: list[Path], progress: bool = True) -> np.ndarray:
    """The primary-face crops (n, 3, 160, 160) float32 of ``photos`` (those without a face are
    left out), cut by ``engine`` as the service cuts them."""
    crops = []
    for path in tqdm(photos, desc="calibration crops", unit="img", disable=not progress):
        with Image.open(path) as image:
            face = engine.detect(image.convert("RGB")).primary
        if face is not None:
            crops.append(face.crop.numpy())
    return np.stack(crops).astype(np.float32)


def devtrain_sample(lfw: Path, count: int, seed: int) -> list[Path]:
    """``count`` distinct LFW View 1 DevTrain images drawn with ``seed``, in name order."""
    pairs = read_pairs(lfw / "pairsDevTrain.txt")
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return [lfw / "images" / names[i] for i in sorted(chosen)]


def build_int8_graph(
    state_dict: dict[str, torch.Tensor], crops: np.ndarray, out: Path
) -> dict[str, str]:
    """Quantize InceptionResnetV1 holding ``state_dict``, calibrated on ``crops``, into ``out``;
    returns the graph's sha256 and the library versions for the build note."""
    network = load_network(state_dict)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        fp32.write_bytes(export_onnx(network.module, network.example_shape, network.dynamic_axes))
        quant_pre_process(str(fp32), str(prepared))
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(prepared),
            str(out),
            Crops(crops),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return {
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--images", type=int, default=200, help="calibration photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: <data dir>/<model>.int8.onnx")
    args = parser.parse_args(argv)
    if not (args.lfw / "pairsDevTrain.txt").exists():
        print(GET_LFW.format(path=args.lfw), file=sys.stderr)
        return 2
    settings = Settings.from_env(
        embed_backend="torch", center_embeddings=False, flip_embeddings=False
    )
    state_dict = load_state_dict(
        resolve_weights(settings.model, settings.weights, settings.data_path)
    )
    engine = FaceEngine(state_dict, EngineOptions.from_settings(settings))
    crops = calibration_crops(engine, devtrain_sample(args.lfw, args.images, args.seed))
    out = args.out or int8_graph_path(settings.data_path, settings.model)
    built = build_int8_graph(state_dict, crops, out)
    note = {
        "model": settings.model,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m deployment_utils.quantize " + " ".join(argv or sys.argv[1:]),
        "calibration": f"{len(crops)} primary-face crops of LFW View 1 DevTrain photos, "
        f"seed {args.seed}, margin {settings.margin}",
        **built,
    }
    out.with_suffix(".json").write_text(json.dumps(note, indent=2) + "\n")
    print(json.dumps({"written": str(out), **note}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
