"""A local facematch Gunicorn on 127.0.0.1: started, waited for, looked into and stopped.

The one launcher the tests, the load, soak and HTTP benchmarks (through ``load`` and
``http_compare``) and smoke checks share. It lives with the measuring tools rather than in
``tests/`` because the benchmarks need it and never import the tests; the tests import it from
here. It runs
``python -m gunicorn -c gunicorn.conf.py <app>`` from the repository root in its own process
session (so ``stop`` can end the master and every worker), on a free port, with its output in a
log file. The environment is the caller's without its ``FACEMATCH_*`` variables (except where
the weights and LFW live), plus the ones given: a run never depends on the shell it came from.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Variables kept from the caller's environment: where the weights and the LFW photos are.
KEPT_VARIABLES = ("FACEMATCH_DATA_DIR", "FACEMATCH_WEIGHTS", "FACEMATCH_LFW_DIR")


class GunicornFailed(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalGunicorn:
    """One Gunicorn master and its workers, at facematch's defaults but with metrics off."""

    def __init__(
        self,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        app: str = "wsgi:app",
        extra_args: Iterable[str] = (),
        repo: Path = REPO,
    ):
        """Start it; ``repo``: the checkout to serve (another one for before/after figures)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEMATCH_")}
        environ.update({k: os.environ[k] for k in KEPT_VARIABLES if os.environ.get(k)})
        environ.update(
            {
                "FACEMATCH_HOST": "127.0.0.1",
                "FACEMATCH_PORT": str(self.port),
                "FACEMATCH_MQTT_HOST": "",
                "PYTHONPATH": str(repo),
                **(env or {}),
            }
        )
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *extra_args, app]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                argv, cwd=repo, env=environ, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        """The master's process id."""
        return self.process.pid

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def answers(self) -> bool:
        """Whether ``GET /ping`` answers 200 now."""
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_until_up(self, seconds: float = 180) -> LocalGunicorn:
        """Return once ``/ping`` answers; ``GunicornFailed`` if the master exits or times out."""
        deadline = time.monotonic() + seconds
        while not self.answers():
            if self.process.poll() is not None:
                raise GunicornFailed(
                    f"gunicorn exited with {self.process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise GunicornFailed(
                    f"gunicorn did not answer /ping in {seconds:g} s:\n{self.log()}"
                )
            time.sleep(0.3)
        return self

    def wait_exit(self, seconds: float = 120) -> int:
        """The exit code of a server expected to stop by itself (e.g. refusing to start)."""
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.stop()
            raise GunicornFailed(f"gunicorn still ran after {seconds:g} s:\n{self.log()}") from None

    def workers(self) -> set[int]:
        """The process ids of the master's current children (its workers)."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as children:
            return {int(child) for child in children.read().split()}

    def wait_for_workers(
        self, count: int, other_than: Iterable[int] = (), seconds: float = 60
    ) -> set[int]:
        """Wait until ``count`` booted workers not in ``other_than`` run; their pids."""
        deadline = time.monotonic() + seconds
        while True:
            pids = self.workers() - set(other_than)
            log = self.log()
            if len(pids) == count and all(f"Booting worker with pid: {p}" in log for p in pids):
                return pids
            if time.monotonic() > deadline:
                raise GunicornFailed(f"{count} new workers did not boot in {seconds:g} s")
            time.sleep(0.2)

    def stop(self, grace: float = 45) -> int:
        """SIGTERM to the master (after continuing a frozen group); SIGKILL to the whole group if
        it has not exited after ``grace`` seconds. Returns the master's exit code."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode
