"""GET /metrics: what it counts (in-process, one registry per app), who may read it, and a real
Prometheus scraping a real Gunicorn with two workers, whose counts add up across workers and
survive a killed worker (multiprocess mode, ``gunicorn_hooks.child_exit``)."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarking_utils.local_gunicorn import free_port
from facematch.api.app import create_app
from facematch.config import ConfigError
from tests.servers import ScrapeJob, wait_until
from tests.support import KEY_A, SAME, embedding_of, files, photo_match

TOKEN = "metrics-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


def scrape(client, **headers) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``client``'s ``/metrics``: (name, labels) -> value."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# --- in-process: what is counted --------------------------------------------------------------


def test_requests_are_counted_by_route_pattern_and_status_never_by_id(client):
    gallery = f"private-{uuid.uuid4().hex[:8]}"
    assert client.post(f"/galleries/{gallery}/identify").status_code == 404  # unknown gallery
    assert client.post("/photo_match").status_code == 400
    assert client.get("/health").status_code == 200  # not a recorded route
    samples = scrape(client)
    route = "/galleries/<gallery>/identify"
    assert value(samples, "facematch_requests_total", route=route, status="404") == 1
    assert value(samples, "facematch_requests_total", route="/photo_match", status="400") == 1
    requests = [k for k in samples if k[0] == "facematch_requests_total"]
    assert len(requests) == 2
    assert gallery not in client.get("/metrics").get_data(as_text=True)
    for route_name in (route, "/photo_match"):  # the total stage is observed for every request
        assert value(samples, "facematch_stage_duration_seconds_count", route=route_name,
                     stage="total") == 1  # fmt: skip


def test_a_match_observes_each_stage_the_decision_its_distance_and_faces(client, face_bytes):
    answer = photo_match(client, face_bytes(SAME[0]), face_bytes(SAME[1])).json
    assert answer["match"] is True
    samples = scrape(client)
    route = {"route": "/photo_match"}
    for stage in ("decode", "detection", "embedding", "scoring", "total"):
        count = value(samples, "facematch_stage_duration_seconds_count", **route, stage=stage)
        assert count == 1, stage
    assert value(samples, "facematch_stage_duration_seconds_count", **route, stage="search") is None
    total = value(samples, "facematch_stage_duration_seconds_sum", **route, stage="total")
    assert 0 < total <= answer["latency_ms"]["total"] / 1000 + 1
    assert value(samples, "facematch_decisions_total", **route, decision="match") == 1
    assert value(samples, "facematch_decisions_total", **route, decision="no_match") is None
    distance = {**route, "metric": "cosine"}
    assert value(samples, "facematch_distance_count", **distance) == 1
    assert value(samples, "facematch_distance_sum", **distance) == pytest.approx(answer["distance"])
    below = value(samples, "facematch_distance_bucket", **distance, le="0.5")
    assert below == (1 if answer["distance"] <= 0.5 else 0)
    for role in ("reference", "sample"):
        faces = {**route, "role": role}
        assert value(samples, "facematch_faces_per_photo_count", **faces) == 1
        assert value(samples, "facematch_faces_per_photo_sum", **faces) == 1


def test_a_gallery_search_sets_the_gallery_size_gauge(client, face_bytes):
    gallery = f"g-{uuid.uuid4().hex[:8]}"
    reference = embedding_of(client, face_bytes(SAME[0]), "npy").get_data()
    for subject in ("a", "b"):
        enrolled = client.post(
            f"/galleries/{gallery}/subjects/{subject}/faces",
            data=files(embedding=reference),
            content_type="multipart/form-data",
        )
        assert enrolled.status_code in (200, 201), enrolled.json
    identified = client.post(
        f"/galleries/{gallery}/identify",
        data=files(sample=face_bytes(SAME[1])),
        content_type="multipart/form-data",
    )
    assert identified.status_code == 200, identified.json
    samples = scrape(client)
    assert value(samples, "facematch_gallery_faces") == 2
    route = {"route": "/galleries/<gallery>/identify"}
    assert value(samples, "facematch_stage_duration_seconds_count", **route, stage="search") == 1
    assert value(samples, "facematch_decisions_total", **route, decision="match") == 1


def test_build_info_names_the_version_model_and_backends(client, engine):
    samples = scrape(client)
    (labels,) = [dict(k[1]) for k in samples if k[0] == "facematch_build_info"]
    version = json.loads((REPO / "openapi.json").read_text())["info"]["version"]
    assert labels == {
        "version": version,
        "model": engine.options.model,
        "embed_backend": engine.options.embed_backend,
        "detect_backend": engine.options.detect_backend,
        "device": engine.options.device,
    }
    assert samples[("facematch_build_info", frozenset(labels.items()))] == 1


def test_mqtt_publisher_queue_and_drops_are_exported(settings, engine):
    broker_down = settings.replace(mqtt_host="127.0.0.1", mqtt_port=free_port(), mqtt_queue_size=2)
    app = create_app(broker_down, engine=engine)
    client = app.test_client()
    try:
        for _ in range(5):
            assert client.post("/photo_match").status_code == 400
        samples = scrape(client)
        assert value(samples, "facematch_mqtt_queued") == 2
        assert value(samples, "facematch_mqtt_dropped_total") == 3
        assert value(samples, "facematch_mqtt_sent_total") == 0
        assert value(samples, "facematch_mqtt_connected_workers") == 0
    finally:
        app.extensions["facematch_metrics"].close(timeout=0.1)


# --- in-process: who may read it --------------------------------------------------------------


def test_the_metrics_token_is_required_when_set_and_only_for_metrics(settings, engine):
    client = create_app(settings.replace(metrics_token=TOKEN), engine=engine).test_client()
    assert client.get("/metrics").status_code == 401
    assert (
        client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).json[
            "error"
        ]["code"]
        == "unauthorized"
    )
    assert scrape(client, Authorization=f"Bearer {TOKEN}")
    assert client.get("/health").status_code == 200  # API keys are off: the API stays open


def test_with_api_keys_the_token_reads_metrics_and_a_key_does_not(settings, engine):
    keyed = settings.replace(metrics_token=TOKEN, api_keys=KEY_A)
    client = create_app(keyed, engine=engine).test_client()
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 401
    assert scrape(client, Authorization=f"Bearer {TOKEN}")
    assert client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401


def test_without_a_token_the_api_keys_protect_metrics(settings, engine):
    client = create_app(settings.replace(api_keys=KEY_A), engine=engine).test_client()
    assert client.get("/metrics").status_code == 401
    assert scrape(client, **{"X-API-Key": KEY_A})


def test_without_token_or_keys_metrics_are_open(client):
    assert scrape(client)


def test_a_short_metrics_token_is_refused_at_start(settings, engine):
    with pytest.raises(ConfigError, match="FACEMATCH_METRICS_TOKEN"):
        create_app(settings.replace(metrics_token="short"), engine=engine)


# --- a real Prometheus scraping a real Gunicorn with two workers ------------------------------


class Scraped:
    """The module's Gunicorn (2 workers, metrics token, an unreachable MQTT broker so that each
    worker holds a queue gauge), the Prometheus scraping it, and how many requests were sent."""

    def __init__(self, server, prometheus, parent: Path):
        self.server = server
        self.prometheus = prometheus
        self.parent = parent
        self.sent = 0

    @property
    def directory(self) -> Path:
        (directory,) = self.parent.glob("facematch-prometheus-*")
        return directory

    def served(self) -> set[int]:
        """Workers that have counted a request: their pid's counter file exists."""
        return {int(p.stem.split("_")[-1]) for p in self.directory.glob("counter_*.db")}

    def send(self, count: int) -> None:
        """``count`` recorded requests (400 missing_field: cheap), 4 at a time, each on a fresh
        connection so both workers take some."""

        def one(_):
            request = urllib.request.Request(self.server.url + "/photo_match", data=b"")
            try:
                urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as error:
                assert error.code == 400
                error.close()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(count)))
        self.sent += count

    def send_until_both_served(self, workers: set[int]) -> None:
        for _ in range(20):
            self.send(8)
            if workers <= self.served():
                return
        pytest.fail(f"workers {workers} did not all serve; served: {self.served()}")

    def scraped(self, expression: str) -> float | None:
        return self.prometheus.value(expression)

    def wait_scraped(self, expression: str, expected: float) -> None:
        wait_until(
            lambda: self.scraped(expression) == expected,
            20,
            interval=0.25,
            what=f"{expression} == {expected} (last {self.scraped(expression)})",
        )


