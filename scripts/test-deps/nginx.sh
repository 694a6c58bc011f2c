#!/usr/bin/env bash
# Install nginx and its Lua module (Debian's packages), which the proxy tests start in front of a
# real Gunicorn from a temporary directory (never as a system service). The shipped config
# (deploy/nginx/facematch.conf) bounds a request's whole time with a rewrite_by_lua_block, which
# plain nginx cannot. Idempotent; `apt-get update` runs only when a package is missing.
set -euo pipefail

missing=()
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  missing+=(nginx)
fi
# The tests load it from here (tests/servers.py), as Debian's modules-enabled/ does.
if [ ! -f /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then
  missing+=(libnginx-mod-http-lua)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-deps/nginx: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
