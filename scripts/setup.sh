#!/usr/bin/env bash
# Set up facematch on this machine: the virtual environment .venv/ with the pinned requirements,
# and the model weights, built once into FACEMATCH_DATA_DIR. Idempotent: safe to run again.
# Usage: scripts/setup.sh [--dev]    (--dev adds the test, lint and benchmark tools)
set -euo pipefail
cd "$(dirname "$0")/.."

files=(requirements.txt)
if [ "${1:-}" = "--dev" ]; then files+=(requirements-dev.txt); fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with ${PYTHON:-python3}" >&2
  "${PYTHON:-python3}" -m venv .venv
fi
for req in "${files[@]}"; do
  stamp=".venv/.installed-$req"
  # The stamp covers the files it includes (-r requirements-serve.txt) too.
  want=$(sed -n 's/^-r *//p' "$req" | xargs cat "$req" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing $req (torch takes a minute or two the first time)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
  fi
done
.venv/bin/python -m deployment_utils.weights build
.venv/bin/python -m deployment_utils.graphs build
