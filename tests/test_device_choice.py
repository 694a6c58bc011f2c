"""Which device the engine runs on: ``auto`` falls back to the CPU without a GPU and says so in
one log line; a CUDA device named explicitly is never replaced by the CPU silently: without a GPU
the engine, and so the service, refuses to start with a message naming FACEMATCH_DEVICE."""

from __future__ import annotations

import logging

import pytest
import torch

from facematch.config import ConfigError
from facematch.engine.options import EngineOptions, pick_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@no_gpu
def test_auto_without_a_gpu_runs_on_the_cpu_and_a_cuda_build_logs_the_fall_back(caplog):
    with caplog.at_level(logging.WARNING, logger="facematch.engine.options"):
        assert pick_device("auto") == "cpu"
    lines = [r.getMessage() for r in caplog.records]
    if torch.backends.cuda.is_built():
        assert len(lines) == 1
        assert "FACEMATCH_DEVICE=auto" in lines[0] and "falling back to the CPU" in lines[0]
        assert torch.version.cuda in lines[0]
    else:
        assert lines == []


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_an_explicit_cuda_device_without_a_gpu_is_refused_with_a_clear_message(device):
    with pytest.raises(ConfigError) as refused:
        pick_device(device)
    message = str(refused.value)
    assert message.startswith(f"FACEMATCH_DEVICE={device}, but ")
    if torch.backends.cuda.is_built():
        assert "no CUDA GPU is visible" in message and "FACEMATCH_DEVICE=auto" in message
    else:
        assert "CPU-only build" in message


@no_gpu
def test_engine_options_refuse_cuda_without_a_gpu_rather_than_run_on_the_cpu(settings):
    with pytest.raises(ConfigError, match="FACEMATCH_DEVICE=cuda"):
        EngineOptions.from_settings(settings.replace(device="cuda"))


def test_cpu_asked_for_is_the_cpu_and_an_unknown_device_is_refused():
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="FACEMATCH_DEVICE='gpu' is not a torch device"):
        pick_device("gpu")


@no_gpu
def test_the_service_refuses_to_start_on_cuda_without_a_gpu(gunicorn):
    server = gunicorn(wait=False, FACEMATCH_DEVICE="cuda")
    assert server.wait_exit() != 0
    output = server.log()
    assert "cannot start" in output and "FACEMATCH_DEVICE=cuda, but" in output
