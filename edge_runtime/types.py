"""Data types the locator produces and the service, MQTT and MAVLink outputs consume (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class PriorsError(ValueError):
    """A :class:`Priors` value out of range; ``field`` names it (the message starts with it too)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Priors:
    """What the vehicle knows about a frame besides its pixels (all optional).

    Attributes:
        altitude_agl_m: altitude above ground in metres (EXIF/XMP relative altitude, rangefinder, autopilot).
        roll_deg, pitch_deg, yaw_deg: camera attitude (calibration.geometry convention: NED, yaw clockwise from north,
            nadir camera with the image top to the north = (0, 0, 0)).
        capture_time: capture time, seconds since the Unix epoch (UTC).
        frame_gsd_m: ground sampling distance of the frame in metres per pixel, when known directly.
        near_lat, near_lon: WGS84 degrees of a point the frame is expected near (the last GNSS fix before it was
            lost, the autopilot's dead-reckoned position, an operator's estimate): the locator searches the maps'
            cells within ``near_radius_m`` of it first, then every map; the area of its own last fix instead when
            that lies within the circle and the locator's ``prior_radius_m`` is the smaller. Both or neither.
        near_radius_m: how far from that point to search first (metres, at least 1; None: the locator's
            ``prior_radius_m``).
        source: where the priors came from (``exif``, ``mqtt``, ``mavlink``, ``none``).
    """

    altitude_agl_m: float | None = None
    roll_deg: float | None = None
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    capture_time: float | None = None
    frame_gsd_m: float | None = None
    source: str = "none"
    near_lat: float | None = None
    near_lon: float | None = None
    near_radius_m: float | None = None

    def __post_init__(self) -> None:
        for name in ("altitude_agl_m", "frame_gsd_m"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise PriorsError(name, f"{name} must be a positive finite number, got {value}")
        if self.near_radius_m is not None and not (np.isfinite(self.near_radius_m) and self.near_radius_m >= 1.0):
            raise PriorsError("near_radius_m",
                              f"near_radius_m must be a finite number of metres >= 1, got {self.near_radius_m}")
        if (self.near_lat is None) != (self.near_lon is None):
            raise PriorsError("near_lat", "near_lat and near_lon go together: give both or neither")
        if self.near_lat is not None and not (np.isfinite(self.near_lat) and -90.0 <= self.near_lat <= 90.0):
            raise PriorsError("near_lat", f"near_lat must be a latitude in [-90, 90] degrees, got {self.near_lat}")
        if self.near_lon is not None and not (np.isfinite(self.near_lon) and -180.0 <= self.near_lon <= 180.0):
            raise PriorsError("near_lon",
                              f"near_lon must be a longitude in [-180, 180] degrees, got {self.near_lon}")
        if self.near_radius_m is not None and self.near_lat is None:
            raise PriorsError("near_radius_m", "near_radius_m needs near_lat and near_lon")


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
