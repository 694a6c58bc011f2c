#!/bin/sh
# Re-measure every figure of docs/performance.md's "Second round" section on this machine, in
# one go (about 25 minutes on an idle 2-core box, most of it LFW View 2). Run it from the
# repository root on a quiet machine, after scripts/setup.sh; each result lands in
# docs/results/ with its date, commit and the load average of the run.
#
#   sh benchmarking_utils/reproduce_performance.sh [BEFORE_COMMIT]
#
# BEFORE_COMMIT (default d3c8aa1, the last commit before this round) is checked out into a
# temporary worktree so its start time and footprint are measured in the same run.
set -eu
before=${1:-d3c8aa1}
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
    --variant reduced-decode:FACEMATCH_REDUCED_DECODE=true \
    --out "$out/http_compare.json"
# Throughput: 8 clients on LFW pairs, the default Gunicorn against one sync baseline worker.
$py -m benchmarking_utils.load --clients 8 --seconds 20 --rounds 2 --warmup 10 \
    --scenario baseline:app=baseline,workers=1,threads=1,preload=false \
    --scenario default: --out "$out/load_http.json"
# The second view: in process, one intra-op thread for both pipelines.
$py -m benchmarking_utils.compare --pairs 20 --warmup 3 --sizes lfw,1280x720,4032x3024 \
    --out "$out/compare.json"
# Accuracy: View 1 and View 2 with the defaults, the int8 embedder and the most accurate
# settings; View 1 on 1280x720 and 4032x3024 photos decoded as the server decodes them.
$py -m benchmarking_utils.accuracy --view2 --config float:embed_backend=onnx \
    --config int8:embed_backend=onnx-int8 \
    --config accurate:flip_embeddings=true,detect_max_side=0,embed_backend=onnx \
    --out "$out/accuracy_second_round.json"
for size in 1280x720 4032x3024; do
    $py -m benchmarking_utils.accuracy --size $size --config default: --out "$out/accuracy_$size.json"
    $py -m benchmarking_utils.accuracy --size $size --served-decode --config default: \
        --config int8:embed_backend=onnx-int8 --out "$out/accuracy_${size}_reduced_decode.json"
done
uptime
