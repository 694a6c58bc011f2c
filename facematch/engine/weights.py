"""The InceptionResnetV1 weights the service loads: which models exist, where their files are,
and loading a state_dict only after checking it fits the network exactly.

``resolve_weights`` and ``load_state_dict`` fail with a ``WeightsError`` rather than ever falling
back to a randomly initialised model. The files are built once by the weights tool
(``python -m deployment_utils.weights build``), which imports this module, never the reverse.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

MODELS = ("casia-webface", "vggface2")
BUILD_COMMAND = "python -m deployment_utils.weights build"


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable, or not an InceptionResnetV1 state_dict."""


def check_model(model: str) -> None:
    """Raise WeightsError unless ``model`` is one of ``MODELS``."""
    if model not in MODELS:
        raise WeightsError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def weights_filename(model: str) -> str:
    """Return the file name a model's state_dict is stored under in the data dir."""
    check_model(model)
    return f"{model}.pt"


def resolve_weights(model: str, weights: str | Path | None, data_dir: Path) -> Path:
    """Return the state_dict file to load: the explicit ``weights`` path, else the built file.

    Raises WeightsError naming the build command when the file does not exist.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {path} does not exist (set by FACEMATCH_WEIGHTS or --weights)"
            )
        return path
    path = Path(data_dir).expanduser() / weights_filename(model)
    if path.is_file():
        return path
    hint = " (downloads from GitHub, needs network access)" if model == "vggface2" else ""
    raise WeightsError(
        f"no {model} weights at {path}; build them with "
        f"`{BUILD_COMMAND} --model {model} --data-dir {path.parent}`{hint}"
    )


def load_state_dict(path: str | Path) -> dict:
    """Load a state_dict safely (``weights_only``) and check it fits InceptionResnetV1 exactly
    (imports PyTorch)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    check_state_dict(state, origin=str(path))
    return state


def check_state_dict(state: Any, origin: str) -> None:
    """Raise WeightsError unless ``state`` fits InceptionResnetV1(classify=False) exactly."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{origin} is not a state_dict of tensors")
    expected = expected_shapes()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsError(
            f"{origin} does not match InceptionResnetV1(classify=False): "
            f"{len(missing)} keys missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}"
        )
    for key, shape in expected.items():
        found = tuple(state[key].shape)
        if found != shape:
            raise WeightsError(f"{origin}: {key} has shape {found}, expected {shape}")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise WeightsError(f"{origin}: {key} holds NaN or infinite values")


@lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Return key -> shape for InceptionResnetV1(pretrained=None, classify=False)."""
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}
