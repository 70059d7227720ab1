"""Test doubles for the service tests: a locator double and a recording MQTT subscriber.

``DoubleLocator`` implements ``edge_runtime.service.service.LocatorProtocol`` without any network: it returns a fix
at a configured position whose altitude and heading echo the priors it was given, "no fix" for textureless frames
(pixel standard deviation below ``min_std``), and can be told to be slow or to start failing, so the service
mechanics (MQTT, queue, notify, health, bad input) can be tested on real frames. The end-to-end test with the real
locator lives elsewhere.

Run as a script it is the ``edge-runtime`` CLI with this double as the locator::

    python tests/service_double.py --config vehicle.yaml
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_runtime.types import LocateResult, Priors


@dataclass(frozen=True)
class DoubleLocatorConfig:
    """Behaviour of the double.

    Attributes:
        lat, lon: the position every fix reports.
        delay_s: time each ``locate`` call takes.
        warmup_s: time ``warmup`` takes.
        fail_after: every call after this many raises (a dead backend); None = never.
        fail_with: ``runtime`` (``RuntimeError``) or ``value`` (``ValueError``: the locator refuses the frame).
        min_std: frames whose pixel standard deviation is below this get no fix.
        degraded: report a degraded backend.
    """

    lat: float = 46.8421
    lon: float = -91.9941
    delay_s: float = 0.0
    warmup_s: float = 0.0
    fail_after: int | None = None
    fail_with: str = "runtime"
    min_std: float = 2.0
    degraded: bool = False

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.warmup_s < 0:
            raise ValueError("delay_s and warmup_s must be >= 0")


@dataclass(frozen=True)
class LocateCall:
    """What one ``locate`` call received."""

    shape: tuple[int, ...]
    dtype: str
    mean_rgb: tuple[float, float, float]
    priors: Priors
    camera: Any


class DoubleLocator:
    """A locator double (see the module docstring)."""

    def __init__(self, bundle_dir: Path, cache_dir: Path, config: DoubleLocatorConfig) -> None:
        self.bundle_dir, self.cache_dir, self.config = bundle_dir, cache_dir, config
        self.warmed = False
        self.calls: list[LocateCall] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, bundle_dir: Path, cache_dir: Path, config: DoubleLocatorConfig) -> DoubleLocator:
        for path in (bundle_dir, cache_dir):
            if not Path(path).is_dir():
                raise FileNotFoundError(f"{path} does not exist")
        return cls(Path(bundle_dir), Path(cache_dir), config)

    def warmup(self) -> None:
        time.sleep(self.config.warmup_s)
        self.warmed = True

    @property
    def backend_status(self) -> dict[str, Any]:
        return {"backend": "double", "precision": "fp32", "degraded": self.config.degraded,
                "reason": "configured degraded" if self.config.degraded else None}

    def locate(self, image_rgb: np.ndarray, priors: Priors, camera: Any = None) -> LocateResult:
        if not self.warmed:
            raise RuntimeError("locate before warmup")
        t0 = time.perf_counter()
        with self._lock:
            mean = tuple(float(v) for v in image_rgb.reshape(-1, 3).mean(axis=0))
            self.calls.append(LocateCall(tuple(image_rgb.shape), str(image_rgb.dtype), mean, priors, camera))
            n = len(self.calls)
        cfg = self.config
        if cfg.fail_after is not None and n > cfg.fail_after:
            if cfg.fail_with == "value":
                raise ValueError(f"simulated refusal of the frame on call {n}")
            raise RuntimeError(f"simulated backend failure on call {n}")
        time.sleep(cfg.delay_s)
        common = {"backend": "double", "precision": "fp32", "degraded": cfg.degraded,
                  "capture_time": priors.capture_time}
        if float(image_rgb.std()) < cfg.min_std:
            return LocateResult.failure("no texture in the frame", confidence=0.0,
                                        latency_ms={"total": (time.perf_counter() - t0) * 1e3}, **common)
        yaw = priors.yaw_deg or 0.0
        footprint = square_footprint(cfg.lon, cfg.lat, 30.0, yaw)
        total = (time.perf_counter() - t0) * 1e3
        return LocateResult(
            ok=True, map_id="double_map", lat=cfg.lat, lon=cfg.lon, footprint_lonlat=footprint, heading_deg=yaw,
            altitude_agl_m=priors.altitude_agl_m, std_m=(1.5, 2.0), confidence=0.75, inliers=42,
            latency_ms={"encode": total * 0.5, "total": total}, **common)


def square_footprint(lon: float, lat: float, half_m: float, yaw_deg: float) -> np.ndarray:
    """``(4, 2)`` [lon, lat] corners of a square frame footprint in image-corner order (0,0),(w,0),(w,h),(0,h).

    The image top points to ``yaw_deg`` (clockwise from north), so with yaw 0 the corners run NW, NE, SE, SW: a
    clockwise ring in (lon, lat), which the service must turn counter-clockwise for GeoJSON.
    """
    corners = np.array([[-1, 1], [1, 1], [1, -1], [-1, -1]], dtype=np.float64) * half_m  # (east, north), yaw 0
    a = math.radians(yaw_deg)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    en = corners @ rot.T
    m_per_deg_lat = 111_320.0
    m_per_deg_lon = m_per_deg_lat * math.cos(math.radians(lat))
    return np.stack([lon + en[:, 0] / m_per_deg_lon, lat + en[:, 1] / m_per_deg_lat], axis=1)


class RecordingSubscriber:
    """An MQTT client that records every message on the topics it subscribes to (thread-safe)."""

    def __init__(self, port: int, topics: list[str], protocol: str = "v5", client_id: str = "recorder",
                 ca_certs: str | None = None, username: str | None = None, password: str | None = None,
                 qos: int = 1) -> None:
        proto = MQTTProtocolVersion.MQTTv5 if protocol == "v5" else MQTTProtocolVersion.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        if ca_certs:
            self.client.tls_set(ca_certs=ca_certs)
        if username:
            self.client.username_pw_set(username, password)
        self.topics = topics
        self.qos = qos  # the subscription's QoS: a message arrives at min(its publish QoS, this)
        self.messages: list[paho.MQTTMessage] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", port, 10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("the recording subscriber did not subscribe within 10 s")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        for topic in self.topics:
            client.subscribe(topic, self.qos)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def json(self, topic: str) -> list[dict[str, Any]]:
        """Decoded payloads received on ``topic`` so far."""
        with self._cond:
            return [json.loads(m.payload) for m in self.messages if m.topic == topic and m.payload]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` is true (bounded)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds have passed; its value then (checked once more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class TcpProxy:
    """A loopback TCP forwarder the test can cut (``down``) and restore (``up``): a network outage double.

    ``down`` closes the listening socket and every forwarded connection abruptly, so the broker sees the client
    vanish without an MQTT DISCONNECT (which triggers its Last Will) and the client cannot reconnect until ``up``.
    """

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0

    def up(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread (close alone does not)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:  # no MQTT DISCONNECT reaches the broker: an unclean loss of the connection
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


if __name__ == "__main__":
    from edge_runtime.service.cli import run

    sys.exit(run(sys.argv[1:], DoubleLocator, DoubleLocatorConfig))
