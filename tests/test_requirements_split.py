"""The pins live in one place: requirements-serve.txt holds what the server needs at run time
(the default image installs only it), requirements.txt includes it and adds the tools that build
the weights and graphs (PyTorch and the rest), and no package is pinned in both."""

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


def test_no_package_is_pinned_in_both_files():
    serve, full = pinned("requirements-serve.txt"), pinned("requirements.txt")
    assert serve and full
    assert serve & full == set()


def test_the_serving_requirements_hold_none_of_the_build_tools():
    assert pinned("requirements-serve.txt") & BUILD_ONLY == set()
    assert pinned("requirements.txt") >= BUILD_ONLY
