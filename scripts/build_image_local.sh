#!/usr/bin/env bash
# Prove the shipped Dockerfile on a machine without Docker or registry access (not part of the
# tests: it takes many minutes). As root on Debian 12:
#   1. makes a stand-in for python:3.11-slim-bookworm with debootstrap (Debian bookworm minbase,
#      Debian's Python 3.11, `python` on PATH) and tags it with that name;
#   2. builds Dockerfile with buildah (chroot isolation), weights and graphs included. Debian's
#      buildah 1.28 honours neither `FROM --platform=$BUILDPLATFORM` nor a stage named through
#      an ARG (`FROM ${DATA_FROM}`), so the builder stage is built alone first, on amd64
#      (`--target builder`), its /opt/facematch/data becomes a data image labelled with the
#      target architecture, and the image's build takes the files from there
#      (`--build-arg DATA_FROM=...`): as BuildKit does, PyTorch never runs emulated for arm64;
#   3. checks that the final image holds no PyTorch (no torch, torchvision, facenet_pytorch,
#      onnx or tensorboard in its site-packages, `import torch` fails) and prints its size
#      (uncompressed and gzipped);
#   4. runs the image's own CMD as its own user, checks GET /ping, the image's HEALTHCHECK
#      command and POST /photo_match on two LFW pairs (same person, two people); arm64 runs
#      emulated by qemu-user as a Raspberry Pi 4 (QEMU_CPU=cortex-a72, and a Pi 4's
#      /proc/cpuinfo mounted over the x86 host's: ONNX Runtime >= 1.28 crashes at import without);
#   5. deletes all its storage.
# `cuda` builds Dockerfile.cuda (amd64) the same way and, on this machine without a GPU, also
# checks that the image logs its fall-back to the CPU and that FACEMATCH_DEVICE=cuda refuses to
# start with a clear message.
# Differences from the shipped build (build args and mounts, never the Dockerfile): pip trusts this
# machine's CA bundle and uses its pip mirrors; torch comes from PyPI, not PyTorch's CPU index
# (not reachable here): PyPI's CUDA build of the pinned torch 2.14.1, in the builder stage only
# (the amd64 builder serves the arm64 build too).
#
# Usage: scripts/build_image_local.sh [amd64|arm64|cuda]
# Env: LOG (default .data/build_image_local-VARIANT.log), FACEMATCH_LFW_DIR (default ../shared/data/lfw),
#      BUILD_TIMEOUT_MIN (default 120 per build), KEEP_STORAGE=1 keeps the buildah storage.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

VARIANT=${1:-amd64}
case "$VARIANT" in
  amd64 | arm64) ARCH=$VARIANT DOCKERFILE=Dockerfile ;;
  cuda) ARCH=amd64 DOCKERFILE=Dockerfile.cuda ;;
  *) echo "usage: $0 [amd64|arm64|cuda]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "build_image_local: run as root (buildah, debootstrap)" >&2; exit 2; }

LOG=${LOG:-$REPO/.data/build_image_local-$VARIANT.log}
mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1

BUILD_TIMEOUT_MIN=${BUILD_TIMEOUT_MIN:-120}
LFW=${FACEMATCH_LFW_DIR:-$REPO/../shared/data/lfw}
BASE=docker.io/library/python:3.11-slim-bookworm
IMAGE=localhost/facematch:local-$VARIANT
START=$(date +%s)
step() { echo "== [$(( $(date +%s) - START ))s] $*"; }
fail() {
  [ -f "${WORK:-}/server.log" ] && { echo "-- server log:"; cat "$WORK/server.log"; }
  echo "RESULT: FAILURE ($VARIANT): $*"
  exit 1
}

