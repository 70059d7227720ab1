"""Data types the locator produces and the service, MQTT and MAVLink outputs consume (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Priors:
    """What the vehicle knows about a frame besides its pixels (all optional).

    Attributes:
        altitude_agl_m: altitude above ground in metres (EXIF/XMP relative altitude, rangefinder, autopilot).
        roll_deg, pitch_deg, yaw_deg: camera attitude (calibration.geometry convention: NED, yaw clockwise from north,
            nadir camera with the image top to the north = (0, 0, 0)).
        capture_time: capture time, seconds since the Unix epoch (UTC).
        frame_gsd_m: ground sampling distance of the frame in metres per pixel, when known directly.
        source: where the priors came from (``exif``, ``mqtt``, ``mavlink``, ``none``).
    """

    altitude_agl_m: float | None = None
    roll_deg: float | None = None
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    capture_time: float | None = None
    frame_gsd_m: float | None = None
    source: str = "none"

    def __post_init__(self) -> None:
        if self.altitude_agl_m is not None and not (np.isfinite(self.altitude_agl_m) and self.altitude_agl_m > 0):
            raise ValueError(f"altitude_agl_m must be a positive finite number, got {self.altitude_agl_m}")
        if self.frame_gsd_m is not None and not (np.isfinite(self.frame_gsd_m) and self.frame_gsd_m > 0):
            raise ValueError(f"frame_gsd_m must be a positive finite number, got {self.frame_gsd_m}")


@dataclass(frozen=True)
class LocateResult:
    """The outcome of locating one frame. ``ok = False`` carries a ``reason`` and never a pose.

    Attributes:
        ok: a pose was found. reason: why not (when ``ok`` is False).
        map_id: the map (file stem) the frame was located on.
        lat, lon: WGS84 degrees of the frame centre's ground point (the nadir point for a nadir camera).
        map_xy: ``(x, y)`` of that point in the map's CRS; crs: the map CRS (``EPSG:xxxx`` or WKT).
        footprint_px: ``(4, 2)`` the frame corners (0,0),(w,0),(w,h),(0,h) in the map's pixel grid.
        footprint_lonlat: ``(4, 2)`` the same corners as WGS84 ``[lon, lat]``.
        heading_deg: direction of the image top, degrees clockwise from true north (geodesic, whatever the map's CRS).
        altitude_agl_m: altitude above ground estimated from the scale (or the 6-DoF pose when calibrated).
        attitude_deg: ``(roll, pitch, yaw)``: a calibrated 6-DoF pose's, or the attitude prior's roll and pitch with the
            fitted heading when the camera position came from them.
        std_m: 1-sigma horizontal uncertainty ``(east, north)`` in metres: the fit's, and for a position that is not
            a 6-DoF PnP pose also the attitude's (``LocatorConfig.attitude_std_deg``).
        confidence: retrieval / geometric confidence in [0, 1]. inliers: homography inliers.
        latency_ms: per stage, with ``total``.
        backend, precision, degraded: the inference backend actually used and whether it is a fallback.
        capture_time: the frame's capture time (s since epoch) when known.
        extra: anything else worth logging (candidates, scale searched, ...).
    """

    ok: bool
    reason: str | None = None
    map_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    map_xy: tuple[float, float] | None = None
    crs: str | None = None
    footprint_px: np.ndarray | None = None
    footprint_lonlat: np.ndarray | None = None
    heading_deg: float | None = None
    altitude_agl_m: float | None = None
    attitude_deg: tuple[float, float, float] | None = None
    std_m: tuple[float, float] | None = None
    confidence: float = 0.0
    inliers: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    precision: str = ""
    degraded: bool = False
    capture_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ok and (self.lat is None or self.lon is None or self.map_id is None):
            raise ValueError("a located result needs map_id, lat and lon")
        if not self.ok and not self.reason:
            raise ValueError("a result without a fix needs a reason")

    @classmethod
    def failure(cls, reason: str, **kwargs: Any) -> LocateResult:
        """A 'no fix' result."""
        return cls(ok=False, reason=reason, **kwargs)
