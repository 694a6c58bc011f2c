"""Gunicorn's control socket (issue 10, section 4): Gunicorn 27 opens one at a path shared by
every instance of a user (``~/.gunicorn/gunicorn.ctl``), so a second instance took it over and
deleted it on exit. facematch turns it off unless ``FACEMATCH_CONTROL_SOCKET`` names the
instance's own. Two instances started at once share a ``HOME`` here, as two services of one
user would."""

from __future__ import annotations

from gunicorn.ctl.client import ControlClient

from facematch.config import Settings
from tests.servers import wait_until


def start_two(gunicorn, home, **per_instance):
    """Two servers started together (neither waits for the other), then both waited for."""
    env = {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": "",
        "FACEMATCH_DATA_DIR": Settings.from_env().data_dir,  # the weights, wherever HOME is
    }
    servers = [gunicorn(wait=False, **env, **extra) for extra in per_instance.values()]
    for server in servers:
        server.wait_until_up()
    return servers


def listens_on(socket_path, port: int) -> bool:
    """Whether the control socket at ``socket_path`` answers for the server on ``port`` (the
    master opens it in its own thread, possibly after the first answer: waited for, 30 s)."""
    wait_until(socket_path.exists, 30, what=f"the control socket {socket_path.name}")
    with ControlClient(str(socket_path), timeout=10) as client:
        listeners = client.send_command("show listeners")["listeners"]
    return any(listener["address"].endswith(f":{port}") for listener in listeners)


def test_by_default_two_instances_open_no_control_socket_and_stop_cleanly(gunicorn, tmp_path):
    first, second = start_two(gunicorn, tmp_path, first={}, second={})
    assert not (tmp_path / ".gunicorn").exists()
    assert first.stop() == 0
    assert second.answers()
    assert second.stop() == 0
    for server in (first, second):
        assert "control socket" not in server.log().lower(), server.log()


def test_instances_given_their_own_sockets_keep_them_and_remove_only_their_own(gunicorn, tmp_path):
    paths = {name: tmp_path / f"{name}.ctl" for name in ("first", "second")}
    first, second = start_two(
        gunicorn,
        tmp_path,
        first={"FACEMATCH_CONTROL_SOCKET": str(paths["first"])},
        second={"FACEMATCH_CONTROL_SOCKET": str(paths["second"])},
    )
    assert listens_on(paths["first"], first.port)
    assert listens_on(paths["second"], second.port)
    assert not (tmp_path / ".gunicorn").exists()
    assert first.stop() == 0
    assert not paths["first"].exists()
    assert second.answers() and listens_on(paths["second"], second.port)
    assert second.stop() == 0
    assert not paths["second"].exists()
