"""Build, once at set-up, the ONNX graphs the engine serves with, so that the server neither
imports PyTorch nor exports graphs at start-up.

    python -m deployment_utils.graphs build [--model casia-webface] [--data-dir DIR] [--force]

writes into the data dir (``FACEMATCH_DATA_DIR``), beside the weights:

* ``mtcnn-pnet.onnx``, ``mtcnn-rnet.onnx``, ``mtcnn-onet.onnx``: MTCNN's networks (float32);
* ``<model>.onnx``: InceptionResnetV1 with the model's weights (float32);
* ``<model>.int8.onnx``: the same, statically quantized to int8, calibrated on the face crops
  shipped in ``model_data/int8_calibration.png`` (``deployment_utils.quantize``; no LFW needed),
  with its kernel probe ``<model>.int8.onnx.probe.npz`` (checked by the engine at start).

Each graph has a ``.json`` note of the weights file it was exported from; a graph whose weights
file has changed since is rebuilt here and not used by the engine (which then exports it at
start-up). Existing current graphs are kept unless ``--force``. Run after
``python -m deployment_utils.weights build`` (``scripts/setup.sh`` and the Dockerfile do).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from facematch.engine.backends import Network
from facematch.engine.backends.graph_files import current_file, graph_path, write_note
from facematch.engine.backends.onnx_export import export_onnx
from facematch.engine.backends.onnx_int8_runtime import INT8_RECIPE, int8_graph_path, load_probe
from facematch.engine.detection import NETWORKS, mtcnn_network
from facematch.engine.embedding import embedder_network
from facematch.engine.weights import MODELS, WeightsError, resolve_weights

log = logging.getLogger(__name__)


def export_graph(network: Network, graph_dir: Path, force: bool = False) -> Path:
    """Write ``network``'s float32 graph into ``graph_dir`` (kept if current, unless ``force``)."""
    target = graph_path(graph_dir, network.name)
    if not force and current_file(target, network.source):
        log.info("%s is current; keeping it", target)
        return target
    started = time.monotonic()
    graph = export_onnx(network.load(), network.example_shape, network.dynamic_axes)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(graph)
    tmp.replace(target)
    write_note(target, network.source, {"sha256": hashlib.sha256(graph).hexdigest()})
    log.info("wrote %s in %.1f s", target, time.monotonic() - started)
    return target


def gallery_scores_model() -> bytes:
    """The gallery search's integer kernel as a graph: (1 x 512 u8) @ (512 x m s8) -> int32, one
    ``MatMulInteger`` (no zero points: those would take a slower kernel). Shipped as
    ``model_data/gallery_scores.onnx`` so the server never imports onnx (about 1 s); a test
    checks the file is this graph (``python -m deployment_utils.graphs gallery-scores`` writes
    it)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["query", "block"], ["scores"])],
        "gallery_scores",
        [
            helper.make_tensor_value_info("query", TensorProto.UINT8, [1, 512]),
            helper.make_tensor_value_info("block", TensorProto.INT8, [512, "m"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.INT32, [1, "m"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def write_gallery_scores() -> Path:
    """Write ``gallery_scores_model()`` where the search reads it."""
    from facematch.gallery.search import SCORES_GRAPH

    SCORES_GRAPH.write_bytes(gallery_scores_model())
    return SCORES_GRAPH


def build(model: str, data_dir: Path, weights: str | Path | None = None, force=False) -> list:
    """Every graph the engine may serve with, for ``model``'s weights; their paths."""
    from deployment_utils.quantize import build_int8_from_shipped_crops, write_probe

    path = resolve_weights(model, weights, data_dir)
    written = [export_graph(mtcnn_network(name), data_dir, force) for name, _, _ in NETWORKS]
    written.append(export_graph(embedder_network(model, path), data_dir, force))
    int8 = int8_graph_path(data_dir, model)
    if force or not current_file(int8, path, INT8_RECIPE):
        started = time.monotonic()
        build_int8_from_shipped_crops(path, int8, model)
        log.info("wrote %s and its kernel probe in %.1f s", int8, time.monotonic() - started)
    elif load_probe(int8) is None:
        log.info("wrote the kernel probe %s", write_probe(int8, path, model))
    else:
        log.info("%s is current; keeping it", int8)
    written.append(int8)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from facematch.config import ConfigError, Settings

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m deployment_utils.graphs", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gallery-scores", help="write the gallery search's shipped graph")
    sub = commands.add_parser("build", help="build the graphs (kept when current)")
    try:
        defaults = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sub.add_argument("--model", choices=MODELS, default=defaults.model)
    sub.add_argument("--data-dir", type=Path, default=defaults.data_path)
    sub.add_argument("--weights", default=defaults.weights, help="default: FACEMATCH_WEIGHTS")
    sub.add_argument("--force", action="store_true", help="rebuild current graphs too")
    args = parser.parse_args(argv)
    if args.command == "gallery-scores":
        print(write_gallery_scores())
        return 0
    try:
        written = build(args.model, args.data_dir, args.weights, args.force)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
