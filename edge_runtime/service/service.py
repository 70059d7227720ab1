"""The processing loop of ``edge-runtime``: source -> latest-frame queue -> decode -> priors -> locate -> MQTT.

Lifecycle (systemd ``Type=notify``):

1. :meth:`Service.start`: connect MQTT in the background (birth / Last Will), open the bundle and the map cache through
   the locator (which verifies their hashes), warm up, open the frame source, then ``READY=1`` with a ``STATUS=`` line.
   ``EXTEND_TIMEOUT_USEC`` is sent before the slow steps. Any failure is a :class:`StartupError` naming its cause.
2. :meth:`Service.run`: the loop takes the newest frame, processes it and pings the watchdog (``WATCHDOG=1``) from
   this loop only, and only while the pipeline is healthy: after ``health.max_consecutive_errors`` locator failures
   in a row (any exception out of ``locate``; "no fix" is not a failure), when the source thread died, or when a
   live source went silent for ``health.source_timeout_s``, the pings stop (systemd then restarts the service) and
   after ``health.unhealthy_exit_s`` the loop exits with status 1 itself.
   Bad input (corrupt JPEG, empty MQTT payload, unexpected frame size, bad telemetry) is a status error and the loop
   carries on. A non-looping replay ends the loop with status 0 once every frame is processed.
   An unexpected exception out of the processing of one frame (a bug) is logged with its traceback, published as a
   ``locate_error`` status and counted like a locator failure; the loop carries on.
3. :meth:`Service.close`: ``STOPPING=1``, ask the source to stop, stop the MAVLink bridge, publish the retained
   offline status, disconnect, then wait for the source to finish.

With a ``mavlink:`` section a :class:`~edge_runtime.mavlink.MavlinkBridge` runs beside MQTT: it starts with the MQTT
link, every located result goes to the autopilot through ``publish_fix`` (which sends nothing for a frame without a
fix), ``telemetry.kind: mavlink`` takes each frame's priors from the autopilot at the frame's capture time, the
retained status messages carry the link state, and a link that goes down (or comes back) publishes a retained
``mavlink_down`` (``mavlink_up``) status. A MAVLink link that is down does not make the service unhealthy: the
poses still go out over MQTT.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np

from calibration.camera_info import CameraInfo, read_camera_info, same_aspect
from calibration.exif import camera_from_metadata, jpeg_pixel_size, jpeg_segments
from edge_runtime.mavlink.bridge import MavlinkBridge
from edge_runtime.service import payloads
from edge_runtime.service.config import EXIT_CONFIG, EXIT_FAILED, ServiceConfig
from edge_runtime.service.frame_queue import LatestFrameQueue, QueueClosed
from edge_runtime.service.mqtt import MqttConfigError, MqttLink
from edge_runtime.service.sdnotify import Notifier, NotifyError, watchdog_interval_s
from edge_runtime.service.sources import Frame, FrameSource, SourceError, make_source
from edge_runtime.service.telemetry import (
    TelemetryError,
    TelemetryStore,
    epoch_seconds,
    fixed_priors,
    priors_from_jpeg_bytes,
    priors_from_jpeg_file,
)
from edge_runtime.types import LocateResult, Priors

logger = logging.getLogger(__name__)


@runtime_checkable
class LocatorProtocol(Protocol):
    """What the service needs from a locator (``edge_runtime.locator.Locator`` implements it)."""

    @classmethod
    def open(cls, bundle_dir: Path, cache_dir: Path, config: Any) -> LocatorProtocol:
        """Open and verify the bundle and the map cache."""
        ...

    def locate(self, image_rgb: np.ndarray, priors: Priors) -> LocateResult:
        """Locate one ``(H, W, 3)`` uint8 RGB frame (optionally ``camera=`` intrinsics as a keyword)."""
        ...

    def warmup(self) -> None:
        """Run every graph once."""
        ...

    @property
    def backend_status(self) -> dict[str, Any]:
        """``backend``, ``precision``, ``degraded``, ``reason``."""
        ...


class StartupError(RuntimeError):
    """The service cannot start (bundle, cache, source, credentials); the message names the cause."""


class FrameError(ValueError):
    """One frame that cannot be processed (corrupt JPEG, wrong size); reported as a status error."""


#: JPEG frames whose header declares more pixels than this are refused before decoding: a corrupt or forged header
#: (20000 x 20000) would make the decoder allocate gigabytes and decode grey for seconds
MAX_FRAME_PIXELS = 150_000_000


def decode_frame(frame: Frame, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """The frame's pixels as ``(H, W, 3)`` uint8 RGB.

    JPEG bytes must start with SOI, end with EOI (trailing zero padding allowed) and have intact marker segments up
    to the scan with a frame header: libjpeg only warns about a truncated file or a broken header and decodes grey or
    garbage, so these are refused here. Damage inside the entropy-coded scan cannot be detected. EXIF orientation is
    not applied. The size in the JPEG header is checked (``expected_size`` = ``(width, height)``, at most
    :data:`MAX_FRAME_PIXELS`) before anything is decoded.

    Raises:
        FrameError: naming the frame.
    """
    if frame.jpeg is not None:
        data = frame.jpeg
        if not data:
            raise FrameError(f"{frame.name}: empty frame")
        if not data.startswith(b"\xff\xd8"):
            raise FrameError(f"{frame.name}: not a JPEG (no SOI marker)")
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise FrameError(f"{frame.name}: truncated JPEG (no EOI marker at the end, {len(data)} bytes)")
        try:
            width, height = jpeg_pixel_size(jpeg_segments(data, frame.name), frame.name)
        except ValueError as exc:  # libjpeg only warns about broken headers and decodes garbage
            raise FrameError(str(exc)) from exc
        if width * height > MAX_FRAME_PIXELS:
            raise FrameError(f"{frame.name}: the JPEG header declares {width}x{height} pixels (at most "
                             f"{MAX_FRAME_PIXELS} allowed)")
        if expected_size is not None and (width, height) != tuple(expected_size):
            raise FrameError(f"{frame.name}: unexpected frame size {width}x{height}, expected "
                             f"{expected_size[0]}x{expected_size[1]}")
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        except cv2.error as exc:
            raise FrameError(f"{frame.name}: corrupt JPEG (OpenCV: {str(exc).strip().splitlines()[-1]})") from exc
        if image is None:
            raise FrameError(f"{frame.name}: corrupt JPEG (OpenCV cannot decode {len(data)} bytes)")
    elif frame.image_bgr is not None:
        image = frame.image_bgr
    else:
        raise FrameError(f"{frame.name}: the frame carries no pixels")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise FrameError(f"{frame.name}: expected (H, W, 3) uint8 pixels, got {image.shape} {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


#: the metadata fields the EXIF intrinsics depend on (frames sharing them share one CameraInfo)
_INTRINSICS_KEYS = (
    "width", "height", "orientation", "make", "model", "focal_length_mm", "focal_length_35mm",
    "calibrated_focal_length_px", "calibrated_optical_center_x", "calibrated_optical_center_y", "original_width",
    "original_height",
)


class LatencyLog:
    """Per-frame latency records (milliseconds per stage), newest ``maxlen`` kept (about 0.4 KiB each: the bound keeps
    a service that runs for hours from growing; the status counters use the newest 100)."""

    def __init__(self, maxlen: int = 5_000) -> None:
        self.records: deque[dict[str, float]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, record: Mapping[str, float]) -> None:
        """Keep one frame's stage latencies."""
        with self._lock:
            self.records.append(dict(record))

    def summary(self, last: int | None = None) -> dict[str, dict[str, float]]:
        """``{stage: {"median", "p95", "n"}}`` over the newest ``last`` records (all when None)."""
        with self._lock:
            recs = list(self.records)[-last:] if last else list(self.records)
        stages = sorted({k for r in recs for k in r})
        out = {}
        for stage in stages:
            values = np.array([r[stage] for r in recs if stage in r], dtype=np.float64)
            out[stage] = {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
                          "n": int(values.size)}
        return out