need=(buildah debootstrap curl python3)
[ "$ARCH" = arm64 ] && need+=(qemu-aarch64-static update-binfmts)
missing=()
for tool in "${need[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing buildah, debootstrap (and qemu for arm64) with apt-get"
  pkgs=(buildah debootstrap curl)
  [ "$ARCH" = arm64 ] && pkgs+=(qemu-user-static binfmt-support)
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
if [ "$ARCH" = arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64
fi

WORK=$(mktemp -d /var/tmp/facematch-image.XXXXXX)
STORE=(--storage-driver "${STORAGE_DRIVER:-overlay}" --root "$WORK/root" --runroot "$WORK/runroot")
SERVER_PGID=""
cleanup() {
  set +e
  [ -n "$SERVER_PGID" ] && kill -TERM -- "-$SERVER_PGID" 2>/dev/null && sleep 3 && kill -KILL -- "-$SERVER_PGID" 2>/dev/null
  if [ "${KEEP_STORAGE:-0}" = 1 ]; then
    echo "storage kept: buildah ${STORE[*]} images"
    return
  fi
  buildah "${STORE[@]}" rm -a >/dev/null 2>&1
  buildah "${STORE[@]}" rmi -a -f >/dev/null 2>&1
  findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf --one-file-system "$WORK"
  echo "cleaned up $WORK"
}
trap cleanup EXIT

MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
standin() { # standin ARCH NAME: a python:3.11-slim-bookworm stand-in for ARCH, tagged NAME
  step "stand-in base: debootstrap bookworm ($1) as $2"
  local rootfs=$WORK/rootfs-$1 ctr
  timeout 30m debootstrap --variant=minbase --arch="$1" \
    --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log"; fail "debootstrap"; }
  ln -s /usr/bin/python3 "$rootfs/usr/local/bin/python"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
  tar -C "$rootfs" -cf "$WORK/rootfs.tar" .
  ctr=$(buildah "${STORE[@]}" from --arch "$1" scratch)
  buildah "${STORE[@]}" add "$ctr" "$WORK/rootfs.tar" / >/dev/null
  buildah "${STORE[@]}" config --arch "$1" --os linux --cmd python3 --env LANG=C.UTF-8 \
    --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah "${STORE[@]}" commit --quiet "$ctr" "$2" >/dev/null
  buildah "${STORE[@]}" rm "$ctr" >/dev/null
  rm -rf "$rootfs" "$WORK/rootfs.tar"
}
standin "$ARCH" "$BASE"

step "pip settings for this build only (mounted, not in the image)"
printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' >"$WORK/pip.conf"
VOLS=(-v "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro")
mirrors=()
for dir in /opt/pypi/simple /opt/pypi-more/simple; do
  [ -d "$dir" ] && VOLS+=(-v "$(dirname "$dir"):$(dirname "$dir"):ro") && mirrors+=("file://$dir")
done
[ ${#mirrors[@]} -gt 0 ] && echo "extra-index-url = ${mirrors[*]}" >>"$WORK/pip.conf"
cat "$WORK/pip.conf"
ARGS=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
[ "$VARIANT" = cuda ] && ARGS=(--build-arg FACEMATCH_MODEL=casia-webface)  # requirements.txt decides
BUD=(buildah "${STORE[@]}" bud --isolation chroot --format docker --pull=never "${VOLS[@]}" -f "$DOCKERFILE")
build_start=$(date +%s)

if [ "$DOCKERFILE" = Dockerfile ]; then
  BUILDER_BASE=$BASE
  if [ "$ARCH" != amd64 ]; then
    BUILDER_BASE=localhost/python-standin:amd64
    standin amd64 "$BUILDER_BASE"
  fi
  step "buildah bud --target builder (amd64, limit ${BUILD_TIMEOUT_MIN} min)"
  timeout "${BUILD_TIMEOUT_MIN}m" "${BUD[@]}" --arch amd64 "${ARGS[@]}" --build-arg BUILDPLATFORM=linux/amd64 \
    --build-arg "PYTHON_IMAGE=$BUILDER_BASE" --target builder -t localhost/facematch-builder:amd64 . \
    || fail "buildah bud --target builder (exit $?)"
  step "the builder's /opt/facematch/data as a $ARCH data image"
  builder=$(buildah "${STORE[@]}" from localhost/facematch-builder:amd64)
  data=$(buildah "${STORE[@]}" from --arch "$ARCH" scratch)
  buildah "${STORE[@]}" copy "$data" "$(buildah "${STORE[@]}" mount "$builder")/opt/facematch/data" \
    /opt/facematch/data >/dev/null
  ls -l "$(buildah "${STORE[@]}" mount "$builder")/opt/facematch/data"
  buildah "${STORE[@]}" config --arch "$ARCH" --os linux "$data"
  buildah "${STORE[@]}" commit --quiet "$data" "localhost/facematch-data:$ARCH" >/dev/null
  buildah "${STORE[@]}" rm "$builder" "$data" >/dev/null
  ARGS+=(--build-arg "DATA_FROM=localhost/facematch-data:$ARCH")
  echo "builder stage and data image took $(( $(date +%s) - build_start ))s"
fi

echo "build args: ${ARGS[*]}"
step "buildah bud -f $DOCKERFILE ($ARCH, limit ${BUILD_TIMEOUT_MIN} min)"
timeout "${BUILD_TIMEOUT_MIN}m" "${BUD[@]}" --arch "$ARCH" "${ARGS[@]}" -t "$IMAGE" . \
  || fail "buildah bud (exit $?)"
echo "build took $(( $(date +%s) - build_start ))s in all"
buildah "${STORE[@]}" images
SIZE=$(buildah "${STORE[@]}" images --format '{{.Size}}' "$IMAGE")
buildah "${STORE[@]}" push --quiet "$IMAGE" "docker-archive:$WORK/image.tar" >/dev/null
BYTES=$(gzip -6 -c "$WORK/image.tar" | wc -c)
rm -f "$WORK/image.tar"
echo "image size: $SIZE (uncompressed, buildah images); about $(( BYTES / 1000000 )) MB gzipped"

if [ "$DOCKERFILE" = Dockerfile ]; then
  step "the final image holds no PyTorch and none of the build tools"
  ctr=$(buildah "${STORE[@]}" from --arch "$ARCH" "$IMAGE")
  root=$(buildah "${STORE[@]}" mount "$ctr")
  found=$(find "$root/opt/venv" "$root/usr/lib/python3"* -maxdepth 4 -type d \
    \( -name torch -o -name torchvision -o -name facenet_pytorch -o -name onnx -o -name tensorboard \) \
    -path '*-packages/*' -print 2>/dev/null)
  [ -z "$found" ] || fail "build tools in the final image: $found"
  ls "$root"/opt/venv/lib/python3*/site-packages >/dev/null || fail "no /opt/venv site-packages"
  [ -z "$(find "$root/opt/facematch/data" -name '*.pt')" ] || fail ".pt weights in the final image"
  du -sh "$root/opt/venv" "$root/opt/facematch/data" "$root/usr" | sed 's|'"$root"'||'
  buildah "${STORE[@]}" umount "$ctr" >/dev/null
  set +e
  buildah "${STORE[@]}" run --isolation chroot "$ctr" -- python -c 'import torch' >"$WORK/torch.log" 2>&1
  imported=$?
  set -e
  buildah "${STORE[@]}" rm "$ctr" >/dev/null
  grep -m1 "ModuleNotFoundError: No module named 'torch'" "$WORK/torch.log" \
    || { cat "$WORK/torch.log"; fail "import torch did not fail for want of torch (exit $imported)"; }
  echo "no torch, torchvision, facenet_pytorch, onnx or tensorboard in site-packages; no .pt; import torch fails"
fi

step "run the image (its CMD, its user) on 127.0.0.1"
ctr=$(buildah "${STORE[@]}" from --arch "$ARCH" "$IMAGE")
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
buildah "${STORE[@]}" config --env FACEMATCH_HOST=127.0.0.1 --env "FACEMATCH_PORT=$PORT" "$ctr"
mapfile -t CMD < <(buildah "${STORE[@]}" inspect --type image --format '{{range .Docker.Config.Cmd}}{{println .}}{{end}}' "$IMAGE")
mapfile -t HEALTH < <(buildah "${STORE[@]}" inspect --type image --format '{{range .Docker.Config.Healthcheck.Test}}{{println .}}{{end}}' "$IMAGE")
USER_ID=$(buildah "${STORE[@]}" inspect --type image --format '{{.Docker.Config.User}}' "$IMAGE")
EMULATE=()
QEMU_ENV=()
if [ "$ARCH" = arm64 ]; then
  # A Raspberry Pi 4 (Cortex-A72, ARMv8.0) as scripts/emulated_numerics.sh describes it.
  for cpu in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
    printf 'CPU revision\t: 3\n\n'
  done >"$WORK/cpuinfo-pi4"
  printf 'Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$WORK/cpuinfo-pi4"
  # buildah run's own -v does not reach /proc/cpuinfo under chroot isolation; a bind mount in a
  # private mount namespace around it does (the host's stays untouched).
  EMULATE=(unshare -m --propagation private sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    "$WORK/cpuinfo-pi4")
  QEMU_ENV=(--env QEMU_CPU=cortex-a72)
fi
RUN=("${EMULATE[@]}" buildah "${STORE[@]}" run --isolation chroot "${QEMU_ENV[@]}" --user "$USER_ID" "$ctr" --)
echo "image user $USER_ID: $("${RUN[@]}" id); workdir $("${RUN[@]}" pwd); CMD: ${CMD[*]}"
[ "$("${RUN[@]}" id -u)" != 0 ] || fail "image runs as root"
"${RUN[@]}" ls -l /opt/facematch/data
setsid "${RUN[@]}" "${CMD[@]}" >"$WORK/server.log" 2>&1 &
SERVER_PGID=$!
run_start=$(date +%s)
if [ "$ARCH" = arm64 ]; then wait_s=1200; else wait_s=300; fi
up=0
for _ in $(seq 1 "$wait_s"); do
  kill -0 "$SERVER_PGID" 2>/dev/null || break
  if curl -fsS "http://127.0.0.1:$PORT/ping" >"$WORK/ping.json" 2>/dev/null; then up=1; break; fi
  sleep 1
done
[ "$up" = 1 ] || fail "no answer on /ping"
echo "GET /ping -> $(cat "$WORK/ping.json") ($(( $(date +%s) - run_start ))s after start)"
grep -q '"status": *"ok"' "$WORK/ping.json" || fail "/ping did not say ok"

[ "${HEALTH[0]:-}" = CMD ] || fail "image has no HEALTHCHECK (got: ${HEALTH[*]:-none})"
"${RUN[@]}" "${HEALTH[@]:1}" || fail "HEALTHCHECK command failed"
echo "HEALTHCHECK command -> exit 0"

[ -f "$LFW/pairsDevTest.txt" ] || fail "LFW not at $LFW (set FACEMATCH_LFW_DIR)"
match() {
  local out
  out=$(curl -sS -m 300 -F "reference=@$LFW/images/$1" -F "sample=@$LFW/images/$2" "http://127.0.0.1:$PORT/photo_match")
  echo "POST /photo_match $1 vs $2 -> $out"
  python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1])["match"] is not (sys.argv[2] == "true"))' "$out" "$3" \
    || fail "/photo_match said the wrong thing for $1 vs $2 (expected match=$3)"
}
match Aaron_Peirsol/Aaron_Peirsol_0001.jpg Aaron_Peirsol/Aaron_Peirsol_0002.jpg true
match Aaron_Peirsol/Aaron_Peirsol_0001.jpg Serena_Williams/Serena_Williams_0001.jpg false

