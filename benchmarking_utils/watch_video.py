"""The watcher's test video: LFW photos, one person at a time on a plain background, each for a
few seconds and moving a little, with empty background between people, written with PyAV as
MJPEG in AVI (``.avi``; GStreamer's RTSP server packetises it as RTP JPEG) or H.264 in MP4
(``.mp4``: what most IP cameras stream; PyAV's bundled FFmpeg has libx264). ``write_video``
returns the manifest: who is on screen from when to when.

Every frame carries its number in a strip of black and white blocks in the top-left corner
(``frame_number`` reads it back), so a test can tell which frame of the video a stream gave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

MARKER_BITS = 16
MARKER_BLOCK = 12  # pixels per bit: survives JPEG at any quality the tests use
BACKGROUND = (96, 112, 128)


@dataclass(frozen=True)
class Segment:
    """``seconds`` of one LFW photo on screen (``photo`` None: empty background)."""

    photo: Path | None
    seconds: float

    @property
    def person(self) -> str | None:
        return None if self.photo is None else self.photo.parent.name


@dataclass(frozen=True)
class Appearance:
    """One person on screen: frames ``first_frame``..``last_frame`` (inclusive), i.e. stream
    time ``start_s`` (inclusive) to ``end_s`` (exclusive)."""

    person: str
    photo: str  # the LFW name, Name/Name_NNNN.jpg
    start_s: float
    end_s: float
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class VideoManifest:
    path: Path
    width: int
    height: int
    fps: int
    frames: int
    appearances: tuple[Appearance, ...]

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def person_at(self, frame: int) -> str | None:
        """Who is on screen in frame number ``frame`` (None: background only)."""
        for a in self.appearances:
            if a.first_frame <= frame <= a.last_frame:
                return a.person
        return None


def write_video(
    path: Path,
    segments: list[Segment],
    size: tuple[int, int] = (640, 480),
    fps: int = 10,
    gap_s: float = 1.0,
    quality: int = 4,
) -> VideoManifest:
    """Write ``segments`` (with ``gap_s`` of empty background before the first, between each
    and after the last) to ``path`` at ``size`` (width, height) and ``fps``: MJPEG in AVI for
    ``.avi`` (``quality``: FFmpeg's qscale, 2 best .. 31 worst), H.264 in MP4 for ``.mp4``
    (a key frame each second and no B-frames, as a camera streams)."""
    width, height = size
    if width % 16 or height % 8:
        raise ValueError("RTP JPEG needs a width divisible by 16 and a height by 8")
    suffix = Path(path).suffix.lower()
    if suffix not in (".avi", ".mp4"):
        raise ValueError(f"{path}: .avi (MJPEG) or .mp4 (H.264)")
    plan: list[Segment] = [Segment(None, gap_s)]
    for segment in segments:
        plan += [segment, Segment(None, gap_s)]
    appearances = []
    frame_no = 0
    with av.open(str(path), mode="w", format=suffix[1:]) as out:
        if suffix == ".avi":
            stream = out.add_stream("mjpeg", rate=fps)
            stream.pix_fmt = "yuvj420p"
            stream.codec_context.qscale = quality
        else:
            options = {"preset": "veryfast", "crf": "18", "g": str(fps), "bf": "0"}
            stream = out.add_stream("libx264", rate=fps, options=options)
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = width, height
        stream.codec_context.time_base = Fraction(1, fps)
        for segment in plan:
            count = max(1, round(segment.seconds * fps))
            photo = None if segment.photo is None else Image.open(segment.photo).convert("RGB")
            if photo is not None:
                appearances.append(
                    Appearance(
                        person=segment.person,
                        photo=f"{segment.photo.parent.name}/{segment.photo.name}",
                        start_s=frame_no / fps,
                        end_s=(frame_no + count) / fps,
                        first_frame=frame_no,
                        last_frame=frame_no + count - 1,
                    )
                )
            for i in range(count):
                image = _compose(photo, i, fps, width, height)
                _draw_marker(image, frame_no)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = frame_no
                for packet in stream.encode(frame):
                    out.mux(packet)
                frame_no += 1
        for packet in stream.encode(None):
            out.mux(packet)
    return VideoManifest(Path(path), width, height, fps, frame_no, tuple(appearances))


def _compose(photo: Image.Image | None, i: int, fps: int, width: int, height: int) -> np.ndarray:
    """The background with ``photo`` scaled to about half the frame's height, drifting a few
    pixels and breathing a few percent in scale as ``i`` (its frame within the segment) grows."""
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    if photo is not None:
        t = i / fps
        scale = 0.5 * height / photo.height * (1.0 + 0.04 * math.sin(2 * math.pi * t / 3.0))
        side = (round(photo.width * scale), round(photo.height * scale))
        resized = photo.resize(side, Image.BILINEAR)
        drift = 0.03 * height
        x = (width - side[0]) // 2 + round(drift * math.sin(2 * math.pi * t / 4.0))
        y = (height - side[1]) // 2 + round(drift * math.cos(2 * math.pi * t / 5.0))
        canvas.paste(resized, (x, y))
    return np.asarray(canvas).copy()


def _draw_marker(image: np.ndarray, number: int) -> None:
    for bit in range(MARKER_BITS):
        on = (number >> bit) & 1
        x = bit * MARKER_BLOCK
        image[:MARKER_BLOCK, x : x + MARKER_BLOCK] = 255 if on else 0


def frame_number(image: np.ndarray) -> int:
    """The number ``write_video`` drew into a frame (read from each block's centre)."""
    half = MARKER_BLOCK // 2
    centre = image[half - 2 : half + 2]
    number = 0
    for bit in range(MARKER_BITS):
        x = bit * MARKER_BLOCK + half
        if centre[:, x - 2 : x + 2].mean() > 128:
            number |= 1 << bit
    return number


@dataclass(frozen=True)
class Cast:
    """Who the standard video shows: enrolled people (with photos to enroll that are not the
    one on screen) and unknown ones, in ``segments`` order."""

    enrolled: dict[str, tuple[Path, ...]]
    unknown: tuple[str, ...]
    segments: tuple[Segment, ...]


def standard_cast(lfw_images: Path, seconds: float = 4.0, enroll_photos: int = 3) -> Cast:
    """Colin Powell (enrolled), Gerhard Schroeder (unknown), Tony Blair (enrolled), each
    ``seconds`` on screen from their first LFW photo; their next ``enroll_photos`` photos enroll."""
    order = (("Colin_Powell", True), ("Gerhard_Schroeder", False), ("Tony_Blair", True))
    enrolled, unknown, segments = {}, [], []
    for person, known in order:
        photos = sorted((lfw_images / person).glob("*.jpg"))
        segments.append(Segment(photos[0], seconds))
        if known:
            enrolled[person] = tuple(photos[1 : 1 + enroll_photos])
        else:
            unknown.append(person)
    return Cast(enrolled, tuple(unknown), tuple(segments))
