"""Real servers for the tests: facematch under Gunicorn, mosquitto, victoria-metrics, the bridge,
nginx.

Each runs from its own temporary directory on a free 127.0.0.1 port, is waited for until it
answers, and is stopped by the fixture that started it (``stop`` is idempotent; an ``atexit``
hook kills anything a crashed test left behind). ``scripts/test-deps/`` installs the binaries.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarking_utils.local_gunicorn import GunicornFailed, LocalGunicorn, free_port

REPO = Path(__file__).resolve().parents[1]
_RUNNING: set[subprocess.Popen] = set()


def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()


atexit.register(_kill_leftovers)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class _Process:
    """A child process with a log file; ``stop`` sends SIGTERM, then SIGKILL after a grace."""

    name = "process"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        _RUNNING.add(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """Stop the process (continuing it first if frozen); its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _RUNNING.discard(proc)
        return proc.returncode

    def freeze(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a hung server)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


# --- TLS material -------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def make_tls(directory: Path) -> TlsFiles:
    """A test CA, a server certificate for localhost/127.0.0.1 it signed, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    for name in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.crt",
            "-subj",
            f"/CN=facematch-{name}",
        )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "san.ext",
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    return TlsFiles(
        ca=directory / "ca.crt",
        cert=directory / "server.crt",
        key=directory / "server.key",
        other_ca=directory / "other-ca.crt",
    )


# --- mosquitto ------------------------------------------------------------------------------


@dataclass
class MosquittoOptions:
    """How to configure the broker; ``persistence`` keeps sessions across a restart."""

    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None
    persistence: bool = True
    max_queued_messages: int = 100_000
    extra: list[str] = field(default_factory=list)


class Mosquitto(_Process):
    """A mosquitto broker on a free loopback port; ``restart`` keeps the port."""

    name = "mosquitto"

    def __init__(self, workdir: Path, options: MosquittoOptions | None = None):
        super().__init__(workdir)
        self.options = options or MosquittoOptions()
        self.port = free_port()
        self.config_path = workdir / "mosquitto.conf"
        self._write_config()

    def _write_config(self) -> None:
        o = self.options
        lines = [
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"persistence {'true' if o.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"max_queued_messages {o.max_queued_messages}",
            "max_inflight_messages 0",
            "per_listener_settings false",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # keep root: the temp dir is not the mosquitto user's
        if o.username:
            passwd = self.workdir / "passwd"
            subprocess.run(
                ["mosquitto_passwd", "-c", "-b", str(passwd), o.username, o.password],
                check=True,
                capture_output=True,
            )
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        lines.append(f"listener {self.port} 127.0.0.1")
        if o.tls:
            lines += [f"cafile {o.tls.ca}", f"certfile {o.tls.cert}", f"keyfile {o.tls.key}"]
        lines += o.extra
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Mosquitto:
        self._spawn(["mosquitto", "-c", str(self.config_path)])
        wait_until(lambda: self._check_alive() and _port_open(self.port), 10, what="mosquitto")
        return self

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()


# --- victoria-metrics -----------------------------------------------------------------------


class VictoriaMetrics(_Process):
    """victoria-metrics, which accepts InfluxDB v2 line-protocol writes (see shared notes)."""

    name = "victoria-metrics"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.port = free_port()
        self.data = workdir / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        self._check_alive()
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> VictoriaMetrics:
        self._spawn(
            [
                "victoria-metrics",
                f"-storageDataPath={self.data}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-search.latencyOffset=0s",
                "-loggerLevel=WARN",
                "-retentionPeriod=1",
            ]
        )
        wait_until(self._healthy, 15, what="victoria-metrics /health")
        return self

    def restart(self) -> VictoriaMetrics:
        self.stop()
        return self.start()

    def export(self, name_regex: str) -> list[dict]:
        """Every stored series whose name matches, with values and millisecond timestamps."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10):
            pass
        query = urllib.parse.urlencode({"match[]": f'{{__name__=~"{name_regex}"}}'})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as response:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]

    def count_samples(self, name: str) -> int:
        return sum(len(series["values"]) for series in self.export(name))


# --- the bridge -----------------------------------------------------------------------------


class BridgeProcess(_Process):
    """``python -m facematch.observability.bridge`` with the given FACEMATCH_ environment."""

    name = "bridge"

    def __init__(self, workdir: Path, env: dict[str, str], args: list[str] | None = None):
        super().__init__(workdir)
        self.env = env
        self.args = args or []

    def start(self, wait_subscribed: bool = True) -> BridgeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEMATCH_")}
        env.update(self.env)
        env["PYTHONPATH"] = str(REPO)
        start = len(self.log())
        self._spawn([sys.executable, "-m", "facematch.observability.bridge", *self.args], env=env)
        if wait_subscribed:
            wait_until(
                lambda: self._check_alive() and "subscribed" in self.log()[start:],
                20,
                what="the bridge to subscribe",
            )
        return self