class Service:
    """The onboard service around one locator.

    Args:
        config: the validated service config.
        locator_type: a class implementing :class:`LocatorProtocol` (``edge_runtime.locator.Locator``).
        locator_config: the locator's config object, handed to ``locator_type.open``.
        notifier: systemd notifier (default: from ``NOTIFY_SOCKET``).
    """

    COUNTERS: ClassVar[tuple[str, ...]] = (
        "processed", "poses", "no_fix", "frame_error", "telemetry_error", "source_error", "locate_error",
        "telemetry_stale", "pose_publish_failed",
    )

    def __init__(
        self,
        config: ServiceConfig,
        locator_type: Any,
        locator_config: Any,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.locator_type = locator_type
        self.locator_config = locator_config
        self.notifier = notifier if notifier is not None else Notifier()
        self.run_id = uuid.uuid4().hex
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.state = "starting"
        self.locator: Any = None
        self.source: FrameSource | None = None
        self.queue: LatestFrameQueue[Frame] = LatestFrameQueue(config.queue.maxsize, config.queue.mode)
        self.latency = LatencyLog()
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        self._lock = threading.Lock()
        self.seq = 0
        self.consecutive_errors = 0
        self.last_locate_error: str | None = None
        self.unhealthy_reason: str | None = None
        self.unhealthy_since: float | None = None
        self.started_mono: float | None = None
        self._telemetry_was_stale = False
        self._camera_base: CameraInfo | None = None
        self._camera_scaled: dict[tuple[int, int], CameraInfo] = {}
        self._camera_exif: dict[tuple[Any, ...], CameraInfo] = {}
        self.watchdog_s = watchdog_interval_s()
        self._last_ping = 0.0
        self._last_heartbeat = 0.0
        self.telemetry = TelemetryStore(config.telemetry.max_age_s) if config.telemetry.kind == "mqtt" else None
        self.bridge: MavlinkBridge | None = None
        if config.mavlink is not None and config.mavlink.enabled:
            self.bridge = MavlinkBridge(config.mavlink)
        self._mavlink_up = False
        self.pose_topic = config.topic("pose")
        self.status_topic = config.topic("status")
        will = self._status(online=False, state="offline", event="will", will=True,
                            message="connection to the vehicle lost (Last Will)")
        self.link = MqttLink(config.mqtt, config.client_id, self.status_topic, payloads.dumps(will), self._birth)

    # --------------------------------------------------------------------------------------------- status
    #: status events that carry the MAVLink link state (the retained ones, except the Last Will)
    MAVLINK_EVENTS: ClassVar[frozenset[str]] = frozenset(
        {"birth", "heartbeat", "unhealthy", "mavlink_down", "mavlink_up", "stopping", "offline", "failed"})

    def _status(self, *, event: str, online: bool = True, state: str | None = None, will: bool = False,
                **kwargs: Any) -> dict[str, Any]:
        if self.bridge is not None and event in self.MAVLINK_EVENTS and "mavlink" not in kwargs:
            kwargs["mavlink"] = payloads.mavlink_summary(self.bridge.link_status())
        return payloads.status_payload(
            vehicle_id=self.config.vehicle_id, run_id=self.run_id, online=online, state=state or self.state,
            event=event, t=None if will else time.time(), **kwargs)

    def counters_snapshot(self) -> dict[str, int | float | None]:
        """Service, queue and MQTT counters plus recent end-to-end latency."""
        with self._lock:
            out: dict[str, int | float | None] = dict(self.counters)
        out["frames_in"] = self.queue.put_count
        out["frames_dropped"] = self.queue.dropped
        for key in ("connects", "disconnects", "outbox_dropped", "outbox_expired", "queue_full"):
            out[f"mqtt_{key}"] = self.link.counters[key]
        out["poses_undelivered"] = self.link.undelivered.get(self.pose_topic, 0)  # dropped before reaching the network
        recent = self.latency.summary(last=100).get("end_to_end")
        out["e2e_ms_median"] = round(recent["median"], 2) if recent else None
        out["e2e_ms_p95"] = round(recent["p95"], 2) if recent else None
        return out

    def _backend(self) -> dict[str, Any] | None:
        if self.locator is None:
            return None
        try:
            return dict(self.locator.backend_status)
        except Exception as exc:  # a broken status must not take the status message down with it
            return {"backend": "unknown", "reason": f"backend_status failed: {exc}"}

    def _birth(self) -> bytes:
        return payloads.dumps(self._status(event="birth", backend=self._backend(), counters=self.counters_snapshot()))

    def publish_status(self, event: str, message: str | None, *, retain: bool = False, **kwargs: Any) -> None:
        """Publish a status message (per-frame events are not retained; state changes are)."""
        payload = self._status(event=event, message=message, **kwargs)
        self.link.publish(self.status_topic, payloads.dumps(payload), self.config.mqtt.qos.status, retain=retain)

    def report(self, kind: str, message: str, frame_name: str | None = None, seq: int | None = None) -> None:
        """A problem with one input (the service carries on): count it, log it, publish a status error."""
        with self._lock:
            self.counters[kind] = self.counters.get(kind, 0) + 1
        logger.warning("%s: %s", kind, message)
        self.publish_status(kind, message, frame=frame_name, seq=seq)

    # ------------------------------------------------------------------------------------------ lifecycle
    def request_stop(self, reason: str) -> None:
        """Ask the loop to finish (thread- and signal-safe)."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def start(self) -> None:
        """Connect, open and warm up the locator, open the source, then signal READY=1.

        Raises:
            StartupError: naming what failed.
        """
        cfg = self.config
        self.link.start()
        if self.bridge is not None:
            try:
                self.bridge.start()  # early: the autopilot's priors accumulate while the bundle opens
            except ImportError as exc:
                raise StartupError(f"mavlink: pymavlink is missing (pip install 'topicgeo-edge[mavlink]'): {exc}") \
                    from exc
        for name, path in (("bundle_dir", cfg.bundle_dir), ("cache_dir", cfg.cache_dir)):
            if not Path(path).is_dir():
                raise StartupError(f"{name} {path} does not exist")
        if cfg.camera.info is not None:
            try:
                self._camera_base = read_camera_info(cfg.camera.info)
            except (ValueError, OSError) as exc:
                raise StartupError(f"camera.info: {exc}") from exc
        self.notifier.extend_timeout(cfg.startup_timeout_s,
                                     f"opening bundle {cfg.bundle_dir} and cache {cfg.cache_dir}")
        try:
            self.locator = self.locator_type.open(cfg.bundle_dir, cfg.cache_dir, self.locator_config)
        except Exception as exc:
            raise StartupError(f"cannot open the bundle {cfg.bundle_dir} / map cache {cfg.cache_dir}: {exc}") from exc
        if self.stop_event.is_set():
            return
        self.notifier.extend_timeout(cfg.startup_timeout_s, "warming up the inference backend")
        try:
            self.locator.warmup()
        except Exception as exc:
            raise StartupError(f"warm-up failed: {exc}") from exc
        try:
            self.source = make_source(cfg.source, self.link, cfg.frame_topic, cfg.mqtt.qos.frames)
            self.source.open()
        except SourceError as exc:
            raise StartupError(str(exc)) from exc
        if self.telemetry is not None and cfg.telemetry_topic is not None:
            self.link.subscribe(cfg.telemetry_topic, cfg.mqtt.qos.telemetry, self._on_telemetry)
        self.source.start(self._emit, self.report)
        backend = self._backend() or {}
        self.state = "degraded" if backend.get("degraded") else "running"
        self.started_mono = time.monotonic()
        line = (f"{self.state}: {backend.get('backend', '?')} {backend.get('precision', '')}, "
                f"{self.source.describe()} -> {self.pose_topic}")
        self.publish_status("heartbeat", line, retain=True, backend=backend, counters=self.counters_snapshot())
        self._last_heartbeat = time.monotonic()
        self.notifier.ready(line)
        logger.info("ready: %s", line)

    def fail(self, message: str) -> None:
        """Report a start-up failure (retained ``failed`` status, STATUS= line) and disconnect."""
        self.state = "failed"
        self.notifier.status(f"failed: {message}")
        if self.bridge is not None:
            self.bridge.stop()
        self.link.wait_connected(2.0)
        final = self._status(online=False, state="failed", event="failed", message=message)
        self.link.stop(payloads.dumps(final))

    def close(self) -> None:
        """STOPPING=1, ask the source to stop, stop the MAVLink bridge (at most 2 s; the offline status then says
        ``stopped``), publish the retained offline status and disconnect, and only then wait for the source: a camera
        or video teardown can take seconds, and systemd's stop timeout must not eat the offline status."""
        self.request_stop("stopped")
        reason = self.stop_reason
        self.state = "stopping"
        self.notifier.stopping(f"stopping: {reason}")
        logger.info("stopping: %s", reason)
        if self.source is not None:
            self.source.request_stop()
        self.queue.close()
        if self.bridge is not None:
            self.bridge.stop()
        final = self._status(online=False, state="offline", event="offline", message=reason,
                             counters=self.counters_snapshot())
        self.link.stop(payloads.dumps(final))
        c = self.counters_snapshot()  # after the stop: poses still waiting for a broker are counted as undelivered
        logger.info("%d frames processed: %d poses (%d undelivered), %d no fix, %d errors; %d dropped by the queue",
                    c.get("processed") or 0, c.get("poses") or 0, c.get("poses_undelivered") or 0,
                    c.get("no_fix") or 0, sum(int(c.get(k) or 0) for k in ("frame_error", "locate_error")),
                    c.get("frames_dropped") or 0)
        if self.source is not None:
            self.source.stop()
        self.notifier.close()

    # --------------------------------------------------------------------------------------- source side
    def _emit(self, frame: Frame) -> bool:
        while not self.stop_event.is_set():
            try:
                if self.queue.put(frame, timeout=0.2):
                    return True
            except QueueClosed:
                return False
        return False

    def _on_telemetry(self, payload: bytes, retained: bool, properties: dict[str, str]) -> None:
        """Keep a telemetry sample (MQTT network thread). A retained message is ignored: the broker delivers it on
        every (re)connect, possibly hours old. A sample whose own time ``t`` is older than ``telemetry.max_age_s``
        plus :data:`~edge_runtime.service.telemetry.CLOCK_SKEW_S` by this machine's clock is a ``telemetry_error``
        (the two clocks must be synchronised, e.g. chrony)."""
        assert self.telemetry is not None
        if retained:
            logger.info("ignoring a retained telemetry message on %s (it may be old; waiting for a live one)",
                        self.config.telemetry_topic)
            return
        try:
            self.telemetry.update(payload, now_wall=time.time())
        except TelemetryError as exc:
            self.report("telemetry_error", str(exc))

    # ---------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        """Process frames until stopped (0), the replay ends (0) or the pipeline stayed unhealthy (1)."""
        poll = 0.2 if self.watchdog_s is None else min(0.2, self.watchdog_s / 8)
        while not self.stop_event.is_set():
            frame = self.queue.get(timeout=poll)
            if frame is not None:
                self._process_guarded(frame)
            elif self.source is not None and self.source.finished.is_set() and len(self.queue) == 0:
                self.request_stop(f"{self.source.describe()}: all frames processed")
                return 0
            now = time.monotonic()
            if self._check_health(now):
                self._ping_watchdog(now)
            elif (self.config.health.unhealthy_exit_s is not None and self.unhealthy_since is not None
                  and now - self.unhealthy_since > self.config.health.unhealthy_exit_s):
                self.request_stop(f"unhealthy for {self.config.health.unhealthy_exit_s:.0f} s: {self.unhealthy_reason}")
                return 1
            if now - self._last_heartbeat >= self.config.mqtt.status_interval_s:
                self._heartbeat(now)
            self._check_mavlink()
        return 0

    def _process_guarded(self, frame: Frame) -> None:
        """:meth:`process`, with any unexpected exception (a bug) logged with its traceback, published as a
        ``locate_error`` status and counted towards unhealthy: one bad frame must not end the loop."""
        try:
            self.process(frame)
        except Exception as exc:
            try:
                self._locate_failed(frame, self.seq, exc)
            except Exception:  # reporting itself failed (e.g. the status could not be encoded)
                logger.exception("reporting the failure of %s failed", frame.name)

    def _check_mavlink(self) -> None:
        """Publish a retained ``mavlink_down`` / ``mavlink_up`` status when the autopilot link changes state."""
        if self.bridge is None:
            return
        status = self.bridge.link_status()
        up = bool(status["up"])
        if up == self._mavlink_up:
            return
        self._mavlink_up = up
        summary = payloads.mavlink_summary(status)
        if up:
            message = f"MAVLink link up: {status['autopilot_detected']} on {status['connection']}"
            logger.info("%s", message)
        else:
            message = (f"MAVLink link down: no autopilot heartbeat for {self.bridge.config.link_timeout_s:g} s on "
                       f"{status['connection']}; no fixes are sent, no MAVLink priors")
            logger.warning("%s", message)
        self.publish_status("mavlink_up" if up else "mavlink_down", message, retain=True, mavlink=summary,
                            counters=self.counters_snapshot())

    def _ping_watchdog(self, now: float) -> None:
        if self.watchdog_s is None:
            return
        if now - self._last_ping >= self.watchdog_s / 4:
            self.notifier.watchdog()
            self._last_ping = now

    def _heartbeat(self, now: float) -> None:
        self._last_heartbeat = now
        counters = self.counters_snapshot()
        line = (f"{self.state}: {counters['poses']} poses, {counters['no_fix']} no fix, "
                f"{counters['frames_dropped']} dropped, e2e p50 {counters['e2e_ms_median']} ms, "
                f"mqtt {'up' if self.link.connected else 'down'}")
        if self.bridge is not None:
            line += f", mavlink {'up' if self._mavlink_up else 'down'}"
        self.notifier.status(line)
        self.publish_status("heartbeat", line, retain=True, backend=self._backend(), counters=counters)

    def _check_health(self, now: float) -> bool:
        """Update the health state; True while healthy."""
        cfg = self.config.health
        reason = None
        if self.consecutive_errors >= cfg.max_consecutive_errors:
            reason = f"the locator failed {self.consecutive_errors} times in a row: {self.last_locate_error}"
        elif self.source is not None and self.source.error is not None:
            reason = f"the frame source stopped: {self.source.error}"
        elif self.source is not None and self.source.live and cfg.source_timeout_s is not None:
            last = self.source.last_frame_mono or self.started_mono or now
            if now - last > cfg.source_timeout_s:
                reason = f"no frame from {self.source.describe()} for {now - last:.0f} s"
        if reason is None:
            if self.unhealthy_reason is not None:
                logger.info("healthy again")
                self.unhealthy_reason = self.unhealthy_since = None
                backend = self._backend() or {}
                self.state = "degraded" if backend.get("degraded") else "running"
                self.publish_status("heartbeat", "healthy again", retain=True, backend=backend)
            return True
        if self.unhealthy_reason is None:
            self.unhealthy_since = now
            self.state = "unhealthy"
            logger.error("unhealthy, watchdog pings stop: %s", reason)
            self.notifier.status(f"unhealthy: {reason}")
            self.publish_status("unhealthy", reason, retain=True, counters=self.counters_snapshot())
        self.unhealthy_reason = reason
        return False

    # --------------------------------------------------------------------------------------------- frames
    def process(self, frame: Frame) -> LocateResult | None:
        """Decode, check, add priors, locate and publish one frame (errors become status messages)."""
        self.seq += 1
        seq = self.seq
        t0 = time.monotonic()
        lat: dict[str, float] = {"queue_wait": (t0 - frame.t_mono) * 1e3}
        try:
            image = decode_frame(frame, self.config.source.frame_size)
            h, w = image.shape[:2]
            expected = self.config.source.frame_size
            if expected is not None and (w, h) != tuple(expected):
                raise FrameError(f"{frame.name}: unexpected frame size {w}x{h}, expected {expected[0]}x{expected[1]}")
            t1 = time.monotonic()
            lat["decode"] = (t1 - t0) * 1e3
            priors, t_capture, t_source, meta = self._priors(frame)
            camera = self._camera(frame, meta, (w, h))
            lat["priors"] = (time.monotonic() - t1) * 1e3
        except FrameError as exc:
            self.report("frame_error", str(exc), frame.name, seq)
            return None
        except TelemetryError as exc:
            self.report("telemetry_error", str(exc), frame.name, seq)
            return None
        t2 = time.monotonic()
        try:
            if camera is None:
                result = self.locator.locate(image, priors)
            else:
                result = self.locator.locate(image, priors, camera=camera)
        except ValueError as exc:  # LocatorError: the locator refused this frame
            return self._locate_failed(frame, seq, exc, "frame_error")
        except Exception as exc:
            return self._locate_failed(frame, seq, exc, "locate_error")
        lat["locate"] = (time.monotonic() - t2) * 1e3
        if self.bridge is not None:  # before MQTT: the autopilot's EKF wants the fix with the least delay
            t3 = time.monotonic()
            if result.capture_time is None:
                result = dataclasses.replace(result, capture_time=t_capture)
            try:
                self.bridge.publish_fix(result)  # rate-limited; sends nothing for a result without a fix
            except ValueError as exc:  # impossible numbers in a located result: a locator bug
                return self._locate_failed(frame, seq, exc)
            lat["mavlink"] = (time.monotonic() - t3) * 1e3
        self.consecutive_errors = 0
        with self._lock:
            self.counters["processed"] += 1
        info = {"name": frame.name, "index": frame.index, "source": self.config.source.kind, "width": w, "height": h}
        if result.ok:
            try:
                self._publish_pose(result, frame, seq, info, t_capture, t_source, priors, lat)
            except ValueError as exc:  # a located result that breaks the pose contract (no footprint, bad values)
                return self._locate_failed(frame, seq, exc)
        else:
            lat["end_to_end"] = (time.monotonic() - frame.t_mono) * 1e3
            with self._lock:
                self.counters["no_fix"] += 1
            detail = payloads.no_fix_detail(result)
            self.publish_status("no_fix", f"{frame.name}: no fix: {result.reason}", frame=frame.name, seq=seq,
                                detail=detail)
        for key, value in result.latency_ms.items():
            lat[f"locator.{key}"] = float(value)
        self.latency.add(lat)
        return result

    def _publish_pose(self, result: LocateResult, frame: Frame, seq: int, info: dict[str, Any], t_capture: float,
                      t_source: str, priors: Priors, lat: dict[str, float]) -> None:
        lat["end_to_end"] = (time.monotonic() - frame.t_mono) * 1e3
        service_lat = {k: v for k, v in lat.items() if k != "locate"}
        payload = payloads.pose_payload(
            result, vehicle_id=self.config.vehicle_id, run_id=self.run_id, seq=seq, frame=info, t_capture=t_capture,
            t_capture_source=t_source, t_publish=time.time(), priors=priors, latency_ms=service_lat)
        ok = self.link.publish(self.pose_topic, payloads.dumps(payload), self.config.mqtt.qos.pose,
                               expiry_s=self.config.mqtt.pose_expiry_s or None)
        with self._lock:
            self.counters["poses" if ok else "pose_publish_failed"] += 1

    def _locate_failed(self, frame: Frame, seq: int, exc: BaseException, kind: str = "locate_error") -> None:
        """Any exception out of the locator counts towards unhealthy: a locator that refuses every frame (even with
        a ValueError, e.g. a calibration that does not fit the camera) is as useless as one that crashes."""
        self.consecutive_errors += 1
        self.last_locate_error = f"{type(exc).__name__}: {exc}"
        logger.error("locating %s failed (%d in a row)", frame.name, self.consecutive_errors,
                     exc_info=exc if kind == "locate_error" else None)
        self.report(kind, f"{frame.name}: {self.last_locate_error}", frame.name, seq)
        return None

    def _priors(self, frame: Frame) -> tuple[Priors, float, str, Any]:
        """Priors, capture time, its source and the EXIF metadata (folder frames with EXIF telemetry)."""
        cfg = self.config.telemetry
        meta = None
        if cfg.kind == "exif":
            if frame.path is not None:
                priors, meta = priors_from_jpeg_file(frame.path, cfg.exif_utc_offset_h)
            elif frame.jpeg is not None:
                priors = priors_from_jpeg_bytes(frame.jpeg, frame.name, cfg.exif_utc_offset_h)
            else:
                raise TelemetryError(f"{frame.name}: EXIF telemetry needs JPEG frames")
        elif cfg.kind == "mqtt":
            assert self.telemetry is not None
            sample = self.telemetry.latest()
            stale = sample is None
            if stale:
                with self._lock:
                    self.counters["telemetry_stale"] += 1
                if not self._telemetry_was_stale:
                    self.report("telemetry_error", f"no telemetry sample newer than {cfg.max_age_s} s; locating "
                                "without priors", frame.name, self.seq)
            self._telemetry_was_stale = stale
            priors = sample.priors if sample is not None else Priors(source="none")
        elif cfg.kind == "mavlink":
            priors = self._mavlink_priors(frame)
        elif cfg.kind == "fixed":
            priors = fixed_priors(dataclasses.asdict(cfg))
        else:
            priors = Priors()
        if self.config.camera.from_exif and meta is None and frame.path is not None:
            from calibration.exif import read_metadata

            try:
                meta = read_metadata(frame.path)
            except (ValueError, OSError) as exc:
                raise TelemetryError(str(exc)) from exc
        if priors.capture_time is not None:
            t_capture, t_source = priors.capture_time, "exif"
        else:
            t_capture, t_source = self._frame_time(frame)
        return dataclasses.replace(priors, capture_time=t_capture), t_capture, t_source, meta

    @staticmethod
    def _frame_time(frame: Frame) -> tuple[float, str]:
        """Capture time of a frame without EXIF time: the MQTT user property ``t_capture``, else its arrival.

        Raises:
            TelemetryError: ``t_capture`` is not a finite number of Unix seconds in
                :data:`~edge_runtime.service.telemetry.EPOCH_RANGE_S` (e.g. milli- or nanoseconds, NaN): the frame
                is refused as bad input (a ``telemetry_error`` status), like a corrupt JPEG.
        """
        if "t_capture" not in frame.properties:
            return frame.t_wall, "arrival"
        return epoch_seconds(frame.properties["t_capture"], f"{frame.name}: user property t_capture"), "mqtt"

    def _mavlink_priors(self, frame: Frame) -> Priors:
        """The autopilot's priors at the frame's capture time (source ``mavlink``; ``capture_time`` left None for
        the caller), or no priors (logged once per gap, counted in ``telemetry_stale``) when it has none then."""
        assert self.bridge is not None
        t_capture, _ = self._frame_time(frame)
        priors = self.bridge.latest_priors(t_capture)
        missing = priors is None
        if missing:
            with self._lock:
                self.counters["telemetry_stale"] += 1
            if not self._telemetry_was_stale:
                self.report("telemetry_error", "no MAVLink priors at the capture time (link down or no ATTITUDE / "
                            "GLOBAL_POSITION_INT around it); locating without priors", frame.name, self.seq)
        self._telemetry_was_stale = missing
        return Priors(source="none") if priors is None else dataclasses.replace(priors, capture_time=None)

    def _camera(self, frame: Frame, meta: Any, size: tuple[int, int]) -> CameraInfo | None:
        cfg = self.config.camera
        if cfg.from_exif:
            if meta is None:
                raise FrameError(f"{frame.name}: camera.from_exif needs the frame's EXIF")
            key = tuple(getattr(meta, name) for name in _INTRINSICS_KEYS)
            if key not in self._camera_exif:
                try:
                    camera = camera_from_metadata(meta, sensor_width_mm=cfg.sensor_width_mm,
                                                  use_35mm_equivalent=cfg.use_35mm_equivalent)
                except ValueError as exc:
                    raise FrameError(str(exc)) from exc
                if len(self._camera_exif) >= 16:
                    self._camera_exif.clear()
                self._camera_exif[key] = camera
            return self._camera_exif[key]
        base = self._camera_base
        if base is None:
            return None
        if base.size == size:
            return base
        if size not in self._camera_scaled:
            if not same_aspect(base.size, size):
                raise FrameError(f"{frame.name}: frame {size[0]}x{size[1]} is not a uniform resize of the "
                                 f"{base.width}x{base.height} camera_info {self.config.camera.info}")
            self._camera_scaled[size] = base.scaled(*size)
        return self._camera_scaled[size]


def run_service(config: ServiceConfig, locator_type: Any, locator_config: Any, notifier: Notifier | None = None,
                install_signals: bool = True) -> int:
    """Start, run and close a service; the process exit status (0 = clean stop, 1 = failure, 2 = unusable MQTT
    credentials or TLS files: a config error, which the systemd unit does not restart).

    SIGTERM and SIGINT stop the loop cleanly (``STOPPING=1``, retained offline status) when ``install_signals``.
    """
    import signal

    try:
        service = Service(config, locator_type, locator_config, notifier)
    except (MqttConfigError, NotifyError) as exc:
        logger.error("cannot start: %s", exc)
        if notifier is not None:
            notifier.status(f"failed: {exc}")
        return EXIT_CONFIG if isinstance(exc, MqttConfigError) else EXIT_FAILED
    if install_signals:
        def on_signal(signum: int, _frame: Any) -> None:
            service.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        service.start()
    except StartupError as exc:
        logger.error("start-up failed: %s", exc)
        service.fail(str(exc))
        return 1
    code = EXIT_FAILED
    try:
        code = service.run()
    finally:
        service.request_stop("the processing loop ended")  # first: the source stops feeding a loop that is gone
        service.close()
    return code
