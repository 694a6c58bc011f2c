"""A broker with a password file and TLS: the publisher and the bridge connect with the right
credentials and CA (FACEMATCH_MQTT_USERNAME/PASSWORD/CA_FILE) and are refused otherwise."""

from __future__ import annotations

import time

import pytest

from facematch.config import Settings
from facematch.observability.publisher import create_publisher
from tests.servers import (
    BridgeProcess,
    Mosquitto,
    MosquittoOptions,
    make_tls,
    record,
    remove,
    wait_until,
    workdir,
)

USER, PASSWORD = "facematch", "s3cret-pass"


@pytest.fixture(scope="module")
def secure_broker():
    directory = workdir("mosquitto-tls")
    tls = make_tls(directory / "tls")
    server = Mosquitto(directory, MosquittoOptions(username=USER, password=PASSWORD, tls=tls))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        remove(directory)


def secure_settings(broker, **changes) -> Settings:
    return Settings(
        mqtt_host="localhost",
        mqtt_port=broker.port,
        mqtt_username=USER,
        mqtt_password=PASSWORD,
        mqtt_ca_file=str(broker.options.tls.ca),
        node="node-tls",
    ).replace(**changes)


def test_publisher_with_the_right_password_and_ca_delivers(secure_broker):
    publisher = create_publisher(secure_settings(secure_broker))
    try:
        for i in range(3):
            publisher.publish(record(i))
        wait_until(lambda: publisher.stats()["sent"] == 3, 10, what="3 acknowledgements")
        assert publisher.stats()["connected"] is True
    finally:
        publisher.close(timeout=1)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"mqtt_password": "wrong"}, "Not authorized"),
        ({"mqtt_username": "", "mqtt_password": ""}, "Not authorized"),
        ({"mqtt_ca_file": "OTHER_CA"}, "CERTIFICATE_VERIFY_FAILED"),
        ({"mqtt_ca_file": ""}, "connection lost before the broker accepted it"),
    ],
    ids=["wrong-password", "no-credentials", "untrusted-ca", "plain-text-to-tls"],
)
def test_publisher_is_refused_with_bad_credentials_or_ca(secure_broker, changes, reason):
    if changes.get("mqtt_ca_file") == "OTHER_CA":
        changes = {**changes, "mqtt_ca_file": str(secure_broker.options.tls.other_ca)}
    publisher = create_publisher(secure_settings(secure_broker, **changes))
    try:
        publisher.publish(record(0))
        wait_until(lambda: publisher.stats()["last_error"], 10, what="the refusal")
        time.sleep(0.3)
        stats = publisher.stats()
        assert reason in stats["last_error"]
        assert (stats["connected"], stats["sent"], stats["queued"]) == (False, 0, 1)
    finally:
        publisher.close(timeout=0.2)


def test_bridge_connects_with_credentials_and_ca_and_is_refused_without(
    secure_broker, database, tmp_path
):
    env = {
        "FACEMATCH_MQTT_HOST": "localhost",
        "FACEMATCH_MQTT_PORT": str(secure_broker.port),
        "FACEMATCH_MQTT_USERNAME": USER,
        "FACEMATCH_MQTT_PASSWORD": PASSWORD,
        "FACEMATCH_MQTT_CA_FILE": str(secure_broker.options.tls.ca),
        "FACEMATCH_INFLUX_URL": database.url,
        "FACEMATCH_INFLUX_FLUSH_INTERVAL_MS": "100",
    }
    refused = BridgeProcess(
        tmp_path, {**env, "FACEMATCH_MQTT_PASSWORD": "wrong"}, ["--client-id", "bridge-refused"]
    )
    good = BridgeProcess(tmp_path / "good", env, ["--client-id", "bridge-tls"])
    (tmp_path / "good").mkdir()
    publisher = create_publisher(secure_settings(secure_broker))
    try:
        refused.start(wait_subscribed=False)
        wait_until(
            lambda: "refused the connection" in refused.log(), 10, what="the refused bridge's log"
        )
        assert "subscribed" not in refused.log()
        good.start()
        for i in range(4):
            publisher.publish(record(i))
        wait_until(
            lambda: database.count_samples("facematch_latency_total_ms") >= 4,
            15,
            what="4 points through the TLS broker",
        )
    finally:
        publisher.close(timeout=1)
        refused.stop()
        good.stop()
