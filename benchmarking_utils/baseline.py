"""The baseline every speed figure is measured against: the original design's use of
facenet-pytorch, kept here unchanged so ratios can be re-measured on any machine.

Per photo: ``MTCNN(image_size=160, margin=30, min_face_size=20, thresholds=[0.6, 0.7, 0.7],
factor=0.709, post_process=True, select_largest=True, keep_all=False)`` on the full-resolution
image, then ``InceptionResnetV1`` on that one crop with autograd left on; the two photos of a
pair one after the other; cosine distance. ``create_app()`` serves it as ``/photo_match`` for
``benchmarking_utils.load`` (``gunicorn 'benchmarking_utils.baseline:create_app()'``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from facenet_pytorch import MTCNN, InceptionResnetV1
from flask import Flask, request
from PIL import Image

from facematch.config import Settings
from facematch.decision import scores as score_service
from facematch.engine.decoding import decode_image
from facematch.engine.weights import load_state_dict, resolve_weights
from facematch.observability.record import Latency


@dataclass
class BaselineResult:
    distance: float | None
    latency: Latency = field(default_factory=Latency)


class Baseline:
    """MTCNN + InceptionResnetV1 exactly as the original repository called them."""

    def __init__(self, settings: Settings | None = None):
        settings = settings or Settings.from_env()
        path = resolve_weights(settings.model, settings.weights, settings.data_path)
        self.mtcnn = MTCNN(
            image_size=160,
            margin=30,
            min_face_size=20,
            thresholds=[0.6, 0.7, 0.7],
            factor=0.709,
            post_process=True,
            select_largest=True,
            keep_all=False,
        )
        self.resnet = InceptionResnetV1(pretrained=None, classify=False).eval()
        self.resnet.load_state_dict(load_state_dict(path))
        self.max_pixels = settings.max_pixels

    def embedding(self, image: Image.Image, times: Latency) -> np.ndarray | None:
        """Detect and crop with MTCNN, then embed the crop (autograd on, batch of one)."""
        start = time.perf_counter()
        face = self.mtcnn(image)
        times.detection += (time.perf_counter() - start) * 1000
        if face is None:
            return None
        start = time.perf_counter()
        vector = self.resnet(face.unsqueeze(0)).detach().numpy()[0]
        times.embedding += (time.perf_counter() - start) * 1000
        return vector

    def photo_match(self, reference: bytes, sample: bytes) -> BaselineResult:
        """Decode, detect+embed the reference, then the sample, then score."""
        times = Latency()
        started = time.perf_counter()
        vectors = []
        for name, data in (("reference", reference), ("sample", sample)):
            start = time.perf_counter()
            image = decode_image(data, self.max_pixels, name)
            times.decode += (time.perf_counter() - start) * 1000
            vectors.append(self.embedding(image, times))
        start = time.perf_counter()
        distance = None
        if vectors[0] is not None and vectors[1] is not None:
            distance = score_service.cosine_distance(vectors[0], vectors[1])
        times.scoring = (time.perf_counter() - start) * 1000
        times.total = (time.perf_counter() - started) * 1000
        return BaselineResult(distance, times)


def create_app(settings: Settings | None = None):
    """A Flask app with ``/ping`` and a baseline ``/photo_match`` (fields reference, sample).

    PyTorch keeps its default thread count unless ``FACEMATCH_TORCH_THREADS`` is set. Serve it
    with ``preload=false``: PyTorch's OpenMP pool, once started, does not survive a fork."""
    settings = settings or Settings.from_env()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    baseline = Baseline(settings)
    app = Flask(__name__)

    @app.get("/ping")
    def ping():
        return {"status": "ok"}

    @app.post("/photo_match")
    def photo_match():
        result = baseline.photo_match(
            request.files["reference"].read(), request.files["sample"].read()
        )
        if result.distance is None:
            return {"error": {"code": "no_face"}}, 422
        return {"distance": result.distance, "latency_ms": asdict(result.latency)}

    return app
