"""Gunicorn server hooks, named in gunicorn.conf.py.

``post_worker_init`` runs in each worker after the fork, before it serves, and does three things:

1. Builds torch's intra-op thread pool in the worker's main thread, where PyTorch serves (with the
   default ONNX Runtime backends and graphs built at set-up it is never imported). The app is
   preloaded in the master, so every worker starts from a forked copy of torch whose pool was torn
   down by the fork; the first request threads that then run inference at the same moment race to
   rebuild it, and one of them fails with "pool INTERNAL ASSERT FAILED ... Invalid thread pool!" (a
   500). Measured: 3 of 4 fresh servers (1 worker, 2 threads) failed one of their first 4 concurrent
   requests before this; 10 of 10 were clean after.

2. Makes a stopping worker close its copy of the listening socket as soon as it stops
   accepting. Left alone, the worker keeps the socket open until its in-flight requests are
   done, so a client connecting meanwhile is queued by the kernel and then reset. With the
   master's copy closed on SIGTERM too, the socket goes away at once and such a client gets
   "connection refused" right away, while the requests already accepted finish normally. On a
   HUP reload the master and the new workers still hold the socket, so closing an old worker's
   copy changes nothing for them. The gthread worker closes it once its poller has let go of it
   (``set_accept_enabled(False)`` at the end of its loop): closed in the signal handler, a
   connection event already in hand made the worker accept on the closed socket, and EBADF
   ended the worker with its in-flight requests (2 requests dropped in 3 of 8 rotations under
   load). The sync worker serves in its main thread and closes it in the handler; its select
   takes a closed socket as the sign to stop, and an accept that meets one while stopping is
   ignored.

3. Starts the worker's metrics publisher, so that it connects to the broker at boot: otherwise a
   worker that has served no request yet reports ``connected: false`` on /health.

``pre_request`` marks a request whose declared body is over ``FACEMATCH_MAX_UPLOAD_MB`` to be
answered with ``Connection: close``. The app refuses such a body (413) without reading it, and
Gunicorn then closes the connection because the unread rest is too large to drain; without this,
the 413 said ``keep-alive`` and the client's next request on that socket failed. An application
cannot say ``close`` itself: Gunicorn drops hop-by-hop headers from its responses.

``pre_request`` and ``post_request`` also count the worker's running requests for its
``heap_trim.HeapTrimmer``: a worker that is idle for a second after requests grew its heap more
than ``FACEMATCH_HEAP_TRIM_MB`` gives the free heap back to the system (``malloc_trim``).
Without it, a default server held 530-890 MiB of PSS 5 s after a battery of 40 MP photos; with
it 160-210 MiB (docs/security.md).

``pre_fork`` makes the master's memory shareable before each fork: it freezes the Python objects
the app made (``gc.freeze``: a worker's collector then never writes to their pages, which would
copy them) and gives back to the system what loading left free in the heap (``malloc_trim``: the
float graph's bytes and ONNX Runtime's transient copies). With ONNX Runtime's arena off and
the graphs read from their files (``engine.backends.onnx_runtime``), total PSS of a default
server after 20 LFW requests went from 558 to 315 MiB (docs/performance.md). glibc's mmap
threshold is left to adapt: fixing it at 128 KiB kept the figure near 300 MiB even after 12 MP
photos, but the page faults of every large array made a 12 MP request 100 ms slower and an LFW
one 13 ms slower.

``worker_exit`` ends a worker with ``os._exit`` once Python's own clean-up (atexit handlers: the
metrics publisher's flush, logging) has run, keeping the exit code Gunicorn was leaving with.
ONNX Runtime, imported in the master, keeps a thread there; the C++ static destructors that a
normal exit runs wait for that thread, which a forked worker does not have, so the worker either
hung or aborted ("terminate called ... std::system_error", SIGABRT) on every shutdown.
``multiprocessing`` ends its forked children the same way, for the same reason.

``on_reload`` (Gunicorn's HUP) re-reads the key files into the preloaded app's ``KeyRing`` in the
master before the new workers are forked from it, so the new workers hold the new keys while the
old ones finish their requests (rotation without a dropped request). A malformed file keeps the
keys in force and logs why. Without ``preload_app`` each new worker loads the app, and its keys,
itself.

``prometheus_dir`` makes the directory in which the workers write their Prometheus metrics
(``PROMETHEUS_MULTIPROC_DIR``, see ``observability.prometheus``): a fresh one per server start,
under ``FACEMATCH_PROMETHEUS_DIR`` or the system's temporary directory, so no counts of an
earlier run are added in. gunicorn.conf.py puts it into the environment before the app is
loaded (the variable must be set before prometheus_client is imported). ``child_exit`` marks a
worker that exited (or was killed) as dead: its counters and histograms stay in the sums, its
``live*`` gauges go. ``on_exit`` removes the directory when the master stops.
"""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import os
import shutil
import signal
import sys
import tempfile

