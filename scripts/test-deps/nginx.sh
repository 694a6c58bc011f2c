#!/usr/bin/env bash
# Install nginx (Debian's package), which the proxy tests start in front of a real Gunicorn from
# a temporary directory (never as a system service). Idempotent; `apt-get update` runs only when
# nginx is missing.
set -euo pipefail

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "test-deps/nginx: installing nginx" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx >/dev/null
fi
