"""MTCNN's three-stage face search in NumPy, over networks in any runtime backend.

The arithmetic is facenet-pytorch's ``detect_face`` for one image (float32 throughout: the
image pyramid, P-Net's candidate boxes, their regression, squaring and clamping, the
thresholds, and its non-maximum suppressions), with the per-box work done in batches:

* every resampling is an area average (PyTorch's ``interpolate(mode="area")``, i.e. adaptive
  average pooling) computed from one summed-area table of the searched image, for the pyramid's
  levels and for all of a stage's boxes in one gather, instead of one PyTorch call per box;
* each stage's boxes go through its network in one call;
* non-maximum suppression compares one kept box with all remaining boxes at a time.

With ``pillow=True`` every resampling is Pillow's exact-area (BOX) filter instead
(``detect_backend=onnx-pil``; boxes move by a few pixels). The search returns ``(boxes (n, 4),
probabilities (n,), landmarks (n, 5, 2))`` in the searched image's pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from facematch.engine.crops import standardise

F32 = np.float32


def area_table(pixels: np.ndarray) -> np.ndarray:
    """The summed-area table of (h, w, 3) uint8 pixels: (h + 1, w + 1, 3) int64, zero-padded."""
    table = np.zeros((pixels.shape[0] + 1, pixels.shape[1] + 1, 3), np.int64)
    np.cumsum(np.cumsum(pixels, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    return table


def _windows(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling windows of ``size`` outputs over spans [start, start + length):
    (n, size) first and one-past-last input indices."""
    i = np.arange(size)
    first = start[:, None] + (i * length[:, None]) // size
    last = start[:, None] + ((i + 1) * length[:, None] + size - 1) // size
    return first, last


