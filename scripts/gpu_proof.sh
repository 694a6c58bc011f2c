#!/usr/bin/env bash
# Prove facematch's CUDA path on a machine with an NVIDIA GPU, in one run (not part of the tests):
#   1. the engine and API tests with FACEMATCH_DEVICE=cuda (both backends then run in PyTorch on
#      the GPU): tests/gpu_checks.py, tests/test_device_choice.py tests/test_embed_references.py tests/test_api.py
#      tests/test_cached_match.py;
#   2. embeddings on the GPU equal the CPU's (the default CPU engine, ONNX Runtime) within 1e-4:
#      the same face crops through both embedders, and whole photos end to end (detection,
#      crop, embedding) on each device;
#   3. the docs' latency table on the GPU (benchmarking_utils.latency --table docs), whose header
#      names the GPU.
# Without a GPU visible to torch it says so and exits 0 (SKIPPED), so it runs anywhere.
#
# Usage: scripts/gpu_proof.sh            (after scripts/setup.sh --dev, on x86-64: PyPI's torch
#                                         there is the CUDA build)
# Env: PYTHON (default .venv/bin/python), FACEMATCH_LFW_DIR (default ../shared/data/lfw),
#      OUT (default .data/gpu_proof; the JSON and the log of each step), REQUESTS (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-.data/gpu_proof}
REQUESTS=${REQUESTS:-50}
export FACEMATCH_LFW_DIR=${FACEMATCH_LFW_DIR:-$PWD/../shared/data/lfw}
mkdir -p "$OUT"
START=$(date +%s)
step() { echo "== [$(( $(date +%s) - START ))s] $*"; }

"$PY" - <<'EOF' || { echo "RESULT: SKIPPED (no CUDA GPU visible to torch; nothing was measured)"; exit 0; }
import sys, torch
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
      f"GPUs visible: {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
step "GPU: $GPU; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(date -Iminutes)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

step "1. engine and API tests with FACEMATCH_DEVICE=cuda"
FACEMATCH_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/gpu_checks.py tests/test_device_choice.py \
  tests/test_embed_references.py tests/test_api.py tests/test_cached_match.py 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}

step "2. GPU embeddings against the CPU's (within 1e-4)"
set +e
"$PY" - "$OUT/embeddings.json" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np
from PIL import Image

from deployment_utils.lfw import lfw_dir
from facematch.config import Settings
from facematch.engine.engine import FaceEngine

TOLERANCE = 1e-4
photos = sorted((lfw_dir() / "images").glob("A*/*_0001.jpg"))[:20]
settings = Settings.from_env()
cpu = FaceEngine.from_settings(settings.replace(device="cpu"))
gpu = FaceEngine.from_settings(settings.replace(device="cuda"))
print(f"CPU: embed {cpu.options.embed_backend}, detect {cpu.options.detect_backend}; "
      f"GPU ({gpu.options.device}): embed {gpu.options.embed_backend}, "
      f"detect {gpu.options.detect_backend}")
same_crop, end_to_end, faces = [], [], 0
for path in photos:
    image = Image.open(path).convert("RGB")
    found_cpu, found_gpu = cpu.detect(image), gpu.detect(image)
    if not found_cpu.faces or not found_gpu.faces:
        continue
    faces += 1
    crop = found_cpu.primary.crop
    a = cpu.embed([crop]).vectors[0]
    b = gpu.embed([crop]).vectors[0]
    same_crop.append(float(np.abs(a - b).max()))
    c = gpu.embed([found_gpu.primary.crop]).vectors[0]
    end_to_end.append(float(np.abs(a - c).max()))
result = {
    "gpu": gpu.options.device,
    "photos": len(photos),
    "faces": faces,
    "tolerance": TOLERANCE,
    "same_crop_max_abs_diff": max(same_crop),
    "end_to_end_max_abs_diff": max(end_to_end),
}
Path(sys.argv[1]).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
ok = result["same_crop_max_abs_diff"] <= TOLERANCE and result["end_to_end_max_abs_diff"] <= TOLERANCE
print("embeddings:", "EQUAL within 1e-4" if ok else "DIFFER by more than 1e-4")
sys.exit(0 if ok else 1)
EOF
embeddings=$?

step "3. latency table on the GPU (FACEMATCH_DEVICE=cuda)"
FACEMATCH_DEVICE=cuda "$PY" -m benchmarking_utils.latency --table docs \
  --sizes lfw,1280x720,1920x1080,4032x3024 --endpoint both --requests "$REQUESTS" --warmup 10 \
  --out "$OUT/latency-cuda.json" 2>"$OUT/latency-cuda.log"
latency=$?
set -e

echo "tests: exit $tests; embeddings: exit $embeddings; latency: exit $latency"
if [ "$tests" = 0 ] && [ "$embeddings" = 0 ] && [ "$latency" = 0 ]; then
  echo "RESULT: SUCCESS on $GPU in $(( $(date +%s) - START ))s (files in $OUT)"
else
  echo "RESULT: FAILURE on $GPU (files in $OUT)"
  exit 1
fi
