#!/usr/bin/env bash
# Set up (idempotent, with the dev tools), install the servers the tests start (scripts/test-deps/),
# run ruff (lint and format check), and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
for deps in scripts/test-deps/*.sh; do
  [ -e "$deps" ] && bash "$deps"
done
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
