"""docker-compose.yml (no Docker engine here): the services wired consistently, and the
shipped mosquitto.conf run for real: password required, the compose credentials accepted."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from facematch.config import Settings
from facematch.observability.publisher import create_publisher
from tests.servers import Mosquitto, record, remove, wait_until, workdir
from tests.support import load_yaml

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {f"FACEMATCH_{f.name.upper()}" for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(REPO / "docker-compose.yml")


def default_of(value: str) -> str:
    """The default in a compose ``${VAR:-default}`` (or the value itself)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match[1] if match else value


def with_defaults(value: str) -> str:
    """A compose value with every ``${VAR:-default}`` (nested too) replaced by its default."""
    while (replaced := re.sub(r"\$\{\w+:-([^${}]*)\}", r"\1", value)) != value:
        value = replaced
    return value


def test_stack_has_api_broker_database_bridge_and_grafana(compose):
    services = compose["services"]
    assert set(services) == {
        "api",
        "nginx",
        "mosquitto",
        "influxdb",
        "bridge",
        "prometheus",
        "grafana",
        "postgres",
    }
    assert services["bridge"]["command"] == ["python", "-m", "facematch.observability.bridge"]
    assert services["api"]["build"] == services["bridge"]["build"] == "."
    assert services["influxdb"]["image"].startswith("influxdb:2")
    assert services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_MODE"] == "setup"


def test_every_facematch_variable_in_compose_is_a_real_setting(compose):
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("FACEMATCH_"):
                assert variable in SETTINGS, f"{name}: {variable}"


def test_api_bridge_broker_and_grafana_agree_on_credentials_and_database(compose):
    services = compose["services"]
    api, bridge = services["api"]["environment"], services["bridge"]["environment"]
    broker, influx = services["mosquitto"]["environment"], services["influxdb"]["environment"]
    grafana = services["grafana"]["environment"]
    for variable in (
        "FACEMATCH_MQTT_HOST",
        "FACEMATCH_MQTT_PORT",
        "FACEMATCH_MQTT_USERNAME",
        "FACEMATCH_MQTT_PASSWORD",
        "FACEMATCH_MQTT_TOPIC",
    ):
        assert api[variable] == bridge[variable], variable
    assert api["FACEMATCH_MQTT_HOST"] == "mosquitto"
    for variable in ("FACEMATCH_MQTT_USERNAME", "FACEMATCH_MQTT_PASSWORD"):
        assert broker[variable] == api[variable]
    assert bridge["FACEMATCH_INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert bridge["FACEMATCH_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert bridge["FACEMATCH_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    for variable in (
        "FACEMATCH_INFLUX_URL",
        "FACEMATCH_INFLUX_TOKEN",
        "FACEMATCH_INFLUX_ORG",
        "FACEMATCH_INFLUX_BUCKET",
    ):
        assert grafana[variable] == bridge[variable], variable
    assert bridge["FACEMATCH_INFLUX_URL"] == "http://influxdb:8086"
    assert len(default_of(influx["DOCKER_INFLUXDB_INIT_PASSWORD"])) >= 8  # influx setup's rule


def test_galleries_live_in_the_postgres_service_with_pgvector_a_volume_and_a_healthcheck(compose):
    services = compose["services"]
    postgres, api = services["postgres"], services["api"]
    assert postgres["image"] == "pgvector/pgvector:pg16"
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "postgres-data" in compose["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres  # only the api reaches it
    env = postgres["environment"]
    url = urllib.parse.urlsplit(with_defaults(api["environment"]["FACEMATCH_GALLERY_URL"]))
    assert url.scheme == "postgresql" and (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == env["POSTGRES_USER"] and url.path == "/" + env["POSTGRES_DB"]
    assert url.password == default_of(env["POSTGRES_PASSWORD"])
    assert "postgres" in api["depends_on"]


def test_mounted_files_exist_in_the_repo(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name}: {source}"


@pytest.fixture
def compose_broker(compose):
    """The shipped mosquitto.conf, paths moved to a temp dir and the listener to a free port,
    with the password file the compose command would write."""
    directory = workdir("compose-mosquitto")
    server = Mosquitto(directory)
    shipped = (REPO / "monitoring" / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 1883\n" in shipped and "password_file /mosquitto/data/passwd" in shipped
    config = (
        shipped.replace("/mosquitto/data/", f"{directory}/")
        .replace("listener 1883\n", f"listener {server.port} 127.0.0.1\n")
        .replace("log_dest stdout", f"log_dest file {server.log_path}")
    )
    if os.geteuid() == 0:
        config += "user root\n"
    server.config_path.write_text(config)
    env = compose["services"]["mosquitto"]["environment"]
    user = default_of(env["FACEMATCH_MQTT_USERNAME"])
    password = default_of(env["FACEMATCH_MQTT_PASSWORD"])
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(directory / "passwd"), user, password],
        check=True,
        capture_output=True,
    )
    (directory / "passwd").chmod(0o600)
    server.start()
    try:
        yield server, user, password
    finally:
        server.stop()
        remove(directory)


@pytest.mark.parametrize("with_credentials", [True, False], ids=["compose-login", "anonymous"])
def test_shipped_broker_config_requires_the_password_file_login(compose_broker, with_credentials):
    server, user, password = compose_broker
    settings = Settings(mqtt_host="127.0.0.1", mqtt_port=server.port, node="compose")
    if with_credentials:
        settings = settings.replace(mqtt_username=user, mqtt_password=password)
    publisher = create_publisher(settings)
    try:
        publisher.publish(record(0))
        if with_credentials:
            wait_until(lambda: publisher.stats()["sent"] == 1, 10, what="the acknowledgement")
        else:
            wait_until(lambda: publisher.stats()["last_error"], 10, what="the refusal")
            assert "Not authorized" in publisher.stats()["last_error"]
            assert publisher.stats()["sent"] == 0
    finally:
        publisher.close(timeout=0.2)


def test_prometheus_scrapes_the_api_with_the_token_the_api_requires(compose):
    services = compose["services"]
    api, prometheus = services["api"], services["prometheus"]
    token = api["environment"]["FACEMATCH_METRICS_TOKEN"]
    assert prometheus["environment"]["FACEMATCH_METRICS_TOKEN"] == token
    assert len(default_of(token)) >= 16  # prometheus_metrics refuses a shorter one
    shipped = "./monitoring/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert shipped in prometheus["volumes"]
    config = load_yaml(REPO / "monitoring" / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    assert "8000" in api["expose"]
    token_file = job["authorization"]["credentials_file"]
    (command,) = prometheus["command"]
    assert f"""printf '%s' "$$FACEMATCH_METRICS_TOKEN" > {token_file}""" in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    grafana = services["grafana"]
    assert "prometheus" in grafana["depends_on"]


def test_the_shipped_prometheus_config_passes_promtool(tmp_path):
    shipped = (REPO / "monitoring" / "prometheus" / "prometheus.yml").read_text()
    token = tmp_path / "metrics-token"
    token.write_text("facematch-dev-metrics-token")
    config = tmp_path / "prometheus.yml"
    config.write_text(shipped.replace("/tmp/metrics-token", str(token)))
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
