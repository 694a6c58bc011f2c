"""MQTT -> InfluxDB bridge: ``python -m facematch.observability.bridge``.

Subscribes to ``FACEMATCH_MQTT_TOPIC`` with QoS 1 on a persistent session (fixed client id,
clean start off, a session expiry), so the broker keeps what is published while the bridge is
briefly away. Each message is validated against the v1 schema and turned into one point
(``message.to_point``); points are written with influxdb-client in batches of
``FACEMATCH_INFLUX_BATCH_SIZE`` or every ``FACEMATCH_INFLUX_FLUSH_INTERVAL_MS``.

A message is acknowledged to the broker (manual PUBACK) only after its point was written, so a
database outage or a crash loses nothing: writes are retried with exponential backoff, and what
was never acknowledged is redelivered. Delivery is at-least-once: a message whose write
succeeded but whose acknowledgement was lost (a broken connection at that moment) is written
again; InfluxDB stores a point with the same measurement, tags and timestamp once, so such a
repeat overwrites rather than doubles it. Bad messages are logged, counted and acknowledged
(skipped). SIGTERM or SIGINT: the held points are flushed (for up to ``--shutdown-timeout``
seconds), then the bridge disconnects and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facematch.config import Settings
from facematch.observability.message import InvalidMessage, PointData, decode, to_point
from facematch.observability.publisher import connect_failure_reason, make_client

log = logging.getLogger("facematch.bridge")

#: Statuses that mean "this data will never be accepted": the point is skipped, not retried.
REJECTED_STATUSES = (400, 413, 422)
#: Bad messages logged one by one before the log switches to every 1000th.
LOGGED_BAD_MESSAGES = 20


@dataclass(frozen=True)
class BridgeOptions:
    """Tunables that are not FACEMATCH_ settings (command-line flags)."""

    client_id: str = "facematch-bridge"
    session_expiry_s: int = 7 * 24 * 3600
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    stats_interval_s: float = 60.0


@dataclass
class _Held:
    """A delivered message not yet acknowledged; ``point`` is None for a bad message."""

    mid: int
    qos: int
    generation: int
    point: PointData | None


@dataclass
class BridgeStats:
    received: int = 0
    invalid: int = 0
    written: int = 0
    rejected: int = 0
    write_failures: int = 0
    redelivered: int = 0

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.__dict__.items())


def influx_point(data: PointData, measurement: str) -> Point:
    point = Point(measurement).time(data.time_ns, WritePrecision.NS)
    for key, value in data.tags.items():
        point.tag(key, value)
    for key, value in data.fields.items():
        point.field(key, value)
    return point


class Bridge:
    """One bridge: an MQTT subscriber feeding a batching writer that runs in ``run``."""

    def __init__(self, settings: Settings, options: BridgeOptions | None = None):
        if not settings.mqtt_host:
            raise ValueError("FACEMATCH_MQTT_HOST is required")
        if not settings.influx_url:
            raise ValueError("FACEMATCH_INFLUX_URL is required")
        self.settings = settings
        self.options = options or BridgeOptions()
        self.stats = BridgeStats()
        self._cond = threading.Condition()
        self._held: list[_Held] = []
        self._generation = 0
        self._connected = False
        self._stopping = False
        self._bad_logged = 0
        self._connect_failures = 0
        self._influx = InfluxDBClient(
            url=settings.influx_url,
            token=settings.influx_token,
            org=settings.influx_org,
            timeout=10_000,
        )
        self._write_api = self._influx.write_api(write_options=SYNCHRONOUS)
        self._client = make_client(settings, self.options.client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # --- MQTT side (paho's network thread) ---

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s",
                self.settings.mqtt_host,
                self.settings.mqtt_port,
                reason_code,
            )
            return
        with self._cond:
            self._generation += 1
            self._connected = True
            self._connect_failures = 0
        log.info(
            "connected to %s:%d (session present: %s)",
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            flags.session_present,
        )
        client.subscribe(self.settings.mqtt_topic, qos=1)

    def _on_connect_fail(self, client, userdata) -> None:
        self._connect_failures += 1
        if self._connect_failures == 1 or self._connect_failures % 20 == 0:
            log.error(
                "cannot connect to the broker %s:%d (%s); %d attempts, retrying",
                self.settings.mqtt_host,
                self.settings.mqtt_port,
                connect_failure_reason(),
                self._connect_failures,
            )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for code in reason_codes:
            if code.is_failure:
                log.error("subscription to %s refused: %s", self.settings.mqtt_topic, code)
                return
        log.info("subscribed to %s", self.settings.mqtt_topic)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            # Not acknowledged, so the broker redelivers these after the reconnect.
            self._held = []
        if not self._stopping:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        point: PointData | None = None
        try:
            point = to_point(decode(message.payload))
        except InvalidMessage as exc:
            self._bad_message(message, str(exc))
        except Exception as exc:
            self._bad_message(message, f"cannot convert: {exc}")
        with self._cond:
            self.stats.received += 1
            if message.dup:
                self.stats.redelivered += 1
            self._held.append(_Held(message.mid, message.qos, self._generation, point))
            if len(self._held) >= self.settings.influx_batch_size:
                self._cond.notify_all()

    def _bad_message(self, message: mqtt.MQTTMessage, reason: str) -> None:
        with self._cond:
            self.stats.invalid += 1
            self._bad_logged += 1
            count = self._bad_logged
        if count <= LOGGED_BAD_MESSAGES or count % 1000 == 0:
            log.warning(
                "skipping a bad message on %s (%d bytes, %d so far): %s",
                message.topic,
                len(message.payload),
                count,
                reason,
            )

    # --- the writer (``run``'s thread) ---

    def stop(self) -> None:
        """Ask ``run`` to flush and return; safe to call from a signal handler."""
        self._stopping = True

    def run(self) -> int:
        """Connect, write batches until ``stop``, flush, disconnect; 0 when everything held was
        written."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.options.session_expiry_s
        properties.ReceiveMaximum = min(65535, max(100, 4 * self.settings.influx_batch_size))
        self._client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        log.info(
            "bridge %s:%d %s -> %s bucket=%s measurement=%s",
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            self.settings.mqtt_topic,
            self.settings.influx_url,
            self.settings.influx_bucket,
            self.settings.influx_measurement,
        )
        next_stats = time.monotonic() + self.options.stats_interval_s
        try:
            while not self._stopping:
                batch = self._next_batch(wait=True)
                if batch:
                    self._write_and_ack(batch, deadline=None)
                if time.monotonic() >= next_stats:
                    log.info("stats %s", self.stats.line())
                    next_stats = time.monotonic() + self.options.stats_interval_s
            return self._shutdown()
        finally:
            self._influx.close()

    def _next_batch(self, wait: bool) -> list[_Held]:
        """The oldest held messages, once a batch is full or the oldest waited long enough."""
        interval = self.settings.influx_flush_interval_ms / 1000
        size = self.settings.influx_batch_size
        first_seen: float | None = None
        while True:
            with self._cond:
                if self._held and first_seen is None:
                    first_seen = time.monotonic()
                full = len(self._held) >= size
                due = first_seen is not None and time.monotonic() - first_seen >= interval
                if self._held and (full or due or not wait or self._stopping):
                    return list(self._held[:size])
                if self._stopping:
                    return []
                self._cond.wait(0.1)

    def _write_and_ack(self, batch: list[_Held], deadline: float | None) -> bool:
        """Write the batch's points (retrying with backoff), then acknowledge its messages.

        With a ``deadline`` (shutdown) retrying ends there and False is returned; the messages
        stay unacknowledged for the broker to redeliver."""
        points = [
            influx_point(h.point, self.settings.influx_measurement)
            for h in batch
            if h.point is not None
        ]
        delay = self.options.retry_initial_s
        failures = 0
        while points:
            try:
                self._write(points)
                break
            except ApiException as exc:
                if exc.status in REJECTED_STATUSES:
                    self._write_one_by_one(points)
                    break
                reason = f"HTTP {exc.status}: {(exc.body or exc.reason or '')!s:.200}"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc!s:.200}"
            failures += 1
            self.stats.write_failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "write to %s failed (%s); retrying in %.1fs, %d messages held",
                    self.settings.influx_url,
                    reason,
                    delay,
                    len(self._held),
                )
            if not self._sleep(delay, deadline):
                return False
            delay = min(delay * 2, self.options.retry_max_s)
        if failures:
            log.info("write succeeded after %d failed attempts", failures)
        self.stats.written += len(points)
        self._ack(batch)
        return True

    def _write(self, points: list[Point]) -> None:
        self._write_api.write(
            bucket=self.settings.influx_bucket,
            org=self.settings.influx_org,
            record=points,
            write_precision=WritePrecision.NS,
        )

    def _write_one_by_one(self, points: list[Point]) -> None:
        """The database refused the batch's data: write each point alone, skip the refused."""
        for point in points:
            try:
                self._write([point])
            except ApiException as exc:
                if exc.status not in REJECTED_STATUSES:
                    raise
                self.stats.rejected += 1
                log.warning(
                    "the database refused a point (HTTP %s): %.200s",
                    exc.status,
                    exc.body or exc.reason,
                )

    def _sleep(self, seconds: float, deadline: float | None) -> bool:
        """Sleep in short steps; False when the deadline passes or a stop arrives mid-run."""
        end = time.monotonic() + seconds
        stopping_at_start = self._stopping
        while time.monotonic() < end:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if self._stopping and not stopping_at_start:
                return True  # retry at once; the shutdown flush takes over from here
            time.sleep(0.05)
        return deadline is None or time.monotonic() < deadline

    def _ack(self, batch: list[_Held]) -> None:
        """PUBACK the batch in delivery order and forget it (only this connection's mids)."""
        with self._cond:
            generation = self._generation
            written = {id(h) for h in batch}
            self._held = [h for h in self._held if id(h) not in written]
        for held in batch:
            if held.generation == generation and held.qos > 0:
                self._client.ack(held.mid, held.qos)

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.options.shutdown_timeout_s
        complete = True
        while True:
            batch = self._next_batch(wait=False)
            if not batch:
                break
            if not self._write_and_ack(batch, deadline):
                complete = False
                log.error(
                    "shutdown: %d messages not written; the broker will redeliver them",
                    len(self._held),
                )
                break
        self._client.disconnect()
        self._client.loop_stop()
        log.info("stopped; stats %s", self.stats.line())
        return 0 if complete else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = BridgeOptions()
    parser = argparse.ArgumentParser(
        prog="python -m facematch.observability.bridge",
        description="Write facematch metrics messages from MQTT into InfluxDB. Connection "
        "settings come from the FACEMATCH_MQTT_* and FACEMATCH_INFLUX_* variables.",
    )
    parser.add_argument(
        "--client-id",
        default=defaults.client_id,
        help="MQTT client id; keep it stable: the broker keeps this session's "
        "messages while the bridge is away (default %(default)s)",
    )
    parser.add_argument(
        "--session-expiry",
        type=int,
        default=defaults.session_expiry_s,
        help="seconds the broker keeps the session while the bridge is away",
    )
    parser.add_argument(
        "--retry-initial",
        type=float,
        default=defaults.retry_initial_s,
        help="first wait after a failed database write, seconds",
    )
    parser.add_argument(
        "--retry-max",
        type=float,
        default=defaults.retry_max_s,
        help="longest wait between write attempts, seconds",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=defaults.shutdown_timeout_s,
        help="how long SIGTERM may spend flushing, seconds",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=defaults.stats_interval_s,
        help="seconds between stats lines in the log",
    )
    parser.add_argument("--log-level", default=None, help="log level (default FACEMATCH_LOG_LEVEL)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = BridgeOptions(
        client_id=args.client_id,
        session_expiry_s=args.session_expiry,
        retry_initial_s=args.retry_initial,
        retry_max_s=args.retry_max,
        shutdown_timeout_s=args.shutdown_timeout,
        stats_interval_s=args.stats_interval,
    )
    try:
        bridge = Bridge(settings, options)
    except (ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    signal.signal(signal.SIGINT, lambda *_: bridge.stop())
    return bridge.run()


if __name__ == "__main__":
    sys.exit(main())
