"""The pins live in one place: requirements-serve.txt holds what the server needs at run time
(the default image installs only it), requirements-watch.txt the camera watcher's PyAV (an image
adds it with WATCH=true), requirements.txt includes both and adds the tools that build the
weights and graphs (PyTorch and the rest), and no package is pinned in two files."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Needed only to build the weights and graphs (the image's builder stage), never to serve.
BUILD_ONLY = {"torch", "torchvision", "facenet-pytorch", "onnx", "tensorboard"}


def pinned(name: str) -> set[str]:
    """The package names a requirements file pins (extras and markers dropped)."""
    names = set()
    for line in (REPO / name).read_text().splitlines():
        found = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==", line.strip())
        if found:
            names.add(found.group(1).lower())
    return names


def test_requirements_txt_includes_the_serving_requirements():
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert "-r requirements-serve.txt" in lines
    assert "-r requirements-watch.txt" in lines


def test_no_package_is_pinned_in_two_files():
    files = ("requirements-serve.txt", "requirements-watch.txt", "requirements.txt")
    pins = [pinned(name) for name in files]
    assert all(pins)
    assert [(a, b) for a in range(3) for b in range(a + 1, 3) if pins[a] & pins[b]] == []


def test_the_video_sources_are_not_among_the_serving_requirements():
    assert "av" in pinned("requirements-watch.txt")
    assert "av" not in pinned("requirements-serve.txt")


def test_the_serving_requirements_hold_none_of_the_build_tools():
    assert pinned("requirements-serve.txt") & BUILD_ONLY == set()
    assert pinned("requirements.txt") >= BUILD_ONLY
