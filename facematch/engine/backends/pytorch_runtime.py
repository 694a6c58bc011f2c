"""The PyTorch runtime backend: the loaded module itself, on the engine's device.

On a GPU, cuDNN's float32 convolutions run in TF32 by default on Ampere and later (a 10-bit
mantissa), which moves results further from the CPU's than float32 rounding does; they are kept
in full float32 (IEEE) so a GPU gives the CPU's embeddings and distances (scripts/gpu_proof.sh
checks them within 1e-4).
"""

from __future__ import annotations

import numpy as np
import torch


class TorchRuntime:
    """Runs a PyTorch module in inference mode on ``device``."""

    def __init__(self, module: torch.nn.Module, device: str | torch.device):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.conv.fp32_precision = "ieee"
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        self.module = module.to(self.device).eval()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The module's outputs for ``x`` (moved to the device), always as a tuple."""
        with torch.inference_mode():
            out = self.module(torch.as_tensor(x, dtype=torch.float32).to(self.device))
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float().cpu().numpy() for o in out)
