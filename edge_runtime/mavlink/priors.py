"""Priors from the autopilot, aligned in time with the frames (pure numerics, no pymavlink).

The autopilot stamps ATTITUDE, GLOBAL_POSITION_INT (relative altitude, heading and, used as a position prior only when
configured, latitude / longitude) and DISTANCE_SENSOR with ``time_boot_ms`` (its own clock since
boot); frames carry Unix capture times. :class:`BootClock` maps one onto the other with the smallest observed
``arrival - sample`` offset over a sliding window (the packet that travelled fastest bounds the transport delay), so
samples that arrive late or in bursts keep their true sample times. :class:`PriorBuffer` stores the samples in boot
time and interpolates them at a capture time.

Conventions: ATTITUDE is the vehicle body (FRD) relative to NED, Z-Y-X Euler radians; the Priors returned carry the
*camera* attitude in calibration.geometry's convention (camera "body" x = image top, z = optical axis, relative to
NED, degrees, yaw clockwise from north in (-180, 180]) = vehicle attitude composed with the configured mount.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from edge_runtime.types import Priors

logger = logging.getLogger(__name__)

#: MAV_SENSOR_ROTATION_PITCH_270: a rangefinder looking down.
MAV_SENSOR_ROTATION_PITCH_270 = 25
#: GLOBAL_POSITION_INT.hdg when the heading is unknown.
HDG_UNKNOWN = 65535


# ----------------------------------------------------------------------------------------------- rotations
def rotation_zyx(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation NED <- body for Z-Y-X Euler angles in radians (aerospace convention)."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def euler_zyx(R: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` radians of a ``(3, 3)`` NED <- body rotation; inverts :func:`rotation_zyx`."""
    pitch = math.asin(max(-1.0, min(1.0, -float(R[2, 0]))))
    return math.atan2(float(R[1, 0]), float(R[0, 0])), pitch, math.atan2(float(R[2, 1]), float(R[2, 2]))


def wrap_deg(angle: float) -> float:
    """Degrees wrapped to (-180, 180]."""
    a = math.fmod(angle, 360.0)
    if a <= -180.0:
        a += 360.0
    elif a > 180.0:
        a -= 360.0
    return a


def camera_attitude_deg(roll: float, pitch: float, yaw: float,
                        mount_ypr_deg: tuple[float, float, float]) -> tuple[float, float, float]:
    """Camera ``(roll, pitch, yaw)`` degrees from the vehicle attitude (radians) and the mount (Z-Y-X degrees)."""
    my, mp, mr = (math.radians(v) for v in mount_ypr_deg)
    R = rotation_zyx(yaw, pitch, roll) @ rotation_zyx(my, mp, mr)
    cy, cp, cr = euler_zyx(R)
    return math.degrees(cr), math.degrees(cp), wrap_deg(math.degrees(cy))


def tilt_corrected_range(range_m: float, roll: float, pitch: float) -> float:
    """Vertical height from a range measured along the body z axis (down-looking rangefinder), flat ground."""
    return range_m * math.cos(roll) * math.cos(pitch)


# ------------------------------------------------------------------------------------------------- clocks
class BootClock:
    """Maps the autopilot's boot time (s) to local Unix time: ``unix = boot + offset``.

    ``offset`` is the minimum of ``arrival_unix - boot`` over the last ``window_s`` seconds (a sliding-window
    minimum, amortised O(1) per sample). A boot time that jumps back by more than a second is an autopilot reboot:
    the window restarts and ``resets`` counts it.
    """

    def __init__(self, window_s: float = 20.0) -> None:
        self.window_s = window_s
        self._window: deque[tuple[float, float]] = deque()  # (arrival_unix, offset), offsets increasing
        self._max_boot: float | None = None
        self.resets = 0

    def observe(self, boot_s: float, arrival_unix: float) -> bool:
        """Add a sample; returns True when it revealed a reboot (the caller drops its boot-time history)."""
        rebooted = False
        if self._max_boot is not None and boot_s < self._max_boot - 1.0:
            logger.warning("autopilot boot time went back from %.3f s to %.3f s: reboot, clock re-synchronised",
                           self._max_boot, boot_s)
            self._window.clear()
            self._max_boot = None
            self.resets += 1
            rebooted = True
        self._max_boot = boot_s if self._max_boot is None else max(self._max_boot, boot_s)
        offset = arrival_unix - boot_s
        while self._window and self._window[-1][1] >= offset:
            self._window.pop()
        self._window.append((arrival_unix, offset))
        while self._window[0][0] < arrival_unix - self.window_s and len(self._window) > 1:
            self._window.popleft()
        return rebooted

    @property
    def offset(self) -> float | None:
        """Current ``unix - boot`` estimate (None before the first sample)."""
        return self._window[0][1] if self._window else None

    def to_boot(self, unix_s: float) -> float | None:
        """A Unix time in the autopilot's boot time."""
        off = self.offset
        return None if off is None else unix_s - off

    def to_unix(self, boot_s: float) -> float | None:
        """A boot time in Unix time."""
        off = self.offset
        return None if off is None else boot_s + off


