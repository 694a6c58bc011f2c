"""facenet-pytorch's own MTCNN search (``detect_face``) over runtime backends, for
``detect_backend=torch``: the reference the NumPy search (``mtcnn_search``) is tested against.
Imports PyTorch."""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import detect_face
from PIL import Image

from facematch.engine.mtcnn_search import no_faces


class DetectFaceStage(torch.nn.Module):
    """A runtime backend in the shape ``detect_face`` calls a network: a ``torch.nn.Module``
    mapping a batch to a tuple of tensors.

    ``detect_face`` reads its input dtype from ``next(pnet.parameters()).dtype``; ``dtype_probe``,
    a float32 scalar parameter, exists only to answer that read."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime
        self.dtype_probe = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = x.device
        return tuple(torch.from_numpy(o).to(device) for o in self.runtime.run(x.cpu().numpy()))


def search(
    image: Image.Image,
    min_face_size: int,
    pnet,
    rnet,
    onet,
    thresholds: tuple[float, float, float],
    factor: float,
    device: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``detect_face`` on ``image``: boxes (n, 4), probabilities (n,), landmarks (n, 5, 2)."""
    stages = [DetectFaceStage(net) for net in (pnet, rnet, onet)]
    with torch.inference_mode():
        boxes, points = detect_face(
            image, min_face_size, *stages, thresholds, factor, torch.device(device)
        )
    boxes, points = np.asarray(boxes[0], dtype=np.float64), np.asarray(points[0])
    if not len(boxes):
        return no_faces()
    return (
        boxes[:, :4].reshape(-1, 4),
        boxes[:, 4].reshape(-1),
        points.astype(np.float64).reshape(-1, 5, 2),
    )
