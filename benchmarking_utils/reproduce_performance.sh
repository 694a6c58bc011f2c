#!/bin/sh
# Re-measure the figures of docs/performance.md's "Second round, continued" (the int8 embedder
# with the mirrored crop as the default) and the 12 MP View 1 runs of "Second round" on this
# machine, in one go (about 1.5 hours on an idle 2-core box: most of it LFW View 1 on generated
# 12 MP photos, twice). Run it from the repository root on a quiet machine, after
# scripts/setup.sh; each result lands in docs/results/ with its date and the load average.
#
#   sh benchmarking_utils/reproduce_performance.sh
set -eu
py=.venv/bin/python
out=docs/results
float=embed_backend=onnx,flip_embeddings=false
mkdir -p "$out"
uptime
$py -m deployment_utils.graphs build
# The user's view: baseline (torch's default threads) against facematch at its defaults over
# HTTP, interleaved, median of 5 after 3 warm-up requests; start time and PSS; the earlier
# float32 default and int8 on one crop as variants.
$py -m benchmarking_utils.http_compare --repeats 5 --warmup 3 \
    --variant float:FACEMATCH_EMBED_BACKEND=onnx,FACEMATCH_FLIP_EMBEDDINGS=false,FACEMATCH_THRESHOLD=0.6469 \
    --variant int8-one-crop:FACEMATCH_FLIP_EMBEDDINGS=false \
    --out "$out/http_compare_int8_default.json"
# Throughput: 8 clients on LFW pairs, the default Gunicorn against one sync baseline worker.
$py -m benchmarking_utils.load --clients 8 --seconds 20 --rounds 2 --warmup 10 \
    --scenario baseline:app=baseline,workers=1,threads=1,preload=false \
    --scenario default: --scenario "float:$float" --out "$out/load_http_int8_default.json"
# The second view: in process, one intra-op thread for both pipelines.
$py -m benchmarking_utils.compare --pairs 20 --warmup 3 --sizes lfw,1280x720,4032x3024 \
    --out "$out/compare_int8_default.json"
# Accuracy: the embedders compared on View 1's images, then View 1 and View 2 at the defaults.
$py -m benchmarking_utils.view1_pairs --config "float:$float" \
    --config float-flip:embed_backend=onnx,flip_embeddings=true \
    --config int8:embed_backend=onnx-int8,flip_embeddings=false \
    --config int8-flip:embed_backend=onnx-int8,flip_embeddings=true --out "$out/view1_pairs.json"
$py -m benchmarking_utils.accuracy --view2 --config default: \
    --out "$out/accuracy_view2_int8_flip.json"
# View 1 on generated 4032x3024 photos: decoded in full, and as the server decodes them with
# FACEMATCH_REDUCED_DECODE=true (generates about 4,400 photos, 4 MB each, the first time).
$py -m benchmarking_utils.accuracy --size 4032x3024 --config "full-decode:$float" \
    --out "$out/accuracy_view1_4032x3024.json"
$py -m benchmarking_utils.accuracy --size 4032x3024 --served-decode \
    --config "reduced-decode:reduced_decode=true,$float" --out "$out/accuracy_view1_4032x3024_reduced.json"
uptime
