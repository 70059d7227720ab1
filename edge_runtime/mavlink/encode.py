"""Turning a :class:`~edge_runtime.types.LocateResult` into the MAVLink fields of an absolute fix (pure functions).

Nothing here imports pymavlink: :func:`fix_from_result` decides whether a result can be sent and what it carries
(SI units, datum explicit), :func:`global_position_sensor_fields` and :func:`gps_input_fields` give the wire fields
(MAVLink units: degE7, metres, microseconds) as keyword arguments of pymavlink's ``<message>_encode`` methods.

Height datums (also in docs/mavlink.md):

* ``Fix.alt_amsl_m`` - metres above mean sea level (orthometric height, the datum of ``ground_elevation_amsl_m``):
  ground elevation AMSL + the fix's altitude above ground. GLOBAL_POSITION_SENSOR.alt and GPS_INPUT.alt are AMSL
  ("MSL") fields, so it goes there unchanged.
* GLOBAL_POSITION_SENSOR.alt_ellipsoid (height above the WGS84 ellipsoid) is always sent invalid (NaN): the bridge
  has no geoid model, and PX4's aux global position carries AMSL.
* Horizontal accuracy: the EKFs (PX4 eph, ArduPilot horiz_accuracy) use the value as a per-axis 1-sigma of north and
  east, so the locator's ``std_m = (east, north)`` becomes ``scale * sqrt(max(east, north)^2 + map_accuracy^2)``:
  the larger axis (a circle that covers the error ellipse's 1-sigma along both axes) with the base map's own
  absolute error added in quadrature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_runtime.mavlink.config import MavlinkConfig
from edge_runtime.types import LocateResult

#: Unix time of the GPS epoch, 1980-01-06T00:00:00Z.
GPS_EPOCH_UNIX_S = 315964800
SECONDS_PER_WEEK = 604800

# GLOBAL_POSITION_SRC / GPS_INPUT_IGNORE_FLAGS / GPS_FIX_TYPE values of MAVLink common.xml.
GLOBAL_POSITION_SRC_VISION = 2
GPS_INPUT_IGNORE_FLAG_ALT = 1
GPS_INPUT_IGNORE_FLAG_HDOP = 2
GPS_INPUT_IGNORE_FLAG_VDOP = 4
GPS_INPUT_IGNORE_FLAG_VEL_HORIZ = 8
GPS_INPUT_IGNORE_FLAG_VEL_VERT = 16
GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY = 32
GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY = 64
GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY = 128
GPS_FIX_TYPE_2D_FIX = 2
GPS_FIX_TYPE_3D_FIX = 3
#: "If unknown, set to: UINT16_MAX" (GPS_INPUT.hdop / vdop).
DOP_UNKNOWN = 65535.0
#: GPS_INPUT.satellites_visible: no GNSS satellite is involved in a map-matching fix (docs/mavlink.md).
SATELLITES_VISIBLE = 0
#: Fields a vision fix never fills: DOPs (a satellite-geometry quantity) and velocities.
GPS_INPUT_ALWAYS_IGNORED = (GPS_INPUT_IGNORE_FLAG_HDOP | GPS_INPUT_IGNORE_FLAG_VDOP | GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
                            | GPS_INPUT_IGNORE_FLAG_VEL_VERT | GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY)

#: Why a result was not sent (keys of ``link_status()["fixes_dropped"]``).
DROP_REASONS = ("no_fix", "no_capture_time", "no_accuracy", "accuracy_too_large", "no_altitude", "stale",
                "future", "out_of_order", "rate", "link_down", "send_error")

MESSAGE_FOR_AUTOPILOT = {"px4": "GLOBAL_POSITION_SENSOR", "ardupilot": "GPS_INPUT"}


@dataclass(frozen=True)
class Fix:
    """An absolute fix ready to encode.

    Attributes:
        capture_time: the frame's capture time, seconds since the Unix epoch (UTC).
        lat_deg, lon_deg: WGS84 degrees.
        alt_amsl_m: metres above mean sea level, or None (horizontal-only fix).
        h_acc_m: horizontal 1-sigma per axis (m). v_acc_m: vertical 1-sigma (m) or None with ``alt_amsl_m``.
        agl_m: the altitude above ground the altitude came from (m), for logs.
    """

    capture_time: float
    lat_deg: float
    lon_deg: float
    alt_amsl_m: float | None
    h_acc_m: float
    v_acc_m: float | None
    agl_m: float | None = None


def deg_e7(value_deg: float, limit_deg: float, name: str) -> int:
    """Degrees -> MAVLink ``degE7`` int32 (rounded to nearest); raises ValueError outside ``[-limit, limit]``."""
    if not math.isfinite(value_deg) or abs(value_deg) > limit_deg:
        raise ValueError(f"{name} must be finite within +-{limit_deg} degrees, got {value_deg}")
    return round(value_deg * 1e7)


def gps_week_ms(unix_time_s: float, leap_seconds: int) -> tuple[int, int]:
    """GPS week number and milliseconds into the week of a Unix time (UTC) given GPS - UTC leap seconds."""
    total_ms = round((unix_time_s - GPS_EPOCH_UNIX_S + leap_seconds) * 1000.0)
    if total_ms < 0:
        raise ValueError(f"time {unix_time_s} is before the GPS epoch")
    week, week_ms = divmod(total_ms, SECONDS_PER_WEEK * 1000)
    return int(week), int(week_ms)


def horizontal_accuracy_m(std_m: tuple[float, float], map_accuracy_m: float, scale: float) -> float:
    """Per-axis 1-sigma horizontal accuracy from the locator's ``(east, north)`` 1-sigma (see module docstring)."""
    east, north = (float(v) for v in std_m)
    if not (math.isfinite(east) and math.isfinite(north) and east >= 0 and north >= 0):
        raise ValueError(f"std_m must be two finite non-negative metres, got {std_m}")
    return scale * math.hypot(max(east, north), map_accuracy_m)


