#!/usr/bin/env bash
# Set up (idempotent, with the dev tools), install the servers the tests start (scripts/test-deps/),
# run ruff (lint and format check), the numerics tests on emulated CPUs (x86-64 hosts: an AVX2-only
# x86, a Pi 4 and a Pi 5, scripts/emulated_numerics.sh; an aarch64 host runs them natively in the
# suite), and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
for deps in scripts/test-deps/*.sh; do
  [ -e "$deps" ] && bash "$deps"
done
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ "$(uname -m)" = x86_64 ]; then
  scripts/emulated_numerics.sh
fi
exec .venv/bin/python -m pytest "$@"
