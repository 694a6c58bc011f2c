#!/usr/bin/env bash
# Run facematch on arm64 as a Raspberry Pi 4 would, on an x86-64 Debian 12 machine, under QEMU
# user-mode emulation of a Cortex-A72 (not part of the test suite: it takes an hour or more).
# As root:
#   1. builds (or reuses) an arm64 Debian bookworm root with debootstrap and qemu-user-static;
#   2. copies this working tree into it and runs scripts/setup.sh --dev there, unchanged, then
#      checks that no nvidia-* package is in the venv (the CPU build of torch on aarch64);
#   3. starts the service with the default configuration (scripts/run.sh), warms it up, answers
#      POST /photo_match on two LFW pairs and compares decision and distance with the same
#      requests to this machine's own amd64 server (within 1e-4);
#   4. measures RSS and PSS of the Gunicorn processes after warm-up, with the default workers
#      and with FACEMATCH_WORKERS=1;
#   5. runs the API tests there (tests/test_api.py tests/test_cached_match.py).
#
# Emulation artefact handled here: under qemu-user /proc/cpuinfo is the x86 host's, and ONNX
# Runtime 1.28+ crashes at import reading it. Every arm64 process runs in a private mount
# namespace where /proc/cpuinfo is a Raspberry Pi 4's (Cortex-A72, r0p3, four cores), as on a Pi.
# Test-only differences from a Pi (mounts, never the repository): pip trusts this machine's CA
# bundle and uses its pip mirrors; memory figures include QEMU's own translator and code cache.
#
# Usage: scripts/arm64_emulated_test.sh
# Env: ARM64_ROOT (default /var/tmp/facematch-arm64/root, reused between runs), QEMU_CPU
#      (default cortex-a72; cortex-a76 for a Pi 5), LOG (default .data/arm64_emulated_test.log),
#      FACEMATCH_LFW_DIR (default ../shared/data/lfw), SKIP_TESTS=1 skips step 5.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ "$(id -u)" = 0 ] || { echo "arm64_emulated_test: run as root (debootstrap, chroot, mounts)" >&2; exit 2; }

LOG=${LOG:-$REPO/.data/arm64_emulated_test.log}
mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1
ROOT=${ARM64_ROOT:-/var/tmp/facematch-arm64/root}
QEMU_CPU=${QEMU_CPU:-cortex-a72}
LFW=$(realpath "${FACEMATCH_LFW_DIR:-$REPO/../shared/data/lfw}")
START=$(date +%s)
step() { echo "== [$(( $(date +%s) - START ))s] $*"; }
fail() { echo "RESULT: FAILURE (arm64 emulated, $QEMU_CPU): $*"; exit 1; }
[ -f "$LFW/pairsDevTest.txt" ] || fail "LFW not at $LFW (set FACEMATCH_LFW_DIR)"
step "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)'), QEMU_CPU=$QEMU_CPU"

# 1. Tools and the arm64 root -------------------------------------------------------------------
need=(qemu-aarch64-static update-binfmts debootstrap unshare curl)
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null && continue
  step "installing qemu-user-static, binfmt-support, debootstrap with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    qemu-user-static binfmt-support debootstrap curl util-linux
  break
done
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64
fi
if [ ! -f "$ROOT/.facematch-root-ready" ]; then
  step "debootstrap --arch=arm64 bookworm into $ROOT"
  MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  rm -rf --one-file-system "$ROOT"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase --arch=arm64 --include=python3,python3-venv,ca-certificates,curl,procps \
    bookworm "$ROOT" "${MIRROR:-http://deb.debian.org/debian}" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -n 30 "$ROOT.debootstrap.log"; fail "debootstrap"; }
  touch "$ROOT/.facematch-root-ready"
else
  step "reusing the arm64 root $ROOT"
fi

