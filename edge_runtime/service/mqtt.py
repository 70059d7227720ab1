"""The MQTT link of the service (paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``; MQTT 5 or 3.1.1).

* ``connect_async`` + ``loop_start``: a network thread that connects, and reconnects with exponential back-off
  (``reconnect_delay_set``), so a broker that is down at boot or restarts mid-flight never stops the service.
* Birth and Last Will: the will (``online: false``, retained, status QoS) is registered before connecting; on every
  (re)connect a retained birth message is published and the subscriptions are renewed; a clean stop publishes an
  explicit retained offline message first (the broker does not send the will on a clean disconnect).
* A bounded outbox: messages published while disconnected wait in a FIFO of ``outbox_max`` entries (the oldest is
  dropped and counted when full) and are sent after the birth message on reconnect; poses older than their expiry are
  dropped then. Under MQTT 5 poses carry ``MessageExpiryInterval`` (the remaining part of it when sent late).
* QoS > 0 messages the broker has not acknowledged (at most ``outbox_max``; more are dropped and counted as
  ``queue_full``) are taken back from paho on reconnect (the clean session made the broker forget them) and re-sent
  after the birth message, before the outbox, through the same expiry check: an expired QoS 1 pose is not re-sent.
* TLS (``tls_set``) and username/password (the password from an environment variable or a file).
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.service.config import MqttConfig

logger = logging.getLogger(__name__)

#: paho's queue of unacknowledged QoS > 0 messages holds this many more than ``outbox_max``. Ordinary messages stop
#: at ``outbox_max`` unacknowledged (:meth:`MqttLink._send`); the headroom is for the birth message and the final
#: offline status, which must find room even after a half-open link (a hung broker: TCP up, no PUBACK) filled the
#: queue: paho refuses a publish into a full queue (MQTT_ERR_QUEUE_SIZE) and the retained state would stay stale.
PAHO_QUEUE_HEADROOM = 8

#: ``handler(payload, retained, user_properties)`` for a subscribed topic (runs on the network thread).
MessageHandler = Callable[[bytes, bool, dict[str, str]], None]


class _ReconnectNoise(logging.Filter):
    """Drop paho's per-iteration 'Client is not connected' errors while it waits to reconnect (logged once here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOGGER = logging.getLogger(f"{__name__}.paho")
_PAHO_LOGGER.addFilter(_ReconnectNoise())


class MqttConfigError(ValueError):
    """Credentials or TLS files that cannot be used (names the config key)."""


@dataclass
class _Pending:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None
    queued_mono: float


