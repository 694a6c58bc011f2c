"""Shared fixtures: settings, one loaded engine for the whole run, the app and its client, LFW.

LFW comes from ``FACEMATCH_LFW_DIR`` (default ``../shared/data/lfw``). Without it the tests that
need real faces are skipped with instructions, except under CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarking_utils.watch_video import Cast, VideoManifest, standard_cast, write_video
from deployment_utils.lfw import GET_LFW, lfw_dir
from facematch.api.app import create_app
from facematch.config import Settings
from facematch.engine.engine import FaceEngine
from tests.support import keys_file_text

REPO = Path(__file__).resolve().parents[1]

# The real mosquitto and victoria-metrics servers, as fixtures for the monitoring tests.
pytest_plugins = ["tests.servers", "tests.video_servers"]


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    """Environment settings with the broker switched off (monitoring tests turn it on) and the
    gallery in a temporary SQLite file."""
    gallery = tmp_path_factory.mktemp("gallery") / "gallery.db"
    return Settings.from_env(
        mqtt_host="",
        api_keys="",
        api_keys_file="",
        keys_file="",
        signing_keys="",
        gallery_url=f"sqlite:///{gallery}",
    )


@pytest.fixture
def keys_toml(tmp_path):
    """Write a keys file: ``keys_toml({key: (id, roles, galleries)})`` returns its path (the
    same path each call, so a test can rewrite it)."""
    path = tmp_path / "keys.toml"

    def write(keys: dict[str, tuple[str, list[str], list[str]]]) -> Path:
        path.write_text(keys_file_text(keys))
        return path

    return write


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


@pytest.fixture
def last_record():
    """``watch(app)`` makes ``app`` keep the metrics record of its last request, and returns the
    dict that holds it under ``"record"``."""
    from flask import g, request

    from facematch.observability.request_metrics import record_from

    def watch(app) -> dict:
        seen = {}

        @app.after_request
        def keep(response):
            rule = request.url_rule.rule
            seen["record"] = record_from(g.outcome, rule, "m", response.status_code)
            return response

        return seen

    return watch


@pytest.fixture(scope="session")
def lfw() -> Path:
    path = lfw_dir()
    if not (path / "pairsDevTest.txt").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(GET_LFW.format(path=path))
        pytest.skip(GET_LFW.format(path=path))
    return path


@pytest.fixture(scope="session")
def run_benchmark(lfw):
    """Run ``python -m benchmarking_utils.<command> ARGS --lfw LFW --out OUT`` as the README
    runs it (the repository on ``PYTHONPATH``) and return the JSON it wrote to ``OUT``."""
    repo = Path(__file__).resolve().parents[1]

    def run(command: str, out: Path, *args: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarking_utils.{command}", *args]
            + ["--lfw", str(lfw), "--out", str(out)],
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return json.loads(out.read_text())

    return run


@pytest.fixture(scope="session")
def face_bytes(lfw):
    """Read an LFW image by its ``Name/Name_NNNN.jpg`` name."""

    def read(name: str) -> bytes:
        return (lfw / "images" / name).read_bytes()

    return read


@pytest.fixture(scope="session")
def watch_cast(lfw) -> Cast:
    """The people of the watcher's standard test video: enrolled ones with their photos to
    enroll, and unknown ones."""
    return standard_cast(lfw / "images")


@pytest.fixture(scope="session")
def watch_video(watch_cast, tmp_path_factory) -> VideoManifest:
    """The standard test video (640x480, 10 frames/s, MJPEG in AVI) and its manifest."""
    path = tmp_path_factory.mktemp("watch-video") / "door.avi"
    return write_video(path, list(watch_cast.segments))


class WatchCli:
    """``python -m facematch.watch`` as an operator runs it, on the watch tests' gallery and
    camera: its environment (this one's ``FACEMATCH_*`` variables left out) and command line."""

    gallery, camera = "door-test", "door"  # the watch_gallery fixture's gallery

    def env(self, mqtt_port: int | None = None, gallery_url: str | None = None, **extra: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEMATCH_")}
        env |= {"PYTHONPATH": str(REPO), "FACEMATCH_NODE": "watch-test"}
        if mqtt_port is not None:
            env |= {"FACEMATCH_MQTT_HOST": "127.0.0.1", "FACEMATCH_MQTT_PORT": str(mqtt_port)}
        if gallery_url is not None:
            env["FACEMATCH_GALLERY_URL"] = gallery_url
        return env | extra

    def argv(self, source, gallery: str | None = None) -> list[str]:
        return [sys.executable, "-m", "facematch.watch", "--source", str(source)] + [
            "--gallery", gallery or self.gallery, "--camera", self.camera
        ]  # fmt: skip

    def run(self, source, env: dict, gallery: str | None = None, timeout: float = 120):
        """Run it to its end; the finished process, its output as text."""
        return subprocess.run(
            self.argv(source, gallery),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, source, env: dict, **popen) -> subprocess.Popen:
        """Start it; ``popen``: where its output goes."""
        return subprocess.Popen(self.argv(source), env=env, cwd=REPO, **popen)


@pytest.fixture
def watch_cli() -> WatchCli:
    return WatchCli()


@pytest.fixture(scope="session")
def h264_video(watch_cast, tmp_path_factory) -> VideoManifest:
    """The standard test video as H.264 in MP4 (a key frame each second), as IP cameras send."""
    path = tmp_path_factory.mktemp("watch-video-h264") / "door.mp4"
    return write_video(path, list(watch_cast.segments))


@pytest.fixture
def watch_gallery(tmp_path, engine, watch_cast):
    """A SQLite gallery ``door-test`` with the standard video's enrolled people (photos other
    than the one on screen): its URL and its ``GalleryAccess``."""
    from PIL import Image

    from facematch.gallery.service import GalleryAccess
    from facematch.gallery.store import FaceSource

    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    access = GalleryAccess.from_settings(Settings(gallery_url=url))
    for person, photos in watch_cast.enrolled.items():
        for photo in photos:
            face = engine.detect(Image.open(photo).convert("RGB")).primary
            vector = engine.embed([face.crop]).vectors[0]
            access.enrol("door-test", person, vector, engine.model_name, FaceSource(), "local")
    return url, access
