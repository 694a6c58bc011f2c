"""The PyTorch runtime backend: the loaded module itself, on the engine's device."""

from __future__ import annotations

import numpy as np
import torch


class TorchRuntime:
    """Runs a PyTorch module in inference mode on ``device``."""

    def __init__(self, module: torch.nn.Module, device: str | torch.device):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The module's outputs for ``x`` (moved to the device), always as a tuple."""
        with torch.inference_mode():
            out = self.module(torch.as_tensor(x, dtype=torch.float32).to(self.device))
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float().cpu().numpy() for o in out)