# ------------------------------------------------------------------------------------------------ series
@dataclass
class Series:
    """Samples ``(t, values)`` in increasing ``t`` (autopilot boot seconds); ``angular`` marks radian values that
    interpolate on the circle."""

    angular: tuple[bool, ...]

    def __post_init__(self) -> None:
        self.t: list[float] = []
        self.v: list[tuple[float, ...]] = []

    def add(self, t: float, values: tuple[float, ...]) -> None:
        """Insert in time order (UDP may reorder); a sample with an already-stored time is dropped."""
        if not self.t or t > self.t[-1]:
            self.t.append(t)
            self.v.append(values)
            return
        i = bisect.bisect_left(self.t, t)
        if self.t[i] == t:
            return
        self.t.insert(i, t)
        self.v.insert(i, values)

    def trim(self, oldest: float) -> None:
        """Drop samples older than ``oldest`` (keeps the last one)."""
        i = bisect.bisect_left(self.t, oldest)
        i = min(i, len(self.t) - 1)
        if i > 0:
            del self.t[:i]
            del self.v[:i]

    def clear(self) -> None:
        """Forget everything."""
        self.t.clear()
        self.v.clear()

    def at(self, t: float, max_gap: float, max_extrapolation: float) -> tuple[float, ...] | None:
        """Values at ``t``: linear between the bracketing samples when they are at most ``max_gap`` apart, the
        nearest sample when ``t`` is within ``max_extrapolation`` of it, else None (also before the first sample
        beyond ``max_extrapolation``)."""
        if not self.t:
            return None
        i = bisect.bisect_right(self.t, t)
        if i == 0:
            return self.v[0] if self.t[0] - t <= max_extrapolation else None
        if i == len(self.t):
            return self.v[-1] if t - self.t[-1] <= max_extrapolation else None
        t0, t1 = self.t[i - 1], self.t[i]
        if t1 - t0 > max_gap:
            if t - t0 <= max_extrapolation:
                return self.v[i - 1]
            if t1 - t <= max_extrapolation:
                return self.v[i]
            return None
        w = (t - t0) / (t1 - t0)
        out = []
        for a, b, ang in zip(self.v[i - 1], self.v[i], self.angular, strict=True):
            if ang:
                d = math.atan2(math.sin(b - a), math.cos(b - a))
                out.append(a + w * d)
            else:
                out.append(a + w * (b - a))
        return tuple(out)

    def newest(self) -> tuple[float, tuple[float, ...]] | None:
        """``(t, values)`` of the newest sample."""
        return (self.t[-1], self.v[-1]) if self.t else None


