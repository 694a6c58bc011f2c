"""WSGI entry point for Gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

A missing or wrong weights file stops the start-up with a clear message and a non-zero exit;
the service never runs with random weights.
"""

import logging
import sys

from facematch.api.app import create_app
from facematch.config import ConfigError, Settings
from facematch.engine.weights import WeightsError

logging.basicConfig(
    level=Settings.from_env().log_level.upper(),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

try:
    app = create_app()
except (WeightsError, ConfigError, ValueError) as error:
    print(f"facematch: cannot start: {error}", file=sys.stderr)
    sys.exit(3)
