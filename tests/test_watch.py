"""The camera watcher end to end: the generated LFW video through ``python -m facematch.watch``
with a real mosquitto and a SQLite gallery; the right events in order, one per person, unknown
people as null, each decision in the audit trail with the camera as actor, the watch counters in
the metrics stream. Also its parts on arrays: the tracker, the best-frame selection, the
events, the metrics (MQTT message and Prometheus text)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

from benchmarking_utils.local_gunicorn import free_port
from benchmarking_utils.watch_video import Segment, write_video
from facematch.config import ConfigError, Settings
from facematch.decision.fusion import near
from facematch.decision.gallery_scoring import DEFAULT_IDENTIFY_THRESHOLD
from facematch.decision.quality import FaceQuality
from facematch.observability.message import build_message, to_point, validate
from facematch.watch.decide import Decider
from facematch.watch.events import (
    EventSink,
    WatchEvent,
    discovery_message,
    event_message,
    snapshot_jpeg,
)
from facematch.watch.metrics import DecisionFigures, WatchMetrics
from facematch.watch.options import WatchOptions
from facematch.watch.selection import BestFrames, Sighting, score
from facematch.watch.tracker import IouTracker, TrackerOptions, iou
from tests.servers import Subscriber, wait_until

GALLERY = "door-test"  # the watch_gallery fixture's (WatchCli's too)
CAMERA = "door"


# --- the tracker ---------------------------------------------------------------------------


def test_iou_of_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_a_face_moving_a_little_keeps_its_track_and_a_new_face_gets_a_new_one():
    tracker = IouTracker(TrackerOptions(iou=0.3, max_misses=2))
    first = tracker.update([(100, 100, 200, 200)], 0)
    moved = tracker.update([(108, 104, 208, 204), (400, 100, 480, 180)], 1)
    assert [t.id for t in first.assigned] == [1]
    assert [t.id for t in moved.assigned] == [1, 2]
    assert moved.assigned[0].sightings == 2 and moved.assigned[0].box == (108, 104, 208, 204)


def test_a_track_ends_after_more_than_max_misses_unseen_frames():
    tracker = IouTracker(TrackerOptions(iou=0.3, max_misses=2))
    tracker.update([(100, 100, 200, 200)], 0)
    assert tracker.update([], 1).ended == ()
    assert tracker.update([], 2).ended == ()
    ended = tracker.update([], 3).ended
    assert [t.id for t in ended] == [1] and ended[0].last_frame == 0
    assert tracker.open == {}


def test_two_faces_are_matched_by_their_largest_overlaps():
    tracker = IouTracker(TrackerOptions(iou=0.2, max_misses=1))
    tracker.update([(0, 0, 100, 100), (90, 0, 190, 100)], 0)
    step = tracker.update([(85, 0, 185, 100), (5, 0, 105, 100)], 1)
    assert [t.id for t in step.assigned] == [2, 1]


def test_closing_the_tracker_ends_every_open_track_oldest_first():
    tracker = IouTracker()
    tracker.update([(0, 0, 50, 50), (300, 0, 350, 50)], 0)
    assert [t.id for t in tracker.close()] == [1, 2]
    assert tracker.open == {}


@pytest.mark.parametrize("iou_min, misses", [(0.0, 1), (1.5, 1), (0.3, -1)])
def test_tracker_options_refuse_unusable_values(iou_min, misses):
    with pytest.raises(ValueError):
        TrackerOptions(iou_min, misses)


# --- best frames ---------------------------------------------------------------------------


def quality(width=100.0, sharpness=60.0, yaw=0.0, probability=0.999) -> FaceQuality:
    return FaceQuality(width, sharpness, yaw, 0.0, 0.0, 120.0, 0.01, probability)


def sighting(frame: int, q: FaceQuality) -> Sighting:
    return Sighting(frame, (0, 0, 1, 1), np.full((3, 160, 160), frame, np.float32), q, score(q))


def test_a_face_below_the_quality_bars_scores_below_every_face_that_meets_them():
    small_but_passing = score(quality(width=40.0, sharpness=10.0, yaw=50.0))
    large_but_blurred = score(quality(width=150.0, sharpness=1.0))
    assert small_but_passing[0] and not large_but_blurred[0]
    assert small_but_passing > large_but_blurred


def test_larger_sharper_more_frontal_faces_score_higher():
    assert score(quality(width=110)) > score(quality(width=60))
    assert score(quality(sharpness=50)) > score(quality(sharpness=20))
    assert score(quality(yaw=5)) > score(quality(yaw=40))


def test_best_frames_keeps_the_best_k_best_first():
    best = BestFrames(keep=2)
    assert best.offer(sighting(0, quality(width=60)))
    assert best.offer(sighting(1, quality(width=110)))
    assert best.offer(sighting(2, quality(width=90)))
    assert not best.offer(sighting(3, quality(width=50)))
    assert [s.frame for s in best.kept] == [1, 2]
    assert [float(c[0, 0, 0]) for c in best.crops] == [1.0, 2.0]


def test_best_frames_needs_at_least_one():
    with pytest.raises(ValueError):
        BestFrames(keep=0)


# --- options, events, metrics ----------------------------------------------------------------


@pytest.mark.parametrize(
    "camera, gallery, changes, variable",
    [
        ("front door", GALLERY, {}, "--camera"),
        ("door/#", GALLERY, {}, "--camera"),
        (CAMERA, "no/such", {}, "--gallery"),
        (CAMERA, GALLERY, {"watch_keep_frames": 0}, "FACEMATCH_WATCH_KEEP_FRAMES"),
        (CAMERA, GALLERY, {"watch_iou": 0.0}, "FACEMATCH_WATCH_IOU"),
        (CAMERA, GALLERY, {"watch_topic": "facematch/#"}, "FACEMATCH_WATCH_TOPIC"),
        (CAMERA, GALLERY, {"watch_decide_after": -1}, "FACEMATCH_WATCH_DECIDE_AFTER"),
    ],
)
def test_unusable_watch_settings_are_refused_naming_what_to_fix(camera, gallery, changes, variable):
    settings = Settings(**changes)
    with pytest.raises(ConfigError, match=variable):
        WatchOptions.from_settings(settings, camera, gallery)


def test_watch_settings_are_read_from_facematch_watch_variables():
    settings = Settings.from_env(
        {"FACEMATCH_WATCH_KEEP_FRAMES": "3", "FACEMATCH_WATCH_HA_DISCOVERY": "true"}
    )
    options = WatchOptions.from_settings(settings, CAMERA, GALLERY)
    assert options.keep_frames == 3 and options.ha_discovery
    assert options.event_topic == "facematch/watch/door"
    assert not options.snapshots  # no photo leaves the machine unless the operator says so


def event(subject: str | None = "Colin_Powell") -> WatchEvent:
    return WatchEvent(
        camera=CAMERA,
        track=7,
        subject=subject,
        distance=0.21,
        threshold=0.3458,
        calibration=None,
        sampled=15,
        used=5,
        first_seen=1_700_000_000.0,
        decided_at=1_700_000_002.5,
        box=(10.04, 20.0, 110.0, 140.0),
    )


def test_an_event_holds_the_decision_its_frames_times_and_latency():
    body = json.loads(event_message(WatchOptions(CAMERA, GALLERY), event()).payload)
    assert body == {
        "camera": "door",
        "track": 7,
        "subject": "Colin_Powell",
        "distance": 0.21,
        "threshold": 0.3458,
        "calibration": None,
        "frames": {"sampled": 15, "used": 5},
        "first_seen": "2023-11-14T22:13:20.000000Z",
        "decided_at": "2023-11-14T22:13:22.500000Z",
        "box": [10.0, 20.0, 110.0, 140.0],
        "latency_ms": 2500.0,
    }


def test_home_assistant_discovery_announces_a_retained_sensor_on_the_event_topic():
    message = discovery_message(WatchOptions(CAMERA, GALLERY))
    config = json.loads(message.payload)
    assert message.topic == "homeassistant/sensor/facematch_door_last_person/config"
    assert message.retain
    assert config["state_topic"] == config["json_attributes_topic"] == "facematch/watch/door"
    assert config["unique_id"] == "facematch_door_last_person"


def test_a_snapshot_is_the_face_crop_as_a_jpeg():
    crop = (np.full((3, 160, 160), 200, np.float32) - 127.5) / 128
    image = Image.open(io.BytesIO(snapshot_jpeg(crop)))
    assert image.format == "JPEG" and image.size == (160, 160)
    assert abs(np.asarray(image).mean() - 200) < 2


def figures(identified=True) -> DecisionFigures:
    return DecisionFigures(identified, 0.2, 0.3458, "casia-webface", 5, 0.999, 1e9, 2500, 40, 3)


def test_a_decision_is_a_valid_metrics_message_with_the_watch_counters():
    metrics = WatchMetrics(CAMERA)
    metrics.add(frames=40, faces=30, tracks=2)
    metrics.set_dropped(4)
    message = build_message(metrics.decided(figures()), "node-a", 123, "host-a")
    validate(message)
    assert message["endpoint"] == "/watch/door" and message["match"] is True
    counts = {"frames": 40, "dropped": 4, "faces": 30, "tracks": 2, "decisions": 1}
    assert message["watch"] == counts
    assert message["latency_ms"]["total"] == 2500
    fields = to_point(message).fields
    assert fields["watch_frames"] == 40 and fields["watch_decisions"] == 1


def test_the_prometheus_port_serves_the_watch_counters_and_latency():
    metrics = WatchMetrics(CAMERA)
    metrics.add(frames=3, faces=2, tracks=1)
    metrics.decided(figures(identified=False))
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'facematch_watch_frames_total{camera="door"} 3.0' in text
    assert 'facematch_watch_decisions_total{camera="door"} 1.0' in text
    assert 'facematch_watch_decision_latency_seconds_count{camera="door"} 1.0' in text


# --- the watcher end to end ------------------------------------------------------------------


def test_the_video_gives_one_event_per_person_in_order_unknowns_as_null(
    broker, watch_gallery, watch_video, watch_cast, watch_cli
):
    url, access = watch_gallery
    events = Subscriber(broker, topic="facematch/watch/#", client_id="events")
    metrics = Subscriber(broker, topic="facematch/metrics", client_id="metrics")
    discovery = Subscriber(broker, topic="homeassistant/#", client_id="discovery")
    try:
        env = watch_cli.env(broker.port, url, FACEMATCH_WATCH_HA_DISCOVERY="true")
        done = watch_cli.run(watch_video.path, env, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        people = [a.person for a in watch_video.appearances]
        found = events.wait_for(len(people))
        metrics.wait_for(len(people))
        discovery.wait_for(1)
    finally:
        for subscriber in (events, metrics, discovery):
            subscriber.close()
    expected = [p if p in watch_cast.enrolled else None for p in people]
    assert [e["subject"] for e in found] == expected
    assert len(events.raw) == len(found)  # JSON events only: snapshots are off by default
    assert len({e["track"] for e in found}) == len(found)
    for e, person in zip(found, people):
        assert e["camera"] == CAMERA and e["threshold"] == pytest.approx(DEFAULT_IDENTIFY_THRESHOLD)
        assert 1 <= e["frames"]["used"] <= 5 <= e["frames"]["sampled"]
        assert e["latency_ms"] > 0 and e["decided_at"] > e["first_seen"]
        assert len(e["box"]) == 4
        if person in watch_cast.enrolled:
            assert e["distance"] <= e["threshold"]
        else:
            assert e["distance"] > e["threshold"]  # unknown: never the nearest enrolled person
    audit = [a for a in access.audit(GALLERY).events if a.action == "identify"]
    assert [(a.key, a.subject) for a in audit] == [(f"camera:{CAMERA}", s) for s in expected]
    watch_messages = [m for m in metrics.messages if m["endpoint"] == f"/watch/{CAMERA}"]
    assert len(watch_messages) == len(people)
    for m in watch_messages:
        validate(m)
    assert watch_messages[-1]["watch"]["decisions"] == len(people)
    assert watch_messages[-1]["watch"]["frames"] > 0
    assert discovery.messages[0]["state_topic"] == f"facematch/watch/{CAMERA}"


def prometheus_value(port: int, name: str) -> float:
    """The value of the sample ``name`` in the watcher's Prometheus text (0 before it is up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sigterm_on_a_live_source_decides_the_open_track_publishes_it_and_exits(
    broker, watch_gallery, watch_cast, watch_cli, tmp_path
):
    """A live source (the file looped as a camera would stream) never ends: on SIGTERM the
    watcher decides the track still open, publishes its event and exits cleanly."""
    url, access = watch_gallery
    shown = watch_cast.segments[0]  # an enrolled person's photo that was not enrolled
    person = shown.person
    assert person in watch_cast.enrolled
    video = write_video(tmp_path / "live.avi", [Segment(shown.photo, 30)], gap_s=0.1)
    port = free_port()
    events = Subscriber(broker, topic="facematch/watch/#", client_id="events")
    env = watch_cli.env(
        broker.port,
        url,
        FACEMATCH_WATCH_LIVE="true",
        FACEMATCH_WATCH_DECIDE_AFTER="0",  # only at the track's end: here, at SIGTERM
        FACEMATCH_WATCH_MAX_MISSES="50",  # the looped file's reopen gaps do not end the track
        FACEMATCH_WATCH_METRICS_PORT=str(port),
    )
    process = watch_cli.start(
        video.path, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(
            lambda: prometheus_value(port, "facematch_watch_faces_total") >= 3,
            120,
            what="the watcher's first faces",
        )
        assert events.messages == []  # nothing decided while the track is open
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output[-3000:]
        found = events.wait_for(1)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        events.close()
    assert [e["subject"] for e in found] == [person]
    assert "stopped:" in output
    audit = [a for a in access.audit(GALLERY).events if a.action == "identify"]
    assert [(a.key, a.subject) for a in audit] == [(f"camera:{CAMERA}", person)]


def test_a_broker_that_is_away_does_not_hold_the_watcher_up(watch_gallery, watch_video, watch_cli):
    """With the broker down for the whole run the events wait in the bounded queue, the file is
    still watched to its end, every decision is in the audit trail and the watcher exits."""
    url, access = watch_gallery
    done = watch_cli.run(watch_video.path, watch_cli.env(free_port(), url), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    audit = [a for a in access.audit(GALLERY).events if a.action == "identify"]
    assert len(audit) == len(watch_video.appearances)
    assert "unreachable" in done.stderr


def test_the_watch_speed_benchmark_measures_a_watcher_that_decides_right(run_benchmark, tmp_path):
    result = run_benchmark("watch_speed", tmp_path / "speed.json", "--sizes", "720p")
    figures = result["sizes"]["720p"]
    expected = [p if p in figures["enrolled"] else None for p in figures["shown"]]
    assert figures["decided"] == expected
    assert figures["frames_per_s"] > 0 and figures["frames_watched"] == 80
    assert figures["decision_latency_ms"]["n"] == 3
    assert figures["peak_pss_mib"] > 0 and figures["video"]["width"] == 1280


@pytest.mark.parametrize("video", ["watch_video", "h264_video"], ids=["mjpeg", "h264"])
def test_a_live_rtsp_camera_gives_one_event_per_person_in_order_until_sigterm(
    broker, watch_gallery, watch_cast, watch_cli, rtsp_server, request, video
):
    """The video (MJPEG, or H.264 as most IP cameras send) played by a real RTSP server at its
    own pace: the events of the people in order, each while they are still in view
    (``decide_after``), then a clean exit on SIGTERM."""
    url, access = watch_gallery
    watch_video = request.getfixturevalue(video)
    camera = rtsp_server(watch_video.path)
    events = Subscriber(broker, topic="facematch/watch/#", client_id="events")
    people = [a.person for a in watch_video.appearances]
    process = watch_cli.start(
        camera.url,
        watch_cli.env(broker.port, url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        found = events.wait_for(len(people), timeout=120)[: len(people)]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        events.close()
    assert [e["subject"] for e in found] == [
        p if p in watch_cast.enrolled else None for p in people
    ]
    for e in found:  # at 15 sightings, or fewer if the watcher fell behind and frames dropped
        sampled = e["frames"]["sampled"]
        assert 2 <= sampled <= 15
        assert e["latency_ms"] >= (sampled - 1) * 180  # live: sightings at most 5 a second


def test_an_unknown_gallery_is_refused_before_watching(broker, tmp_path, watch_video, watch_cli):
    env = watch_cli.env(broker.port, f"sqlite:///{tmp_path / 'empty.db'}")
    done = watch_cli.run(watch_video.path, env, gallery="nobody-here")
    assert done.returncode == 2
    assert "no gallery 'nobody-here'" in done.stderr


def test_a_bad_watch_setting_exits_with_a_message_naming_it(
    broker, tmp_path, watch_video, watch_cli
):
    env = watch_cli.env(broker.port, f"sqlite:///{tmp_path / 'g.db'}", FACEMATCH_WATCH_LIVE="maybe")
    done = watch_cli.run(watch_video.path, env)
    assert done.returncode == 2
    assert "FACEMATCH_WATCH_LIVE must be auto, true or false" in done.stderr


def test_snapshots_turned_on_send_the_decided_face_as_a_jpeg_beside_its_event(broker):
    settings = Settings(mqtt_host="127.0.0.1", mqtt_port=broker.port, node="snap-test")
    options = WatchOptions(CAMERA, GALLERY, snapshots=True)
    received = Subscriber(broker, topic="facematch/watch/#", client_id="snapshots")
    sink = EventSink(settings, options)
    sink.start()
    try:
        sink.publish(event(), (np.full((3, 160, 160), 40, np.float32) - 127.5) / 128)
        wait_until(lambda: len(received.raw) >= 2, 10, what="the event and its snapshot")
    finally:
        sink.close()
        received.close()
    assert received.messages == [event().to_json()]
    jpeg = next(raw for raw in received.raw if raw.startswith(b"\xff\xd8"))
    assert Image.open(io.BytesIO(jpeg)).size == (160, 160)


def test_frames_dropped_while_the_watcher_was_busy_count_as_misses():
    """A track ends after the same number of sampled frames however many the watcher saw."""
    tracker = IouTracker(TrackerOptions(iou=0.3, max_misses=3))
    tracker.update([(100, 100, 200, 200)], 0)
    assert tracker.update([], 5, elapsed=2).ended == ()
    ended = tracker.update([], 9, elapsed=2).ended  # 4 sampled frames without it, 2 watched
    assert [t.id for t in ended] == [1]
    step = tracker.update([(100, 100, 200, 200)], 13, elapsed=2)
    assert [t.id for t in step.assigned] == [2]  # the next face in its place is a new track


# --- a track's decision ---------------------------------------------------------------------


def test_near_keeps_the_rows_within_the_threshold_of_the_anchor_anchor_first():
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]])
    assert near(rows, 0, 0.1) == [0, 2]
    assert near(rows, 1, 0.95) == [1, 2]
    assert near(rows, 1, 1.0) == [1, 0, 2, 3]
    assert near(rows, 3, 0.5) == [3]


def test_a_track_holding_two_people_is_decided_on_its_best_frames_person(
    engine, watch_gallery, lfw
):
    """The tracker can join two people into one track; the best frame's person is decided,
    not the average of the two (which here is the other person)."""
    url, _ = watch_gallery
    images = lfw / "images"

    def crop(person: str, index: int) -> np.ndarray:
        path = sorted((images / person).glob("*.jpg"))[index]
        return engine.detect(Image.open(path).convert("RGB")).primary.crop

    powell, blair = crop("Colin_Powell", 0), [crop("Tony_Blair", i) for i in (0, 4, 5)]
    decider = Decider.from_settings(Settings(gallery_url=url), engine, GALLERY, CAMERA)
    decision = decider.decide([powell, *blair[:2]])
    assert (decision.subject, decision.used, decision.left_out) == ("Colin_Powell", 1, 2)
    one_person = decider.decide(blair)
    assert (one_person.subject, one_person.used, one_person.left_out) == ("Tony_Blair", 3, 0)
    decider.same_person = 2.0  # every cosine distance: the frames averaged
    assert decider.decide([powell, *blair[:2]]).subject != "Colin_Powell"
