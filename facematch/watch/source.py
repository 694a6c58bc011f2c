"""Frames from anything FFmpeg opens (a file, ``rtsp://``, an HTTP MJPEG camera, a V4L2 device),
sampled at a set rate, through PyAV's bundled FFmpeg.

A file is read as fast as the consumer takes frames, sampled by stream time, and ends at EOF. A
live source is decoded continuously by a reader thread that keeps only the newest sampled frame
(the latest wins, so a slow consumer never builds a backlog; replaced frames are counted as
dropped) and reopens the stream with doubling backoff when it fails or ends.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from facematch.config import PREFIX, ConfigError

log = logging.getLogger(__name__)

NETWORK_SCHEMES = frozenset(
    {"rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "srt", "udp", "tcp"}
)
RTSP_TRANSPORTS = frozenset({"tcp", "udp"})
_SLOT_EPSILON = 1e-6  # stream times like 0.6 are not exact in binary; a sample slot tolerates it


class SourceError(ValueError):
    """A source that cannot be read at all: a missing file, a file FFmpeg cannot open or decode,
    no video stream. Live sources never raise it for a failed open: they back off and retry."""


def _scheme(url: str) -> str:
    """The URL's scheme, lower-case; "" for a plain path."""
    return urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""


def _var(name: str) -> str:
    return f"{PREFIX}WATCH_{name.upper()}"


@dataclass(frozen=True)
class SourceOptions:
    """Where frames come from and how often; the watcher builds it from its settings."""

    url: str  # a path, rtsp://, http(s)://, /dev/videoN
    sample_fps: float = 5.0  # frames handed on per second of stream time (file) or wall time (live)
    live: bool | None = None  # None: a regular file is not live; anything else is
    reopen_initial_s: float = 0.5  # backoff after a failed open or a dropped stream, doubling
    reopen_max_s: float = 30.0
    open_timeout_s: float = 10.0  # FFmpeg's open/read timeout for network sources
    rtsp_transport: str = "tcp"  # RTP over the RTSP connection: no lost UDP packets, one port

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip():
            raise ConfigError("--source is empty")
        scheme = _scheme(self.url)
        if scheme and scheme not in NETWORK_SCHEMES and scheme != "file":
            raise ConfigError(
                f"--source {redact(self.url)}: unsupported scheme {scheme!r} "
                f"(a path, /dev/videoN or one of {', '.join(sorted(NETWORK_SCHEMES))})"
            )
        if scheme in NETWORK_SCHEMES and not urllib.parse.urlsplit(self.url).hostname:
            raise ConfigError(f"--source {redact(self.url)} has no host")
        for name in ("sample_fps", "reopen_initial_s", "reopen_max_s", "open_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{_var(name)}={value!r} is not a number")
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{_var(name)}={value!r} must be a positive number")
        if self.reopen_max_s < self.reopen_initial_s:
            raise ConfigError(
                f"{_var('reopen_max_s')}={self.reopen_max_s} is below "
                f"{_var('reopen_initial_s')}={self.reopen_initial_s}"
            )
        if self.live is not None and not isinstance(self.live, bool):
            raise ConfigError(f"live={self.live!r} is not a bool")
        if self.rtsp_transport not in RTSP_TRANSPORTS:
            raise ConfigError(f"{_var('rtsp_transport')}={self.rtsp_transport!r}: tcp or udp")

    @property
    def is_network(self) -> bool:
        return _scheme(self.url) in NETWORK_SCHEMES

    @property
    def is_device(self) -> bool:
        """A V4L2 capture device (a USB camera, a Pi camera through libcamera's V4L2 layer)."""
        path = self.local_path
        if path is None:
            return False
        if path.startswith("/dev/"):
            return True
        try:
            return stat.S_ISCHR(os.stat(path).st_mode)
        except OSError:
            return False

    @property
    def local_path(self) -> str | None:
        """The filesystem path of a file or device source; None for a network URL."""
        if self.url.startswith("file://"):
            return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path)
        return None if "://" in self.url else self.url

    @property
    def is_live(self) -> bool:
        """Whether the source runs until stopped (anything but a regular file, unless set)."""
        if self.live is not None:
            return self.live
        path = self.local_path
        return path is None or not os.path.isfile(path)


@dataclass(frozen=True)
class Frame:
    """One sampled frame."""

    image: np.ndarray  # H x W x 3, uint8, RGB
    index: int  # the decoded frame's number since the watcher started (across reopens)
    time_s: float  # seconds: stream time for a file, time.monotonic() at decode for live


@dataclass(frozen=True)
class SourceCounts:
    """What the source did so far: every decoded frame, the sampled ones, the sampled ones a
    newer frame replaced before the consumer took them, and the reopen attempts."""

    decoded: int
    sampled: int
    dropped: int
    reopens: int


