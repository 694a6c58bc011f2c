#!/bin/sh
# Re-measure every figure of docs/performance.md's "Second round" section on this machine, in
# one go (about 2 hours on an idle 2-core box: most of it LFW View 1 on generated 12 MP photos,
# twice). Run it from the repository root on a quiet machine, after scripts/setup.sh; each result
# lands in docs/results/ with its date, commit and the load average of the run.
#
#   sh benchmarking_utils/reproduce_performance.sh [BEFORE_COMMIT]
#
# BEFORE_COMMIT (default b0e492a, main before this round) is checked out into a temporary
# worktree so its start time and footprint are measured in the same run.
set -eu
before=${1:-b0e492a}
py=.venv/bin/python
out=docs/results
mkdir -p "$out"
uptime
$py -m deployment_utils.graphs build
tmp=$(mktemp -d)
git worktree add --detach "$tmp/before" "$before" >/dev/null
trap 'git worktree remove --force "$tmp/before"; rm -rf "$tmp"' EXIT
# The user's view: baseline (torch's default threads) against facematch at its defaults over
# HTTP, interleaved, median of 5 after 3 warm-up requests; start time and PSS, before and after.
$py -m benchmarking_utils.http_compare --repeats 5 --warmup 3 --before "$tmp/before" \
    --variant int8:FACEMATCH_EMBED_BACKEND=onnx-int8 \
    --variant full-decode:FACEMATCH_REDUCED_DECODE=false \
    --out "$out/http_compare.json"
# Throughput: 8 clients on LFW pairs, the default Gunicorn against one sync baseline worker.
$py -m benchmarking_utils.load --clients 8 --seconds 20 --rounds 2 --warmup 10 \
    --scenario baseline:app=baseline,workers=1,threads=1,preload=false \
    --scenario default: --scenario int8:embed_backend=onnx-int8 --out "$out/load_http.json"
# The second view: in process, one intra-op thread for both pipelines.
$py -m benchmarking_utils.compare --pairs 20 --warmup 3 --sizes lfw,1280x720,4032x3024 \
    --out "$out/compare_second_round.json"
# Accuracy: View 1 and View 2 with the defaults and the int8 embedder.
$py -m benchmarking_utils.accuracy --view2 --config default: \
    --config int8:embed_backend=onnx-int8 --out "$out/accuracy_view2_second_round.json"
# View 1 on generated 4032x3024 photos: decoded in full, and as the server decodes them with
# FACEMATCH_REDUCED_DECODE=true (generates about 4,400 photos, 4 MB each, the first time).
$py -m benchmarking_utils.accuracy --size 4032x3024 --config full-decode: \
    --out "$out/accuracy_view1_4032x3024.json"
$py -m benchmarking_utils.accuracy --size 4032x3024 --served-decode \
    --config reduced-decode:reduced_decode=true --out "$out/accuracy_view1_4032x3024_reduced.json"
uptime