def vertical_accuracy_m(agl_m: float, ground_elevation_std_m: float, agl_relative_std: float, scale: float) -> float:
    """1-sigma of ``ground elevation + AGL``: the terrain elevation error and a relative AGL error in quadrature."""
    return scale * math.hypot(ground_elevation_std_m, agl_relative_std * agl_m)


def fix_from_result(result: LocateResult, config: MavlinkConfig,
                    vehicle_agl_m: float | None = None) -> tuple[Fix | None, str | None]:
    """Decide what a result sends: ``(fix, None)`` or ``(None, reason)`` with a reason of :data:`DROP_REASONS`.

    Args:
        result: the locator's output. A result without a fix, a capture time or an uncertainty sends nothing.
        config: the bridge config (accuracy terms, altitude mode).
        vehicle_agl_m: the autopilot's altitude above ground at the capture time (used only when the result has
            none and ``config.agl_fallback_vehicle``).

    Raises:
        ValueError: a located result with impossible numbers (lat/lon out of range, negative std).
    """
    if not result.ok:
        return None, "no_fix"
    if result.capture_time is None:
        return None, "no_capture_time"
    if result.std_m is None:
        return None, "no_accuracy"
    assert result.lat is not None and result.lon is not None  # LocateResult guarantees it for ok results
    deg_e7(result.lat, 90.0, "lat")
    deg_e7(result.lon, 180.0, "lon")
    h_acc = horizontal_accuracy_m(result.std_m, config.map_accuracy_m, config.accuracy_scale)
    if h_acc > config.max_horizontal_accuracy_m:
        return None, "accuracy_too_large"
    alt = v_acc = agl = None
    if config.fix_altitude == "ground_plus_agl":
        agl = result.altitude_agl_m
        if agl is None and config.agl_fallback_vehicle:
            agl = vehicle_agl_m
        if agl is not None and math.isfinite(agl) and agl > 0:
            assert config.ground_elevation_amsl_m is not None  # enforced by the config
            alt = config.ground_elevation_amsl_m + float(agl)
            v_acc = vertical_accuracy_m(float(agl), config.ground_elevation_std_m, config.agl_relative_std,
                                        config.accuracy_scale)
        else:
            agl = None
            if config.autopilot == "ardupilot":
                return None, "no_altitude"
    return Fix(capture_time=float(result.capture_time), lat_deg=float(result.lat), lon_deg=float(result.lon),
               alt_amsl_m=alt, h_acc_m=h_acc, v_acc_m=v_acc, agl_m=agl), None


