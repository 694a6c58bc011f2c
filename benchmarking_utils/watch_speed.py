"""The camera watcher's speed and memory at 720p and 1080p, on the generated LFW video.

For each size a video is written from LFW photos (``watch_video.py``: two enrolled people and
one unknown, 4 s each, 10 frames/s, MJPEG) and a fresh process watches it as
``python -m facematch.watch`` does (a file is read as fast as the machine allows, sampled at
``FACEMATCH_WATCH_SAMPLE_FPS`` of stream time), against a SQLite gallery holding the enrolled
people. It reports:

- **frames/s**: sampled frames watched per second of wall time (decoding every frame of the
  video, detection, tracking, selection and the decisions included): the most a live camera
  can be sampled at before the source starts dropping frames;
- **per frame**: the milliseconds of one sampled frame through the watcher (median, p95, max);
- **decision latency**: first sight to decision, wall clock (read faster than real time here,
  so a live camera adds the sampled frames' real spacing: ``decide_after / sample_fps`` s), and
  the decision step alone (embed the kept crops, fuse, identify, write the audit event);
- **memory**: the process's peak RSS and the largest PSS seen (sampled every 0.2 s);
- **decisions**: who was decided, against who was shown (a check that the figures are of a
  watcher that works).

    python -m benchmarking_utils.watch_speed --lfw ../shared/data/lfw \\
        --out docs/results/watch_speed.json

Every figure carries the load average: the development machine is shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from benchmarking_utils.common import local_settings, machine, summary, write_json
from benchmarking_utils.watch_video import standard_cast, write_video
from deployment_utils.lfw import lfw_dir
from facematch.config import Settings
from facematch.engine.engine import FaceEngine
from facematch.gallery.service import GalleryAccess
from facematch.gallery.store import FaceSource
from facematch.watch.decide import Decider
from facematch.watch.metrics import WatchMetrics
from facematch.watch.options import WatchOptions
from facematch.watch.run import source_options
from facematch.watch.source import FrameSource
from facematch.watch.watcher import Watcher

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
GALLERY = "bench"
CAMERA = "bench"


def memory_mib() -> tuple[float, float]:
    """This process's RSS and PSS in MiB (``/proc/self/smaps_rollup``)."""
    values = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def watch_once(video: Path, gallery_url: str) -> dict:
    """Watch ``video`` in this process, as the watcher's process does; its figures."""
    settings = local_settings(Settings.from_env()).replace(gallery_url=gallery_url)
    options = WatchOptions.from_settings(settings, CAMERA, GALLERY)
    engine = FaceEngine.from_settings(settings)
    engine.kernel_check()
    watcher = Watcher(
        options,
        engine,
        Decider.from_settings(settings, engine, GALLERY, CAMERA),
        WatchMetrics(CAMERA),
    )
    peak_pss, done = [memory_mib()[1]], threading.Event()

    def sample_memory() -> None:
        while not done.wait(0.2):
            peak_pss.append(memory_mib()[1])

    threading.Thread(target=sample_memory, daemon=True).start()
    source = FrameSource(source_options(settings, str(video)))
    per_frame, decided = [], []
    start = time.perf_counter()
    for frame in source.frames(threading.Event()):
        began = time.perf_counter()
        decided += watcher.see(frame.image, frame.index)
        per_frame.append((time.perf_counter() - began) * 1000)
    decided += watcher.finish()
    wall = time.perf_counter() - start
    done.set()
    counts = source.counts
    return {
        "frames_watched": len(per_frame),
        "frames_decoded": counts.decoded,
        "wall_s": round(wall, 2),
        "frames_per_s": round(len(per_frame) / wall, 2),
        "per_frame_ms": summary(per_frame),
        "decision_latency_ms": summary([d.event.latency_ms for d in decided]),
        "decision_step_ms": summary(
            [d.figures.embedding_ms + d.figures.search_ms for d in decided]
        ),
        "decided": [d.event.subject for d in decided],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_pss_mib": round(max(peak_pss), 1),
        "settings": {
            "sample_fps": settings.watch_sample_fps,
            "decide_after": settings.watch_decide_after,
            "keep_frames": settings.watch_keep_frames,
            "detect_max_side": settings.detect_max_side,
            "embed_backend": settings.embed_backend,
        },
    }


def enrol(gallery_url: str, enrolled: dict) -> None:
    settings = local_settings(Settings.from_env()).replace(gallery_url=gallery_url)
    engine = FaceEngine.from_settings(settings)
    access = GalleryAccess.from_settings(settings)
    for person, photos in enrolled.items():
        for photo in photos:
            face = engine.detect(Image.open(photo).convert("RGB")).primary
            vector = engine.embed([face.crop]).vectors[0]
            access.enrol(GALLERY, person, vector, engine.model_name, FaceSource(), "local")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=None, help="LFW (default: FACEMATCH_LFW_DIR)")
    parser.add_argument("--sizes", default="720p,1080p", help="of " + ", ".join(SIZES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--child", nargs=2, metavar=("VIDEO", "GALLERY_URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(watch_once(Path(args.child[0]), args.child[1])))
        return 0
    images = (args.lfw or lfw_dir()) / "images"
    cast = standard_cast(images)
    results = {}
    with tempfile.TemporaryDirectory(prefix="watch-speed-") as work:
        url = f"sqlite:///{Path(work) / 'gallery.db'}"
        enrol(url, cast.enrolled)
        for name in args.sizes.split(","):
            video = write_video(Path(work) / f"{name}.avi", list(cast.segments), SIZES[name])
            load_before = os.getloadavg()
            done = subprocess.run(
                [sys.executable, "-m", "benchmarking_utils.watch_speed", "--child"]
                + [str(video.path), url],
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            figures["shown"] = [a.person for a in video.appearances]
            figures["enrolled"] = sorted(cast.enrolled)
            figures["video"] = {"width": video.width, "height": video.height, "fps": video.fps}
            figures["load_average"] = {"before": load_before, "after": os.getloadavg()}
            results[name] = figures
            print(name, json.dumps(figures), flush=True)
    write_json(
        args.out,
        {
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "sizes": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
