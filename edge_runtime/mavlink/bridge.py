"""The MAVLink bridge: absolute fixes to the autopilot's EKF, priors from it, heartbeats and link supervision.

Usage (the service)::

    bridge = MavlinkBridge(MavlinkConfig.from_dict(vehicle_yaml["mavlink"]))
    bridge.start()
    priors = bridge.latest_priors(capture_time)      # before locating a frame
    sent = bridge.publish_fix(result)                # after; False for no fix, rate-limited, link down, ...
    status = bridge.link_status()                    # JSON-ready, for the MQTT status when the link is down
    bridge.stop()

One background thread reads the transport, decodes with pymavlink (MAVLink 2), feeds the prior buffer, sends our
HEARTBEAT (MAV_TYPE_ONBOARD_CONTROLLER) and watches the autopilot's. The link is *up* while the autopilot's heartbeat
is younger than ``link_timeout_s``; while it is down the transport is closed and reopened every
``reconnect_interval_s`` (a serial adapter that re-enumerated, a TCP server that restarted, a UDP peer that moved).
Fixes are sent only while the link is up.
"""

from __future__ import annotations

import logging
import math
import select
import threading
import time
from typing import Any

from edge_runtime.mavlink.config import MavlinkConfig
from edge_runtime.mavlink.encode import (
    DROP_REASONS,
    MESSAGE_FOR_AUTOPILOT,
    fix_from_result,
    global_position_sensor_fields,
    gps_input_fields,
)
from edge_runtime.mavlink.link import (
    PacketParser,
    Transport,
    TransportError,
    UdpTransport,
    load_dialect,
    make_transport,
)
from edge_runtime.mavlink.priors import PriorBuffer
from edge_runtime.types import LocateResult, Priors

logger = logging.getLogger(__name__)

# MAVLink common enum values used here.
MAV_TYPE_ONBOARD_CONTROLLER = 18
MAV_AUTOPILOT_INVALID = 8
MAV_AUTOPILOT_ARDUPILOTMEGA = 3
MAV_AUTOPILOT_PX4 = 12
MAV_STATE_ACTIVE = 4
MAV_CMD_SET_MESSAGE_INTERVAL = 511
MESSAGE_IDS = {"ATTITUDE": 30, "GLOBAL_POSITION_INT": 33, "DISTANCE_SENSOR": 132}
AUTOPILOT_NAMES = {MAV_AUTOPILOT_PX4: "px4", MAV_AUTOPILOT_ARDUPILOTMEGA: "ardupilot"}

#: A capture time this far ahead of the local clock means the clocks disagree; such fixes are dropped ("future").
FUTURE_TOLERANCE_S = 0.2
#: Capture-time jitter tolerated by the rate limit: fixes are sent when spaced >= this fraction of 1/max_rate_hz.
RATE_JITTER_FRACTION = 0.9


