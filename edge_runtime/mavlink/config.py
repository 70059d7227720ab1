"""The MAVLink bridge config: one frozen dataclass, validated on construction, filled from a ``mavlink:`` mapping.

``MavlinkConfig.from_dict(raw)`` is what the service calls on the ``mavlink:`` section of its vehicle YAML. Every
problem is a :class:`MavlinkConfigError` (a ``ValueError``) whose message starts with the key it is about
(``mavlink.max_rate_hz: must be a finite number > 0, got 0``) and whose ``key`` attribute holds that key relative to
the section, so the service can prefix the file name.

Connection strings (``connection``):

* ``udpin:HOST:PORT`` - listen on HOST:PORT (the autopilot or mavlink-router sends to us; we answer to the address
  the autopilot's heartbeats come from, never to any other sender). PORT 0 picks a free port (tests).
* ``udpout:HOST:PORT`` - send to HOST:PORT from an ephemeral local port and read the answers arriving there.
* ``tcp:HOST:PORT`` - a TCP client (ArduPilot SITL, mavlink-router TCP server).
* ``serial:/dev/PATH`` - a UART with ``baud`` (raw 8N1, no flow control; Linux/POSIX termios).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUTOPILOTS = ("px4", "ardupilot")
FIX_ALTITUDE_MODES = ("none", "ground_plus_agl")
AGL_SOURCES = ("auto", "rangefinder", "relative_alt")
TRANSPORTS = ("udpin", "udpout", "tcp", "serial")
#: Baud rates a POSIX termios accepts on Linux (the usual autopilot telemetry rates).
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 921600, 1000000, 1500000, 2000000, 3000000)

_HOST_PORT_RE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


class MavlinkConfigError(ValueError):
    """A ``mavlink:`` section that cannot be used; ``key`` is the offending key relative to the section."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"mavlink.{key}: {message}")
        self.key = key
        self.detail = message


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``connection`` string. ``host``/``port`` for udp/tcp, ``device`` for serial."""

    transport: str
    host: str | None = None
    port: int | None = None
    device: str | None = None


def parse_connection(connection: str) -> Endpoint:
    """Parse ``udpin:HOST:PORT``, ``udpout:HOST:PORT``, ``tcp:HOST:PORT`` or ``serial:/dev/PATH``.

    Raises:
        MavlinkConfigError: naming ``connection`` and what is wrong with it.
    """
    if not isinstance(connection, str) or ":" not in connection:
        raise MavlinkConfigError(
            "connection", f"expected 'udpin:HOST:PORT', 'udpout:HOST:PORT', 'tcp:HOST:PORT' or 'serial:/dev/PATH', "
            f"got {connection!r}")
    scheme, rest = connection.split(":", 1)
    if scheme not in TRANSPORTS:
        raise MavlinkConfigError("connection",
                                 f"unknown transport {scheme!r} in {connection!r}; use one of {TRANSPORTS}")
    if scheme == "serial":
        if not rest.startswith("/"):
            raise MavlinkConfigError("connection", f"serial needs an absolute device path, got {connection!r}")
        return Endpoint("serial", device=rest)
    m = _HOST_PORT_RE.match(rest)
    if m is None:
        raise MavlinkConfigError("connection", f"{scheme} needs HOST:PORT, got {connection!r}")
    port = int(m.group("port"))
    if port > 65535 or (port == 0 and scheme != "udpin"):
        raise MavlinkConfigError("connection", f"port {port} out of range in {connection!r}")
    return Endpoint(scheme, host=m.group("host").strip("[]"), port=port)


def _finite(value: Any, key: str, *, minimum: float | None = None, strict: bool = True,
            maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MavlinkConfigError(key, f"must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise MavlinkConfigError(key, f"must be {'>' if strict else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise MavlinkConfigError(key, f"must be <= {maximum}, got {value}")


def _int_in(value: Any, key: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MavlinkConfigError(key, f"must be an integer in [{lo}, {hi}], got {value!r}")


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MavlinkConfigError(key, f"must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class MavlinkConfig:
    """MAVLink bridge settings (the ``mavlink:`` section of the vehicle YAML). See docs/mavlink.md.

    Attributes:
        autopilot: ``px4`` (fixes as GLOBAL_POSITION_SENSOR, aux global position) or ``ardupilot`` (GPS_INPUT,
            ``GPS_TYPE=14``). Required.
        connection: where the autopilot is (module docstring). Required.
        enabled: the service may keep a disabled section in the YAML.
        baud: serial only.
        system_id: our MAVLink system id; by convention the vehicle's (the autopilot's SYSID_THISMAV / MAV_SYS_ID).
        component_id: our component id (191 = MAV_COMP_ID_ONBOARD_COMPUTER).
        target_system: the autopilot's system id; 0 = the first autopilot whose heartbeat arrives.
        target_component: the autopilot's component id (1 = MAV_COMP_ID_AUTOPILOT1).
        heartbeat_rate_hz: our HEARTBEAT (MAV_TYPE_ONBOARD_CONTROLLER) rate.
        link_timeout_s: the link is down when no autopilot heartbeat arrived for this long.
        reconnect_interval_s: while down, the transport is closed and reopened this often.
        max_rate_hz: at most this many fixes per second (spacing of capture times).
        max_fix_age_s: a fix whose capture is older than this when published is dropped (the EKF delay buffers of
            PX4 EKF2_AGP*_DELAY and ArduPilot GPS_DELAY_MS hold at most 300 / 250 ms).
        sensor_id: GLOBAL_POSITION_SENSOR.id (must equal PX4's EKF2_AGP0_ID) / GPS_INPUT.gps_id.
        map_accuracy_m: 1-sigma absolute horizontal error of the base map (orthophoto georeferencing), added in
            quadrature to the locator's std_m.
        accuracy_scale: multiplies the accuracies sent (>= 1 inflates them).
        max_horizontal_accuracy_m: fixes whose horizontal 1-sigma exceeds this are not sent.
        fix_altitude: ``none`` (horizontal-only fixes; PX4 only) or ``ground_plus_agl`` (altitude AMSL =
            ``ground_elevation_amsl_m`` + the altitude above ground of the fix; ArduPilot needs it).
        ground_elevation_amsl_m: terrain elevation above mean sea level under the flight (flat-terrain assumption).
        ground_elevation_std_m: its 1-sigma error (terrain relief + datum), for the vertical accuracy.
        agl_relative_std: 1-sigma relative error of the altitude above ground (vertical accuracy term).
        agl_fallback_vehicle: when a fix has no altitude above ground, use the autopilot's (rangefinder or
            relative_alt) at the capture time.
        gps_leap_seconds: GPS - UTC in seconds (18 since 2017-01-01), for GPS_INPUT time_week/time_week_ms.
        agl_source: priors: ``auto`` (a downward rangefinder when it has a valid reading, else relative_alt),
            ``rangefinder`` or ``relative_alt``.
        camera_mount_ypr_deg: camera attitude relative to the vehicle body (FRD), Z-Y-X degrees, in the
            calibration.geometry camera-body convention (x = image top, z = optical axis); (0, 0, 0) = a nadir
            camera whose image top points to the nose.
        prior_buffer_s: how much autopilot history is kept for time alignment.
        prior_max_gap_s: two samples further apart than this are not interpolated between.
        prior_max_extrapolation_s: a capture time after the newest sample by at most this uses that sample.
        position_prior_radius_m: the autopilot's position (GLOBAL_POSITION_INT lat / lon at the capture time) becomes
            the frame's position prior with this search radius in metres (``Priors.near_*``: the maps around it are
            searched first, then every map); None (default): not used. Its estimate is as good as its aiding: from
            GNSS until that is lost, then this bridge's own fixes or dead reckoning that drifts with time, so choose
            the radius for the longest expected drift.
        attitude_rate_hz, position_rate_hz, distance_rate_hz: rates asked of the autopilot for ATTITUDE,
            GLOBAL_POSITION_INT and DISTANCE_SENSOR with MAV_CMD_SET_MESSAGE_INTERVAL each time the link comes up
            (0 = do not ask; the autopilot's own stream configuration applies).
    """

    autopilot: str
    connection: str
    enabled: bool = True
    baud: int = 921600
    system_id: int = 1
    component_id: int = 191
    target_system: int = 0
    target_component: int = 1
    heartbeat_rate_hz: float = 1.0
    link_timeout_s: float = 3.0
    reconnect_interval_s: float = 2.0
    max_rate_hz: float = 5.0
    max_fix_age_s: float = 0.5
    sensor_id: int = 1
    map_accuracy_m: float = 1.0
    accuracy_scale: float = 1.0
    max_horizontal_accuracy_m: float = 50.0
    fix_altitude: str = "none"
    ground_elevation_amsl_m: float | None = None
    ground_elevation_std_m: float = 5.0
    agl_relative_std: float = 0.05
    agl_fallback_vehicle: bool = False
    gps_leap_seconds: int = 18
    agl_source: str = "auto"
    camera_mount_ypr_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    prior_buffer_s: float = 10.0
    prior_max_gap_s: float = 1.0
    prior_max_extrapolation_s: float = 0.25
    position_prior_radius_m: float | None = None
    attitude_rate_hz: float = 20.0
    position_rate_hz: float = 10.0
    distance_rate_hz: float = 10.0

    def __post_init__(self) -> None:
        _choice(self.autopilot, "autopilot", AUTOPILOTS)
        parse_connection(self.connection)
        if not isinstance(self.enabled, bool):
            raise MavlinkConfigError("enabled", f"must be true or false, got {self.enabled!r}")
        if self.baud not in BAUD_RATES or isinstance(self.baud, bool):
            raise MavlinkConfigError("baud", f"must be one of {BAUD_RATES}, got {self.baud!r}")
        _int_in(self.system_id, "system_id", 1, 255)
        _int_in(self.component_id, "component_id", 1, 255)
        _int_in(self.target_system, "target_system", 0, 255)
        _int_in(self.target_component, "target_component", 0, 255)
        _finite(self.heartbeat_rate_hz, "heartbeat_rate_hz", minimum=0.0, maximum=50.0)
        _finite(self.link_timeout_s, "link_timeout_s", minimum=0.0)
        _finite(self.reconnect_interval_s, "reconnect_interval_s", minimum=0.0)
        _finite(self.max_rate_hz, "max_rate_hz", minimum=0.0, maximum=100.0)
        _finite(self.max_fix_age_s, "max_fix_age_s", minimum=0.0)
        _int_in(self.sensor_id, "sensor_id", 0, 255)
        _finite(self.map_accuracy_m, "map_accuracy_m", minimum=0.0, strict=False)
        _finite(self.accuracy_scale, "accuracy_scale", minimum=0.0)
        _finite(self.max_horizontal_accuracy_m, "max_horizontal_accuracy_m", minimum=0.0)
        _choice(self.fix_altitude, "fix_altitude", FIX_ALTITUDE_MODES)
        if self.ground_elevation_amsl_m is not None:
            _finite(self.ground_elevation_amsl_m, "ground_elevation_amsl_m", minimum=-500.0, strict=False,
                    maximum=9000.0)
        if self.fix_altitude == "ground_plus_agl" and self.ground_elevation_amsl_m is None:
            raise MavlinkConfigError("ground_elevation_amsl_m", "is required when fix_altitude is 'ground_plus_agl'")
        if self.autopilot == "ardupilot" and self.fix_altitude == "none":
            raise MavlinkConfigError(
                "fix_altitude", "ArduPilot needs an altitude in GPS_INPUT (with the altitude ignored it reads 0 m AMSL "
                "and EKF3 uses only 3D fixes): set fix_altitude: ground_plus_agl and ground_elevation_amsl_m")
        _finite(self.ground_elevation_std_m, "ground_elevation_std_m", minimum=0.0)
        _finite(self.agl_relative_std, "agl_relative_std", minimum=0.0, strict=False, maximum=1.0)
        if not isinstance(self.agl_fallback_vehicle, bool):
            raise MavlinkConfigError("agl_fallback_vehicle",
                                     f"must be true or false, got {self.agl_fallback_vehicle!r}")
        _int_in(self.gps_leap_seconds, "gps_leap_seconds", 0, 60)
        if self.position_prior_radius_m is not None:
            _finite(self.position_prior_radius_m, "position_prior_radius_m", minimum=1.0, strict=False)
        _choice(self.agl_source, "agl_source", AGL_SOURCES)
        mount = self.camera_mount_ypr_deg
        if not isinstance(mount, tuple) or len(mount) != 3:
            raise MavlinkConfigError("camera_mount_ypr_deg", f"must be [yaw, pitch, roll] in degrees, got {mount!r}")
        for value in mount:
            _finite(value, "camera_mount_ypr_deg", minimum=-360.0, strict=False, maximum=360.0)
        _finite(self.prior_buffer_s, "prior_buffer_s", minimum=0.0, maximum=600.0)
        _finite(self.prior_max_gap_s, "prior_max_gap_s", minimum=0.0)
        _finite(self.prior_max_extrapolation_s, "prior_max_extrapolation_s", minimum=0.0, strict=False)
        for name in ("attitude_rate_hz", "position_rate_hz", "distance_rate_hz"):
            _finite(getattr(self, name), name, minimum=0.0, strict=False, maximum=200.0)

    @property
    def endpoint(self) -> Endpoint:
        """The parsed ``connection``."""
        return parse_connection(self.connection)

    @property
    def message_rates_hz(self) -> dict[str, float]:
        """Message name -> rate to request (only the non-zero ones)."""
        rates = {"ATTITUDE": self.attitude_rate_hz, "GLOBAL_POSITION_INT": self.position_rate_hz,
                 "DISTANCE_SENSOR": self.distance_rate_hz}
        return {k: v for k, v in rates.items() if v > 0}

    @property
    def min_fix_interval_s(self) -> float:
        """Minimum spacing of the capture times of two fixes sent."""
        return 1.0 / self.max_rate_hz

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> MavlinkConfig:
        """Build from the ``mavlink:`` mapping of the vehicle YAML.

        Raises:
            MavlinkConfigError: an unknown key (named), a missing required key, a wrong type or value.
        """
        if not isinstance(raw, Mapping):
            raise MavlinkConfigError("<section>", f"must be a mapping, got {type(raw).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in fields:
                raise MavlinkConfigError(str(key), f"unknown key; expected one of {sorted(fields)}")
        for name, f in fields.items():
            if f.default is dataclasses.MISSING and name not in raw:
                raise MavlinkConfigError(name, "is required")
        values = dict(raw)
        if "camera_mount_ypr_deg" in values:
            mount = values["camera_mount_ypr_deg"]
            if not isinstance(mount, (list, tuple)):
                raise MavlinkConfigError("camera_mount_ypr_deg", f"must be [yaw, pitch, roll], got {mount!r}")
            values["camera_mount_ypr_deg"] = tuple(mount)
        for name in ("autopilot", "connection", "fix_altitude", "agl_source"):
            if name in values and not isinstance(values[name], str):
                raise MavlinkConfigError(name, f"must be a string, got {values[name]!r}")
        return cls(**values)