def global_position_sensor_fields(fix: Fix, config: MavlinkConfig, publish_time: float, target_system: int,
                                  target_component: int) -> dict[str, Any]:
    """GLOBAL_POSITION_SENSOR (id 296, MAVLink common) fields for PX4's aux global position.

    ``time_usec`` is the transmission time and ``processing_time`` the capture-to-transmission latency, as the
    message definition says, so ``time_usec - processing_time`` is exactly the capture time (Unix microseconds).
    """
    time_usec = round(publish_time * 1e6)
    processing = max(0, min(time_usec - round(fix.capture_time * 1e6), 2**32 - 1))
    nan = float("nan")
    return {
        "target_system": target_system, "target_component": target_component, "id": config.sensor_id,
        "time_usec": time_usec, "processing_time": processing, "source": GLOBAL_POSITION_SRC_VISION, "flags": 0,
        "lat": deg_e7(fix.lat_deg, 90.0, "lat"), "lon": deg_e7(fix.lon_deg, 180.0, "lon"),
        "alt_ellipsoid": nan,
        "alt": fix.alt_amsl_m if fix.alt_amsl_m is not None else nan,
        "eph": fix.h_acc_m,
        "epv": fix.v_acc_m if fix.v_acc_m is not None else nan,
    }


def gps_input_fields(fix: Fix, config: MavlinkConfig) -> dict[str, Any]:
    """GPS_INPUT (id 232) fields for ArduPilot ``GPS_TYPE=14``.

    ``time_usec`` is the capture time (Unix microseconds); ``time_week``/``time_week_ms`` are the GPS time of the
    capture (ArduPilot uses them, with its jitter correction, only for 3D fixes with a non-zero week).
    DOPs, velocities and speed accuracy are flagged ignored (and set to their "unknown" values); yaw is 0 = not
    available; ``satellites_visible`` is 0 (no satellites are involved).
    """
    week, week_ms = gps_week_ms(fix.capture_time, config.gps_leap_seconds)
    ignore = GPS_INPUT_ALWAYS_IGNORED
    if fix.alt_amsl_m is None:
        ignore |= GPS_INPUT_IGNORE_FLAG_ALT | GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    return {
        "time_usec": round(fix.capture_time * 1e6), "gps_id": config.sensor_id, "ignore_flags": ignore,
        "time_week_ms": week_ms, "time_week": week,
        "fix_type": GPS_FIX_TYPE_3D_FIX if fix.alt_amsl_m is not None else GPS_FIX_TYPE_2D_FIX,
        "lat": deg_e7(fix.lat_deg, 90.0, "lat"), "lon": deg_e7(fix.lon_deg, 180.0, "lon"),
        "alt": fix.alt_amsl_m if fix.alt_amsl_m is not None else 0.0,
        "hdop": DOP_UNKNOWN, "vdop": DOP_UNKNOWN, "vn": 0.0, "ve": 0.0, "vd": 0.0, "speed_accuracy": 0.0,
        "horiz_accuracy": fix.h_acc_m,
        "vert_accuracy": fix.v_acc_m if fix.v_acc_m is not None else 0.0,
        "satellites_visible": SATELLITES_VISIBLE, "yaw": 0,
    }
