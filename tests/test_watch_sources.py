"""The watcher's video sources against real streams: the generated LFW video as a file, served
by GStreamer's RTSP server (restarted mid-stream) and by an HTTP MJPEG camera. Each frame carries
its number (benchmarking_utils/watch_video.py), so the tests know which frame of the video
they were given."""

from __future__ import annotations

import logging
import socket
import threading
import time

import av
import numpy as np
import pytest

from benchmarking_utils.watch_video import VideoManifest, frame_number
from facematch.config import ConfigError
from facematch.watch.source import Frame, FrameSource, SourceError, SourceOptions
from tests.servers import free_port


def read_all(options: SourceOptions) -> tuple[list[Frame], FrameSource]:
    source = FrameSource(options)
    return list(source.frames(threading.Event())), source


def decoded_frames(video: VideoManifest) -> dict[int, np.ndarray]:
    """Every frame of ``video``'s file, decoded, by the number drawn in it."""
    frames, _ = read_all(SourceOptions(str(video.path), sample_fps=1000))
    return {frame_number(f.image): f.image for f in frames}


@pytest.fixture(scope="module")
def video_frames(watch_video) -> dict[int, np.ndarray]:
    """Every frame of the standard video, by the number drawn in it."""
    return decoded_frames(watch_video)


def collect(source: FrameSource, stop: threading.Event, until, timeout: float) -> list[Frame]:
    """Frames from a live source until ``until(frames)`` holds; fails after ``timeout``."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    for frame in source.frames(stop):
        frames.append(frame)
        if until(frames):
            stop.set()
        assert time.monotonic() < deadline, f"timed out: {len(frames)} frames, {source.counts}"
    return frames


def assert_frames_of_the_video(frames: list[Frame], video_frames: dict[int, np.ndarray]) -> None:
    for frame in frames:
        number = frame_number(frame.image)
        assert number in video_frames, number
        difference = np.abs(frame.image.astype(int) - video_frames[number]).mean()
        assert difference < 2.0, (number, difference)


@pytest.mark.parametrize(("sample_fps", "every"), [(5.0, 2), (2.5, 4), (10.0, 1), (30.0, 1)])
def test_a_file_is_read_to_its_end_at_full_speed_one_frame_per_sample_slot(
    watch_video, sample_fps, every
):
    started = time.monotonic()
    frames, source = read_all(SourceOptions(str(watch_video.path), sample_fps=sample_fps))
    elapsed = time.monotonic() - started

    expected = list(range(0, watch_video.frames, every))
    assert [frame_number(f.image) for f in frames] == expected
    assert [f.index for f in frames] == expected
    assert [f.time_s for f in frames] == pytest.approx([n / watch_video.fps for n in expected])
    assert frames[0].image.shape == (watch_video.height, watch_video.width, 3)
    assert frames[0].image.dtype == np.uint8
    counts = source.counts
    assert (counts.decoded, counts.sampled, counts.dropped, counts.reopens) == (
        watch_video.frames,
        len(expected),
        0,
        0,
    )
    # No wall-clock pacing: 16 s of video take a fraction of that.
    assert elapsed < watch_video.duration_s / 3, elapsed


def test_a_file_stops_when_stop_is_set(watch_video):
    stop = threading.Event()
    source = FrameSource(SourceOptions(str(watch_video.path), sample_fps=10))
    taken = []
    for frame in source.frames(stop):
        taken.append(frame)
        if len(taken) == 5:
            stop.set()
    assert len(taken) == 5
    assert source.counts.decoded < watch_video.frames


def test_a_slow_consumer_of_a_live_source_gets_the_latest_frame_and_the_rest_are_dropped(
    watch_video, mjpeg_server
):
    server = mjpeg_server(watch_video.path)
    source = FrameSource(SourceOptions(server.url, sample_fps=10))
    stop = threading.Event()
    ages, frames = [], []
    deadline = time.monotonic() + 30
    for frame in source.frames(stop):
        ages.append(time.monotonic() - frame.time_s)
        frames.append(frame)
        if len(frames) == 8:
            stop.set()
        assert time.monotonic() < deadline, source.counts
        time.sleep(0.5)  # a consumer five times slower than the stream

    numbers = [frame_number(f.image) for f in frames]
    steps = np.diff(numbers[1:])  # the first frame may wait in the slot while the second is read
    assert all(3 <= step <= 7 for step in steps), numbers
    # No backlog: what the consumer gets is the newest frame, a frame period or two old.
    assert max(ages[1:]) < 0.35, ages
    counts = source.counts
    assert counts.dropped >= 3 * (len(frames) - 1), counts
    assert counts.sampled == len(frames) + counts.dropped, counts
    assert counts.reopens == 0


@pytest.mark.parametrize("video", ["watch_video", "h264_video"], ids=["mjpeg", "h264"])
def test_the_rtsp_server_delivers_the_frames_of_the_video(rtsp_server, request, video):
    """MJPEG as RTP JPEG, and H.264 as most IP cameras send it: the frames are the file's own."""
    manifest = request.getfixturevalue(video)
    server = rtsp_server(manifest.path)
    source = FrameSource(SourceOptions(server.url, sample_fps=5))
    frames = collect(source, threading.Event(), lambda fs: len(fs) >= 10, timeout=30)

    assert_frames_of_the_video(frames, decoded_frames(manifest))
    numbers = [frame_number(f.image) for f in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    assert source.counts.reopens == 0


def test_the_mjpeg_camera_delivers_the_frames_of_the_video(watch_video, mjpeg_server, video_frames):
    server = mjpeg_server(watch_video.path)
    source = FrameSource(SourceOptions(server.url, sample_fps=5))
    frames = collect(source, threading.Event(), lambda fs: len(fs) >= 10, timeout=30)

    assert_frames_of_the_video(frames, video_frames)
    numbers = [frame_number(f.image) for f in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers


def test_an_rtsp_server_restarted_mid_stream_is_reopened_and_frames_go_on(
    watch_video, rtsp_server, video_frames
):
    server = rtsp_server(watch_video.path)
    source = FrameSource(SourceOptions(server.url, sample_fps=5, reopen_initial_s=0.2))
    stop = threading.Event()
    before, after = [], []
    deadline = time.monotonic() + 60
    for frame in source.frames(stop):
        if len(before) < 8:
            before.append(frame)
            if len(before) == 8:
                server.restart()
        else:
            after.append(frame)
            if len(after) == 8:
                stop.set()
        assert time.monotonic() < deadline, source.counts

    assert source.counts.reopens >= 1
    assert_frames_of_the_video(before + after, video_frames)
    # The new connection plays the file from its start again: frame numbers go back.
    last_before = frame_number(before[-1].image)
    assert min(frame_number(f.image) for f in after) < last_before
    # The decoded frames' numbers run on across the reopen.
    indexes = [f.index for f in before + after]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)


def run_until_stopped(source: FrameSource, seconds: float) -> tuple[list[Frame], float]:
    """Iterate ``source`` in a thread for ``seconds``, then stop: the frames and how long the
    iterator took to end after ``stop``."""
    stop = threading.Event()
    frames: list[Frame] = []
    ended = threading.Event()

    def consume():
        frames.extend(source.frames(stop))
        ended.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(seconds)
    stopped = time.monotonic()
    stop.set()
    assert ended.wait(5), "the iterator did not end after stop"
    return frames, time.monotonic() - stopped


@pytest.mark.parametrize(
    "url", ["rtsp://127.0.0.1:{port}/door", "http://127.0.0.1:{port}/", "/dev/video99"]
)
def test_a_source_that_never_opens_backs_off_and_stops_promptly(url):
    options = SourceOptions(
        url.format(port=free_port()), sample_fps=5, reopen_initial_s=0.1, reopen_max_s=0.4
    )
    assert options.is_live
    source = FrameSource(options)
    frames, stop_latency = run_until_stopped(source, 2.0)

    assert frames == []
    # Tries at 0, 0.1, 0.3, 0.7, 1.1, 1.5, 1.9 s: six reopens, not a busy loop.
    assert 4 <= source.counts.reopens <= 7, source.counts
    assert source.counts.decoded == 0
    assert stop_latency < 0.5


def test_a_live_source_in_a_long_backoff_stops_promptly():
    options = SourceOptions(
        f"rtsp://127.0.0.1:{free_port()}/door", reopen_initial_s=30, reopen_max_s=60
    )
    source = FrameSource(options)
    frames, stop_latency = run_until_stopped(source, 0.5)
    assert frames == []
    assert source.counts.reopens == 0
    assert stop_latency < 0.5


def test_a_server_that_accepts_and_never_answers_is_given_up_after_the_open_timeout():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        options = SourceOptions(
            f"rtsp://127.0.0.1:{port}/door",
            open_timeout_s=0.5,
            reopen_initial_s=0.1,
            reopen_max_s=0.1,
        )
        source = FrameSource(options)
        frames, stop_latency = run_until_stopped(source, 2.5)
    finally:
        listener.close()
    assert frames == []
    # Each try waits the 0.5 s open timeout, then 0.1 s: about four tries in 2.5 s.
    assert 2 <= source.counts.reopens <= 5, source.counts
    assert stop_latency < 0.5


def test_a_camera_password_never_reaches_the_log(caplog):
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/door"
    source = FrameSource(SourceOptions(url, reopen_initial_s=0.1, reopen_max_s=0.1))
    with caplog.at_level(logging.WARNING, logger="facematch.watch.source"):
        run_until_stopped(source, 0.5)
    assert "rtsp://admin:***@127.0.0.1" in caplog.text
    assert "s3cret" not in caplog.text


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        FrameSource(SourceOptions(str(tmp_path / "door.avi")))


def test_a_file_that_is_not_a_video_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("not a video\n" * 100)
    with pytest.raises(SourceError, match="cannot open .*notes.avi: Invalid data"):
        FrameSource(SourceOptions(str(path)))


def test_a_file_without_video_is_a_clear_error(tmp_path):
    path = tmp_path / "doorbell.wav"
    with av.open(str(path), mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(SourceError, match="no video stream"):
        FrameSource(SourceOptions(str(path)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": ""}, "--source is empty"),
        ({"url": "ftp://camera/door"}, "unsupported scheme 'ftp'"),
        ({"url": "rtsp:///door"}, "has no host"),
        ({"url": "x.avi", "sample_fps": 0}, "FACEMATCH_WATCH_SAMPLE_FPS=0 must be a positive"),
        ({"url": "x.avi", "sample_fps": float("nan")}, "FACEMATCH_WATCH_SAMPLE_FPS=nan"),
        ({"url": "x.avi", "open_timeout_s": "5"}, "FACEMATCH_WATCH_OPEN_TIMEOUT_S='5' is not"),
        (
            {"url": "x.avi", "reopen_initial_s": 5, "reopen_max_s": 1},
            "FACEMATCH_WATCH_REOPEN_MAX_S=1 is below FACEMATCH_WATCH_REOPEN_INITIAL_S=5",
        ),
        ({"url": "rtsp://h/x", "rtsp_transport": "http"}, "FACEMATCH_WATCH_RTSP_TRANSPORT"),
    ],
)
def test_bad_source_options_are_refused_naming_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SourceOptions(**kwargs)


def test_a_password_in_a_refused_url_is_not_repeated():
    with pytest.raises(ConfigError) as refused:
        SourceOptions("ftp://admin:s3cret@camera/door")
    assert "s3cret" not in str(refused.value)


def test_which_sources_are_live(watch_video):
    assert not SourceOptions(str(watch_video.path)).is_live
    assert not SourceOptions(f"file://{watch_video.path}").is_live
    assert SourceOptions(str(watch_video.path), live=True).is_live
    assert SourceOptions("rtsp://camera/door").is_live
    assert SourceOptions("http://camera/video.mjpg").is_live
    assert SourceOptions("/dev/video0").is_live and SourceOptions("/dev/video0").is_device
