# facematch, CPU image for linux/amd64 and linux/arm64: ONNX Runtime over graphs built at build
# time; its final stage holds no PyTorch (Dockerfile.cuda is the image that serves with PyTorch).
# Build: docker build -t facematch [--build-arg FACEMATCH_MODEL=vggface2] .
#        docker buildx build --platform linux/arm64 -t facematch .   (builder stage runs natively)
# Run:   docker run -p 8000:8000 facematch
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Where the final stage takes the built weights' graphs from: the builder stage, or an image that
# holds them in /opt/facematch/data (scripts/build_image_local.sh: Debian 12's buildah cannot run
# one stage on the build platform and the next on the target's).
ARG DATA_FROM=builder

# The builder runs on the build machine's platform: the ONNX graphs it writes are the same on
# every architecture, so an arm64 image never runs PyTorch under emulation.
FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS builder
# PyTorch's CPU index serves CPU-only torch for both amd64 and arm64 (no CUDA libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG FACEMATCH_MODEL=casia-webface
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.txt requirements-serve.txt requirements-watch.txt ./
# torch and torchvision first from TORCH_INDEX_URL, then everything else in requirements.txt.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && grep -v -E '^(torch|torchvision)==' requirements.txt > requirements-rest.txt \
    && pip install --no-cache-dir -r requirements-rest.txt \
    && pip check
# The weights, then the serving graphs (MTCNN, the embedder, its int8 build from the shipped
# calibration crops), are built here, once, so the container never downloads, imports PyTorch
# or exports a graph.
COPY facematch/__init__.py facematch/config.py facematch/
COPY facematch/engine/__init__.py facematch/engine/weights.py facematch/engine/
COPY deployment_utils/ deployment_utils/
RUN python -m deployment_utils.weights build --model "${FACEMATCH_MODEL}" --data-dir /opt/facematch/data
COPY facematch/ facematch/
COPY model_data/ model_data/
RUN python -m deployment_utils.graphs build --model "${FACEMATCH_MODEL}" --data-dir /opt/facematch/data

# The runtime's packages only (requirements-serve.txt), for the target platform; then out go
# what never serves: pip and setuptools, NumPy's test suites, and ONNX Runtime's C-API library
# libonnxruntime.so (35 MB; its Python module carries its own copy and does not load it).
# WATCH=true adds the camera watcher's PyAV (requirements-watch.txt, about 104 MB installed).
FROM ${PYTHON_IMAGE} AS serve-venv
ARG WATCH=false
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-serve.txt requirements-watch.txt /tmp/
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -r /tmp/requirements-serve.txt \
    && if [ "$WATCH" = true ]; then pip install --no-cache-dir -r /tmp/requirements-watch.txt; fi \
    && pip check \
    && pip uninstall --yes --quiet pip setuptools \
    && find /opt/venv/lib/python3*/site-packages/numpy -depth -type d -name tests -exec rm -r {} + \
    && rm /opt/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*

FROM ${DATA_FROM} AS data

FROM ${PYTHON_IMAGE} AS runtime
ARG FACEMATCH_MODEL=casia-webface
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEMATCH_MODEL=${FACEMATCH_MODEL} \
    FACEMATCH_DATA_DIR=/opt/facematch/data \
    FACEMATCH_PORT=8000
RUN groupadd --gid 10001 facematch \
    && useradd --uid 10001 --gid facematch --no-log-init --create-home --home-dir /home/facematch \
        --shell /usr/sbin/nologin facematch
WORKDIR /app
COPY --from=serve-venv /opt/venv /opt/venv
# What the server reads: the graphs, their notes (which name the weights they were built from),
# the int8 embedder's kernel probe and the weights' provenance; not the .pt weights themselves
# (94 MB, read only by PyTorch), so the graphs' notes are trusted (graph_files).
COPY --from=data /opt/facematch/data/*.onnx /opt/facematch/data/*.json /opt/facematch/data/*.npz \
    /opt/facematch/data/
# The root's front doors (wsgi.py, gunicorn.conf.py, ...), the package, its data files
# (model_data/, the metrics message schema, the web page) and the operator tools.
COPY *.py openapi.json ./
COPY facematch/ facematch/
COPY model_data/ model_data/
COPY deployment_utils/ deployment_utils/
COPY monitoring/schema/ monitoring/schema/
COPY web/ web/
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import json, os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('FACEMATCH_PORT', '8000'), timeout=4); sys.exit(json.load(r).get('status') != 'ok')"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
