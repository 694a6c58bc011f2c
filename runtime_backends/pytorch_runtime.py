"""The PyTorch runtime backend: the loaded module itself, on the engine's device.

On a GPU, cuDNN's float32 convolutions run in TF32 by default on Ampere and later (a 10-bit
mantissa), which moves results further from the CPU's than float32 rounding does; they are kept
in full float32 (IEEE) so a GPU gives the CPU's embeddings and distances (scripts/gpu_proof.sh
checks them within 1e-4).
"""

from __future__ import annotations

import torch


class TorchRuntime:
    """Runs a PyTorch module in inference mode on ``device``."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        if device.type == "cuda":
            torch.backends.cudnn.conv.fp32_precision = "ieee"
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        self.module = module.to(device).eval()
        self.device = device

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The module's outputs for ``x`` (moved to the device), always as a tuple."""
        with torch.inference_mode():
            out = self.module(x.to(self.device))
        return out if isinstance(out, tuple) else (out,)
