"""The bridge process (``python -m facematch.observability.bridge``) between a real mosquitto
and a real database taking InfluxDB v2 writes (victoria-metrics): values arrive intact, nothing
is lost or doubled through a database outage, a bridge restart or kill, bad messages, and
SIGTERM."""

from __future__ import annotations

import signal
import time

import paho.mqtt.client as mqtt
import pytest

from facematch.config import Settings
from facematch.observability.message import build_message, encode, to_point
from facematch.observability.publisher import create_publisher
from tests.servers import expected_ms, record, samples, stored, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def publisher(broker):
    made = create_publisher(Settings(mqtt_host="127.0.0.1", mqtt_port=broker.port, node="node-b"))
    yield made
    made.close(timeout=1)


def raw_client(broker) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def test_every_published_record_becomes_one_point_with_its_values(
    database, start_bridge, publisher
):
    start_bridge()
    for i in range(30):
        publisher.publish(record(i, endpoint="/cached_match" if i % 3 else "/photo_match"))
    wait_until(lambda: len(samples(database)) >= 30, 15, what="30 points")
    points = {round(p.time * 1000): p for p in stored(database)}
    assert len(samples(database)) == 30
    assert sorted(points) == expected_ms(range(30))
    for i in range(30):
        want = to_point(
            build_message(
                record(i, endpoint="/cached_match" if i % 3 else "/photo_match"),
                node="node-b",
                pid=1,
                host="h",
            )
        )
        got = points[int(round(record(i).started * 1000))]
        assert got.tags == want.tags
        assert got.fields == pytest.approx({**want.fields, "pid": got.fields["pid"]})


def test_database_outage_loses_and_doubles_nothing(database, start_bridge, publisher):
    bridge = start_bridge()
    for i in range(10):
        publisher.publish(record(i))
    wait_until(lambda: len(samples(database)) == 10, 15, what="the first 10 points")

    database.stop()
    for i in range(10, 40):
        publisher.publish(record(i))
    wait_until(lambda: "failed" in bridge.log(), 10, what="a failed write in the bridge log")
    time.sleep(1.0)  # a few retries against the stopped database
    database.start()

    wait_until(lambda: len(samples(database)) >= 40, 20, what="all 40 points")
    time.sleep(0.5)
    assert samples(database) == expected_ms(range(40))  # each exactly once
    assert bridge.running


def test_messages_published_while_the_bridge_is_away_are_written_when_it_returns(
    database, start_bridge, publisher
):
    bridge = start_bridge()
    publisher.publish(record(0))
    wait_until(lambda: len(samples(database)) == 1, 15, what="the first point")
    assert bridge.stop() == 0

    for i in range(1, 21):
        publisher.publish(record(i))
    wait_until(lambda: publisher.stats()["sent"] == 21, 10, what="the broker to take them")
    start_bridge()
    wait_until(lambda: len(samples(database)) >= 21, 15, what="the 20 queued points")
    time.sleep(0.3)
    assert samples(database) == expected_ms(range(21))


def test_messages_held_by_a_killed_bridge_are_redelivered_and_written(
    database, start_bridge, publisher
):
    """Not acknowledged before written: a bridge killed while the database is down loses
    nothing."""
    bridge = start_bridge()
    database.stop()
    for i in range(12):
        publisher.publish(record(i))
    wait_until(lambda: "failed" in bridge.log(), 10, what="a failed write")
    bridge.proc.send_signal(signal.SIGKILL)
    bridge.stop()
    database.start()
    start_bridge()
    wait_until(lambda: len(samples(database)) >= 12, 15, what="the 12 redelivered points")
    time.sleep(0.3)
    assert samples(database) == expected_ms(range(12))


def test_bad_messages_are_logged_and_skipped_without_stopping_the_bridge(
    broker, database, start_bridge, publisher
):
    bridge = start_bridge()
    client = raw_client(broker)
    try:
        good = build_message(record(0), node="node-b")
        bad_payloads = [
            b"not json at all",
            b"\xff\xfe\x00",
            b"{}",
            b"[]",
            b"null",
            encode({**good, "schema_version": 99}),
            encode({**good, "status": "teapot"}),
            encode({**good, "embedding": [0.1] * 512}),
            b"{" * 10_000,
        ]
        for payload in bad_payloads:
            client.publish("facematch/metrics", payload, qos=1).wait_for_publish(5)
        for i in range(5):
            publisher.publish(record(i))
        wait_until(lambda: len(samples(database)) >= 5, 15, what="the 5 good points")
        for payload in bad_payloads[:3]:
            client.publish("facematch/metrics", payload, qos=1).wait_for_publish(5)
        for i in range(5, 8):
            publisher.publish(record(i))
        wait_until(lambda: len(samples(database)) >= 8, 15, what="the 3 later good points")
    finally:
        client.loop_stop()
    assert samples(database) == expected_ms(range(8))
    assert bridge.running
    assert bridge.log().count("skipping a bad message") == len(bad_payloads) + 3
    assert "[0.1, 0.1" not in bridge.log()  # the payload itself is not logged


def test_sigterm_flushes_the_points_the_bridge_holds(database, start_bridge, publisher):
    bridge = start_bridge(
        FACEMATCH_INFLUX_FLUSH_INTERVAL_MS="600000", FACEMATCH_INFLUX_BATCH_SIZE="1000"
    )
    for i in range(7):
        publisher.publish(record(i))
    wait_until(lambda: publisher.stats()["sent"] == 7, 10, what="the broker to take them")
    time.sleep(0.5)
    assert samples(database) == []  # held: neither batch size nor interval reached
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(15) == 0
    assert samples(database) == expected_ms(range(7))
    assert "stopped; stats received=7" in bridge.log()
