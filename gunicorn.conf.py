"""Gunicorn settings, taken from the FACEMATCH_ variables (see config.py and the README)."""

from config import Settings

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
from gunicorn_hooks import post_worker_init, worker_exit  # noqa: E402,F401 (see the module)
