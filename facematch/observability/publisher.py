"""Publishes one metrics message per request to MQTT, off the request path.

``create_publisher(settings)`` gives a ``NullPublisher`` (free, does nothing) when
``FACEMATCH_MQTT_HOST`` is empty, otherwise an ``MqttPublisher``:

- ``publish(record)`` only appends the record to a bounded in-process queue and wakes a sender
  thread; it never blocks on the network and never raises. Past ``FACEMATCH_MQTT_QUEUE_SIZE``
  held messages the oldest is dropped and counted (``stats()["dropped"]``, and a warning in the
  log once per outage).
- The sender thread builds the message, hands it to paho-mqtt while connected (at most a small
  window of unacknowledged messages at a time), and paho's network thread reconnects with
  backoff by itself; messages in the window are resent after a reconnect (at-least-once for
  QoS 1).
- Nothing (thread, socket, client) is created until the first ``publish`` in a process, and a
  process whose pid differs from the one that started it starts afresh: safe with Gunicorn's
  ``preload_app`` and fork.

What is queued need not be a request record: ``outgoing`` turns a queued item into its topic,
payload and retain flag (the default: the metrics message of a ``RequestRecord``); the camera
watcher sends its events through an ``MqttPublisher`` of its own this way.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import paho.mqtt.client as mqtt

from facematch.config import Settings
from facematch.observability.message import build_message, encode
from facematch.observability.record import RequestRecord

log = logging.getLogger(__name__)

#: Messages handed to paho but not yet acknowledged by the broker, at most.
WINDOW = 20
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10
KEEPALIVE_S = 30


class Outgoing(NamedTuple):
    """One MQTT message: its topic, payload and whether the broker keeps it for newcomers."""

    topic: str
    payload: bytes
    retain: bool = False


class Publisher(Protocol):
    def start(self) -> None: ...

    def publish(self, record: RequestRecord) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self, timeout: float = 2.0) -> None: ...


class NullPublisher:
    """Metrics switched off (no broker configured): every call is a no-op."""

    def start(self) -> None:
        return None

    def publish(self, record: RequestRecord) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"enabled": False}

    def close(self, timeout: float = 2.0) -> None:
        return None


def create_publisher(settings: Settings) -> Publisher:
    """The publisher ``settings`` ask for: MQTT when ``mqtt_host`` is set, else a no-op."""
    if not settings.mqtt_host:
        return NullPublisher()
    return MqttPublisher(settings)


def client_id_for(settings: Settings, pid: int) -> str:
    """Distinct per worker: ``FACEMATCH_MQTT_CLIENT_ID`` (default facematch-api-<node>) + pid."""
    base = settings.mqtt_client_id or f"facematch-api-{settings.node}"
    return f"{base}-{pid}"


def make_client(
    settings: Settings, client_id: str, clean_start: bool = True, manual_ack: bool = False
) -> mqtt.Client:
    """A paho MQTT v5 client with the configured credentials and TLS (when a CA file is set)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password or None)
    if settings.mqtt_ca_file:
        client.tls_set(ca_certs=settings.mqtt_ca_file)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def connect_failure_reason() -> str:
    """Why paho's last connection attempt failed: paho calls ``on_connect_fail`` while it
    handles the OSError (refused, TLS verification, ...), so the exception is still current."""
    exc = sys.exc_info()[1]
    return f"{type(exc).__name__}: {exc}"[:200] if exc is not None else "connection failed"


