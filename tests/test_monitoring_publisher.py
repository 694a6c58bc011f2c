"""The metrics publisher against a real mosquitto: one message per record, nothing created
before the first publish, fork safety, never blocking, and the bounded queue during an outage."""

from __future__ import annotations

import os
import threading
import time

import pytest

from facematch.config import Settings
from facematch.observability.message import validate
from facematch.observability.publisher import MqttPublisher, NullPublisher, create_publisher
from tests.servers import Subscriber, record, wait_until


def settings_for(broker, **changes) -> Settings:
    return Settings(mqtt_host="127.0.0.1", mqtt_port=broker.port, node="node-test").replace(
        **changes
    )


@pytest.fixture
def make_publisher():
    made: list[MqttPublisher] = []

    def make(settings: Settings) -> MqttPublisher:
        publisher = create_publisher(settings)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close(timeout=0.5)


def test_no_broker_configured_gives_a_noop_publisher_that_starts_nothing():
    before = threading.active_count()
    publisher = create_publisher(Settings(mqtt_host=""))
    assert isinstance(publisher, NullPublisher)
    for i in range(100):
        publisher.publish(record(i))
    assert publisher.stats() == {"enabled": False}
    assert threading.active_count() == before


def test_nothing_is_started_before_the_first_publish(broker, subscriber, make_publisher):
    before = threading.active_count()
    publisher = make_publisher(settings_for(broker))
    time.sleep(0.3)
    assert threading.active_count() == before
    assert publisher.stats()["connected"] is False
    publisher.publish(record(0))
    assert threading.active_count() > before
    subscriber.wait_for(1)


def test_start_connects_without_a_publish_and_sends_nothing(broker, subscriber, make_publisher):
    publisher = make_publisher(settings_for(broker))
    publisher.start()
    wait_until(lambda: publisher.stats()["connected"], 10, what="the publisher to connect")
    time.sleep(0.3)
    assert publisher.stats()["published"] == 0 and subscriber.messages == []
    publisher.publish(record(0))
    assert len(subscriber.wait_for(1)) == 1


def test_each_record_becomes_one_valid_message_with_its_values(broker, subscriber, make_publisher):
    publisher = make_publisher(settings_for(broker))
    for i in range(40):
        publisher.publish(record(i))
    messages = subscriber.wait_for(40)
    time.sleep(0.2)
    assert len(messages) == 40
    for message in messages:
        validate(message)
    assert sorted(round(msg["distance"] * 1000) for msg in messages) == list(range(40))
    first = next(msg for msg in messages if msg["distance"] == 0)
    assert (first["node"], first["pid"], first["endpoint"]) == (
        "node-test",
        os.getpid(),
        "/photo_match",
    )
    assert first["latency_ms"]["total"] == 20.0
    wait_until(lambda: publisher.stats()["sent"] == 40, 5, what="40 acknowledgements")
    stats = publisher.stats()
    assert (stats["published"], stats["dropped"], stats["queued"], stats["connected"]) == (
        40,
        0,
        0,
        True,
    )


@pytest.mark.parametrize("parent_published", [False, True], ids=["preload", "parent-running"])
def test_forked_children_publish_with_their_own_client_and_pid(
    broker, subscriber, make_publisher, parent_published
):
    """Gunicorn preload: the publisher is made in the parent and used in forked workers; a
    parent that had already started its client does not leak it into the children."""
    publisher = make_publisher(settings_for(broker))
    if parent_published:
        publisher.publish(record(99))
        subscriber.wait_for(1)
    children = []
    for child in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                for i in range(3):
                    publisher.publish(record(child * 10 + i))
                publisher.close(timeout=5)
                os._exit(0 if publisher.stats()["sent"] == 3 else 3)
            finally:
                os._exit(4)
        children.append(pid)
    exits = [os.waitpid(pid, 0)[1] for pid in children]
    assert exits == [0, 0]
    expected = 6 + parent_published
    messages = subscriber.wait_for(expected)
    time.sleep(0.2)
    assert len(messages) == expected
    pids = {msg["pid"] for msg in messages}
    assert pids == set(children) | ({os.getpid()} if parent_published else set())
    assert publisher.stats()["published"] == int(parent_published)


def test_publish_never_blocks_while_the_broker_is_hung(broker, subscriber, make_publisher):
    publisher = make_publisher(settings_for(broker, mqtt_queue_size=500))
    publisher.publish(record(0))
    subscriber.wait_for(1)
    broker.freeze()
    try:
        slowest = 0.0
        started = time.perf_counter()
        for i in range(1, 201):
            t = time.perf_counter()
            publisher.publish(record(i))
            slowest = max(slowest, time.perf_counter() - t)
        total = time.perf_counter() - started
    finally:
        broker.thaw()
    assert total < 0.5, f"200 publishes took {total:.3f}s while the broker was hung"
    assert slowest < 0.05
    subscriber.wait_for(201, timeout=15)


def test_broker_outage_keeps_the_newest_messages_up_to_the_queue_bound(broker, make_publisher):
    """Stopped broker: publishing stays instant, the oldest past the bound are dropped and
    counted, and after a restart the held ones arrive: received == sent == published - dropped.
    """
    listener = Subscriber(broker, persistent=True, client_id="outage-listener")
    try:
        publisher = make_publisher(settings_for(broker, mqtt_queue_size=10))
        for i in range(5):
            publisher.publish(record(i))
        listener.wait_for(5)
        wait_until(lambda: publisher.stats()["sent"] == 5, 5, what="5 acknowledgements")

        broker.stop()
        wait_until(lambda: not publisher.stats()["connected"], 5, what="the disconnect")
        started = time.perf_counter()
        for i in range(5, 35):
            publisher.publish(record(i))
        assert time.perf_counter() - started < 0.5
        stats = publisher.stats()
        assert (stats["published"], stats["queued"], stats["dropped"]) == (35, 10, 20)

        broker.start()
        wait_until(lambda: publisher.stats()["sent"] == 15, 20, what="the queued messages")
        time.sleep(0.3)
        received = sorted({round(msg["distance"] * 1000) for msg in listener.messages})
        assert received == list(range(5)) + list(range(25, 35))
        stats = publisher.stats()
        assert stats["sent"] + stats["dropped"] == stats["published"] == 35
        assert stats["queued"] == 0 and stats["connected"] is True
    finally:
        listener.close()


def test_close_sends_what_is_queued_then_disconnects(broker, subscriber):
    publisher = create_publisher(settings_for(broker))
    for i in range(25):
        publisher.publish(record(i))
    publisher.close(timeout=5)
    assert len(subscriber.wait_for(25)) == 25
    assert publisher.stats()["connected"] is False
    publisher.publish(record(99))
    assert publisher.stats()["published"] == 25
