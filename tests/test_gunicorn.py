"""Gunicorn really serves the app, and refuses to start without valid weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support import free_port
from test_api import SAME

REPO = Path(__file__).resolve().parents[1]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]


def serve(**env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environ = {
        **os.environ,
        "FACEMATCH_HOST": "127.0.0.1",
        "FACEMATCH_PORT": str(port),
        "FACEMATCH_WORKERS": "1",
        "FACEMATCH_THREADS": "2",
        "FACEMATCH_MQTT_HOST": "",
        **env,
    }
    process = subprocess.Popen(
        GUNICORN, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process, f"http://127.0.0.1:{port}"


def wait_until_up(process: subprocess.Popen, url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}: {process.stdout.read()}")
        try:
            if requests.get(url + "/ping", timeout=1).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.3)
    pytest.fail("gunicorn did not answer /ping in time")


@pytest.fixture
def gunicorn_url():
    process, url = serve()
    try:
        wait_until_up(process, url)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_gunicorn_serves_ping_and_photo_match(gunicorn_url, face_bytes):
    assert requests.get(gunicorn_url + "/ping", timeout=5).json() == {"status": "ok"}
    response = requests.post(
        gunicorn_url + "/photo_match",
        timeout=60,
        files={
            "reference": ("a.jpg", face_bytes(SAME[0])),
            "sample": ("b.jpg", face_bytes(SAME[1])),
        },
    )
    assert response.status_code == 200
    assert response.json()["match"] is True


def test_service_refuses_to_start_without_weights(tmp_path):
    process, _ = serve(FACEMATCH_WEIGHTS=str(tmp_path / "missing.pt"))
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "cannot start" in output and "missing.pt" in output


def test_service_refuses_to_start_with_a_file_that_is_not_the_model(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"definitely not a state_dict")
    process, _ = serve(FACEMATCH_WEIGHTS=str(bogus))
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "cannot start" in output


def test_without_preload_a_worker_that_cannot_load_the_model_stops_the_server(tmp_path):
    process, _ = serve(FACEMATCH_PRELOAD="false", FACEMATCH_WEIGHTS=str(tmp_path / "missing.pt"))
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "missing.pt" in output


def test_sigterm_stops_every_preloaded_worker_with_a_clean_exit(face_bytes):
    process, url = serve(FACEMATCH_WORKERS="2", FACEMATCH_THREADS="1", FACEMATCH_PRELOAD="true")
    try:
        wait_until_up(process, url)
        for _ in range(4):
            response = requests.post(
                url + "/embeddings", timeout=60, files={"photo": ("a.jpg", face_bytes(SAME[0]))}
            )
            assert response.status_code == 200
    finally:
        terminated = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    # idle workers leave at once; a worker that hangs on exit would hold the master for the
    # graceful timeout (30 s) and then be killed without a word in the log
    assert time.monotonic() - terminated < 10
    assert process.returncode == 0
    assert output.count("Worker exiting") == 2
    for sign in ("was sent SIG", "exited with code", "terminate called", "Traceback"):
        assert sign not in output, output[-3000:]
