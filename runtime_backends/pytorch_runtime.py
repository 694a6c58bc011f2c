"""The PyTorch runtime backend: the loaded module itself, on the engine's device."""

from __future__ import annotations

import torch


class TorchRuntime:
    """Runs a PyTorch module in inference mode on ``device``."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module = module.to(device).eval()
        self.device = device

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The module's outputs for ``x`` (moved to the device), always as a tuple."""
        with torch.inference_mode():
            out = self.module(x.to(self.device))
        return out if isinstance(out, tuple) else (out,)
