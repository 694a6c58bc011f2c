"""The watcher's process: built from the settings and the command line, run until the source
ends (a file) or the process is stopped (SIGTERM or SIGINT: the open tracks are decided and
published before it exits).

``watch`` is the loop (frames in, decisions out to the event sink, the metrics stream and the
Prometheus counters); ``main`` builds its parts: the engine, the decider (gallery, 1:N
threshold, calibration), the source (``FACEMATCH_WATCH_*`` into ``SourceOptions``), the
publishers.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable

from facematch.config import ConfigError, Settings
from facematch.engine.engine import FaceEngine
from facematch.errors import GalleryUnavailable, NotFound
from facematch.observability.publisher import Publisher, create_publisher
from facematch.watch.decide import Decider
from facematch.watch.events import EventSink
from facematch.watch.metrics import WatchMetrics
from facematch.watch.options import WatchOptions, live_setting
from facematch.watch.source import FrameSource, SourceOptions
from facematch.watch.watcher import Decided, Watcher

log = logging.getLogger("facematch.watch")


def source_options(settings: Settings, url: str) -> SourceOptions:
    """The source's options from the ``FACEMATCH_WATCH_*`` settings."""
    return SourceOptions(
        url,
        sample_fps=settings.watch_sample_fps,
        live=live_setting(settings),
        reopen_initial_s=settings.watch_reopen_initial_s,
        reopen_max_s=settings.watch_reopen_max_s,
        open_timeout_s=settings.watch_open_timeout_s,
    )


def watch(
    frames: Iterable,
    watcher: Watcher,
    sink: EventSink,
    publisher: Publisher,
    dropped: Callable[[], int],
    stop: threading.Event,
) -> int:
    """Run ``watcher`` over ``frames`` (``image``, ``index``) until they end or ``stop`` is set,
    then decide the open tracks; every decision is published. Returns the decisions made."""
    made, seen_dropped = 0, 0

    def emit(decisions: list[Decided]) -> None:
        nonlocal made
        for decided in decisions:
            publisher.publish(watcher.metrics.decided(decided.figures))
            sink.publish(decided.event, decided.crop)
            made += 1

    for frame in frames:
        now_dropped = dropped()
        watcher.metrics.set_dropped(now_dropped)
        emit(watcher.see(frame.image, frame.index, now_dropped - seen_dropped))
        seen_dropped = now_dropped
        if stop.is_set():
            break
    watcher.metrics.set_dropped(dropped())
    emit(watcher.finish())
    return made


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m facematch.watch",
        description="Watch a camera or video for a gallery's enrolled people (docs/watch.md).",
    )
    parser.add_argument("--source", required=True, help="anything FFmpeg opens: file, rtsp://...")
    parser.add_argument("--gallery", required=True, help="the gallery whose people to identify")
    parser.add_argument("--camera", required=True, help="the camera's name (topics, audit actor)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Watch until the source ends or a signal stops it; 0 on a clean end, 2 for bad settings
    or an unknown gallery."""
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        options = WatchOptions.from_settings(settings, args.camera, args.gallery)
        source = FrameSource(source_options(settings, args.source))
        engine = FaceEngine.from_settings(settings)
        engine.kernel_check()
        decider = Decider.from_settings(settings, engine, options.gallery, options.camera)
        decider.access.subjects(options.gallery, 1)  # NotFound for a gallery nobody enrolled in
    except (ConfigError, ValueError) as error:
        print(f"facematch.watch: {error}", file=sys.stderr)
        return 2
    except NotFound:
        print(
            f"facematch.watch: no gallery {options.gallery!r}: enrol people first", file=sys.stderr
        )
        return 2
    except GalleryUnavailable:
        log.warning("the gallery database is unavailable: tracks go undecided until it is back")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics = WatchMetrics(options.camera)
    if options.metrics_port:
        metrics.serve(options.metrics_port, options.metrics_host)
    sink = EventSink(settings, options)
    sink.start()
    publisher = create_publisher(settings)
    publisher.start()
    watcher = Watcher(options, engine, decider, metrics)
    log.info("watching camera %s for gallery %s", options.camera, options.gallery)
    try:
        made = watch(
            source.frames(stop), watcher, sink, publisher, lambda: source.counts.dropped, stop
        )
    finally:
        sink.close()
        publisher.close()
    counts = metrics.counts()
    log.info(
        "stopped: %d frames, %d dropped, %d faces, %d tracks, %d decisions",
        counts.frames,
        counts.dropped,
        counts.faces,
        counts.tracks,
        made,
    )
    return 0