# 2. This working tree, pip settings, the Pi 4's /proc/cpuinfo ---------------------------------
APP=$ROOT/srv/facematch
step "copying the working tree into $APP (its .venv kept between runs)"
mkdir -p "$APP"
find "$APP" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$APP" -xf -
mkdir -p "$ROOT/srv/out" "$ROOT/srv/lfw" "$ROOT/etc/ssl/certs"
rm -f "$ROOT"/srv/out/*
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca.crt"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
{
  printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n'
  mirrors=()
  for dir in /opt/pypi/simple /opt/pypi-more/simple; do [ -d "$dir" ] && mirrors+=("file://$dir"); done
  [ ${#mirrors[@]} -gt 0 ] && echo "extra-index-url = ${mirrors[*]}"
} >"$ROOT/etc/pip.conf"
CPUINFO=$ROOT/srv/pi4_cpuinfo
for cpu in 0 1 2 3; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
  printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
  printf 'CPU revision\t: 3\n\n'
done >"$CPUINFO"
printf 'Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$CPUINFO"

# in_pi CMD...: run CMD (a shell string) in the arm64 root as on a Pi 4 (see the header).
in_pi() {
  unshare -m --propagation private sh -ec '
    root=$1 lfw=$2 cmd=$3
    mount -t proc proc "$root/proc"
    mount --bind "$root/srv/pi4_cpuinfo" "$root/proc/cpuinfo"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    mount -t tmpfs tmpfs "$root/tmp"
    mount -t tmpfs tmpfs "$root/dev/shm"
    mount --bind -o ro "$lfw" "$root/srv/lfw"
    for dir in /opt/pypi /opt/pypi-more /opt/wheels; do
      [ -d "$dir" ] && mkdir -p "$root$dir" && mount --bind -o ro "$dir" "$root$dir"
    done
    exec chroot "$root" env -i HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$QEMU_CPU" \
      PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin FACEMATCH_LFW_DIR=/srv/lfw \
      bash -ec "cd /srv/facematch; $cmd"
  ' in_pi "$ROOT" "$LFW" "$1"
}
export QEMU_CPU ROOT LFW

step "the emulated machine"
in_pi 'uname -m; python3 --version; grep -m1 "CPU part" /proc/cpuinfo; grep -c ^processor /proc/cpuinfo'

step "scripts/setup.sh --dev (unchanged) on aarch64"
setup_start=$(date +%s)
in_pi 'scripts/setup.sh --dev' || fail "scripts/setup.sh --dev"
echo "setup took $(( $(date +%s) - setup_start ))s"
in_pi '.venv/bin/python -m pip list --format=freeze --disable-pip-version-check' >"$ROOT/srv/out/pip-list.txt"
grep -E '^(torch|torchvision|onnxruntime|facenet-pytorch)==' "$ROOT/srv/out/pip-list.txt"
if grep -i '^nvidia' "$ROOT/srv/out/pip-list.txt"; then fail "nvidia-* packages in the aarch64 venv"; fi
echo "no nvidia-* packages in the venv"
in_pi '.venv/bin/python -c "import torch, onnxruntime; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"onnxruntime\", onnxruntime.__version__, onnxruntime.get_available_providers())"' \
  || fail "import torch, onnxruntime"
du -sh "$APP/.venv"

# 3. and 4. The service with its defaults, twice ------------------------------------------------
PAIRS=(
  "Aaron_Peirsol/Aaron_Peirsol_0001.jpg Aaron_Peirsol/Aaron_Peirsol_0002.jpg"
  "Aaron_Peirsol/Aaron_Peirsol_0001.jpg Serena_Williams/Serena_Williams_0001.jpg"
)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# ask URL OUT: the PAIRS to URL's /photo_match, one JSON answer a line into OUT.
ask() {
  : >"$2"
  for pair in "${PAIRS[@]}"; do
    read -r ref sample <<<"$pair"
    curl -sS -m 900 -F "reference=@$LFW/images/$ref" -F "sample=@$LFW/images/$sample" "$1/photo_match" >>"$2"
    echo >>"$2"
  done
  cat "$2"
}
# serve NAME [VAR=VALUE...]: start scripts/run.sh in the root with the defaults plus the
# given variables, warm it up, ask the pairs, measure memory, stop it.
serve() {
  local name=$1 port pid up=0 t0
  shift
  port=$(free_port)
  step "$name: scripts/run.sh on 127.0.0.1:$port $*"
  t0=$(date +%s)
  setsid bash -c 'in_pi "$@"' _ "env FACEMATCH_HOST=127.0.0.1 FACEMATCH_PORT=$port $* scripts/run.sh" \
    >"$ROOT/srv/out/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 2400); do
    kill -0 "$pid" 2>/dev/null || break
    curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && { up=1; break; }
    sleep 1
  done
  [ "$up" = 1 ] || { tail -n 40 "$ROOT/srv/out/$name.log"; fail "$name: no answer on /ping"; }
  echo "$name: /ping answered $(( $(date +%s) - t0 ))s after start"
  grep -iE 'backend|onnx|device|fell back|cpu' "$ROOT/srv/out/$name.log" | grep -v '"POST\|"GET' | head -n 10 || true
  step "$name: warm-up (each pair once), then the answers"
  ask "http://127.0.0.1:$port" "$ROOT/srv/out/$name.warm.jsonl" >/dev/null
  t0=$(date +%s)
  ask "http://127.0.0.1:$port" "$ROOT/srv/out/$name.jsonl"
  echo "$name: the two pairs took $(( $(date +%s) - t0 ))s warm"
  local total_pss=0 total_rss=0 rss pss cmd
  for p in $(pgrep -s "$pid"); do
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *gunicorn*) ;; *) continue ;; esac
    rss=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup")
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")
    echo "$name: gunicorn pid $p: RSS $(( rss / 1024 )) MiB, PSS $(( pss / 1024 )) MiB"
    total_rss=$(( total_rss + rss )); total_pss=$(( total_pss + pss ))
  done
  echo "MEMORY $name: PSS $(( total_pss / 1024 )) MiB in all (sum of RSS $(( total_rss / 1024 )) MiB)"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do pgrep -s "$pid" >/dev/null || break; sleep 1; done
  pgrep -s "$pid" >/dev/null && kill -KILL -- "-$pid"
  wait "$pid" 2>/dev/null || true
}
export -f in_pi

step "amd64 reference: this machine's .venv, the same defaults"
ref_port=$(free_port)
FACEMATCH_HOST=127.0.0.1 FACEMATCH_PORT=$ref_port setsid .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app \
  >"$ROOT/srv/out/amd64.log" 2>&1 &
ref_pid=$!
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$ref_port/ping" >/dev/null 2>&1 && break; sleep 1; done
ask "http://127.0.0.1:$ref_port" "$ROOT/srv/out/amd64.jsonl" || true
kill -TERM -- "-$ref_pid" 2>/dev/null || true
wait "$ref_pid" 2>/dev/null || true

serve default
serve one-worker FACEMATCH_WORKERS=1

step "arm64 against amd64 (decision equal, distance within 1e-4)"
python3 - "$ROOT/srv/out/amd64.jsonl" "$ROOT/srv/out/default.jsonl" "$ROOT/srv/out/one-worker.jsonl" <<'EOF' || fail "arm64 answers differ from amd64"
import json, sys
ref = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert len(ref) == 2 and all("distance" in r for r in ref), f"amd64 reference incomplete: {ref}"
for path in sys.argv[2:]:
    got = [json.loads(line) for line in open(path) if line.strip()]
    for a, b in zip(ref, got, strict=True):
        diff = abs(a["distance"] - b["distance"])
        print(f"{path}: amd64 match={a['match']} distance={a['distance']:.6f}  "
              f"arm64 match={b['match']} distance={b['distance']:.6f}  |diff|={diff:.2e}")
        assert a["match"] == b["match"] and diff <= 1e-4
EOF

# 5. The API tests on arm64 ---------------------------------------------------------------------
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  step "pytest tests/test_api.py tests/test_cached_match.py on arm64"
  in_pi '.venv/bin/python -m pytest tests/test_api.py tests/test_cached_match.py -q -p no:cacheprovider' \
    || fail "API tests on arm64"
fi
echo "RESULT: SUCCESS (arm64 emulated, QEMU_CPU=$QEMU_CPU, Pi 4 /proc/cpuinfo) in $(( $(date +%s) - START ))s"
