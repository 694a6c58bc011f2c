"""A real Gunicorn under load and faults: concurrent clients, SIGTERM with requests in flight, a
killed and a hung worker, the metrics broker or database down while requests keep coming.

Counts and times are kept small for the test command (seconds per test); the figures each test
measured are printed (``pytest -s``) and written to benchmark_results/faults/<test>.json.
``python -m benchmarking_utils.soak`` is the longer run (1,000 requests) whose figures the
README quotes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from benchmarking_utils.local_gunicorn import LocalGunicorn
from tests.servers import Subscriber, samples, wait_until
from tests.support import SAME

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmark_results" / "faults"
#: RSS a worker may gain over the measured phase of the load test (after a warm-up phase).
RSS_GROWTH_BOUND_MB = 64


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --- concurrent clients ---


@dataclass
class Call:
    name: str
    path: str
    files: dict
    expected: int


@dataclass
class LoadResult:
    seconds: float
    statuses: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 1),
            "throughput_rps": round(self.requests / self.seconds, 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": sum(v for k, v in self.statuses.items() if k >= 500),
            "connection_errors": len(self.errors),
            "unexpected": len(self.unexpected),
            "latency_ms": {f"p{q}": round(self.percentile(q), 1) for q in (50, 90, 99)}
            | {"max": round(max(self.latencies_ms), 1)},
        }


def drive(url: str, calls: list[Call], clients: int, seconds: float) -> LoadResult:
    """``clients`` threads, each with its own keep-alive session, cycle through ``calls`` until
    ``seconds`` have passed (each finishes the request it has started)."""
    result = LoadResult(seconds=seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        turn = index
        while time.monotonic() < deadline:
            call = calls[turn % len(calls)]
            turn += 1
            started = time.perf_counter()
            try:
                response = session.post(url + call.path, files=call.files, timeout=60)
            except requests.RequestException as error:
                with lock:
                    result.errors.append(f"{call.name}: {type(error).__name__}: {error}"[:300])
                continue
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                result.statuses[response.status_code] += 1
                if response.status_code != call.expected:
                    result.unexpected.append(
                        f"{call.name}: {response.status_code} {response.text[:200]}"
                    )
                else:
                    result.latencies_ms.append(elapsed)
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    result.seconds = time.monotonic() - began
    return result


def standard_calls(url: str, face_bytes) -> list[Call]:
    """What the load sends in turn: both match kinds, an embedding, and a refused upload."""
    reference, sample = face_bytes(SAME[0]), face_bytes(SAME[1])
    stored = requests.post(url + "/embeddings", files={"photo": ("a.jpg", reference)}, timeout=60)
    assert stored.status_code == 200, stored.text
    return [
        Call(
            "photo_match",
            "/photo_match",
            {"reference": ("a.jpg", reference), "sample": ("b.jpg", sample)},
            200,
        ),
        Call(
            "cached_match",
            "/cached_match",
            {"reference": ("r.json", stored.content), "sample": ("b.jpg", sample)},
            200,
        ),
        Call("embeddings", "/embeddings", {"photo": ("b.jpg", sample)}, 200),
        Call(
            "not an image",
            "/photo_match",
            {"reference": ("a.jpg", reference), "sample": ("t.jpg", b"text")},
            415,
        ),
    ]


def report(name: str, figures: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(figures)}")


def warm_up_until_rss_settles(
    url: str,
    calls: list[Call],
    workers: list[int],
    rounds: int = 8,
    seconds: float = 5,
    settled_mb: float = 8,
) -> dict[int, float]:
    """Drive load in rounds until no worker's RSS moves more than ``settled_mb`` in a round.

    A worker's first concurrent inferences on each route grow its allocator arenas and ONNX
    Runtime's buffers once (seen: +76 to +89 MB after a fixed 8 or 25 s warm-up, on the worker
    that had served less); growth after that plateau is what a leak would show.
    """
    rss = {pid: rss_mb(pid) for pid in workers}
    for _ in range(rounds):
        assert_clean(drive(url, calls, clients=4, seconds=seconds))
        now = {pid: rss_mb(pid) for pid in workers}
        if all(abs(now[pid] - rss[pid]) <= settled_mb for pid in workers):
            return now
        rss = now
    return rss


def assert_clean(load: LoadResult) -> None:
    assert not load.errors, load.errors[:5]
    assert not load.unexpected, load.unexpected[:5]
    assert all(status < 500 for status in load.statuses)


# --- load ---


def test_concurrent_clients_get_no_5xx_no_dropped_connection_and_bounded_worker_rss(
    gunicorn, face_bytes
):
    server = gunicorn(FACEMATCH_WORKERS="2", FACEMATCH_THREADS="2")
    workers = server.wait_for_workers(2)
    calls = standard_calls(server.url, face_bytes)
    before = warm_up_until_rss_settles(server.url, calls, workers)
    load = drive(server.url, calls, clients=4, seconds=20)
    after = {pid: rss_mb(pid) for pid in workers}
    figures = {
        **load.summary(),
        "clients": 4,
        "workers": 2,
        "threads": 2,
        "rss_mb_before": {str(p): round(v, 1) for p, v in before.items()},
        "rss_mb_after": {str(p): round(v, 1) for p, v in after.items()},
    }
    report("load", figures)
    assert_clean(load)
    assert load.requests >= 8, figures
    assert server.workers() == workers, "a worker was replaced during the load"
    for pid in workers:
        assert after[pid] - before[pid] < RSS_GROWTH_BOUND_MB, figures


# --- graceful shutdown ---


def test_sigterm_lets_in_flight_requests_finish_and_new_connections_are_refused(
    gunicorn, face_bytes
):
    """The in-flight requests are also the first ones of a fresh worker, 4 at once on 2 threads
    (they once raced torch's thread-pool rebuild into a 500; see gunicorn_hooks.py)."""
    server = gunicorn()
    reference, sample = face_bytes(SAME[0]), face_bytes(SAME[1])
    pair = {"reference": ("a.jpg", reference), "sample": ("b.jpg", sample)}
    finished: list[tuple[object, float]] = []

    def send(path: str, files: dict) -> None:
        try:
            response = requests.post(server.url + path, files=files, timeout=60)
            finished.append((response.status_code, time.monotonic()))
        except requests.RequestException as error:
            finished.append((type(error).__name__, time.monotonic()))

    senders = [
        threading.Thread(target=send, args=args)
        for args in [
            ("/photo_match", pair),
            ("/embeddings", {"photo": ("a.jpg", reference)}),
            ("/photo_match", pair),
            ("/embeddings", {"photo": ("b.jpg", sample)}),
        ]
    ]
    for sender in senders:
        sender.start()
    wait_until(lambda: _established(server) >= 4, 10, interval=0.01, what="4 connections")
    time.sleep(0.2)  # the gthread worker accepts at once and queues them for its 2 threads
    terminated = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    late = _three_late_pings(server)
    for sender in senders:
        sender.join(60)
    exit_code = server.process.wait(60)
    figures = {
        "in_flight": [status for status, _ in finished],
        "finished_after_sigterm_s": [round(t - terminated, 2) for _, t in finished],
        "new_after_sigterm": late,
        "exit_code": exit_code,
        "shutdown_s": round(time.monotonic() - terminated, 1),
    }
    report("sigterm", figures)
    assert [status for status, _ in finished] == [200] * 4, figures
    assert any(t > terminated for _, t in finished), "nothing was in flight at SIGTERM"
    assert late[0::2] == ["refused"] * 3 and max(late[1::2]) < 0.5, figures
    assert exit_code == 0


def test_sigterm_on_the_sync_worker_finishes_its_request_and_refuses_new_connections(
    gunicorn, face_bytes
):
    """One thread a worker is Gunicorn's sync worker, which closes its listener in the signal
    handler itself (gunicorn_hooks.py)."""
    server = gunicorn(FACEMATCH_THREADS="1")
    pair = {"reference": ("a.jpg", face_bytes(SAME[0])), "sample": ("b.jpg", face_bytes(SAME[1]))}
    finished: list[int] = []
    sender = threading.Thread(
        target=lambda: finished.append(
            requests.post(server.url + "/photo_match", files=pair, timeout=60).status_code
        )
    )
    sender.start()
    wait_until(lambda: _established(server) >= 1, 10, interval=0.01, what="a connection")
    time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    late = _three_late_pings(server)
    sender.join(60)
    exit_code = server.process.wait(60)
    assert finished == [200]
    assert late[0::2] == ["refused"] * 3 and max(late[1::2]) < 0.5, late
    assert exit_code == 0
    assert "Traceback" not in server.log()


def _three_late_pings(server: LocalGunicorn) -> list:
    """0.2 s after a SIGTERM, three pings: how each ended and how long it took."""
    time.sleep(0.2)
    late = []
    for _ in range(3):
        started = time.monotonic()
        try:
            requests.get(server.url + "/ping", timeout=5)
            late.append("answered")
        except requests.ConnectionError as error:
            late.append("refused" if "refused" in str(error).lower() else repr(error)[:200])
        late.append(round(time.monotonic() - started, 3))
    return late


def _established(server: LocalGunicorn) -> int:
    """Established TCP connections whose local end is the server's port."""
    port_hex = f":{server.port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(port_hex) and row[3] == "01")


# --- a worker that dies or hangs ---


@pytest.fixture(scope="module")
def resilient(module_gunicorn):
    server = module_gunicorn(FACEMATCH_TIMEOUT="4")
    yield server
    server.stop()


def test_killed_worker_is_replaced_and_the_next_requests_succeed(resilient, face_bytes):
    calls = standard_calls(resilient.url, face_bytes)
    (victim,) = resilient.wait_for_workers(1)
    os.kill(victim, signal.SIGKILL)
    (replacement,) = resilient.wait_for_workers(1, other_than={victim})
    load = drive(resilient.url, calls, clients=2, seconds=4)
    report("worker_killed", {"killed": victim, "replacement": replacement, **load.summary()})
    assert_clean(load)
    assert load.statuses[200] >= 2


def test_hung_worker_is_killed_after_the_timeout_and_waiting_requests_are_served(
    resilient, face_bytes
):
    calls = standard_calls(resilient.url, face_bytes)
    (victim,) = resilient.wait_for_workers(1)
    os.kill(victim, signal.SIGSTOP)  # alive but silent: no heartbeat reaches the master
    frozen = time.monotonic()
    waiting = drive(resilient.url, calls[:1], clients=1, seconds=0.1)  # sent while it hangs
    (replacement,) = resilient.wait_for_workers(1, other_than={victim}, seconds=60)
    replaced_after = time.monotonic() - frozen
    load = drive(resilient.url, calls, clients=2, seconds=4)
    figures = {
        "hung": victim,
        "replacement": replacement,
        "timeout_s": 4,
        "replaced_after_s": round(replaced_after, 1),
        "waiting": waiting.summary(),
        "after": load.summary(),
    }
    report("worker_hung", figures)
    assert "WORKER TIMEOUT" in resilient.log()
    assert_clean(waiting)
    assert_clean(load)
    assert waiting.statuses[200] == 1 and load.statuses[200] >= 2


# --- the metrics broker or the database down while requests keep coming ---


def health_metrics(url: str) -> dict:
    return requests.get(url + "/health", timeout=10).json()["metrics"]


def test_broker_down_under_load_loses_no_request_and_counts_every_message(
    gunicorn, face_bytes, broker
):
    listener = Subscriber(broker, persistent=True, client_id="faults-listener")
    try:
        server = gunicorn(
            FACEMATCH_MQTT_HOST="127.0.0.1",
            FACEMATCH_MQTT_PORT=str(broker.port),
            FACEMATCH_MQTT_QUEUE_SIZE="10",
            FACEMATCH_NODE="faults",
        )
        calls = standard_calls(server.url, face_bytes)
        before = drive(server.url, calls, clients=2, seconds=4)
        wait_until(lambda: health_metrics(server.url)["queued"] == 0, 10, what="sent")
        broker.stop()
        wait_until(lambda: not health_metrics(server.url)["connected"], 10, what="disconnect")
        during = drive(server.url, calls, clients=2, seconds=8)
        outage = health_metrics(server.url)
        broker.start()
        wait_until(lambda: health_metrics(server.url)["queued"] == 0, 30, what="the queue")
        after = health_metrics(server.url)
        recorded = 1 + before.requests + during.requests  # /embeddings in standard_calls too
        wait_until(lambda: len(listener.messages) >= after["sent"], 20, what="delivery")
        time.sleep(0.5)
        delivered = len({json.dumps(m, sort_keys=True) for m in listener.messages})
    finally:
        listener.close()
    figures = {
        "requests_ok_before": before.statuses[200],
        "requests_during_outage": during.summary(),
        "during_outage": {k: outage[k] for k in ("published", "sent", "queued", "dropped")},
        "after_recovery": {k: after[k] for k in ("published", "sent", "queued", "dropped")},
        "delivered_distinct": delivered,
        "queue_size": 10,
    }
    report("broker_down", figures)
    assert_clean(before)
    assert_clean(during)
    assert during.requests >= 4
    assert outage["queued"] <= 10 and outage["dropped"] > 0, figures
    assert after["published"] == recorded, figures
    assert after["sent"] + after["dropped"] == after["published"], figures
    assert delivered == after["sent"], figures


def test_database_down_under_load_loses_no_request_and_no_message(
    gunicorn, face_bytes, broker, database, start_bridge
):
    start_bridge()
    server = gunicorn(
        FACEMATCH_MQTT_HOST="127.0.0.1",
        FACEMATCH_MQTT_PORT=str(broker.port),
        FACEMATCH_NODE="faults-db",
    )
    calls = standard_calls(server.url, face_bytes)
    before = drive(server.url, calls, clients=2, seconds=4)
    wait_until(lambda: len(samples(database)) >= 1 + before.requests, 20, what="first points")
    database.stop()
    during = drive(server.url, calls, clients=2, seconds=8)
    outage = health_metrics(server.url)
    database.start()
    published = outage["published"]
    wait_until(
        lambda: len(samples(database)) >= published, 60, interval=0.5, what=f"{published} points"
    )
    time.sleep(1)
    stored_points = len(samples(database))
    figures = {
        "requests_ok_before": before.statuses[200],
        "requests_during_outage": during.summary(),
        "publisher": {k: outage[k] for k in ("published", "sent", "queued", "dropped")},
        "points_stored": stored_points,
    }
    report("database_down", figures)
    assert_clean(before)
    assert_clean(during)
    assert outage["dropped"] == 0 and outage["published"] == 1 + before.requests + during.requests
    assert stored_points >= published, figures
