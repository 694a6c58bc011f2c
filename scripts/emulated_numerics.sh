#!/usr/bin/env bash
# Run the numerics tests (pytest files that check the CPU-specific int8 kernels' numbers, with no
# app and no conftest) on CPUs this machine is not, under QEMU user-mode emulation; fail if any
# fails. The CPUs:
#   haswell     x86-64 as an AVX2-only CPU (qemu-x86_64-static -cpu Haswell-v4: no AVX-512, no
#               VNNI), running this machine's own .venv/bin/python unchanged;
#   cortex-a72  aarch64 as a Raspberry Pi 4 (ARMv8.0: no dot product);
#   cortex-a76  aarch64 as a Raspberry Pi 5 (ARMv8.2 with dot product).
# For aarch64 no binfmt handler and no chroot is needed: an arm64 Debian bookworm Python comes from
# debootstrap --foreign (its .debs unpacked, never configured), the aarch64 wheels of the pinned
# numpy, onnxruntime, pillow (requirements-serve.txt), onnx, protobuf (requirements.txt) and
# pytest (requirements-dev.txt)
# from this machine's pip (--platform manylinux_2_28_aarch64 --target DIR), and
# qemu-aarch64-static runs that Python with -L ROOT on this working tree. Both are cached under
# NUMERICS_CACHE and rebuilt only when the pins change (the first run takes a few minutes).
#
# Emulation artefacts handled here:
#   - under qemu-user /proc/cpuinfo is this machine's, and ONNX Runtime 1.28+ for aarch64
#     segfaults at import reading an x86 one. Each emulated run is in a private mount namespace
#     where /proc/cpuinfo is the emulated CPU's (a Pi 4's, a Pi 5's, a Haswell's), so that
#     whatever reads it (ONNX Runtime, kernel_checks.cpu_flags) sees the CPU that runs the code;
#   - under qemu-x86_64 TCG lacks some system features of the Haswell-v4 model (pcid, x2apic,
#     ...); they are switched off to silence its warnings (user-mode code never sees them);
#   - qemu's Cortex-A72 model reports AES/SHA (AT_HWCAP) which the Pi 4's BCM2711 lacks; no
#     integer or float kernel uses them;
#   - qemu 7.2's AVX2 emulation runs NumPy's own AVX2 (x86-64-v3) sorting code wrongly:
#     np.argpartition of 20,000 float32 picked a wrong smallest 12 in 12 of 50 tries under
#     Haswell-v4 (0 of 50 natively on an AVX2 EPYC, and under Nehalem or Sandy Bridge models).
#     The x86 run therefore switches NumPy's x86-64-v3/v4 code paths off
#     (NPY_DISABLE_CPU_FEATURES); ONNX Runtime reads CPUID itself and still runs its AVX2
#     kernels, which is what the run checks.
# Limits: the tests must compute in-process. A subprocess they start is not emulated (x86: it
# runs natively on this CPU; aarch64: it cannot start without a binfmt handler). Emulation checks
# the numbers, not the speed.
#
# Usage: scripts/emulated_numerics.sh [CPU...] [-- FILE...]
#   CPU: haswell, cortex-a72 (or pi4), cortex-a76 (or pi5); default all three (NUMERICS_CPUS).
#   FILE: pytest files or node ids; default NUMERICS_TESTS. Files that do not exist are skipped
#   with a note.
# Env: NUMERICS_TESTS (default "tests/test_gallery_search.py tests/test_kernel_checks.py"),
#      NUMERICS_CPUS (default "haswell cortex-a72 cortex-a76"), NUMERICS_CACHE (default
#      /var/tmp/facematch-numerics: the arm64 root and the aarch64 wheels), NUMERICS_TIMEOUT
#      (default 1800: seconds for each emulated command, the probe then pytest), NUMERICS_NICE
#      (default 10), FACEMATCH_DATA_DIR (default ~/.cache/facematch: the built graphs the tests
#      load). The tests see a clean environment: HOME, FACEMATCH_* and CI pass through.
# Prints one "RESULT <cpu>: PASS|FAIL ... in Ns" line per CPU; exits 1 if any failed, 2 on usage.
# As root (mount namespaces, apt-get, debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ "$(id -u)" = 0 ] || { echo "emulated_numerics: run as root (mount namespaces, apt-get, debootstrap)" >&2; exit 2; }

usage() { sed -n '/^# Usage:/,/^# As root/s/^# \{0,1\}//p' "$0"; }
names=() files=() cpus=()
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; files=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) names+=("$1"); shift ;;
  esac
