"""The face engine's options: one frozen, validated record built from ``Settings``.

``EngineOptions.from_settings`` resolves what the settings leave open (``auto`` device, thread
count, where the int8 graph lives) and refuses values the engine cannot use with a
``ConfigError`` naming the ``FACEMATCH_*`` variable. A benchmark or test that needs other options
builds a new engine from ``dataclasses.replace(options, ...)``; the record is never mutated.

Backends (each measured in docs/performance.md):

* ``embed_backend``: InceptionResnetV1 in PyTorch (``torch``), ONNX Runtime (``onnx``), or ONNX
  Runtime on a prepared statically quantized graph (``onnx-int8``); both graphs are built at
  set-up by ``python -m deployment_utils.graphs build``;
* ``detect_backend``: MTCNN's three networks in ONNX Runtime searched by ``mtcnn_search``
  (``onnx``; ``onnx-pil`` resamples with Pillow's area filter instead: faster, boxes a few pixels
  different, View 1 accuracy was lower), or in PyTorch through facenet-pytorch's own search
  (``torch``, ``mtcnn_facenet``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from facematch.config import PREFIX, ConfigError, Settings
from facematch.engine.backends.onnx_int8_runtime import int8_graph_path

log = logging.getLogger(__name__)

FACE_SIZE = 160  # InceptionResnetV1's input side, in pixels
SELECTION_METHODS = ("center_weighted_size", "largest", "probability", "largest_over_threshold")
EMBED_BACKENDS = ("onnx", "onnx-int8", "torch")


@dataclass(frozen=True)
class DetectBackend:
    """What a ``detect_backend`` name means: the runtime of MTCNN's networks, and whether
    Pillow (rather than facenet-pytorch) resamples the image pyramid and the face boxes."""

    runtime: str
    pillow_resampling: bool


DETECT_BACKENDS = {
    "onnx": DetectBackend("onnx", pillow_resampling=False),
    "onnx-pil": DetectBackend("onnx", pillow_resampling=True),
    "torch": DetectBackend("torch", pillow_resampling=False),
}


@dataclass(frozen=True)
class EngineOptions:
    """Every option of the face engine; see config.py's ``Settings`` for the defaults.

    ``device`` is a resolved torch device name (``cpu``, ``cuda``, ``cuda:1``); ``threads`` the
    intra-op threads of each runtime; ``graph_dir`` where the networks' ONNX graphs built at
    set-up are read; ``int8_graph`` where the ``onnx-int8`` embedder is read.
    """

    model: str
    device: str
    threads: int
    margin: int
    face_selection: str
    detect_max_side: int
    min_face_size: int
    detect_backend: str
    embed_backend: str
    int8_graph: Path
    graph_dir: Path
    flip_embeddings: bool
    center_embeddings: bool
    align_faces: bool
    reduced_decode: bool = False

    def __post_init__(self):
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"{_var(f.name)}={getattr(self, f.name)!r} is not a bool")
        _check_int("torch_threads", self.threads, 1)
        _check_int("margin", self.margin, 0, FACE_SIZE - 1)
        _check_int("detect_max_side", self.detect_max_side, 0)
        _check_int("min_face_size", self.min_face_size, 1)
        _check_choice("face_selection", self.face_selection, SELECTION_METHODS)
        _check_choice("detect_backend", self.detect_backend, DETECT_BACKENDS)
        _check_choice("embed_backend", self.embed_backend, EMBED_BACKENDS)
        device = _check_device(self.device)
        runtimes = (self.embed_backend, self.detect_runtime)
        if device.split(":")[0] != "cpu" and runtimes != ("torch", "torch"):
            raise ConfigError(
                f"{_var('embed_backend')}={self.embed_backend} and "
                f"{_var('detect_backend')}={self.detect_backend} need the CPU "
                f"(this ONNX Runtime is the CPU build); use torch on {self.device}"
            )

    @property
    def decode_min_side(self) -> int:
        """The longer side a photo must keep when decoded at a reduced scale (0: decode in
        full): the detector's ``detect_max_side`` when ``reduced_decode`` is on."""
        return self.detect_max_side if self.reduced_decode else 0

    @property
    def detect_runtime(self) -> str:
        """The runtime backend of MTCNN's networks: ``onnx`` or ``torch``."""
        return DETECT_BACKENDS[self.detect_backend].runtime

    @property
    def pillow_resampling(self) -> bool:
        """Whether detection resamples with Pillow (``onnx-pil``) instead of facenet-pytorch."""
        return DETECT_BACKENDS[self.detect_backend].pillow_resampling

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        """The options ``settings`` ask for, with ``auto`` device and thread count resolved.

        ONNX Runtime here is the CPU build, so on another device both backends run in PyTorch;
        that change is logged in one line saying what was asked for and what is used."""
        _check_choice("embed_backend", settings.embed_backend, EMBED_BACKENDS)
        _check_choice("detect_backend", settings.detect_backend, DETECT_BACKENDS)
        device = pick_device(settings.device)
        embed, detect = settings.embed_backend, settings.detect_backend
        if device.split(":")[0] != "cpu" and (embed, detect) != ("torch", "torch"):
            log.warning(
                "%s=%s and %s=%s asked for, but ONNX Runtime runs on the CPU only: "
                "both use torch on %s",
                _var("embed_backend"),
                embed,
                _var("detect_backend"),
                detect,
                device,
            )
            embed = detect = "torch"
        return cls(
            model=settings.model,
            device=device,
            threads=settings.torch_threads or default_threads(settings.workers),
            margin=settings.margin,
            face_selection=settings.face_selection,
            detect_max_side=settings.detect_max_side,
            min_face_size=settings.min_face_size,
            detect_backend=detect,
            embed_backend=embed,
            int8_graph=int8_graph_path(settings.data_path, settings.model),
            graph_dir=settings.data_path,
            flip_embeddings=settings.flip_embeddings,
            center_embeddings=settings.center_embeddings,
            align_faces=settings.align_faces,
            reduced_decode=settings.reduced_decode,
        )


