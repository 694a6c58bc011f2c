#!/usr/bin/env bash
# Set up (idempotent) and serve facematch with Gunicorn on FACEMATCH_HOST:FACEMATCH_PORT
# (default 0.0.0.0:8000). Every FACEMATCH_ variable in the README applies.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app