curl -fsS -o /dev/null "http://127.0.0.1:$PORT/openapi.json" || fail "GET /openapi.json"
echo "GET /openapi.json -> 200"

total_kb=0
master=""
gunicorns=()
for pid in $(pgrep -g "$SERVER_PGID"); do
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
  case "$cmd" in *buildah*) continue ;; *gunicorn*) gunicorns+=("$pid") ;; esac
done
for pid in "${gunicorns[@]}"; do
  # The master is the Gunicorn process whose parent is not one (buildah's own command line
  # names gunicorn too, so the parent's command line cannot tell).
  parent=$(awk '{print $4}' "/proc/$pid/stat")
  case " ${gunicorns[*]} " in *" $parent "*) ;; *) master=$pid ;; esac
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")
  rss=$(awk '/^Rss:/ {print $2}' "/proc/$pid/smaps_rollup")
  echo "gunicorn pid $pid: RSS $(( rss / 1024 )) MiB, PSS $(( pss / 1024 )) MiB"
  total_kb=$(( total_kb + pss ))
done
echo "memory after the requests: PSS $(( total_kb / 1024 )) MiB in all gunicorn processes"

[ -n "$master" ] || fail "no Gunicorn master found"
kill -TERM "$master"
for _ in $(seq 1 60); do kill -0 "$master" 2>/dev/null || break; sleep 1; done
kill -0 "$master" 2>/dev/null && fail "Gunicorn did not stop within 60 s of SIGTERM"
wait "$SERVER_PGID" 2>/dev/null || true
SERVER_PGID=""
grep -q 'Shutting down: Master' "$WORK/server.log" || fail "Gunicorn did not shut down cleanly"
echo "SIGTERM to the Gunicorn master -> clean shutdown"
echo "-- server log:"
cat "$WORK/server.log"