class MqttPublisher:
    """The real publisher; see the module docstring for its guarantees."""

    def __init__(
        self,
        settings: Settings,
        outgoing: Callable[[Any], Outgoing] | None = None,
        client_id: str | None = None,
    ):
        """A publisher to the broker ``settings`` name; ``outgoing`` makes each queued item's
        message (default: the metrics message on ``FACEMATCH_MQTT_TOPIC``), ``client_id`` is
        the client id's stem (default ``client_id_for``'s; the pid is appended)."""
        if settings.mqtt_qos not in (0, 1, 2):
            raise ValueError("FACEMATCH_MQTT_QOS must be 0, 1 or 2")
        if settings.mqtt_queue_size < 1:
            raise ValueError("FACEMATCH_MQTT_QUEUE_SIZE must be at least 1")
        self._settings = settings
        self._outgoing = outgoing or self._metrics_message
        self._client_id = client_id
        self._host = socket.gethostname()
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        """Per-process state; rebuilt in a forked child before its first publish."""
        self._wake = threading.Condition(threading.Lock())
        self._queue: collections.deque[RequestRecord] = collections.deque()
        self._unacked: set[int] = set()
        self._acked_early: set[int] = set()
        self._in_hand = 0  # a record the sender took from the queue and is publishing
        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None
        self._connected = False
        self._closing = False
        self._published = 0
        self._sent = 0
        self._dropped = 0
        self._dropped_in_outage = 0
        self._errors = 0
        self._connect_failures = 0
        self._refused = False
        self._last_error: str | None = None

    def start(self) -> None:
        """Connect this process's client now rather than at its first publish (a Gunicorn
        worker calls it at boot, so its /health is true before any request); never raises."""
        try:
            self._ensure_started()
        except Exception as exc:
            self._errors += 1
            self._last_error = f"start: {exc}"[:200]

    # --- the request path ---

    def publish(self, record: RequestRecord) -> None:
        """Queue one record for sending; O(1), no I/O, never raises."""
        try:
            self._ensure_started()
            with self._wake:
                if self._closing:
                    return
                self._published += 1
                capacity = self._settings.mqtt_queue_size
                if len(self._queue) + len(self._unacked) + self._in_hand >= capacity:
                    if self._queue:
                        self._queue.popleft()
                        self._queue.append(record)
                    self._count_drop()
                else:
                    self._queue.append(record)
                self._wake.notify()
        except Exception as exc:  # the request must never fail because of metrics
            self._errors += 1
            self._last_error = f"publish: {exc}"[:200]

    def _count_drop(self) -> None:
        self._dropped += 1
        self._dropped_in_outage += 1
        if self._dropped_in_outage == 1:
            log.warning(
                "metrics queue full (%d): dropping the oldest messages until the broker "
                "at %s:%d takes them again",
                self._settings.mqtt_queue_size,
                self._settings.mqtt_host,
                self._settings.mqtt_port,
            )

    def stats(self) -> dict[str, Any]:
        """Counters of this process (each Gunicorn worker has its own)."""
        with self._wake:
            return {
                "enabled": True,
                "pid": os.getpid(),
                "broker": f"{self._settings.mqtt_host}:{self._settings.mqtt_port}",
                "topic": self._settings.mqtt_topic,
                "connected": self._connected and self._pid == os.getpid(),
                "queued": len(self._queue) + len(self._unacked) + self._in_hand,
                "queue_size": self._settings.mqtt_queue_size,
                "published": self._published,
                "sent": self._sent,
                "dropped": self._dropped,
                "errors": self._errors,
                "last_error": self._last_error,
            }

    # --- lifecycle ---

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid == pid:
                return
            if self._pid is not None:
                self._reset_state()  # a forked child: the parent's threads are not here
            self._pid = pid
            stem = self._client_id
            name = f"{stem}-{pid}" if stem else client_id_for(self._settings, pid)
            client = make_client(self._settings, name)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_connect_fail = self._on_connect_fail
            client.on_publish = self._on_publish
            client.max_inflight_messages_set(WINDOW)
            self._client = client
            client.connect_async(
                self._settings.mqtt_host, self._settings.mqtt_port, keepalive=KEEPALIVE_S
            )
            client.loop_start()
            self._sender = threading.Thread(
                target=self._send_loop, name="facematch-metrics", daemon=True
            )
            self._sender.start()
            atexit.register(self.close, 1.0)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` seconds (waiting for the broker if need
        be), then disconnect; later ``publish`` calls in this process are ignored."""
        if self._pid != os.getpid() or self._client is None:
            return
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or self._unacked or self._in_hand:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(min(remaining, 0.05))
            self._closing = True
            self._wake.notify_all()
        client, self._client = self._client, None
        try:
            client.disconnect()
            client.loop_stop()
        except Exception as exc:
            log.debug("metrics client close: %s", exc)
        if self._sender is not None:
            self._sender.join(max(0.0, deadline - time.monotonic()) + 0.5)

    # --- the sender thread and paho's callbacks ---

    def _metrics_message(self, record: RequestRecord) -> Outgoing:
        message = build_message(record, self._settings.node, os.getpid(), self._host)
        return Outgoing(self._settings.mqtt_topic, encode(message))

    def _send_loop(self) -> None:
        qos = self._settings.mqtt_qos
        while True:
            with self._wake:
                while not self._closing and not (
                    self._queue and self._connected and len(self._unacked) < WINDOW
                ):
                    self._wake.wait(1.0)
                if self._closing:
                    return
                record = self._queue.popleft()
                self._in_hand = 1
                client = self._client
            try:
                message = self._outgoing(record)
            except Exception as exc:
                with self._wake:
                    self._in_hand = 0
                    self._errors += 1
                    self._last_error = f"message: {exc}"[:200]
                continue
            try:
                info = client.publish(
                    message.topic, message.payload, qos=qos, retain=message.retain
                )
            except Exception as exc:
                with self._wake:
                    self._in_hand = 0
                    self._errors += 1
                    self._last_error = f"publish: {exc}"[:200]
                continue
            with self._wake:
                self._in_hand = 0
                if info.rc == mqtt.MQTT_ERR_SUCCESS or qos > 0:
                    # QoS > 0: paho keeps it and resends after a reconnect until acknowledged.
                    if info.mid in self._acked_early:
                        self._acked_early.discard(info.mid)
                    else:
                        self._unacked.add(info.mid)
                else:
                    self._queue.appendleft(record)  # QoS 0 while disconnected: keep it
                    self._wake.wait(0.1)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._wake:
            if reason_code.is_failure:
                self._connected = False
                self._refused = True
                self._last_error = f"connect: {reason_code}"
                self._connect_failures += 1
                if self._connect_failures == 1 or self._connect_failures % 20 == 0:
                    log.warning(
                        "metrics broker %s:%d refused the connection: %s",
                        self._settings.mqtt_host,
                        self._settings.mqtt_port,
                        reason_code,
                    )
                return
            self._connected = True
            self._connect_failures = 0
            if self._dropped_in_outage:
                log.warning(
                    "metrics broker back; %d messages were dropped while it was away",
                    self._dropped_in_outage,
                )
            self._dropped_in_outage = 0
            self._wake.notify_all()

    def _on_connect_fail(self, client, userdata) -> None:
        reason = connect_failure_reason()
        with self._wake:
            self._connect_failures += 1
            failures = self._connect_failures
            self._last_error = f"connect: {reason}"
        if failures == 1 or failures % 20 == 0:
            log.warning(
                "metrics broker %s:%d unreachable (%s); %d attempts, retrying",
                self._settings.mqtt_host,
                self._settings.mqtt_port,
                reason,
                failures,
            )

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._wake:
            was_connected, self._connected = self._connected, False
            if self._settings.mqtt_qos == 0:
                self._unacked.clear()  # QoS 0 messages not yet written are lost with the socket
            if self._closing:
                return
            if not was_connected:
                if not self._refused:  # a refusal already said why in last_error
                    self._last_error = (
                        f"connection lost before the broker accepted it: {reason_code}"
                    )
                self._refused = False
            else:
                self._last_error = f"disconnected: {reason_code}"
                log.warning(
                    "metrics broker %s:%d disconnected (%s); reconnecting",
                    self._settings.mqtt_host,
                    self._settings.mqtt_port,
                    reason_code,
                )

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        """The broker acknowledged ``mid`` (QoS 0: it was written to the socket).

        paho calls this holding its own message lock, so ``publish`` is never called under
        ``self._wake``; an acknowledgement may arrive before the sender has noted the mid.
        """
        with self._wake:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._acked_early.add(mid)
            if reason_code.is_failure:
                self._errors += 1
                self._last_error = f"broker refused a message: {reason_code}"
            else:
                self._sent += 1
            self._wake.notify_all()