def redact(url: str) -> str:
    """The URL without its password, for logs and errors (camera URLs often carry one)."""
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _reason(exc: Exception, url: str) -> str:
    """What went wrong, without the URL FFmpeg's errors repeat (it may carry a password)."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).replace(url, redact(url))


def sample_slot(time_s: float, start_s: float, sample_fps: float) -> int:
    """Which 1/sample_fps slot a frame at ``time_s`` falls in; the first frame of a slot is
    the sampled one."""
    return math.floor((time_s - start_s) * sample_fps + _SLOT_EPSILON)


class FrameSource:
    """Sampled frames from one source; see the module's docstring for file and live behaviour."""

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        path = options.local_path
        if path is not None and not options.is_device and not os.path.exists(path):
            raise SourceError(f"no such file: {path}")
        if not options.is_live:
            # A file that is not a video is refused now, before the watcher loads its models.
            with self._open_file() as container:
                self._video_stream(container)
        self._lock = threading.Lock()
        self._decoded = 0
        self._sampled = 0
        self._dropped = 0
        self._reopens = 0

    @property
    def counts(self) -> SourceCounts:
        with self._lock:
            return SourceCounts(self._decoded, self._sampled, self._dropped, self._reopens)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """File: every sampled frame, as fast as the consumer takes them, ending at EOF.
        Live: a reader thread decodes continuously and keeps only the newest sampled frame
        (latest wins; replaced ones counted as dropped), reopens with backoff when the stream
        fails, and the iterator ends soon after `stop` is set."""
        if self.options.is_live:
            return self._live_frames(stop)
        return self._file_frames(stop)

    # --- opening ----------------------------------------------------------------------------

    def _open(self) -> av.container.InputContainer:
        o = self.options
        options: dict[str, str] = {}
        fmt = None
        timeout = None
        if o.is_network:
            timeout = (o.open_timeout_s, o.open_timeout_s)
            if o.url.lower().startswith(("rtsp://", "rtsps://")):
                options["rtsp_transport"] = o.rtsp_transport
        elif o.is_device:
            fmt = "v4l2"
        target = o.local_path if o.local_path is not None else o.url
        return av.open(target, mode="r", format=fmt, options=options, timeout=timeout)

    @staticmethod
    def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
        if not container.streams.video:
            raise SourceError("the source has no video stream")
        return container.streams.video[0]

    # --- files ------------------------------------------------------------------------------

    def _open_file(self) -> av.container.InputContainer:
        try:
            return self._open()
        except av.FFmpegError as exc:
            url = self.options.url
            raise SourceError(f"cannot open {redact(url)}: {_reason(exc, url)}") from exc

    def _file_frames(self, stop: threading.Event) -> Iterator[Frame]:
        with self._open_file() as container:
            stream = self._video_stream(container)
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            start = None
            last_slot = -1
            try:
                for n, decoded in enumerate(container.decode(stream)):
                    if stop.is_set():
                        return
                    if decoded.time is not None:
                        time_s = float(decoded.time)
                    else:
                        time_s = n / rate if rate else n / self.options.sample_fps
                    start = time_s if start is None else start
                    slot = sample_slot(time_s, start, self.options.sample_fps)
                    with self._lock:
                        index = self._decoded
                        self._decoded += 1
                        if slot <= last_slot:
                            continue
                        self._sampled += 1
                    last_slot = slot
                    yield Frame(decoded.to_ndarray(format="rgb24"), index, time_s)
            except av.FFmpegError as exc:
                url = self.options.url
                raise SourceError(f"cannot decode {redact(url)}: {_reason(exc, url)}") from exc

    # --- live sources -----------------------------------------------------------------------

    def _live_frames(self, stop: threading.Event) -> Iterator[Frame]:
        mailbox = _Mailbox()
        reader_stop = threading.Event()
        reader = threading.Thread(
            target=self._read_live,
            args=(mailbox, reader_stop),
            name="facematch-watch-source",
            daemon=True,
        )
        reader.start()
        try:
            while not stop.is_set():
                frame = mailbox.take(timeout=0.05)
                if frame is None:
                    continue
                if stop.is_set():
                    self._count_dropped(1)
                    break
                yield frame
        finally:
            # Every sampled frame is handed on or counted as dropped, those left at the end too.
            reader_stop.set()
            self._count_dropped(mailbox.close())
            # The reader leaves within FFmpeg's read timeout at worst; never wait that long here.
            reader.join(timeout=0.5)

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def _read_live(self, mailbox: _Mailbox, stop: threading.Event) -> None:
        """Open, decode and sample until ``stop``; reopen with doubling backoff after a failed
        open, an error or the end of the stream (a camera reboot, a server restart)."""
        o = self.options
        delay = o.reopen_initial_s
        start = time.monotonic()
        last_slot = -1
        first = True
        while not stop.is_set():
            if not first:
                with self._lock:
                    self._reopens += 1
            first = False
            got_frame = False
            try:
                with self._open() as container:
                    stream = self._video_stream(container)
                    for decoded in container.decode(stream):
                        now = time.monotonic()
                        got_frame = True
                        slot = sample_slot(now, start, o.sample_fps)
                        with self._lock:
                            index = self._decoded
                            self._decoded += 1
                            sampled = slot > last_slot
                            if sampled:
                                self._sampled += 1
                        if sampled:
                            last_slot = slot
                            frame = Frame(decoded.to_ndarray(format="rgb24"), index, now)
                            if mailbox.put(frame):
                                self._count_dropped(1)
                        if stop.is_set():
                            return
                log.warning("source %s ended; reopening", redact(o.url))
            except Exception as exc:  # noqa: BLE001 (the reader must never die silently)
                log.warning("source %s failed: %s", redact(o.url), _reason(exc, o.url))
            if got_frame:
                delay = o.reopen_initial_s
            if stop.wait(delay):
                return
            delay = min(delay * 2, o.reopen_max_s)


class _Mailbox:
    """A one-frame slot between the reader and the consumer: ``put`` replaces what is there."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def put(self, frame: Frame) -> bool:
        """Leave ``frame`` for the consumer; True when a frame was lost: one never taken was
        replaced, or the consumer has gone."""
        with self._cond:
            if self._closed:
                return True
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Frame | None:
        """The newest frame, waiting up to ``timeout``; None when there was none."""
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> int:
        """Refuse further frames; how many were left untaken (0 or 1)."""
        with self._cond:
            self._closed = True
            left, self._frame = self._frame is not None, None
            return int(left)