from facematch.api.heap_trim import HeapTrimmer, glibc
from facematch.config import ConfigError, Settings

_prometheus_dir: str | None = None  # this master's; gunicorn.conf.py is re-read on HUP
_prometheus_dir_owner: int | None = None


def post_worker_init(worker) -> None:
    """Prepare torch for this process, make SIGTERM close this worker's listeners and
    connect its metrics publisher."""
    torch = sys.modules.get("torch")  # only a PyTorch backend imports it
    if torch is not None:
        torch.set_num_threads(torch.get_num_threads())  # rebuild the pool before request threads
    _close_listeners_when_stopping(worker)
    services = getattr(worker.wsgi, "extensions", {}).get("facematch")
    if services is not None:
        services.publisher.start()


def _close_listeners_when_stopping(worker) -> None:
    """Close the worker's copy of the listening sockets once it stops accepting (see the
    module's docstring, item 2)."""

    def close_listeners() -> None:
        for listener in worker.sockets:
            try:
                listener.sock.close()  # the wrapper stays, so gunicorn's own cleanup still works
            except (AttributeError, OSError):
                pass

    set_accept_enabled = getattr(worker, "set_accept_enabled", None)
    if set_accept_enabled is not None:  # gthread: after its poller unregistered them

        def accept_enabled(enabled: bool) -> None:
            set_accept_enabled(enabled)
            if not enabled and not worker.alive:
                close_listeners()

        worker.set_accept_enabled = accept_enabled
        return
    begin_exit, accept = worker.handle_exit, worker.accept

    def handle_exit(sig, frame) -> None:
        begin_exit(sig, frame)
        close_listeners()

    def accept_unless_closed(listener) -> None:
        try:
            accept(listener)
        except OSError as error:
            if worker.alive or error.errno != errno.EBADF:
                raise

    worker.accept = accept_unless_closed
    signal.signal(signal.SIGTERM, handle_exit)


def on_reload(server) -> None:
    """Re-read the key files into the preloaded app (see the module's docstring)."""
    if not server.cfg.preload_app:
        return
    security = getattr(server.app.wsgi(), "extensions", {}).get("facematch_security")
    if security is None:
        return
    try:
        count = security["api_keys"].reload()
    except ConfigError as error:
        server.log.error("keys not reloaded, the previous keys stay in force: %s", error)
        return
    server.log.info("keys reloaded: %d key(s)", count)


def pre_fork(server, worker) -> None:
    """Freeze the master's Python objects and trim its heap, so the workers share what the
    master loaded rather than copy it."""
    gc.freeze()
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def pre_request(worker, req) -> None:
    """Count the request in (``heap_trim``); say ``Connection: close`` on the answer to a body
    declared over the upload cap."""
    _heap_trimmer().started()
    length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), "")
    if length.isdigit() and int(length) > _max_upload_bytes():
        req.force_close()


def post_request(worker, req, environ, resp) -> None:
    """Count the answered request out; once the worker is idle, the heap it grew is given
    back (``heap_trim``)."""
    _heap_trimmer().finished()


@functools.cache
def _heap_trimmer() -> HeapTrimmer:
    """This worker's (made at its first request: its floor is the memory it booted with)."""
    return HeapTrimmer(_settings().heap_trim_mb << 20)


@functools.cache
def _max_upload_bytes() -> int:
    return _settings().max_upload_bytes


@functools.cache
def _settings() -> Settings:
    return Settings.from_env()


def worker_exit(server, worker) -> None:
    """Run Python's exit handlers, then leave without the C++ static destructors."""
    leaving = sys.exc_info()[1]
    if not isinstance(leaving, SystemExit):
        return  # not an exit Gunicorn chose: let it unwind as usual
    code = leaving.code
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def prometheus_dir(parent: str = "") -> str:
    """This server's metrics directory, made (empty) under ``parent`` (empty: the system's
    temporary directory) at the first call in this process; later calls return the same."""
    global _prometheus_dir, _prometheus_dir_owner
    if _prometheus_dir is None:
        _prometheus_dir = tempfile.mkdtemp(prefix="facematch-prometheus-", dir=parent or None)
        _prometheus_dir_owner = os.getpid()
        atexit.register(_remove_prometheus_dir)  # also when the master dies before on_exit
    return _prometheus_dir


def _remove_prometheus_dir() -> None:
    """Remove the metrics directory, in the process that made it only (a worker runs the
    atexit handlers it inherited, see ``worker_exit``)."""
    if _prometheus_dir is not None and os.getpid() == _prometheus_dir_owner:
        shutil.rmtree(_prometheus_dir, ignore_errors=True)


def child_exit(server, worker) -> None:
    """Mark an exited worker's metrics as dead (its ``live*`` gauges leave the sums)."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics directory once the master stops."""
    _remove_prometheus_dir()
