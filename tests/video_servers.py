"""Real video servers for the watcher's tests, in tests/servers.py's style: Debian's GStreamer
RTSP server (tests/rtsp_server.py, run by /usr/bin/python3 for its gi) and an HTTP MJPEG camera
(tests/mjpeg_server.py), each on a free 127.0.0.1 port from its own temporary directory, waited
for until it listens and stopped by the fixture that started it. ``scripts/test-deps/video.sh``
installs the GStreamer parts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.servers import _port_open, _Process, _servers_in_workdirs, free_port, wait_until

TESTS = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which sees python3-gi
INSTALL_HINT = "(scripts/test-deps/video.sh installs the GStreamer RTSP server and python3-gi)"


class _VideoServer(_Process):
    """A server script that prints ``ready`` once it listens; ``restart`` keeps the port."""

    def __init__(self, workdir: Path, video: Path):
        super().__init__(workdir)
        self.video = Path(video)
        self.port = free_port()

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0):
        self._spawn(self._argv())
        try:
            wait_until(
                lambda: self._check_alive() and "ready" in self.log() and _port_open(self.port),
                timeout,
                what=self.name,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{INSTALL_HINT}") from None
        return self

    def restart(self, video: Path | None = None):
        """Stop the server (its clients' streams break) and start it again on the same port,
        serving ``video`` from now on when given (a camera that rebooted: the scene goes on)."""
        self.stop()
        if video is not None:
            self.video = Path(video)
        return self.start()


class RtspServer(_VideoServer):
    """GStreamer's RTSP server playing ``video`` (an MJPEG AVI or an H.264 MP4) at ``url``, each
    client from the file's start at its own pace; the stream ends with the file."""

    name = "rtsp-server"

    def __init__(self, workdir: Path, video: Path, mount: str = "/door"):
        super().__init__(workdir, video)
        self.mount = mount

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def _argv(self) -> list[str]:
        return [
            SYSTEM_PYTHON,
            str(TESTS / "rtsp_server.py"),
            f"--video={self.video}",
            f"--port={self.port}",
            f"--mount={self.mount}",
        ]


class MjpegServer(_VideoServer):
    """An HTTP MJPEG camera (multipart/x-mixed-replace) looping ``video`` at its frame rate."""

    name = "mjpeg-server"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            str(TESTS / "mjpeg_server.py"),
            f"--video={self.video}",
            f"--port={self.port}",
        ]


@pytest.fixture
def rtsp_server():
    """``rtsp_server(video, mount="/door")`` starts GStreamer's RTSP server on ``video`` (an
    MJPEG AVI such as ``watch_video.path`` or an H.264 MP4 such as ``h264_video.path``) and
    returns it (``.url``, ``.restart()``, ``.stop()``, ``.log()``); all are stopped after the
    test."""
    yield from _servers_in_workdirs("rtsp", RtspServer)


@pytest.fixture
def mjpeg_server():
    """``mjpeg_server(video)`` starts an HTTP MJPEG camera looping ``video`` and returns it
    (``.url``, ``.restart()``, ``.stop()``); all are stopped after the test."""
    yield from _servers_in_workdirs("mjpeg", MjpegServer)
