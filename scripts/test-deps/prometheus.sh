#!/usr/bin/env bash
# Install Prometheus (Debian's package), which tests/test_prometheus.py starts from a temporary
# directory (never as a system service) to scrape a real Gunicorn's /metrics. Idempotent;
# `apt-get update` runs only when prometheus is missing.
set -euo pipefail

if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then
  echo "test-deps/prometheus: installing prometheus" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