if [ "$VARIANT" = cuda ]; then
  step "cuda image without a GPU: the fall-back to the CPU is logged, FACEMATCH_DEVICE=cuda refuses"
  grep 'falling back to the CPU' "$WORK/server.log" || fail "no fall-back line in the server log"
  ctr=$(buildah "${STORE[@]}" from "$IMAGE")
  buildah "${STORE[@]}" config --env FACEMATCH_HOST=127.0.0.1 --env "FACEMATCH_PORT=$PORT" \
    --env FACEMATCH_DEVICE=cuda "$ctr"
  set +e
  timeout 600 buildah "${STORE[@]}" run --isolation chroot --user "$USER_ID" "$ctr" -- "${CMD[@]}" \
    >"$WORK/refusal.log" 2>&1
  refused=$?
  set -e
  tail -n 5 "$WORK/refusal.log"
  [ "$refused" != 0 ] && [ "$refused" != 124 ] || fail "FACEMATCH_DEVICE=cuda without a GPU: exit $refused"
  grep -q 'FACEMATCH_DEVICE=cuda, but no CUDA GPU is visible' "$WORK/refusal.log" \
    || fail "FACEMATCH_DEVICE=cuda without a GPU: no clear message"
  echo "FACEMATCH_DEVICE=cuda without a GPU -> refused to start (exit $refused) with the message above"
fi
echo "RESULT: SUCCESS ($VARIANT) image $SIZE uncompressed, ~$(( BYTES / 1000000 )) MB gzipped, total $(( $(date +%s) - START ))s"
