"""Build the int8 embedder for ``FACEMATCH_EMBED_BACKEND=onnx-int8``.

InceptionResnetV1 is exported to ONNX from the configured weights and quantized statically with
ONNX Runtime (``INT8_RECIPE``: QDQ, 7-bit int8 weights per output channel, uint8 activations).
The activation ranges are calibrated on the primary-face crops of ``--images`` LFW View 1
DevTrain photos (a seeded sample; View 2 is never used), cut as the service cuts them. Those
crops are shipped, as one lossless image (``CALIBRATION_FILE``), so that a fresh set-up and the
Docker image build the same graph without LFW (``python -m deployment_utils.graphs build`` does,
through ``build_int8_from_shipped_crops``). The graph goes to ``<data dir>/<model>.int8.onnx``
(where the engine reads it) beside a JSON note of how it was built; ``benchmarking_utils.accuracy``
measures what it costs in accuracy.

    python -m deployment_utils.quantize --write-crops [--images 200]   # once, needs LFW
    python -m deployment_utils.quantize                                # from the shipped crops
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
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from PIL import Image
from tqdm import tqdm

from deployment_utils.lfw import GET_LFW, lfw_dir, read_pairs
from facematch.config import Settings
from facematch.engine.backends.graph_files import write_note
from facematch.engine.backends.onnx_export import export_onnx
from facematch.engine.backends.onnx_int8_runtime import (
    INT8_RECIPE,
    graph_sha256,
    int8_graph_path,
    probe_path,
)
from facematch.engine.embedding import embedder_network
from facematch.engine.engine import FaceEngine
from facematch.engine.options import EngineOptions
from facematch.engine.weights import resolve_weights

BATCH = 8
CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "model_data" / "int8_calibration.png"
PER_ROW = 20  # crops per row of the calibration image


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
            crops.append(face.crop)
    return np.stack(crops).astype(np.float32)


def write_crops(crops: np.ndarray, path: Path = CALIBRATION_FILE) -> None:
    """Save standardised (n, 3, 160, 160) crops losslessly as one PNG, ``PER_ROW`` a row (the
    standardisation ``(x - 127.5) / 128`` of 8-bit pixels is undone exactly)."""
    pixels = np.rint(crops.transpose(0, 2, 3, 1) * 128 + 127.5).clip(0, 255).astype(np.uint8)
    rows = -(-len(pixels) // PER_ROW)
    side = pixels.shape[1]
    sheet = np.zeros((rows * side, PER_ROW * side, 3), np.uint8)
    for i, crop in enumerate(pixels):
        r, c = divmod(i, PER_ROW)
        sheet[r * side : (r + 1) * side, c * side : (c + 1) * side] = crop
    Image.fromarray(sheet).save(path, optimize=True, pnginfo=_count_note(len(pixels)))


def _count_note(count: int):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("crops", str(count))
    return info


def read_crops(path: Path = CALIBRATION_FILE, side: int = 160) -> np.ndarray:
    """The standardised (n, 3, side, side) float32 crops ``write_crops`` saved."""
    with Image.open(path) as image:
        count = int(image.text["crops"])
        sheet = np.asarray(image.convert("RGB"))
    crops = [
        sheet[r * side : (r + 1) * side, c * side : (c + 1) * side]
        for r, c in (divmod(i, PER_ROW) for i in range(count))
    ]
    return ((np.stack(crops).astype(np.float32) - 127.5) / 128).transpose(0, 3, 1, 2)


def devtrain_sample(lfw: Path, count: int, seed: int) -> list[Path]:
    """``count`` distinct LFW View 1 DevTrain images drawn with ``seed``, in name order."""
    pairs = read_pairs(lfw / "pairsDevTrain.txt")
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return [lfw / "images" / names[i] for i in sorted(chosen)]


def build_int8_graph(weights: Path, crops: np.ndarray, out: Path, model: str) -> dict[str, str]:
    """Quantize InceptionResnetV1 holding the weights file ``weights``, calibrated on ``crops``,
    into ``out`` with a note of the weights it was built from; returns the graph's sha256 and the
    library versions for the build note."""
    import torch

    network = embedder_network(model, weights)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        fp32.write_bytes(export_onnx(network.load(), network.example_shape, network.dynamic_axes))
        quant_pre_process(str(fp32), str(prepared))
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(prepared),
            str(out),
            Crops(crops),
            quant_format=QuantFormat[INT8_RECIPE["format"]],
            per_channel=INT8_RECIPE["per_channel"],
            activation_type=QuantType[INT8_RECIPE["activations"]],
            weight_type=QuantType[INT8_RECIPE["weights"]],
            reduce_range=INT8_RECIPE["reduce_range"],
        )
    built = {
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "recipe": INT8_RECIPE,
    }
    write_note(out, weights, built)
    return built


PROBE_CROPS = 8  # crops in the int8 graph's kernel probe (about 0.1 s at start)


def write_probe(graph: Path, weights: Path, model: str, count: int = PROBE_CROPS) -> Path:
    """Write the kernel probe of the int8 graph ``graph``: ``count`` shipped crops, evenly
    spread, and their float32 embeddings by the PyTorch module holding ``weights``; the serving
    engine compares the int8 graph's vectors with these at start
    (``facematch.engine.kernel_checks``)."""
    import torch

    crops = read_crops()
    crops = crops[np.linspace(0, len(crops) - 1, count).round().astype(int)]
    with torch.inference_mode():
        vectors = embedder_network(model, weights).load()(torch.from_numpy(crops)).numpy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    target = probe_path(graph)
    tmp = target.with_name(f".{target.name}.tmp.npz")
    np.savez_compressed(tmp, crops=crops, float32=vectors, graph_sha256=graph_sha256(graph))
    tmp.replace(target)
    return target


def build_int8_from_shipped_crops(weights: Path, out: Path, model: str = "casia-webface") -> dict:
    """``build_int8_graph`` calibrated on the shipped crops (``CALIBRATION_FILE``)."""
    crops = read_crops()
    built = build_int8_graph(weights, crops, out, model)
    note = {
        "model": model,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "calibration": f"{len(crops)} crops from {CALIBRATION_FILE.name}",
        **built,
    }
    write_note(out, weights, note)
    write_probe(out, weights, model)
    return note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=lfw_dir())
    parser.add_argument("--images", type=int, default=200, help="calibration photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write-crops",
        action="store_true",
        help=f"cut the calibration crops from LFW View 1 into {CALIBRATION_FILE.name} first",
    )
    parser.add_argument("--out", type=Path, help="default: <data dir>/<model>.int8.onnx")
    args = parser.parse_args(argv)
    settings = Settings.from_env(
        embed_backend="onnx", center_embeddings=False, flip_embeddings=False
    )
    weights = resolve_weights(settings.model, settings.weights, settings.data_path)
    if args.write_crops:
        if not (args.lfw / "pairsDevTrain.txt").exists():
            print(GET_LFW.format(path=args.lfw), file=sys.stderr)
            return 2
        engine = FaceEngine(EngineOptions.from_settings(settings), weights)
        write_crops(calibration_crops(engine, devtrain_sample(args.lfw, args.images, args.seed)))
        print(
            f"wrote {CALIBRATION_FILE}: primary-face crops of {args.images} LFW View 1 DevTrain "
            f"photos, seed {args.seed}, margin {settings.margin}",
            file=sys.stderr,
        )
    out = args.out or int8_graph_path(settings.data_path, settings.model)
    note = build_int8_from_shipped_crops(weights, out, settings.model)
    print(json.dumps({"written": str(out), **note}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
