"""WSGI entry point for Gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

A missing or wrong weights file stops the start-up with a clear message and a non-zero exit;
the service never runs with random weights.
"""

import logging
import sys

from config import ConfigError, Settings
from model_weights import WeightsError
from server import create_app

logging.basicConfig(
    level=Settings.from_env().log_level.upper(),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

try:
    app = create_app()
except (WeightsError, ConfigError, ValueError) as error:
    print(f"facematch: cannot start: {error}", file=sys.stderr)
    sys.exit(3)