def workdir(prefix: str) -> Path:
    """A fresh temporary directory (removed by ``remove``)."""
    return Path(tempfile.mkdtemp(prefix=f"facematch-{prefix}-"))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- an MQTT subscriber that collects what arrives ------------------------------------------


class Subscriber:
    """Collects decoded JSON payloads from ``topic`` (QoS 1). ``persistent`` resumes its session
    after a broker restart, so messages published before it is back are kept for it."""

    def __init__(
        self,
        broker: Mosquitto,
        topic: str = "facematch/metrics",
        persistent: bool = False,
        client_id: str = "test-subscriber",
    ):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[dict] = []
        self.raw: list[bytes] = []
        self._subscribed = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: setattr(self, "_subscribed", True)
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        if persistent:
            properties.SessionExpiryInterval = 600
        self.client.connect_async(
            "127.0.0.1", broker.port, clean_start=not persistent, properties=properties
        )
        self.client.loop_start()
        wait_until(lambda: self._subscribed, 10, what="the test subscriber")

    def _on_message(self, client, userdata, message) -> None:
        self.raw.append(message.payload)
        try:
            self.messages.append(json.loads(message.payload))
        except ValueError:
            pass

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        wait_until(
            lambda: len(self.messages) >= count,
            timeout,
            what=f"{count} messages (have {len(self.messages)})",
        )
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- test data ------------------------------------------------------------------------------

#: Recent enough for the test database's retention; records are 10 ms apart.
BASE = int(time.time()) - 600


def record(i: int, endpoint: str = "/photo_match"):
    """A distinct request record: ``distance`` and ``started`` carry ``i`` so messages can be
    told apart (in the database too, where points are keyed by tags and time)."""
    from facematch.observability.record import FaceSummary, Latency, RequestRecord

    return RequestRecord(
        endpoint=endpoint,
        started=BASE + i / 100,
        match=i % 2 == 0,
        distance=i / 1000,
        threshold=0.5,
        metric="cosine",
        model="casia-webface",
        faces=[
            FaceSummary("reference", 1, 0.99, None, 250, 250),
            FaceSummary("sample", 1, 0.98, None, 250, 250),
        ],
        latency=Latency(detection=10.0, embedding=5.0, total=20.0 + i),
    )


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def broker():
    """A plain (anonymous, no TLS) mosquitto with persistence, stopped after the test."""
    directory = workdir("mosquitto")
    server = Mosquitto(directory).start()
    try:
        yield server
    finally:
        server.stop()
        remove(directory)


@pytest.fixture
def database():
    """A victoria-metrics that accepts InfluxDB v2 writes, stopped after the test."""
    directory = workdir("victoria")
    server = VictoriaMetrics(directory).start()
    try:
        yield server
    finally:
        server.stop()
        remove(directory)


@pytest.fixture
def subscriber(broker):
    client = Subscriber(broker)
    try:
        yield client
    finally:
        client.close()


# --- the bridge between them, and reading back what it wrote -------------------------------


def stored(database) -> list:
    """Every point in the database, rebuilt by the report's reader."""
    from benchmarking_utils.monitoring_report import read_victoria_metrics

    database.export("facematch_pid")  # flushes what was just written
    return read_victoria_metrics(database.url, "facematch", 0, time.time() + 3600)


def samples(database, field: str = "latency_total_ms") -> list[int]:
    """Timestamps (ms) of every stored sample of ``facematch_<field>``, duplicates included."""
    return sorted(
        t for series in database.export(f"facematch_{field}") for t in series["timestamps"]
    )


def expected_ms(indexes) -> list[int]:
    return sorted(int(round(record(i).started * 1000)) for i in indexes)


@pytest.fixture
def bridge_env(broker, database) -> dict[str, str]:
    return {
        "FACEMATCH_MQTT_HOST": "127.0.0.1",
        "FACEMATCH_MQTT_PORT": str(broker.port),
        "FACEMATCH_INFLUX_URL": database.url,
        "FACEMATCH_INFLUX_TOKEN": "test-token",
        "FACEMATCH_INFLUX_FLUSH_INTERVAL_MS": "200",
        "FACEMATCH_INFLUX_BATCH_SIZE": "50",
        "FACEMATCH_LOG_LEVEL": "info",
    }


