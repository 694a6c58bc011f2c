"""Shared fixtures: settings, one loaded engine for the whole run, the app and its client, LFW.

LFW comes from ``FACEMATCH_LFW_DIR`` (default ``../shared/data/lfw``). Without it the tests that
need real faces are skipped with instructions, except under CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import Settings
from deployment_utils.lfw import GET_LFW, lfw_dir
from photo_inferencing import FaceEngine
from server import create_app

REPO = Path(__file__).resolve().parents[1]

# The real mosquitto and victoria-metrics servers, as fixtures for the monitoring tests.
pytest_plugins = ["tests.servers"]


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    """Environment settings with the broker switched off (monitoring tests turn it on) and the
    gallery in a temporary SQLite file."""
    gallery = tmp_path_factory.mktemp("gallery") / "gallery.db"
    return Settings.from_env(
        mqtt_host="",
        api_keys="",
        api_keys_file="",
        signing_keys="",
        gallery_url=f"sqlite:///{gallery}",
    )


@pytest.fixture(scope="session")
def engine(settings) -> FaceEngine:
    return FaceEngine.from_settings(settings)


@pytest.fixture
def failing_engine(engine):
    """The real engine, except that detection raises an error naming a file path (a bug of
    ours, for the tests of what a 500 shows)."""

    class FailingEngine:
        def __getattr__(self, name):
            return getattr(engine, name)

        def detect(self, image):
            raise RuntimeError("boom in /opt/facematch/secret/weights.pt")

    return FailingEngine()


@pytest.fixture
def app(settings, engine):
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def lfw() -> Path:
    path = lfw_dir()
    if not (path / "pairsDevTest.txt").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(GET_LFW.format(path=path))
        pytest.skip(GET_LFW.format(path=path))
    return path


@pytest.fixture(scope="session")
def face_bytes(lfw):
    """Read an LFW image by its ``Name/Name_NNNN.jpg`` name."""

    def read(name: str) -> bytes:
        return (lfw / "images" / name).read_bytes()

    return read