@pytest.fixture(scope="module")
def scraped(module_gunicorn, module_prometheus, tmp_path_factory) -> Scraped:
    parent = tmp_path_factory.mktemp("prometheus-multiproc")
    server = module_gunicorn(
        FACEMATCH_WORKERS="2",
        FACEMATCH_METRICS_TOKEN=TOKEN,
        FACEMATCH_PROMETHEUS_DIR=str(parent),
        FACEMATCH_MQTT_HOST="127.0.0.1",
        FACEMATCH_MQTT_PORT=str(free_port()),
    )
    target = (f"127.0.0.1:{server.port}",)
    prometheus = module_prometheus(
        [
            ScrapeJob("facematch", target, TOKEN),
            ScrapeJob("no-token", target),
            ScrapeJob("wrong-token", target, "wrong-token-0123456789abcdef"),
        ]
    )
    return Scraped(server, prometheus, parent)


REQUESTS = 'sum(facematch_requests_total{job="facematch"})'
TOTALS = 'sum(facematch_stage_duration_seconds_count{job="facematch",stage="total"})'
INF_BUCKET = 'sum(facematch_stage_duration_seconds_bucket{job="facematch",stage="total",le="+Inf"})'
QUEUED = 'sum(facematch_mqtt_queued{job="facematch"})'