done
[ ${#names[@]} -gt 0 ] || read -r -a names <<<"${NUMERICS_CPUS:-haswell cortex-a72 cortex-a76}"
for name in "${names[@]}"; do
  case $name in
    pi4) cpus+=(cortex-a72) ;;
    pi5) cpus+=(cortex-a76) ;;
    haswell | cortex-a72 | cortex-a76) cpus+=("$name") ;;
    *) echo "emulated_numerics: unknown CPU '$name'" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#files[@]} -gt 0 ] || read -r -a files <<<"${NUMERICS_TESTS:-tests/test_gallery_search.py tests/test_kernel_checks.py}"
tests=()
for file in "${files[@]}"; do
  if [ -e "${file%%::*}" ]; then tests+=("$file"); else echo "note: ${file%%::*} does not exist (yet): skipped"; fi
done
[ ${#tests[@]} -gt 0 ] || { echo "emulated_numerics: none of the numerics tests exists: ${files[*]}" >&2; exit 2; }

CACHE=${NUMERICS_CACHE:-/var/tmp/facematch-numerics}
ROOT=$CACHE/arm64-root
SITE=$CACHE/site-aarch64-cp311
TIMEOUT=${NUMERICS_TIMEOUT:-1800}
NICE=${NUMERICS_NICE:-10}
DATA_DIR=${FACEMATCH_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/facematch}
HASWELL=Haswell-v4,pcid=off,x2apic=off,tsc-deadline=off,invpcid=off,spec-ctrl=off
START=$(date +%s)
step() { echo "== [$(($(date +%s) - START))s] $*"; }
step "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)'):" \
  "${tests[*]} on ${cpus[*]}"

# 1. Tools ---------------------------------------------------------------------------------------
need=(unshare timeout flock)
case " ${cpus[*]} " in *" haswell "*) need+=(qemu-x86_64-static) ;; esac
case " ${cpus[*]} " in *" cortex-a7"*) need+=(qemu-aarch64-static debootstrap dpkg-deb) ;; esac
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null && continue
  step "installing qemu-user-static and debootstrap with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    qemu-user-static debootstrap util-linux coreutils
  break
done