class MavlinkBridge:
    """Feeds the autopilot with absolute fixes and reads its priors (see the module docstring).

    Args:
        config: the bridge settings.
        clock: Unix-time source (injectable for tests); defaults to ``time.time``.
    """

    def __init__(self, config: MavlinkConfig, clock: Any = None) -> None:
        self.config = config
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: Transport = make_transport(config.endpoint, config.baud)
        self._dialect: Any = None
        self._mav: Any = None  # encoder (sequence numbers, our system/component ids)
        self._parser: PacketParser | None = None
        self._priors = PriorBuffer(config.agl_source, config.camera_mount_ypr_deg, config.prior_buffer_s,
                                   config.prior_max_gap_s, config.prior_max_extrapolation_s,
                                   position_radius_m=config.position_prior_radius_m)
        self._state = "disabled" if not config.enabled else "not_started"
        self._up = False
        self._target_system: int | None = config.target_system or None
        self._autopilot_type: int | None = None
        self._last_heartbeat_mono: float | None = None
        self._down_since_mono: float | None = None
        self._last_open_mono = -math.inf
        self._next_heartbeat_mono = 0.0
        self._last_sent_capture: float | None = None
        self._last_latency_s: float | None = None
        self._last_error: str | None = None
        self._counts = {"heartbeats_sent": 0, "heartbeats_received": 0, "link_losses": 0, "reconnects": 0,
                        "fixes_sent": 0, "foreign_packets": 0, "priors_samples": 0, "rangefinder_rejected": 0,
                        "send_failures": 0, "transport_errors": 0, "rate_requests_sent": 0}
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._rx_counts = {"HEARTBEAT": 0, "ATTITUDE": 0, "GLOBAL_POSITION_INT": 0, "DISTANCE_SENSOR": 0}

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Open the transport and start the background thread. A transport that cannot open yet (serial device
        absent, TCP server down) is retried every ``reconnect_interval_s`` and reported by :meth:`link_status`.

        Raises:
            ImportError: pymavlink is missing. RuntimeError: started twice.
        """
        if not self.config.enabled:
            logger.info("MAVLink bridge disabled in the config; not starting")
            return
        if self._thread is not None:
            raise RuntimeError("MavlinkBridge already started")
        self._dialect = load_dialect()
        self._mav = self._dialect.MAVLink(None, srcSystem=self.config.system_id,
                                          srcComponent=self.config.component_id)
        self._parser = PacketParser(self._dialect, datagram=self._transport.datagram)
        self._stop.clear()
        with self._lock:
            self._state = "down"
            self._down_since_mono = time.monotonic()
            self._open_transport()
        self._thread = threading.Thread(target=self._run, name="mavlink-bridge", daemon=True)
        self._thread.start()
        logger.info("MAVLink bridge started on %s (autopilot %s, fixes as %s)", self._transport.describe(),
                    self.config.autopilot, MESSAGE_FOR_AUTOPILOT[self.config.autopilot])

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and close the transport (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("MAVLink bridge thread did not stop within %.1f s", timeout_s)
            self._thread = None
        with self._lock:
            self._transport.close()
            if self._state != "disabled":
                self._state = "stopped"
            self._up = False

    def __enter__(self) -> MavlinkBridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The bound ``(host, port)`` of a UDP transport (tests bind port 0), else None."""
        t = self._transport
        return t.local_address if isinstance(t, UdpTransport) else None

    # --------------------------------------------------------------------------------------------- API
    def publish_fix(self, result: LocateResult) -> bool:
        """Send a located result as an absolute fix; returns whether something was sent.

        Nothing is sent (and the reason is counted in ``link_status()["fixes_dropped"]``) for a result without a
        fix, without a capture time or uncertainty, with an accuracy above ``max_horizontal_accuracy_m``, without
        an altitude where the autopilot needs one, older than ``max_fix_age_s``, not newer than the last fix sent,
        closer than the rate limit to it, or while the link is down.

        Raises:
            ValueError: a located result with impossible numbers (latitude/longitude out of range, negative or
                non-finite ``std_m``): a locator bug, not a flight condition.
        """
        with self._lock:
            vehicle_agl = None
            if (result.ok and result.capture_time is not None and result.altitude_agl_m is None
                    and self.config.agl_fallback_vehicle):
                vehicle_agl = self._priors.agl_at(result.capture_time)
            fix, reason = fix_from_result(result, self.config, vehicle_agl)
            if fix is None:
                return self._drop(reason or "no_fix")
            if not self._up or self._mav is None:
                return self._drop("link_down")
            now = self._clock()
            age = now - fix.capture_time
            if age > self.config.max_fix_age_s:
                return self._drop("stale", f"capture {age:.3f} s ago")
            if age < -FUTURE_TOLERANCE_S:
                return self._drop("future", f"capture {-age:.3f} s in the future: check the clocks")
            last = self._last_sent_capture
            if last is not None and fix.capture_time <= last:
                return self._drop("out_of_order")
            if last is not None and fix.capture_time - last < RATE_JITTER_FRACTION * self.config.min_fix_interval_s:
                return self._drop("rate")
            if self.config.autopilot == "px4":
                target = self._target_system or 0
                fields = global_position_sensor_fields(fix, self.config, now, target, self.config.target_component)
                msg = self._mav.global_position_sensor_encode(**fields)
            else:
                msg = self._mav.gps_input_encode(**gps_input_fields(fix, self.config))
            if not self._send(msg):
                return self._drop("send_error")
            self._last_sent_capture = fix.capture_time
            self._last_latency_s = age
            self._counts["fixes_sent"] += 1
            logger.debug("fix sent: lat %.7f lon %.7f alt %s h_acc %.2f m, latency %.0f ms", fix.lat_deg,
                         fix.lon_deg, fix.alt_amsl_m, fix.h_acc_m, age * 1000.0)
            return True

    def latest_priors(self, capture_time: float | None = None) -> Priors | None:
        """Autopilot priors at ``capture_time`` (Unix s): altitude above ground, camera attitude, heading, and with
        ``position_prior_radius_m`` the autopilot's position as the position prior.

        ``None`` as capture time gives the newest values. Returns None when the autopilot has told nothing usable
        for that time (no samples yet, or the time is outside the buffered history).
        """
        with self._lock:
            return self._priors.priors_at(capture_time, self._clock())

    def link_status(self) -> dict[str, Any]:
        """JSON-ready link state for logs and the MQTT status.

        Keys: ``state`` (``not_started``/``down``/``up``/``stopped``/``disabled``), ``up``, ``connection``,
        ``autopilot`` (configured), ``autopilot_detected``, ``autopilot_mismatch``, ``target_system``,
        ``last_heartbeat_age_s``, ``down_for_s``, the counters (``heartbeats_sent/received``, ``link_losses``,
        ``reconnects``, ``fixes_sent``, ``foreign_packets`` ...), ``fixes_dropped`` (per reason), ``parser``
        (``packets``, ``bad_packets``, ``bad_datagrams``, ``truncated``, ``unknown_messages``, ``bytes_received``),
        ``received`` (per message type), ``last_fix_latency_ms`` and ``last_error``.
        """
        with self._lock:
            mono = time.monotonic()
            detected = None
            if self._autopilot_type is not None:
                detected = AUTOPILOT_NAMES.get(self._autopilot_type, f"mav_autopilot_{self._autopilot_type}")
            return {
                "state": self._state,
                "up": self._up,
                "connection": self._transport.describe(),
                "autopilot": self.config.autopilot,
                "fix_message": MESSAGE_FOR_AUTOPILOT[self.config.autopilot],
                "autopilot_detected": detected,
                "autopilot_mismatch": detected is not None and detected != self.config.autopilot,
                "target_system": self._target_system,
                "last_heartbeat_age_s": (None if self._last_heartbeat_mono is None
                                         else round(mono - self._last_heartbeat_mono, 3)),
                "down_for_s": (None if self._up or self._down_since_mono is None
                               else round(mono - self._down_since_mono, 3)),
                **self._counts,
                "fixes_dropped": dict(self._dropped),
                "parser": self._parser.counts.as_dict() if self._parser is not None else {},
                "received": dict(self._rx_counts),
                "last_fix_latency_ms": (None if self._last_latency_s is None
                                        else round(self._last_latency_s * 1000.0, 1)),
                "last_error": self._last_error,
            }

    # ------------------------------------------------------------------------------------------ internals
    def _drop(self, reason: str, detail: str = "") -> bool:
        self._dropped[reason] += 1
        if reason not in ("no_fix", "rate", "link_down"):
            logger.debug("fix not sent (%s) %s", reason, detail)
        return False

    def _send(self, msg: Any) -> bool:
        try:
            buf = msg.pack(self._mav)
        except Exception as exc:  # pymavlink raises struct.error / MAVError on out-of-range fields
            self._last_error = f"cannot encode {msg.get_type()}: {exc}"
            logger.error("%s", self._last_error)
            self._counts["send_failures"] += 1
            return False
        self._mav.seq = (self._mav.seq + 1) % 256
        ok = self._transport.write(buf)
        if not ok:
            self._counts["send_failures"] += 1
        return ok

    def _open_transport(self) -> None:
        self._last_open_mono = time.monotonic()
        try:
            self._transport.open()
        except OSError as exc:
            with self._lock:
                self._last_error = f"cannot open {self._transport.describe()}: {exc}"
                logger.warning("%s; retrying every %.1f s", self._last_error, self.config.reconnect_interval_s)
            return
        with self._lock:
            if self._parser is not None:
                self._parser.reset_stream()
            self._next_heartbeat_mono = 0.0  # announce ourselves at once

    def _run(self) -> None:
        hb_period = 1.0 / self.config.heartbeat_rate_hz
        while not self._stop.is_set():
            mono = time.monotonic()
            fd = self._transport.fileno()
            wait = max(0.0, min(0.05, self._next_heartbeat_mono - mono))
            if fd < 0:
                self._stop.wait(wait or 0.05)
            else:
                try:
                    readable, _, _ = select.select([fd], [], [], wait)
                except (OSError, ValueError):  # closed under us by a reopen
                    readable = []
                if readable:
                    self._read()
            with self._lock:
                mono = time.monotonic()
                if self._transport.is_open and mono >= self._next_heartbeat_mono:
                    self._send_heartbeat()
                    self._next_heartbeat_mono = mono + hb_period
                reopen = self._supervise(mono)
            if reopen:  # outside the lock: a TCP connect may block for seconds, publish_fix must not wait on it
                self._open_transport()

    def _read(self) -> None:
        try:
            chunks = self._transport.read()
        except TransportError as exc:
            with self._lock:
                self._counts["transport_errors"] += 1
                self._last_error = str(exc)
                logger.warning("%s", exc)
                self._transport.close()
            return
        arrival = self._clock()
        with self._lock:
            assert self._parser is not None
            for data, addr in chunks:
                for msg in self._parser.feed(data):
                    self._handle(msg, addr, arrival)

    def _send_heartbeat(self) -> None:
        if not self._transport.has_destination:  # udpin before the autopilot spoke: nobody to tell yet
            return
        msg = self._mav.heartbeat_encode(MAV_TYPE_ONBOARD_CONTROLLER, MAV_AUTOPILOT_INVALID, 0, 0, MAV_STATE_ACTIVE)
        if self._send(msg):
            self._counts["heartbeats_sent"] += 1

    def _supervise(self, mono: float) -> bool:
        """Link-timeout check; returns whether the transport should be reopened now."""
        if self._up and (self._last_heartbeat_mono is None
                         or mono - self._last_heartbeat_mono > self.config.link_timeout_s):
            self._up = False
            self._state = "down"
            self._down_since_mono = mono
            self._counts["link_losses"] += 1
            logger.warning("MAVLink link down: no autopilot heartbeat for %.1f s on %s",
                           self.config.link_timeout_s, self._transport.describe())
        if (not self._up and mono - self._last_open_mono >= self.config.reconnect_interval_s
                and (self._counts["link_losses"] > 0 or not self._transport.is_open)):
            self._counts["reconnects"] += 1
            self._last_open_mono = mono
            logger.info("reopening %s", self._transport.describe())
            return True
        return False

    def _is_target(self, sysid: int, compid: int) -> bool:
        if self._target_system is not None and sysid != self._target_system:
            return False
        return self.config.target_component in (0, compid)

    def _handle(self, msg: Any, addr: Any, arrival: float) -> None:
        kind = msg.get_type()
        sysid, compid = msg.get_srcSystem(), msg.get_srcComponent()
        if kind == "HEARTBEAT":
            if msg.autopilot == MAV_AUTOPILOT_INVALID or not self._is_target(sysid, compid):
                if not (sysid == self.config.system_id and compid == self.config.component_id):
                    self._counts["foreign_packets"] += 1
                return
            self._on_autopilot_heartbeat(msg, sysid, addr)
            return
        if self._target_system is None or not self._is_target(sysid, compid):
            self._counts["foreign_packets"] += 1
            return
        if kind == "ATTITUDE":
            self._priors.add_attitude(msg.time_boot_ms, msg.roll, msg.pitch, msg.yaw, arrival)
        elif kind == "GLOBAL_POSITION_INT":
            self._priors.add_global_position(msg.time_boot_ms, msg.relative_alt, msg.hdg, arrival, msg.lat, msg.lon)
        elif kind == "DISTANCE_SENSOR":
            if not self._priors.add_distance(msg.time_boot_ms, msg.current_distance, msg.min_distance,
                                             msg.max_distance, msg.orientation, arrival):
                self._counts["rangefinder_rejected"] += 1
        else:
            return
        self._rx_counts[kind] += 1
        self._counts["priors_samples"] += 1

    def _on_autopilot_heartbeat(self, msg: Any, sysid: int, addr: Any) -> None:
        self._rx_counts["HEARTBEAT"] += 1
        self._counts["heartbeats_received"] += 1
        if self._target_system is None:
            self._target_system = sysid
            logger.info("autopilot found: system %d (%s)", sysid,
                        AUTOPILOT_NAMES.get(msg.autopilot, f"MAV_AUTOPILOT {msg.autopilot}"))
        if msg.autopilot != self._autopilot_type:
            self._autopilot_type = msg.autopilot
            name = AUTOPILOT_NAMES.get(msg.autopilot)
            if name != self.config.autopilot:
                logger.error("the autopilot's heartbeat says %s (MAV_AUTOPILOT %d) but the config says %s: fixes "
                             "are sent as %s, which it may ignore", name or "another autopilot", msg.autopilot,
                             self.config.autopilot, MESSAGE_FOR_AUTOPILOT[self.config.autopilot])
        if isinstance(self._transport, UdpTransport) and isinstance(addr, tuple) and self._transport.peer != addr:
            self._transport.set_peer(addr)
            self._next_heartbeat_mono = 0.0  # introduce ourselves to the new peer at once
        self._last_heartbeat_mono = time.monotonic()
        if not self._up:
            self._up = True
            self._state = "up"
            self._down_since_mono = None
            self._last_error = None
            logger.info("MAVLink link up (system %d on %s)", sysid, self._transport.describe())
            self._request_rates(sysid)

    def _request_rates(self, sysid: int) -> None:
        """Ask for the prior messages at the configured rates (MAV_CMD_SET_MESSAGE_INTERVAL, interval in us)."""
        for name, rate in self.config.message_rates_hz.items():
            msg = self._mav.command_long_encode(sysid, self.config.target_component, MAV_CMD_SET_MESSAGE_INTERVAL, 0,
                                                float(MESSAGE_IDS[name]), round(1e6 / rate), 0, 0, 0, 0, 0)
            if self._send(msg):
                self._counts["rate_requests_sent"] += 1