@pytest.fixture
def start_bridge(bridge_env):
    """Start bridge processes (``--retry-max 0.5`` keeps outage tests short); all stopped after."""
    directory = workdir("bridge")
    started: list[BridgeProcess] = []

    def start(args: list[str] | None = None, **env: str) -> BridgeProcess:
        process = BridgeProcess(
            directory,
            {**bridge_env, **env},
            ["--retry-initial", "0.1", "--retry-max", "0.5", *(args or [])],
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
    remove(directory)


#: Test servers run one worker with two threads unless a test asks for more.
SMALL = {"FACEMATCH_WORKERS": "1", "FACEMATCH_THREADS": "2"}


@pytest.fixture
def gunicorn(tmp_path):
    """Start facematch under a real Gunicorn: ``gunicorn(wait=True, **FACEMATCH_vars)`` returns a
    ``LocalGunicorn`` (1 worker, 2 threads, metrics off unless set); all are stopped after the
    test. With ``wait=False`` it returns at once (for servers expected to refuse to start)."""
    started: list[LocalGunicorn] = []

    def start(wait: bool = True, **env: str) -> LocalGunicorn:
        server = LocalGunicorn(tmp_path / f"gunicorn-{len(started)}.log", {**SMALL, **env})
        started.append(server)
        if wait:
            try:
                server.wait_until_up()
            except GunicornFailed as error:
                pytest.fail(str(error))
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_gunicorn(tmp_path_factory):
    """Like ``gunicorn``, for a server that a whole test module shares."""
    started: list[LocalGunicorn] = []

    def start(**env: str) -> LocalGunicorn:
        log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
        server = LocalGunicorn(log, {**SMALL, **env})
        started.append(server)
        try:
            return server.wait_until_up()
        except GunicornFailed as error:
            pytest.fail(str(error))

    yield start
    for server in started:
        server.stop()


# --- nginx in front of Gunicorn, with the shipped configuration -----------------------------

NGINX_CONFIG = REPO / "deploy" / "nginx"


class Nginx(_Process):
    """nginx running ``deploy/nginx/facematch.conf`` unchanged but for its ``listen`` (a free
    loopback port) and any ``set $name value;`` that ``variables`` gives another value (a short
    request deadline, say), in front of ``upstream_port``: the shipped upstream.conf with its
    address moved there. Everything nginx writes (pid, logs, temporary files) stays in
    ``workdir``."""

    name = "nginx"

    def __init__(self, workdir: Path, upstream_port: int, variables: dict[str, str] | None = None):
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = (NGINX_CONFIG / "facematch.conf").read_text()
        upstream = (NGINX_CONFIG / "upstream.conf").read_text()
        assert site.count("\n    listen 80;\n") == 1 and "server 127.0.0.1:8000;" in upstream
        for name, value in (variables or {}).items():
            site, count = re.subn(
                rf"^(\s*set \${name}) [^;]+;", rf"\g<1> {value};", site, flags=re.M
            )
            assert count == 1, f"the shipped config sets ${name} {count} times, not once"
        (workdir / "facematch.conf").write_text(
            site.replace("\n    listen 80;\n", f"\n    listen 127.0.0.1:{self.port};\n")
        )
        (workdir / "upstream.conf").write_text(
            upstream.replace("127.0.0.1:8000;", f"127.0.0.1:{upstream_port};")
        )
        temp = "\n".join(
            f"    {kind}_temp_path {workdir}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.config_path = workdir / "nginx.conf"
        self.config_path.write_text(
            f"daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
            # The Lua module the config needs (Debian's libnginx-mod-http-lua, and the NDK it uses).
            "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
            "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
            f"error_log {self.log_path} info;\n"
            "events {\n    worker_connections 1024;\n}\n"
            f"http {{\n    access_log {workdir}/access.log;\n{temp}\n"
            f"    include {workdir}/upstream.conf;\n    include {workdir}/facematch.conf;\n}}\n"
        )

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self._spawn([binary, "-c", str(self.config_path), "-p", f"{self.workdir}/"])
        wait_until(lambda: self._check_alive() and _port_open(self.port), 10, what="nginx")
        return self


def _servers_in_workdirs(prefix: str, server_class):
    """A fixture's body: yields ``start(*args, **kwargs)``, which makes a fresh work directory,
    starts ``server_class(directory, *args, **kwargs)`` in it and returns it; every server started
    is stopped and its directory removed when the fixture ends."""
    started = []

    def start(*args, **kwargs):
        directory = workdir(prefix)
        server = server_class(directory, *args, **kwargs)
        started.append((server, directory))
        return server.start()

    yield start
    for server, directory in started:
        server.stop()
        remove(directory)


@pytest.fixture
def nginx():
    """Start nginx with the shipped config in front of a Gunicorn: ``nginx(upstream_port=...)``
    returns a started ``Nginx`` (``.url``, ``.port``, ``.log()``); all are stopped after the
    test. ``scripts/test-deps/nginx.sh`` installs nginx and its Lua module."""
    yield from _servers_in_workdirs("nginx", Nginx)


# --- PostgreSQL with pgvector (PyPI pgserver) ------------------------------------------------


class Postgres:
    """A PostgreSQL 16 with pgvector from PyPI's ``pgserver``, on a unix socket in its own
    temporary data directory; ``database()`` makes a fresh database and returns its URL."""

    def __init__(self):
        import pgserver

        self.workdir = workdir("postgres")
        self.server = pgserver.get_server(self.workdir, cleanup_mode="stop")
        self.url = self.server.get_uri()
        self._count = 0

    def database(self) -> str:
        """A new empty database on this server: its ``postgresql://`` URL."""
        import psycopg

        self._count += 1
        name = f"test_{os.getpid()}_{self._count}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.server.get_uri(name)

    def drop(self, url: str) -> None:
        """Drop a database ``database()`` made (its connections are ended first)."""
        import psycopg

        name = urllib.parse.urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def processes(self) -> list[int]:
        """The pids of the postmaster and of every process under it (backends, workers)."""
        pids = [self.server.get_pid()]
        for pid in pids:
            path = Path(f"/proc/{pid}/task/{pid}/children")
            with contextlib.suppress(FileNotFoundError):
                pids += [int(child) for child in path.read_text().split()]
        return pids

    @contextlib.contextmanager
    def frozen(self):
        """SIGSTOP the postmaster and every process under it while the block runs (a hung
        server: the kernel still accepts its connections and acknowledges what is sent), and
        SIGCONT them all when it ends, however it ends."""
        os.kill(self.server.get_pid(), signal.SIGSTOP)  # first: it forks no one meanwhile
        try:
            for pid in self.processes()[1:]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            yield
        finally:
            for pid in reversed(self.processes()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (idempotent) and remove its data directory."""
        if self.server is not None:
            self.server.cleanup()
            self.server = None
        remove(self.workdir)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL with pgvector for the whole run (about 1.3 s to start)."""
    server = Postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL, dropped after the test;
    facematch servers started by the test can share it."""
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)


# --- Prometheus scraping facematch's /metrics -------------------------------------------------


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: ``targets`` are ``host:port``; ``token`` goes into ``authorization``."""

    name: str
    targets: tuple[str, ...]
    token: str | None = None


class Prometheus(_Process):
    """Debian's Prometheus scraping ``/metrics`` of each job's targets every second, with its
    configuration and data in ``workdir``; ``query`` asks its HTTP API."""

    name = "prometheus"

    def __init__(self, workdir: Path, jobs: list[ScrapeJob]):
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prom.yml"
        lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:"]
        for job in jobs:
            lines += [f"  - job_name: {job.name}", "    metrics_path: /metrics"]
            if job.token is not None:
                lines += ["    authorization:", f"      credentials: {job.token}"]
            lines += ["    static_configs:", f"      - targets: {json.dumps(list(job.targets))}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def _ready(self) -> bool:
        self._check_alive()
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self._spawn(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ]
        )
        wait_until(self._ready, 30, what="prometheus /-/ready")
        return self

    def query(self, expression: str) -> list[dict]:
        """The instant vector of a PromQL ``expression`` now: ``[{"metric", "value"}]``."""
        query = urllib.parse.urlencode({"query": expression})
        return self._get(f"/api/v1/query?{query}")["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The single value of ``expression`` now (None when it has no sample)."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets(self, job: str) -> list[dict]:
        """The active targets of ``job`` (``health``, ``lastError``, ``lastScrape``, ...)."""
        active = self._get("/api/v1/targets?state=active")["data"]["activeTargets"]
        return [t for t in active if t["labels"]["job"] == job]


@pytest.fixture(scope="module")
def module_prometheus():
    """Start Prometheus for a module: ``module_prometheus([ScrapeJob(...), ...])`` returns a
    started ``Prometheus``; all are stopped after the module. ``scripts/test-deps/prometheus.sh``
    installs it."""
    yield from _servers_in_workdirs("prometheus", Prometheus)
