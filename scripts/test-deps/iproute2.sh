#!/usr/bin/env bash
# Install iproute2's `ss`, with which the hung-PostgreSQL test sees which Gunicorn worker holds
# which database connection (tests/test_gallery_gunicorn.py). Idempotent; `apt-get update` runs
# only when it is missing.
set -euo pipefail

if ! command -v ss >/dev/null 2>&1; then
  echo "test-deps/iproute2: installing iproute2" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