def _acknowledged(info: paho.MQTTMessageInfo) -> bool:
    """True once the broker acknowledged the message (a message first refused with NO_CONN never reports it)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # rc NO_CONN: held by paho until the next connect takes it back
        return False


def read_password(config: MqttConfig, environ: dict[str, str] | None = None) -> str | None:
    """The broker password from ``password_env`` or ``password_file`` (first line), or None.

    Raises:
        MqttConfigError: the variable is unset or the file is empty / unreadable.
    """
    env = os.environ if environ is None else environ
    if config.password_env:
        if config.password_env not in env:
            raise MqttConfigError(f"mqtt.password_env: environment variable {config.password_env} is not set "
                                  "(systemd: put it in the EnvironmentFile)")
        return env[config.password_env]
    if config.password_file:
        try:
            lines = config.password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise MqttConfigError(f"mqtt.password_file: cannot read {config.password_file}: {exc}") from exc
        if not lines or not lines[0]:
            raise MqttConfigError(f"mqtt.password_file: {config.password_file} is empty")
        return lines[0]
    return None


class MqttLink:
    """One broker connection: publish with outbox and expiry, subscriptions renewed on reconnect, birth / will.

    Args:
        config: the ``mqtt`` section.
        client_id: MQTT client id.
        status_topic: where birth, offline and the Last Will go (retained).
        will_payload: the Last Will (composed now, sent by the broker when the connection drops uncleanly).
        birth: called on every connect for the retained birth payload (so it carries the current state).
    """

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        status_topic: str,
        will_payload: bytes,
        birth: Callable[[], bytes],
    ) -> None:
        self.config = config
        self.status_topic = status_topic
        self.client_id = client_id
        self._birth = birth
        self.v5 = config.protocol == "v5"
        protocol = MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311
        kwargs: dict[str, Any] = {} if self.v5 else {"clean_session": True}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self.client.enable_logger(_PAHO_LOGGER)
        self.client.suppress_exceptions = True  # a failing callback is logged; it must not end the network thread
        self.client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]
        self.client.max_queued_messages_set(config.outbox_max + PAHO_QUEUE_HEADROOM)
        will_props = None
        if self.v5 and config.will_delay_s:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = config.will_delay_s
        self.client.will_set(status_topic, will_payload, qos=config.qos.status, retain=True, properties=will_props)
        if config.username is not None:
            self.client.username_pw_set(config.username, read_password(config))
        if config.tls.enabled:
            tls = config.tls
            try:
                self.client.tls_set(
                    ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
                    certfile=str(tls.certfile) if tls.certfile else None,
                    keyfile=str(tls.keyfile) if tls.keyfile else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise MqttConfigError(f"mqtt.tls: cannot load the certificates: {exc}") from exc
            self.client.tls_insecure_set(tls.insecure)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._stopping = False
        self._started = False
        self._subscriptions: dict[str, tuple[int, MessageHandler]] = {}
        self._pending_subacks: dict[int, str] = {}
        self._subscribed = threading.Event()
        self._outbox: deque[_Pending] = deque()
        #: QoS > 0 messages handed to paho and not acknowledged yet (with their info, to see the acknowledgement)
        self._unacked: list[tuple[paho.MQTTMessageInfo, _Pending]] = []
        self.counters = {
            "connects": 0, "disconnects": 0, "connect_failures": 0, "published": 0, "outbox_queued": 0,
            "outbox_dropped": 0, "outbox_expired": 0, "queue_full": 0, "received": 0, "handler_errors": 0,
            "birth_failed": 0,
        }
        #: messages per topic that were accepted but never handed to the network (outbox overflow, expired in the
        #: outbox, in-flight queue full, refused by paho): what the service reports as undelivered poses
        self.undelivered: dict[str, int] = {}
        self.last_error: str | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def subscribe(self, topic: str, qos: int, handler: MessageHandler) -> None:
        """Subscribe to an exact topic (renewed on every reconnect)."""
        with self._lock:
            self._subscriptions[topic] = (qos, handler)
            if self._connected.is_set():
                self._subscribe(topic, qos)

    def _subscribe(self, topic: str, qos: int) -> None:
        rc, mid = self.client.subscribe(topic, qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks[mid] = topic
            self._subscribed.clear()

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until connected and every subscription is acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        return self._connected.wait(timeout) and self._subscribed.wait(max(0.0, deadline - time.monotonic()))

    def start(self) -> None:
        """Connect in the background (never blocks; a broker that is down is retried with back-off)."""
        kwargs: dict[str, Any] = {}
        if self.v5:
            kwargs["clean_start"] = True
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s, **kwargs)
        self.client.loop_start()
        self._started = True
        logger.info("MQTT %s -> %s:%d (client %s, %s)", "v5" if self.v5 else "v3.1.1", self.config.host,
                    self.config.port, self.client_id, "TLS" if self.config.tls.enabled else "plain")

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected (True) or ``timeout`` seconds (False)."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    def stop(self, final_status: bytes | None, timeout: float = 3.0) -> None:
        """Publish ``final_status`` (retained, on the status topic) if connected, then disconnect cleanly."""
        if not self._started:
            return
        with self._lock:
            self._stopping = True
            connected = self._connected.is_set()
            left = list(self._outbox)  # never reached a broker: counted and said, not dropped silently
            self._outbox.clear()
            for msg in left:
                self._lost(msg.topic)
        if left:
            logger.warning("%d message(s) never reached the MQTT broker (%s:%d) before the stop: %s", len(left),
                           self.config.host, self.config.port,
                           ", ".join(f"{n} on {t}" for t, n in sorted(Counter(m.topic for m in left).items())))
        if connected and final_status is not None:
            info = self.client.publish(self.status_topic, final_status, qos=max(1, self.config.qos.status),
                                       retain=True, properties=self._props(None))
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                logger.warning("the final status could not be published: %s", exc)
            if not info.is_published():
                logger.warning("the final status was not acknowledged within %.1f s", timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False

    # ------------------------------------------------------------------------------------------ publish
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, expiry_s: int | None = None) -> bool:
        """Publish now, or keep the message in the outbox while disconnected.

        Args:
            expiry_s: the message is useless after this many seconds (MQTT 5 ``MessageExpiryInterval``; also
                dropped from the outbox after it). None = no expiry.

        Returns:
            True when handed to the network (or queued for it); False when it had to be dropped.
        """
        with self._lock:
            if not self._connected.is_set():
                self._enqueue(_Pending(topic, payload, qos, retain, expiry_s, time.monotonic()))
                return True
            return self._send(_Pending(topic, payload, qos, retain, expiry_s, time.monotonic()))

    def _props(self, expiry_s: int | None) -> Properties | None:
        if not self.v5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        if expiry_s:
            props.MessageExpiryInterval = int(expiry_s)
        return props

    def _send(self, msg: _Pending) -> bool:
        expiry = msg.expiry_s
        if expiry:
            left = expiry - (time.monotonic() - msg.queued_mono)
            if left <= 0:
                self.counters["outbox_expired"] += 1
                self._lost(msg.topic)
                return False
            expiry = max(1, math.ceil(left))
        if msg.qos > 0 and self._unacked_count() >= self.config.outbox_max:
            return self._queue_full(msg)
        info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                   properties=self._props(expiry))
        if msg.qos > 0 and info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._unacked.append((info, msg))
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters["published"] += 1
            return True
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            if msg.qos == 0:  # QoS > 0 stays in paho's own queue until the reconnect takes it back (_take_unacked)
                self._enqueue(msg)
            return True
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return self._queue_full(msg)
        self.last_error = paho.error_string(info.rc)
        self._lost(msg.topic)
        logger.warning("MQTT publish on %s failed: %s", msg.topic, self.last_error)
        return False

    def _queue_full(self, msg: _Pending) -> bool:
        self.counters["queue_full"] += 1
        self._lost(msg.topic)
        logger.warning("MQTT in-flight queue full (%d unacknowledged): message on %s dropped", self.config.outbox_max,
                       msg.topic)
        return False

    def _unacked_count(self) -> int:
        """QoS > 0 messages not acknowledged yet (the acknowledged ones are forgotten here)."""
        self._unacked = [(info, msg) for info, msg in self._unacked if not _acknowledged(info)]
        return len(self._unacked)

    def _take_unacked(self, client: paho.Client) -> list[_Pending]:
        """Take every unacknowledged message back from paho (on connect: the clean session made the broker forget
        them), to re-send them through :meth:`_send` with its expiry check. Old birth and final messages are
        dropped with them (a fresh birth follows). A paho without ``drop_out_messages`` re-sends them itself,
        expired or not."""
        drop = getattr(client, "drop_out_messages", None)
        if drop is None:
            self._unacked = []
            return []
        drop()
        stale = [msg for info, msg in self._unacked if not _acknowledged(info)]
        self._unacked = []
        return stale

    def _publish_birth(self, client: paho.Client) -> None:
        info = client.publish(self.status_topic, self._birth(), qos=self.config.qos.status, retain=True,
                              properties=self._props(None))
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters["birth_failed"] += 1
            self.last_error = f"birth message not published: {paho.error_string(info.rc)}"
            logger.error("MQTT birth message on %s not published: %s", self.status_topic,
                         paho.error_string(info.rc))

    def _lost(self, topic: str) -> None:
        self.undelivered[topic] = self.undelivered.get(topic, 0) + 1

    def _enqueue(self, msg: _Pending) -> None:
        if len(self._outbox) >= self.config.outbox_max:
            self._lost(self._outbox.popleft().topic)
            self.counters["outbox_dropped"] += 1
        self._outbox.append(msg)
        self.counters["outbox_queued"] += 1

    @property
    def outbox_len(self) -> int:
        """Messages waiting for a connection."""
        with self._lock:
            return len(self._outbox)

    # ---------------------------------------------------------------------------------------- callbacks
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.counters["connect_failures"] += 1
            self.last_error = f"connection refused: {reason_code}"
            logger.error("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port,
                         reason_code)
            return
        with self._lock:
            self.counters["connects"] += 1
            self._connected.set()
            self.last_error = None
            stale = self._take_unacked(client)
            self._publish_birth(client)
            self._pending_subacks.clear()
            for topic, (qos, _) in self._subscriptions.items():
                self._subscribe(topic, qos)
            if not self._pending_subacks:
                self._subscribed.set()
            pending, self._outbox = [*stale, *self._outbox], deque()
            for msg in pending:
                self._send(msg)
        logger.info("MQTT connected to %s:%d (connection %d; %d unacknowledged and %d queued messages sent)",
                    self.config.host, self.config.port, self.counters["connects"], len(stale),
                    len(pending) - len(stale))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            was = self._connected.is_set()
            self._connected.clear()
            self._subscribed.clear()
            if was:
                self.counters["disconnects"] += 1
            stopping = self._stopping
        if not stopping and was:
            self.last_error = f"disconnected: {reason_code}"
            logger.warning("MQTT connection lost (%s); reconnecting with back-off %.1f..%.1f s", reason_code,
                           self.config.reconnect_min_s, self.config.reconnect_max_s)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._lock:
            topic = self._pending_subacks.pop(mid, None)
            if not self._pending_subacks:
                self._subscribed.set()
        for code in reason_codes:
            if code.is_failure:
                self.last_error = f"subscription to {topic} refused: {code}"
                logger.error("the broker refused the subscription to %s: %s", topic, code)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.counters["connect_failures"] += 1
        self.last_error = f"cannot reach {self.config.host}:{self.config.port}"
        if self.counters["connect_failures"] in (1, 10) or self.counters["connect_failures"] % 100 == 0:
            logger.warning("MQTT broker %s:%d unreachable (%d attempts); retrying", self.config.host,
                           self.config.port, self.counters["connect_failures"])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        entry = self._subscriptions.get(message.topic)
        if entry is None:
            return
        self.counters["received"] += 1
        props: dict[str, str] = {}
        if self.v5 and message.properties is not None and hasattr(message.properties, "UserProperty"):
            props = {str(k): str(v) for k, v in message.properties.UserProperty}
        try:
            entry[1](bytes(message.payload), bool(message.retain), props)
        except Exception:
            self.counters["handler_errors"] += 1
            logger.exception("handler for %s failed", message.topic)
