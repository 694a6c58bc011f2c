#!/usr/bin/env bash
# Install Chromium (Debian's package), which the web page tests drive headless through Playwright
# for Python (pinned in requirements-dev.txt). Playwright's own browser download (`playwright
# install`) is never used: the tests launch /usr/bin/chromium. Idempotent; `apt-get update` runs
# only when chromium is missing.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  echo "test-deps/browser: installing chromium" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
