#!/usr/bin/env bash
# Set up (idempotent, with the dev tools), install the servers the tests start (scripts/test-deps/),
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
for deps in scripts/test-deps/*.sh; do
  [ -e "$deps" ] && bash "$deps"
done
exec .venv/bin/python -m pytest "$@"