# 2. The arm64 Python and the aarch64 wheels, cached (an exclusive lock while they are built, a
#    shared one while tests use them, so that concurrent runs never rebuild under each other) ---
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
case " ${cpus[*]} " in *" cortex-a7"*)
  ROOT_KEY="debootstrap --foreign --variant=minbase --arch=arm64 --include=python3 bookworm"
  if [ "$(cat "$ROOT/.facematch-numerics-root" 2>/dev/null)" != "$ROOT_KEY" ]; then
    MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    step "arm64 Python: $ROOT_KEY ${MIRROR:-http://deb.debian.org/debian}"
    rm -rf --one-file-system "$ROOT"
    mkdir -p "$ROOT"
    # --foreign downloads every package and unpacks only the essential ones; the second stage
    # would need an arm64 chroot (binfmt). Instead unpack all the .debs here, never configured.
    nice -n "$NICE" debootstrap --foreign --variant=minbase --arch=arm64 --include=python3 \
      bookworm "$ROOT" "${MIRROR:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -n 30 "$CACHE/debootstrap.log"; echo "emulated_numerics: debootstrap failed" >&2; exit 1; }
    # Through tar --keep-directory-symlink rather than dpkg-deb -x, which replaces the merged-/usr
    # links (lib -> usr/lib, bin -> usr/bin) with directories and splits the library tree.
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
      dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ROOT" --keep-directory-symlink
    done
    # qemu's -L ROOT opens a guest path P as ROOT/P when that exists, else as P on this machine.
    # Keep only what the guest needs from ROOT (/usr, /etc, /var and the /lib, /bin links): /proc
    # (which --foreign leaves as a link to this machine's /proc), /dev, /sys, /tmp, /root, ... are
    # then this machine's, so the guest's /tmp is not split between two directories.
    rm -rf --one-file-system "${ROOT:?}"/{proc,dev,sys,tmp,run,root,home,boot,mnt,media,opt,srv} \
      "$ROOT/var/tmp" "$ROOT/debootstrap" "$ROOT"/var/cache/apt/archives/*.deb
    qemu-aarch64-static -cpu cortex-a72 -L "$ROOT" "$ROOT/usr/bin/python3.11" -c 'import sys, platform; print("arm64 Python", sys.version.split()[0], platform.machine())'
    echo "$ROOT_KEY" >"$ROOT/.facematch-numerics-root"
  else
    step "reusing the arm64 Python in $ROOT"
  fi
  # The pins, read from the requirements files so that they stay the same as this machine's.
  pin() { # pin NAME FILE...: NAME==VERSION as the first FILE pinning it says (markers and comments dropped)
    local version
    version=$(sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "${@:2}" | head -n1)
    [ -n "$version" ] || { echo "emulated_numerics: no $1==VERSION in ${*:2}" >&2; exit 1; }
    echo "$1==$version"
  }
  PINS=()
  for name in numpy onnxruntime onnx pillow protobuf; do
    PINS+=("$(pin "$name" requirements-serve.txt requirements.txt)")
  done
  PINS+=("$(pin pytest requirements-dev.txt)")
  SITE_KEY="manylinux_2_28_aarch64 cp311 ${PINS[*]}"
  if [ "$(cat "$SITE/.facematch-numerics-pins" 2>/dev/null)" != "$SITE_KEY" ]; then
    step "aarch64 wheels into $SITE: ${PINS[*]} (and their dependencies)"
    rm -rf "$SITE" "$SITE.new"
    nice -n "$NICE" .venv/bin/python -m pip install --disable-pip-version-check --no-warn-script-location \
      --platform manylinux_2_28_aarch64 --python-version 3.11 --only-binary=:all: \
      --target "$SITE.new" "${PINS[@]}" >"$CACHE/pip.log" 2>&1 \
      || { tail -n 30 "$CACHE/pip.log"; echo "emulated_numerics: pip install failed" >&2; exit 1; }
    mv "$SITE.new" "$SITE"
    echo "$SITE_KEY" >"$SITE/.facematch-numerics-pins"
  else
    step "reusing the aarch64 wheels in $SITE ($(sed 's/^[^ ]* [^ ]* //' "$SITE/.facematch-numerics-pins"))"
  fi
  ;;
esac

# 3. Each CPU's /proc/cpuinfo --------------------------------------------------------------------
# qemu's -L alone would serve /proc/cpuinfo (checked: qemu 7.2 opens a regular file
# ROOT/proc/cpuinfo for it), but ROOT/proc would then also be the guest's whole /proc listing,
# the Pi 4 and the Pi 5 would share one file (and the x86 run has no ROOT at all). A bind mount
# in a private mount namespace gives each run its own, and this machine's stays untouched.
for cpu in 0 1 2 3; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
  printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
  printf 'CPU revision\t: 3\n\n'
done >"$CACHE/cpuinfo-cortex-a72"
printf 'Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$CACHE/cpuinfo-cortex-a72"
for cpu in 0 1 2 3; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\n' "$cpu"
  printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
  printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\n'
  printf 'CPU revision\t: 1\n\n'
done >"$CACHE/cpuinfo-cortex-a76"
printf 'Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n' >>"$CACHE/cpuinfo-cortex-a76"
# The Haswell's: as many processors as this machine has (x86 readers match them against /sys),
# with the flags Linux lists for QEMU's Haswell-v4 model (AVX2 and FMA, no AVX-512, no VNNI).
haswell_flags="fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse"
haswell_flags+=" sse2 ss syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni"
haswell_flags+=" pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor"
haswell_flags+=" lahf_lm abm fsgsbase bmi1 avx2 smep bmi2 erms xsaveopt arat"
ncpu=$(getconf _NPROCESSORS_ONLN)
for ((cpu = 0; cpu < ncpu; cpu++)); do
  printf 'processor\t: %s\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 60\n' "$cpu"
  printf 'model name\t: Intel Core Processor (Haswell, no TSX, IBRS)\nstepping\t: 1\ncpu MHz\t\t: 2400.000\n'
  printf 'cache size\t: 16384 KB\nphysical id\t: 0\nsiblings\t: %s\ncore id\t\t: %s\ncpu cores\t: %s\n' "$ncpu" "$cpu" "$ncpu"
  printf 'apicid\t\t: %s\ninitial apicid\t: %s\nfpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: 13\nwp\t\t: yes\n' "$cpu" "$cpu"
  printf 'flags\t\t: %s\nbogomips\t: 4800.00\nclflush size\t: 64\ncache_alignment\t: 64\n' "$haswell_flags"
  printf 'address sizes\t: 40 bits physical, 48 bits virtual\npower management:\n\n'
done >"$CACHE/cpuinfo-haswell"
flock -s 9 # the caches are ready: let other runs use them too

# 4. The runs ------------------------------------------------------------------------------------
# What the emulated CPU offers, as the code under test sees it: NumPy's CPU dispatch (CPUID on
# x86, AT_HWCAP on aarch64, the same sources ONNX Runtime's kernel choice reads), AT_HWCAP itself,
# the flags in /proc/cpuinfo, and ONNX Runtime importing and running a full-range u8 x s8
# MatMulInteger (exact on ARM and with VNNI; it saturates on an AVX2-only x86).
PROBE=$(
  cat <<'EOF'
import platform, re, struct
import numpy as np
import onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as features
from onnx import TensorProto, helper

machine = platform.machine()
wanted = r"AVX2|FMA3|AVX512F|.*VNNI.*" if machine == "x86_64" else r"ASIMD|ASIMDHP|ASIMDDP|.*I8MM.*|SVE"
shown = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in features.items() if re.fullmatch(wanted, k))
print(f"{machine}: NumPy's CPU dispatch sees {shown}")
if machine == "aarch64":
    names = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma"
             " lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve").split()
    hwcap = dict(struct.iter_unpack("<QQ", open("/proc/self/auxv", "rb").read())).get(16, 0)
    print("AT_HWCAP:", " ".join(n for i, n in enumerate(names) if hwcap >> i & 1))
flags = set()
for line in open("/proc/cpuinfo"):
    name, _, value = line.partition(":")
    if name.strip() in ("flags", "Features"):
        flags.update(f for f in value.split() if re.fullmatch(r"avx2|avx512.*|.*vnni.*|asimddp|i8mm|sve.*", f))
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith(("model name", "Model"))), "?")
print(f"/proc/cpuinfo: {model}; kernel-relevant flags: {' '.join(sorted(flags)) or 'none'}")
k, n = 512, 64
graph = helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "probe",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k]),
     helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])],
    [helper.make_tensor_value_info("c", TensorProto.INT32, [1, n])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
a = rng.integers(0, 256, (1, k), dtype=np.uint8)
b = rng.integers(-128, 128, (k, n), dtype=np.int8)
wrong = int((session.run(None, {"a": a, "b": b})[0] != a.astype(np.int32) @ b.astype(np.int32)).sum())
print(f"onnxruntime {ort.__version__}: full-range u8 x s8 MatMulInteger "
      + ("exact" if not wrong else f"differs in {wrong} of {n} outputs (int16 saturation)"))
EOF
)
# The tests' environment: clean, plus HOME, the data dir, FACEMATCH_* and CI from the caller;
# no .pyc written into the working tree.
guest_env=(HOME="$HOME" LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
  FACEMATCH_DATA_DIR="$DATA_DIR")
while IFS= read -r name; do
  guest_env+=("$name=${!name}")
done < <(compgen -e | grep -E '^(FACEMATCH_.*|CI)$' | grep -vx FACEMATCH_DATA_DIR || true)

# emulate CPU ARG...: the emulated CPU's Python with ARGs, in a private mount namespace where
# /proc/cpuinfo is CPU's, niced, bounded by NUMERICS_TIMEOUT.
emulate() {
  local cpu=$1 qemu
  shift
  case $cpu in
    haswell)
      qemu=(env -i "${guest_env[@]}" PATH="$REPO/.venv/bin:/usr/local/bin:/usr/bin:/bin"
        NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR"
        qemu-x86_64-static -cpu "$HASWELL" "$REPO/.venv/bin/python") ;;
    *)
      qemu=(env -i "${guest_env[@]}" PATH=/usr/bin:/bin PYTHONPATH="$SITE:$REPO"
        qemu-aarch64-static -cpu "$cpu" -L "$ROOT" "$ROOT/usr/bin/python3.11") ;;
  esac
  # shellcheck disable=SC2016 # the inner script's "$1" and "$@" are its own arguments
  unshare -m --propagation private sh -ec 'mount --bind "$1" /proc/cpuinfo; shift; exec "$@"' \
    emulate "$CACHE/cpuinfo-$cpu" nice -n "$NICE" timeout -k 30 "$TIMEOUT" "${qemu[@]}" "$@"
}

declare -A describe=(
  [haswell]="x86-64 qemu Haswell-v4, AVX2-only"
  [cortex-a72]="aarch64 qemu cortex-a72, Raspberry Pi 4"
  [cortex-a76]="aarch64 qemu cortex-a76, Raspberry Pi 5"
)
results=() failed=0
for cpu in "${cpus[@]}"; do
  step "$cpu (${describe[$cpu]}): the CPU as the code sees it"
  t0=$(date +%s) rc=0 what=pytest
  if emulate "$cpu" -c "$PROBE"; then
    step "$cpu: pytest --noconftest ${tests[*]}"
    emulate "$cpu" -m pytest --noconftest -q -s -p no:cacheprovider "${tests[@]}" || rc=$?
  else
    rc=$? what=probe
  fi
  case $rc in
    0) verdict=PASS ;;
    124 | 137) verdict="FAIL ($what timed out after ${TIMEOUT}s)" ;;
    *) verdict="FAIL ($what exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || failed=1
  results+=("RESULT $cpu: $verdict in $(($(date +%s) - t0))s (${describe[$cpu]})")
  echo "${results[-1]}"
done

step "summary (${tests[*]})"
printf '%s\n' "${results[@]}"
exit "$failed"
