"""Export a PyTorch module to an ONNX graph (imports PyTorch; used at set-up by
``deployment_utils.graphs`` and ``deployment_utils.quantize``, and at start-up only when no
current graph was built)."""

from __future__ import annotations

import io
import warnings

ONNX_OPSET = 17


def export_onnx(module, shape: tuple[int, ...], dynamic: dict[int, str]) -> bytes:
    """Serialize ``module`` (a ``torch.nn.Module``) to an ONNX graph (TorchScript exporter) with
    one input ``x``, traced with zeros of ``shape``; ``dynamic`` names the input axes whose size
    may vary."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            torch.zeros(shape),
            buffer,
            input_names=["x"],
            dynamic_axes={"x": dynamic},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()
