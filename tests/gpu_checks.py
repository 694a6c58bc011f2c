"""Checks that need a CUDA GPU: scripts/gpu_proof.sh runs this file by name on a machine with
one. Its name does not match pytest's test_*.py, so the default run (no GPU) never collects it
and reports no skip for it."""

from __future__ import annotations

import pytest
import torch

from facematch.config import ConfigError
from facematch.engine.options import pick_device


def test_a_cuda_index_beyond_the_visible_gpus_is_refused():
    count = torch.cuda.device_count()
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=f"only {count} CUDA GPU"):
        pick_device(f"cuda:{count}")