def test_scraped_counts_equal_the_requests_sent_across_both_workers(scraped):
    workers = scraped.server.wait_for_workers(2)
    scraped.send_until_both_served(workers)
    scraped.wait_scraped(REQUESTS, scraped.sent)
    assert scraped.scraped(TOTALS) == scraped.sent
    assert scraped.scraped(INF_BUCKET) == scraped.sent
    by_route = 'facematch_requests_total{job="facematch",route="/photo_match",status="400"}'
    assert scraped.scraped(f"sum({by_route})") == scraped.sent
    # every request is still queued for the unreachable broker, summed over both live workers
    assert scraped.scraped(QUEUED) == scraped.sent
    build = scraped.prometheus.query('facematch_build_info{job="facematch"}')
    assert [b["value"][1] for b in build] == ["1"]


def test_a_killed_worker_s_counts_survive_its_replacement(scraped):
    workers = scraped.server.wait_for_workers(2)
    scraped.send_until_both_served(workers)
    scraped.wait_scraped(QUEUED, scraped.sent)
    victim = min(workers)
    assert (scraped.directory / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    scraped.server.wait_for_workers(2, other_than={victim})
    # child_exit marked it dead: its queue left the live sum, its counters stay in the totals
    wait_until(lambda: (scraped.scraped(QUEUED) or 0) < scraped.sent, 20, what="the victim's queue")
    assert not (scraped.directory / f"gauge_livesum_{victim}.db").exists()
    assert (scraped.directory / f"counter_{victim}.db").exists()
    assert scraped.scraped(REQUESTS) == scraped.sent
    scraped.send(8)
    scraped.wait_scraped(REQUESTS, scraped.sent)
    assert scraped.scraped(TOTALS) == scraped.sent


@pytest.mark.parametrize("job", ["no-token", "wrong-token"])
def test_prometheus_without_the_token_is_refused(scraped, job):
    def refused():
        (target,) = scraped.prometheus.targets(job)
        return target["health"] == "down" and "401" in target["lastError"]

    wait_until(refused, 20, interval=0.25, what=f"{job} refused with 401")
    assert scraped.scraped(f'up{{job="{job}"}}') == 0
    wait_until(lambda: scraped.scraped('up{job="facematch"}') == 1, 20, what="the token's scrape")


def test_nginx_hides_metrics_from_outside(scraped, nginx):
    proxy = nginx(upstream_port=scraped.server.port)
    request = urllib.request.Request(
        proxy.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    assert json.loads(refused.value.read())["error"]["code"] == "not_found"
    with urllib.request.urlopen(proxy.url + "/ping", timeout=10) as response:
        assert response.status == 200


def test_each_start_gets_a_fresh_metrics_directory_removed_at_stop(gunicorn, tmp_path):
    server = gunicorn(FACEMATCH_PROMETHEUS_DIR=str(tmp_path))
    (directory,) = tmp_path.glob("facematch-prometheus-*")
    request = urllib.request.Request(server.url + "/photo_match", data=b"")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=30)
    assert list(directory.glob("counter_*.db"))
    assert server.stop() == 0
    assert list(tmp_path.glob("facematch-prometheus-*")) == []


def test_every_dashboard_query_runs_on_the_real_prometheus(scraped):
    dashboard = json.loads(
        (REPO / "monitoring" / "grafana" / "dashboards" / "facematch-prometheus.json").read_text()
    )
    scraped.send(4)
    scraped.wait_scraped(REQUESTS, scraped.sent)
    answered = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            answered[panel["title"]] = scraped.prometheus.query(expr)  # a bad query: HTTP 400
    assert answered["Requests per second by route and status"]
    assert answered["Build"]