class PriorBuffer:
    """Time-aligned autopilot priors: attitude, relative altitude, heading, downward range, and (with
    ``position_radius_m``) the autopilot's position as a position prior.

    Args:
        agl_source: ``auto`` | ``rangefinder`` | ``relative_alt`` (see MavlinkConfig).
        mount_ypr_deg: camera mount relative to the body (see MavlinkConfig).
        buffer_s, max_gap_s, max_extrapolation_s: history length and interpolation limits (seconds).
        clock_window_s: window of the boot-clock offset estimate.
        position_radius_m: the autopilot's lat / lon at the capture time becomes the priors' ``near_lat`` /
            ``near_lon`` with this ``near_radius_m`` (None: not used).
    """

    def __init__(self, agl_source: str = "auto", mount_ypr_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 buffer_s: float = 10.0, max_gap_s: float = 1.0, max_extrapolation_s: float = 0.25,
                 clock_window_s: float = 20.0, position_radius_m: float | None = None) -> None:
        self.agl_source = agl_source
        self.position_radius_m = position_radius_m  # None: the autopilot's lat/lon is not a prior
        self.mount = mount_ypr_deg
        self.buffer_s, self.max_gap_s, self.max_extrapolation_s = buffer_s, max_gap_s, max_extrapolation_s
        self.clock = BootClock(clock_window_s)
        self.attitude = Series((True, True, True))  # roll, pitch, yaw (rad)
        self.relative_alt = Series((False,))  # m above home
        self.heading = Series((True,))  # rad, clockwise from north
        self.range = Series((False,))  # m along the body z axis
        self.position = Series((False, True))  # lat, lon (rad; lon interpolates across the antimeridian)
        self.samples = 0

    def _series(self) -> tuple[Series, ...]:
        return (self.attitude, self.relative_alt, self.heading, self.range, self.position)

    def _stamp(self, time_boot_ms: int, arrival_unix: float) -> float:
        boot = time_boot_ms / 1000.0
        if self.clock.observe(boot, arrival_unix):
            for s in self._series():
                s.clear()
        self.samples += 1
        return boot

    def _trim(self, boot: float) -> None:
        if self.samples % 64 == 0:
            for s in self._series():
                s.trim(boot - self.buffer_s)

    def add_attitude(self, time_boot_ms: int, roll: float, pitch: float, yaw: float, arrival_unix: float) -> None:
        """ATTITUDE (radians)."""
        if not all(math.isfinite(v) for v in (roll, pitch, yaw)):
            return
        boot = self._stamp(time_boot_ms, arrival_unix)
        self.attitude.add(boot, (roll, pitch, yaw))
        self._trim(boot)

    def add_global_position(self, time_boot_ms: int, relative_alt_mm: int, hdg_cdeg: int,
                            arrival_unix: float, lat_e7: int | None = None, lon_e7: int | None = None) -> None:
        """GLOBAL_POSITION_INT (relative_alt in mm above home, hdg in centidegrees, 65535 = unknown; lat / lon in
        1e-7 degrees, both 0 = no position estimate yet)."""
        boot = self._stamp(time_boot_ms, arrival_unix)
        self.relative_alt.add(boot, (relative_alt_mm / 1000.0,))
        if hdg_cdeg != HDG_UNKNOWN:
            self.heading.add(boot, (math.radians(hdg_cdeg / 100.0),))
        if lat_e7 is not None and lon_e7 is not None and (lat_e7, lon_e7) != (0, 0) and \
                abs(lat_e7) <= 900_000_000 and abs(lon_e7) <= 1_800_000_000:
            self.position.add(boot, (math.radians(lat_e7 * 1e-7), math.radians(lon_e7 * 1e-7)))
        self._trim(boot)

    def add_distance(self, time_boot_ms: int, current_cm: int, min_cm: int, max_cm: int, orientation: int,
                     arrival_unix: float) -> bool:
        """DISTANCE_SENSOR (cm). Only a downward sensor's in-range readings are kept; returns whether it was."""
        if orientation != MAV_SENSOR_ROTATION_PITCH_270 or not (min_cm <= current_cm <= max_cm) or current_cm <= 0:
            return False
        boot = self._stamp(time_boot_ms, arrival_unix)
        self.range.add(boot, (current_cm / 100.0,))
        self._trim(boot)
        return True

    def _lookup(self, series: Series, t: float | None, now_boot: float | None) -> tuple[float, ...] | None:
        """``series`` at boot time ``t``; for ``t = None`` its newest sample if not older than ``max_gap_s``."""
        if t is not None:
            return series.at(t, self.max_gap_s, self.max_extrapolation_s)
        newest = series.newest()
        if newest is None or now_boot is None or now_boot - newest[0] > self.max_gap_s:
            return None
        return newest[1]

    def _agl(self, t: float | None, now_boot: float | None) -> tuple[float | None, str | None]:
        if self.agl_source in ("auto", "rangefinder"):
            rng = self._lookup(self.range, t, now_boot)
            if rng is not None:
                att = self._lookup(self.attitude, t, now_boot)
                agl = tilt_corrected_range(rng[0], att[0], att[1]) if att is not None else rng[0]
                if agl > 0:
                    return agl, "rangefinder"
            if self.agl_source == "rangefinder":
                return None, None
        rel = self._lookup(self.relative_alt, t, now_boot)
        if rel is not None and rel[0] > 0:
            return rel[0], "relative_alt"
        return None, None

    def priors_at(self, capture_time: float | None, now_unix: float) -> Priors | None:
        """Priors at a capture time (Unix s), or the newest ones (each not older than ``max_gap_s``) when None.

        Returns None when nothing is known at that time.
        """
        if self.clock.offset is None:
            return None
        t = None if capture_time is None else self.clock.to_boot(capture_time)
        now_boot = self.clock.to_boot(now_unix)
        roll = pitch = yaw = None
        att = self._lookup(self.attitude, t, now_boot)
        if att is not None:
            roll, pitch, yaw = camera_attitude_deg(att[0], att[1], att[2], self.mount)
        else:
            hdg = self._lookup(self.heading, t, now_boot)
            if hdg is not None and self.mount[1] == 0.0 and self.mount[2] == 0.0:
                yaw = wrap_deg(math.degrees(hdg[0]) + self.mount[0])
        agl, _ = self._agl(t, now_boot)
        near: dict[str, float] = {}
        if self.position_radius_m is not None:
            pos = self._lookup(self.position, t, now_boot)
            if pos is not None:
                near = {"near_lat": math.degrees(pos[0]), "near_lon": wrap_deg(math.degrees(pos[1])),
                        "near_radius_m": self.position_radius_m}
        if agl is None and roll is None and yaw is None and not near:
            return None
        return Priors(altitude_agl_m=agl, roll_deg=roll, pitch_deg=pitch, yaw_deg=yaw, capture_time=capture_time,
                      source="mavlink", **near)

    def agl_at(self, capture_time: float) -> float | None:
        """Altitude above ground (m) at a capture time, or None."""
        t = self.clock.to_boot(capture_time)
        return None if t is None else self._agl(t, None)[0]
