"""Face embedding: InceptionResnetV1 on face crops, then the served vector.

``FaceEmbedder`` runs the network in the runtime backend the options name and turns its unit
vectors into the served embedding:

* ``flip_embeddings``: the mirrored crops ride in the same batch and each crop's vector is the
  normalised sum of its own and its mirror's (more accurate, twice the work);
* ``center_embeddings``: the model's mean face embedding (``model_data/embedding_centers.json``,
  built by ``python -m deployment_utils.embedding_centers``) is subtracted before the cosine
  distance, which removes the direction every face shares (Sandberg's ``--subtract_mean``) and
  separates people better.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facematch.engine.backends import Network, Placement, Runtime, get_runtime
from facematch.engine.options import FACE_SIZE, EngineOptions
from facematch.engine.weights import load_state_dict

log = logging.getLogger(__name__)

CENTERS_FILE = Path(__file__).resolve().parents[2] / "model_data" / "embedding_centers.json"


@dataclass
class Embeddings:
    """Unit-norm embeddings, one row per crop, and the time the forward pass took."""

    vectors: np.ndarray  # (n, 512) float32
    embedding_ms: float


def load_module(state_dict):
    """InceptionResnetV1 (no classifier) holding ``state_dict``, in eval mode (PyTorch)."""
    from facenet_pytorch import InceptionResnetV1

    module = InceptionResnetV1(pretrained=None, classify=False).eval()
    module.load_state_dict(state_dict)
    return module


def embedder_network(model: str, weights: Path | None, state_dict=None) -> Network:
    """InceptionResnetV1 of ``model`` as a ``Network`` named after the model, traced with one
    crop and a variable batch size; its module holds ``state_dict`` (read from ``weights``,
    which decides whether a built graph is current, when not given; None: not installed, the
    built graph is trusted)."""
    return Network(
        model,
        lambda: load_module(load_state_dict(weights) if state_dict is None else state_dict),
        (1, 3, FACE_SIZE, FACE_SIZE),
        {0: "n"},
        None if weights is None else Path(weights),
    )


def load_centers(path: Path = CENTERS_FILE) -> dict[str, np.ndarray]:
    """Model name -> its embedding centre (float32), read from the centres file."""
    models = json.loads(Path(path).read_text())["models"]
    return {name: np.asarray(entry["vector"], dtype=np.float32) for name, entry in models.items()}


def center_for(options: EngineOptions) -> np.ndarray | None:
    """The embedding centre ``options`` ask for: the model's, or None (off, or none known)."""
    if not options.center_embeddings:
        return None
    centers = load_centers()
    if options.model not in centers:
        log.warning(
            "no embedding centre is known for %s; embeddings are not centred",
            options.model,
        )
        return None
    return centers[options.model]


def combine_flipped(vectors: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """The flipped-image embedding: the normalised sum of a crop's and its mirror's vectors."""
    total = vectors.astype(np.float32) + flipped.astype(np.float32)
    return total / np.linalg.norm(total, axis=1, keepdims=True)


class FaceEmbedder:
    """InceptionResnetV1 in a runtime backend, with the mirrored crop and centring as asked."""

    def __init__(self, runtime: Runtime, flip: bool, center: np.ndarray | None):
        self.runtime = runtime
        self.flip = flip
        self.center = None if center is None else np.asarray(center, dtype=np.float32)

    @classmethod
    def from_options(cls, options: EngineOptions, network: Network) -> FaceEmbedder:
        """``network`` in the options' runtime backend (``onnx`` reads its built graph,
        ``onnx-int8`` the prepared graph at ``options.int8_graph``)."""
        placement = Placement(
            options.device, options.threads, options.graph_dir, options.int8_graph
        )
        runtime = get_runtime(options.embed_backend, network, placement)
        return cls(runtime, options.flip_embeddings, center_for(options))

    def embed(self, crops: list[np.ndarray], run=None) -> Embeddings:
        """Embed face crops; returns unit-norm (n, 512) float32 vectors. ``run`` (default: the
        network itself) maps a batch to its vectors; the engine passes one that splits a batch
        over its compute threads."""
        start = time.perf_counter()
        forward = run or self.forward
        batch = np.stack(crops).astype(np.float32, copy=False)
        if self.flip:
            vectors = forward(np.concatenate([batch, batch[:, :, :, ::-1]]))
            vectors = self.finish(vectors[: len(crops)], vectors[len(crops) :])
        else:
            vectors = self.finish(forward(batch))
        return Embeddings(vectors, (time.perf_counter() - start) * 1000)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """The network on a (n, 3, 160, 160) batch: unit-norm (n, 512) float32."""
        return np.asarray(self.runtime.run(batch)[0], dtype=np.float32)

    def finish(self, plain: np.ndarray, flipped: np.ndarray | None = None) -> np.ndarray:
        """The served embedding from the network's unit vectors: combined with the mirrored
        crop's (when given), minus the model's centre (when configured), unit norm."""
        vectors = plain if flipped is None else combine_flipped(plain, flipped)
        if self.center is not None:
            vectors = vectors - self.center
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)