def pick_device(requested: str = "auto") -> str:
    """The torch device name ``requested`` names (``cpu``, ``cuda``, ``cuda:1``). ``auto`` picks
    CUDA when a GPU is visible, else the CPU, and says in one log line when a CUDA build of torch
    falls back to the CPU. A CUDA device asked for by name must be there: ``ConfigError`` (naming
    FACEMATCH_DEVICE) otherwise, as for a name torch does not know, so the service refuses to
    start rather than run elsewhere. PyTorch is imported only where a GPU driver is present or a
    device other than the CPU is named, so a CPU server never loads it."""
    if requested == "auto":
        if _cuda_available():
            return "cuda"
        _warn_if_cuda_build()
        return "cpu"
    device = _check_device(requested)
    if device.split(":")[0] == "cuda":
        _check_cuda(requested, device)
    return device


def _warn_if_cuda_build() -> None:
    """One log line when this PyTorch is a CUDA build but no GPU is visible (read from its
    ``version.py``, so a CPU server does not import PyTorch to say so)."""
    cuda = _torch_cuda_version()
    if cuda:
        log.warning(
            "%s=auto: no CUDA GPU visible (torch built for CUDA %s): falling back to the CPU",
            _var("device"),
            cuda,
        )


def _torch_cuda_version() -> str | None:
    """The CUDA version this PyTorch was built for (None: a CPU build, or no PyTorch)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return None
    found = re.search(r"^cuda\b[^=]*=\s*'([^']+)'", text, re.MULTILINE)
    return found.group(1) if found else None


def _check_cuda(requested: str, device: str) -> None:
    """``ConfigError`` unless the CUDA ``device`` exists on this machine."""
    import torch

    var = f"{_var('device')}={requested}"
    if not torch.backends.cuda.is_built():
        raise ConfigError(
            f"{var}, but this torch ({torch.__version__}) is a CPU-only build: "
            "use the CUDA image (Dockerfile.cuda) or FACEMATCH_DEVICE=cpu"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"{var}, but no CUDA GPU is visible (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}): check the NVIDIA driver and `docker run --gpus all`, or use "
            "FACEMATCH_DEVICE=auto to fall back to the CPU"
        )
    index = torch.device(device).index
    if index is not None and index >= count:
        raise ConfigError(
            f"{var}, but only {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1})"
        )


def _gpu_driver_present() -> bool:
    """Whether a GPU driver (NVIDIA's, or ROCm's, which PyTorch also calls ``cuda``) is present."""
    drivers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")
    return any(os.path.exists(path) for path in drivers)


def _cuda_available() -> bool:
    """Whether PyTorch finds a GPU; asked of PyTorch (a second and 100 MB to import) only where
    a GPU driver is present."""
    if not _gpu_driver_present():
        return False
    import torch

    return torch.cuda.is_available()


def default_threads(workers: int) -> int:
    """Split the machine's cores between Gunicorn workers; at least one thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def _var(name: str) -> str:
    return PREFIX + name.upper()


def _check_device(name: str) -> str:
    """The canonical name of device ``name`` (PyTorch is asked only for devices other than the
    CPU); ``ConfigError`` when PyTorch does not know it."""
    if name == "cpu":
        return name
    import torch

    try:
        return str(torch.device(name))
    except (RuntimeError, TypeError):
        raise ConfigError(f"{_var('device')}={name!r} is not a torch device") from None


def _check_int(name: str, value: object, lowest: int, highest: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < lowest
        or (highest is not None and value > highest)
    ):
        bounds = f"at least {lowest}" if highest is None else f"from {lowest} to {highest}"
        raise ConfigError(f"{_var(name)}={value!r} must be a whole number {bounds}")


def _check_choice(name: str, value: object, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{_var(name)}={value!r} is not one of {', '.join(allowed)}")