def area_resample(
    table: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, size: tuple
) -> np.ndarray:
    """Each region (x, y, w, h) (integer arrays of n regions) area-averaged to ``size`` =
    (height, width): (n, height, width, 3) float32, as PyTorch's area interpolation."""
    rows0, rows1 = _windows(y, h, size[0])
    cols0, cols1 = _windows(x, w, size[1])
    r0, r1 = rows0[:, :, None], rows1[:, :, None]
    c0, c1 = cols0[:, None, :], cols1[:, None, :]
    sums = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    counts = ((r1 - r0) * (c1 - c0))[..., None]
    return (sums / counts).astype(F32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision's ``nms``: indices of the kept boxes, highest score first; a box is dropped
    when its intersection over union with a kept one is above ``threshold``."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > threshold)]
    return np.asarray(keep, dtype=np.int64)


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch's ``nms_numpy`` with the "Min" overlap (intersection over the smaller
    box, areas counted with +1), in its own order: highest score first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        order = rest[(w * h) / np.minimum(area[i], area[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``rerec``: each box grown to a square about its centre."""
    boxes = boxes.copy()
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * F32(0.5) - side * F32(0.5)
    boxes[:, 1] = boxes[:, 1] + h * F32(0.5) - side * F32(0.5)
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``bbreg``: corners moved by ``reg`` times the (+1) box size."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = boxes[:, :4] + reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


class Search:
    """One image searched: its pixels, summed-area table (area resampling) and size."""

    def __init__(self, image: Image.Image, pillow: bool):
        self.image = image
        self.pillow = pillow
        self.width, self.height = image.size
        self.table = None if pillow else area_table(np.asarray(image))

    def level(self, scale: float) -> np.ndarray:
        """The pyramid level at ``scale``, standardised, as a (1, 3, h, w) batch."""
        size = (int(self.height * scale + 1), int(self.width * scale + 1))
        if self.pillow:
            pixels = np.asarray(self.image.resize(size[::-1], Image.BOX), dtype=F32)
        else:
            zero = np.zeros(1, np.int64)
            pixels = area_resample(
                self.table, zero, zero, zero + self.width, zero + self.height, size
            )[0]
        return standardise(pixels)[None]

    def crops(self, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """facenet-pytorch's box crops: each box truncated and clamped as ``pad`` does,
        resampled to ``size`` x ``size`` and standardised; returns the (n, 3, size, size) batch
        and the indices of the boxes that had pixels."""
        b = np.trunc(boxes[:, :4]).astype(np.int64)
        x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
        ex, ey = np.minimum(b[:, 2], self.width), np.minimum(b[:, 3], self.height)
        keep = np.nonzero((ey > y - 1) & (ex > x - 1))[0]
        x, y, ex, ey = x[keep], y[keep], ex[keep], ey[keep]
        if not len(keep):
            return np.zeros((0, 3, size, size), F32), keep
        if self.pillow:
            pixels = np.stack(
                [
                    np.asarray(
                        self.image.resize((size, size), Image.BOX, box=(a - 1, b - 1, c, d)), F32
                    )
                    for a, b, c, d in zip(x, y, ex, ey)
                ]
            )
        else:
            pixels = area_resample(self.table, x - 1, y - 1, ex - x + 1, ey - y + 1, (size, size))
        return standardise_batch(pixels), keep


def standardise_batch(pixels: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) pixel values to the networks' (n, 3, h, w) input, ``(x - 127.5) / 128``."""
    return ((pixels.astype(F32) - F32(127.5)) * F32(0.0078125)).transpose(0, 3, 1, 2)


def candidates(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """facenet-pytorch's ``generateBoundingBox``: P-Net's cells over ``threshold`` as boxes
    (n, 9): x1, y1, x2, y2 in the searched image, score, the four regression values."""
    ys, xs = np.nonzero(prob >= threshold)
    cells = np.stack([xs, ys], axis=1).astype(F32)
    q1 = np.floor((2 * cells + 1) / F32(scale))
    q2 = np.floor((2 * cells + 12) / F32(scale))
    return np.concatenate(
        [q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1, dtype=F32
    ).reshape(-1, 9)


def no_faces() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A search's result when it finds nothing: boxes (0, 4), probabilities (0,), landmarks
    (0, 5, 2)."""
    return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))


def pyramid(width: int, height: int, min_face_size: int, factor: float) -> list[float]:
    """The scales of MTCNN's image pyramid: from 12 / ``min_face_size`` down by ``factor`` while
    the shorter side stays at least 12 pixels."""
    scale = 12.0 / min_face_size
    side = min(width, height) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale, side = scale * factor, side * factor
    return scales


def search(
    image: Image.Image,
    min_face_size: int,
    pnet,
    rnet,
    onet,
    thresholds: tuple[float, float, float],
    factor: float,
    pillow: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MTCNN on ``image`` for faces of at least ``min_face_size`` pixels: boxes (n, 4),
    probabilities (n,) and landmarks (n, 5, 2), float64, in ``image``'s pixels."""
    found = Search(image, pillow)
    boxes = pnet_stage(found, pnet, min_face_size, thresholds[0], factor)
    if len(boxes):
        boxes = rnet_stage(found, rnet, boxes, thresholds[1])
    if not len(boxes):
        return no_faces()
    return onet_stage(found, onet, boxes, thresholds[2])


def pnet_stage(
    found: Search, pnet, min_face_size: int, threshold: float, factor: float
) -> np.ndarray:
    """P-Net over the image pyramid: the candidate boxes (n, 5: corners regressed and squared,
    score) that survive each level's and the joint non-maximum suppression."""
    levels = []
    for scale in pyramid(found.width, found.height, min_face_size, factor):
        reg, prob = pnet.run(found.level(scale))
        boxes = candidates(reg[0], prob[0, 1], scale, threshold)
        levels.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
    boxes = np.concatenate(levels) if levels else np.zeros((0, 9), F32)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    boxes = np.concatenate([boxes[:, :4] + boxes[:, 5:9] * size, boxes[:, 4:5]], axis=1)
    return square(boxes)


def rnet_stage(found: Search, rnet, boxes: np.ndarray, threshold: float) -> np.ndarray:
    """R-Net on P-Net's boxes' 24x24 crops: the boxes (n, 5) it keeps, regressed and squared."""
    batch, keep = found.crops(boxes, 24)
    if not len(keep):
        return np.zeros((0, 5), F32)
    reg, prob = rnet.run(batch)
    boxes, passed = boxes[keep], prob[:, 1] > threshold
    boxes = np.concatenate([boxes[passed, :4], prob[passed, 1:2]], axis=1)
    reg = reg[passed]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    return square(regress(boxes[pick], reg[pick]))


def onet_stage(
    found: Search, onet, boxes: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """O-Net on R-Net's boxes' 48x48 crops: the search's result (see ``search``)."""
    batch, keep = found.crops(boxes, 48)
    if not len(keep):
        return no_faces()
    reg, points, prob = onet.run(batch)
    boxes, passed = boxes[keep], prob[:, 1] > threshold
    boxes = np.concatenate([boxes[passed, :4], prob[passed, 1:2]], axis=1)
    reg, points = reg[passed], points[passed]
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1
    points = np.stack(
        [w * points[:, :5] + boxes[:, 0:1] - 1, h * points[:, 5:] + boxes[:, 1:2] - 1], axis=2
    )
    boxes = regress(boxes, reg)
    pick = nms_min(boxes[:, :4], boxes[:, 4], 0.7)
    if not len(pick):
        return no_faces()
    boxes, points = boxes[pick].astype(np.float64), points[pick].astype(np.float64)
    return boxes[:, :4], boxes[:, 4], points
