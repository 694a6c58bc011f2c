"""Gunicorn settings, taken from the FACEMATCH_ variables (see facematch/config.py and the README).

Gunicorn is meant to sit behind the buffering reverse proxy in deploy/nginx/, which waits for
slow and idle clients itself and hands Gunicorn only complete requests. The connection settings
below bound what a client reaching Gunicorn directly can hold; they cannot stop a slow client
from holding a request thread (Gunicorn's gthread worker has no read deadline).
"""

from facematch.config import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread" if _settings.threads > 1 else "sync"
timeout = _settings.timeout
graceful_timeout = 30
preload_app = _settings.preload
loglevel = _settings.log_level
accesslog = "-"
errorlog = "-"

# Idle kept-alive connections are closed after this many seconds, and new ones that have sent
# nothing after this much more than Gunicorn's own 5 s wait for a first byte.
keepalive = _settings.keepalive
# Connections one worker holds at once; more wait in the listen backlog.
worker_connections = _settings.worker_connections
# Request line and headers: Gunicorn's defaults, at least as large as what nginx forwards
# (deploy/nginx/facematch.conf: a 4 KB request line, 4 KB per header line), so a request that
# passed the proxy is never refused here with Gunicorn's own HTML error page.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# The control socket (gunicornc) defaults to one shared path per user, which a second instance
# takes over and deletes on exit: off unless FACEMATCH_CONTROL_SOCKET names this instance's own.
control_socket_disable = not _settings.control_socket
if _settings.control_socket:
    control_socket = _settings.control_socket

from facematch.api.gunicorn_hooks import (  # noqa: E402,F401 (see the module)
    child_exit,
    on_exit,
    on_reload,
    post_request,
    post_worker_init,
    pre_fork,
    pre_request,
    prometheus_dir,
    worker_exit,
)

# The workers' Prometheus metrics files: a fresh directory per start, set in the environment
# before the app (and prometheus_client) is loaded, and removed when the master stops.
raw_env = [f"PROMETHEUS_MULTIPROC_DIR={prometheus_dir(_settings.prometheus_dir)}"]
