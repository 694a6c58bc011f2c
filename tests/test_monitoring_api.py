"""End to end through the HTTP API: requests -> publisher -> mosquitto -> bridge -> database.

Uses the app factory with the broker configured (the session's loaded engine), and Gunicorn
with several workers and preload for the fork case."""

from __future__ import annotations

import io
import json
import statistics
import time

import pytest
import requests
from PIL import Image

from facematch.api.app import create_app
from tests.servers import Subscriber, samples, stored, wait_until
from tests.support import DIFFERENT, SAME

pytestmark = pytest.mark.slow


def upload(data: bytes, name: str = "photo.jpg"):
    return (io.BytesIO(data), name)


def blank_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), (200, 200, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def monitored_app(settings, engine, broker):
    def make(**changes):
        app = create_app(
            settings.replace(
                mqtt_host="127.0.0.1", mqtt_port=broker.port, node="node-api", **changes
            ),
            engine=engine,
        )
        made.append(app)
        return app

    made = []
    yield make
    for app in made:
        app.extensions["facematch"].publisher.close(timeout=1)


def run_requests(client, face_bytes) -> list[tuple[str, int, dict]]:
    """One of each kind of recorded request (errors included): (endpoint, status, body)."""
    same = [face_bytes(name) for name in SAME]
    different = [face_bytes(name) for name in DIFFERENT]
    calls = [
        ("/photo_match", {"reference": upload(same[0]), "sample": upload(same[1])}),
        ("/photo_match", {"reference": upload(different[0]), "sample": upload(different[1])}),
        ("/embeddings", {"photo": upload(same[0]), "format": "json"}),
        ("/photo_match", {"reference": upload(same[0])}),
        ("/photo_match", {"reference": upload(same[0]), "sample": upload(blank_jpeg())}),
        ("/embeddings", {"photo": upload(same[0]), "format": "gif"}),
    ]
    results = []
    for endpoint, data in calls:
        response = client.post(endpoint, data=data)
        results.append((endpoint, response.status_code, response.json))
        if endpoint == "/embeddings" and response.status_code == 200:
            reference = json.dumps(response.json)
            response = client.post(
                "/cached_match", data={"reference": reference, "sample": upload(same[1])}
            )
            results.append(("/cached_match", response.status_code, response.json))
        time.sleep(0.005)  # distinct millisecond timestamps in the database
    assert client.get("/health").status_code == 200  # not a recorded endpoint
    return results


def test_every_api_request_becomes_one_point_with_the_response_values(
    monitored_app, face_bytes, start_bridge, database
):
    start_bridge()
    client = monitored_app().test_client()
    results = run_requests(client, face_bytes)
    assert [status for _, status, _ in results] == [200, 200, 200, 200, 400, 422, 400]

    wait_until(lambda: len(samples(database)) >= len(results), 20, what="one point per request")
    time.sleep(0.3)
    points = sorted(stored(database), key=lambda p: p.time)
    assert len(points) == len(results)
    for point, (endpoint, status, body) in zip(points, results):
        assert point.tags["endpoint"] == endpoint
        assert point.tags["status"] == str(status)
        assert point.tags["node"] == "node-api"
        assert point.tags["model"] == "casia-webface"
        if status >= 400:
            assert point.tags["error_code"] == body["error"]["code"]
            assert point.fields["error"] == 1
            continue
        assert point.tags["error_code"] == "none"
        assert point.fields["error"] == 0
        assert point.fields["latency_total_ms"] >= body["latency_ms"]["total"] > 0
        for stage in ("detection", "embedding"):
            assert point.fields[f"latency_{stage}_ms"] == pytest.approx(
                body["latency_ms"][stage], abs=0.01
            )
        for role, face in body["faces"].items():
            assert point.fields[f"faces_{role}"] == face["count"]
            assert point.fields[f"probability_{role}"] == pytest.approx(face["probability"])
            assert [
                point.fields[f"image_width_{role}"],
                point.fields[f"image_height_{role}"],
            ] == face["image_size"]
        if endpoint == "/embeddings":
            assert point.tags["match"] == "none" and "distance" not in point.fields
            continue
        assert point.tags["match"] == str(body["match"]).lower()
        assert point.fields["matched"] == int(body["match"])
        assert point.fields["distance"] == pytest.approx(body["distance"])
        assert point.fields["threshold"] == pytest.approx(body["threshold"])
    metrics = client.get("/health").json["metrics"]
    assert (metrics["enabled"], metrics["published"], metrics["dropped"]) == (True, len(results), 0)


def timed_embeddings(client, photo: bytes, count: int) -> list[float]:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post("/embeddings", data={"photo": upload(photo), "format": "json"})
        durations.append(time.perf_counter() - started)
        assert response.status_code == 200
    return durations


def test_requests_stay_fast_while_the_broker_is_down_and_held_messages_arrive_after(
    monitored_app, face_bytes, broker, start_bridge, database
):
    start_bridge()
    client = monitored_app(mqtt_queue_size=3).test_client()
    photo = face_bytes(SAME[0])
    baseline = timed_embeddings(client, photo, 3)
    wait_until(lambda: len(set(samples(database))) == 3, 15, what="the first 3 points")

    broker.stop()
    wait_until(
        lambda: not client.get("/health").json["metrics"]["connected"],
        5,
        what="the publisher to notice",
    )
    during = timed_embeddings(client, photo, 6)
    metrics = client.get("/health").json["metrics"]
    assert (metrics["published"], metrics["sent"], metrics["queued"], metrics["dropped"]) == (
        9,
        3,
        3,
        3,
    )
    assert statistics.median(during) < 2 * statistics.median(baseline) + 0.2, (baseline, during)
    assert max(during) < 3 * max(baseline) + 0.5, (baseline, during)

    broker.start()
    wait_until(lambda: len(set(samples(database))) >= 6, 30, what="the 3 held points")
    time.sleep(0.5)
    # QoS 1 is at-least-once: a message in flight when the broker stopped may be delivered twice.
    # It carries the same timestamp and tags, so InfluxDB stores it as the same point; count
    # distinct points (victoria-metrics keeps both samples).
    assert len(set(samples(database))) == 6
    metrics = client.get("/health").json["metrics"]
    assert metrics["sent"] + metrics["dropped"] == metrics["published"] == 9
    assert (metrics["queued"], metrics["connected"]) == (0, True)


def test_gunicorn_workers_forked_after_preload_each_publish_their_requests(
    gunicorn, broker, face_bytes
):
    listener = Subscriber(broker, client_id="gunicorn-listener")
    try:
        server = gunicorn(
            FACEMATCH_WORKERS="2",
            FACEMATCH_THREADS="1",
            FACEMATCH_PRELOAD="true",
            FACEMATCH_NODE="node-gunicorn",
            FACEMATCH_MQTT_HOST="127.0.0.1",
            FACEMATCH_MQTT_PORT=str(broker.port),
        )
        photo = face_bytes(SAME[0])
        sessions = [requests.Session() for _ in range(6)]  # new connections spread the workers
        for session in sessions:
            response = session.post(
                server.url + "/embeddings", files={"photo": ("a.jpg", photo)}, timeout=60
            )
            assert response.status_code == 200
        messages = listener.wait_for(6, timeout=20)
        time.sleep(0.3)
        assert len(messages) == 6
        pids = {message["pid"] for message in messages}
        workers = server.workers()
        assert len(workers) == 2
        assert pids <= workers  # published by the forked workers, never by the master
        assert {message["node"] for message in messages} == {"node-gunicorn"}
        # whichever worker answers is connected, whether or not it served a request (it
        # connects at boot)
        health = requests.get(server.url + "/health", timeout=5).json()["metrics"]
        assert health["connected"] is True and health["pid"] in workers
    finally:
        listener.close()
