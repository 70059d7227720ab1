"""Pose and status messages as JSON-ready dicts (schemas: ``edge_runtime/schemas/{pose,status}.schema.json``).

A pose is built only from a located result (``LocateResult.ok``); a frame without a fix becomes a ``no_fix`` status
message, never a pose. Times are UTC ISO-8601 with a ``Z`` suffix and microseconds. Positions are WGS84 degrees; the
altitude is above ground level (the only height the locator estimates: ``alt_datum: "agl"``); the footprint is a
GeoJSON Polygon with ``[lon, lat]`` positions (RFC 7946 §3.1.1), closed and counter-clockwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import numpy as np

from edge_runtime.types import LocateResult, Priors

POSE_SCHEMA = "topicgeo-edge/pose/1"
STATUS_SCHEMA = "topicgeo-edge/status/1"
STATES = ("starting", "running", "degraded", "unhealthy", "stopping", "offline", "failed")


def schema_text(name: str) -> str:
    """The text of a shipped JSON Schema (``pose``, ``status`` or ``telemetry``)."""
    return resources.files("edge_runtime.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """A shipped JSON Schema as a dict."""
    return json.loads(schema_text(name))


def iso_utc(t: float) -> str:
    """``2016-06-23T16:31:59.000000Z`` for seconds since the epoch."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(value: float | None, digits: int) -> float | None:
    """A finite rounded float, or None for None / NaN / inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def footprint_geojson(footprint_lonlat: np.ndarray) -> dict[str, Any]:
    """GeoJSON Polygon of a frame footprint.

    Args:
        footprint_lonlat: ``(4, 2)`` float corners as ``[lon, lat]`` degrees (any winding).

    Returns:
        ``{"type": "Polygon", "coordinates": [ring]}`` with a closed, counter-clockwise 5-position ring.

    Raises:
        ValueError: wrong shape, non-finite or out-of-range values, or a degenerate (zero-area) quadrilateral.
    """
    pts = np.asarray(footprint_lonlat, dtype=np.float64)
    if pts.shape != (4, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"footprint_lonlat must be a finite (4, 2) array of [lon, lat], got shape {pts.shape}")
    if np.any(np.abs(pts[:, 0]) > 180) or np.any(np.abs(pts[:, 1]) > 90):
        raise ValueError(f"footprint_lonlat is not [lon, lat] degrees: {pts.tolist()}")
    x, y = pts[:, 0], pts[:, 1]
    area2 = float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    if area2 == 0:
        raise ValueError("footprint has zero area")
    if area2 < 0:
        pts = pts[::-1]
    ring = [[round(float(lon), 9), round(float(lat), 9)] for lon, lat in pts]
    ring.append(list(ring[0]))
    return {"type": "Polygon", "coordinates": [ring]}


def pose_payload(
    result: LocateResult,
    *,
    vehicle_id: str,
    run_id: str,
    seq: int,
    frame: Mapping[str, Any],
    t_capture: float,
    t_capture_source: str,
    t_publish: float,
    priors: Priors,
    latency_ms: Mapping[str, float],
) -> dict[str, Any]:
    """The pose message for a located frame.

    Args:
        result: a located result (``ok``).
        vehicle_id, run_id: who publishes, and which run of the service (``seq`` restarts with each run).
        seq: 1-based number of the frame in this run (poses and statuses share the sequence).
        frame: ``name``, ``index``, ``source``, ``width``, ``height`` of the frame.
        t_capture: capture time (s since the epoch); t_capture_source: ``exif``, ``mqtt`` or ``arrival``.
        t_publish: publication time.
        priors: the priors the frame was located with.
        latency_ms: service stages (``decode``, ``priors``, ``queue_wait``, ``end_to_end``, ...).

    Raises:
        ValueError: the result has no fix (publish a status instead) or lacks a footprint / uncertainty.
    """
    if not result.ok:
        raise ValueError(f"a result without a fix is a status, never a pose (reason: {result.reason})")
    if result.footprint_lonlat is None or result.std_m is None:
        raise ValueError("a located result needs footprint_lonlat and std_m to be published")
    attitude = None
    if result.attitude_deg is not None:
        roll, pitch, yaw = result.attitude_deg
        attitude = {"roll": _num(roll, 3), "pitch": _num(pitch, 3), "yaw": _num(yaw, 3), "frame": "NED"}
    # rounded, wrapped, rounded again: 359.9996 rounds to 360.0 (out of the schema's range), and the wrap of a
    # rounded value leaves float noise (370.1 % 360 = 10.100000000000023)
    heading = _num(result.heading_deg, 3)
    heading = None if heading is None else round(heading % 360.0, 3) % 360.0
    locator_latency = {str(k): _num(v, 3) for k, v in result.latency_ms.items()}
    if "total" not in locator_latency:
        raise ValueError("latency_ms of the result must include 'total'")
    service_latency = {str(k): _num(v, 3) for k, v in latency_ms.items()}
    return {
        "schema": POSE_SCHEMA,
        "vehicle_id": vehicle_id,
        "run_id": run_id,
        "seq": int(seq),
        "frame": dict(frame),
        "t_capture": iso_utc(t_capture),
        "t_capture_source": t_capture_source,
        "t_publish": iso_utc(t_publish),
        "map_id": result.map_id,
        "position": {
            "lat": _num(result.lat, 9),
            "lon": _num(result.lon, 9),
            "alt_m": _num(result.altitude_agl_m, 3),
            "alt_datum": "agl",
            "horizontal_datum": "WGS84",
        },
        "heading_deg": heading,
        "heading_reference": "true_north",
        "attitude_deg": attitude,
        "std_m": {"east": _num(result.std_m[0], 3), "north": _num(result.std_m[1], 3)},
        "footprint": footprint_geojson(result.footprint_lonlat),
        "quality": {"confidence": _num(result.confidence, 4), "inliers": int(result.inliers), "source": "vision"},
        "latency_ms": {"locator": locator_latency, **service_latency},
        "inference": {"backend": result.backend, "precision": result.precision, "degraded": bool(result.degraded)},
        "priors": priors_dict(priors),
    }


def no_fix_detail(result: LocateResult) -> dict[str, Any]:
    """The ``detail`` of a ``no_fix`` status: ``reason``, ``confidence``, ``inliers``, ``latency_ms`` (NaN and
    infinity become None: a failed locate may carry them, JSON has neither)."""
    return {
        "reason": result.reason,
        "confidence": _num(result.confidence, 4),
        "inliers": None if result.inliers is None else int(result.inliers),
        "latency_ms": {str(k): _num(v, 3) for k, v in result.latency_ms.items()},
    }


def priors_dict(priors: Priors) -> dict[str, Any]:
    """The priors a frame was processed with (``source`` plus the known values)."""
    out: dict[str, Any] = {"source": priors.source}
    for key, digits in (("altitude_agl_m", 4), ("roll_deg", 4), ("pitch_deg", 4), ("yaw_deg", 4), ("frame_gsd_m", 4),
                        ("near_lat", 7), ("near_lon", 7), ("near_radius_m", 1)):
        value = getattr(priors, key, None)
        if value is not None:
            out[key] = _num(value, digits)
    return out


def status_payload(
    *,
    vehicle_id: str,
    run_id: str,
    online: bool,
    state: str,
    event: str,
    t: float | None,
    message: str | None = None,
    seq: int | None = None,
    frame: str | None = None,
    backend: Mapping[str, Any] | None = None,
    counters: Mapping[str, Any] | None = None,
    detail: Mapping[str, Any] | None = None,
    mavlink: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A status message (birth, heartbeat, per-frame events, stopping, offline, Last Will).

    Args:
        online: False only in the offline message and the Last Will.
        state: one of :data:`STATES`. event: what happened (``birth``, ``heartbeat``, ``no_fix``, ``frame_error``,
            ``telemetry_error``, ``source_error``, ``locate_error``, ``unhealthy``, ``stopping``, ``offline``,
            ``will``, ``failed``).
        t: when the message was composed (None for the Last Will, composed at connect time).
        message: human-readable detail. seq, frame: the frame it is about.
        backend: the locator's ``backend_status``. counters: service counters. detail: extra fields
            (``reason``, ``confidence``, ``inliers``, ``latency_ms`` for ``no_fix``).
        mavlink: the MAVLink link summary (:func:`mavlink_summary`) when a bridge runs; the events ``mavlink_down``
            and ``mavlink_up`` report its transitions.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    payload: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "vehicle_id": vehicle_id,
        "run_id": run_id,
        "t": None if t is None else iso_utc(t),
        "online": online,
        "state": state,
        "event": event,
        "message": message,
    }
    if seq is not None:
        payload["seq"] = int(seq)
    if frame is not None:
        payload["frame"] = frame
    if backend is not None:
        payload["backend"] = {k: v for k, v in backend.items() if isinstance(v, str | bool | int | float | None)}
    if counters is not None:
        payload["counters"] = dict(counters)
    if detail is not None:
        payload["detail"] = dict(detail)
    if mavlink is not None:
        payload["mavlink"] = dict(mavlink)
    return payload


def mavlink_summary(link_status: Mapping[str, Any]) -> dict[str, Any]:
    """The MAVLink part of a status message, from ``MavlinkBridge.link_status()``.

    ``up`` / ``state``, the age of the autopilot's last heartbeat (s; None before the first), how long the link has
    been down, the packets received and rejected (corrupt or truncated), the fixes sent, and the located results not
    sent (``fixes_dropped``; ``fixes_dropped_by_reason`` also counts the frames without a fix, reason ``no_fix``; the
    reasons are in docs/mavlink.md).
    """
    parser = link_status.get("parser") or {}
    dropped = {str(k): int(v) for k, v in (link_status.get("fixes_dropped") or {}).items() if v}
    return {
        "up": bool(link_status["up"]),
        "state": str(link_status["state"]),
        "connection": link_status.get("connection"),
        "autopilot": link_status.get("autopilot"),
        "autopilot_detected": link_status.get("autopilot_detected"),
        "autopilot_mismatch": bool(link_status.get("autopilot_mismatch", False)),
        "last_heartbeat_age_s": _num(link_status.get("last_heartbeat_age_s"), 3),
        "down_for_s": _num(link_status.get("down_for_s"), 3),
        "link_losses": int(link_status.get("link_losses", 0)),
        "heartbeats_received": int(link_status.get("heartbeats_received", 0)),
        "packets": int(parser.get("packets", 0)),
        "bad_packets": int(parser.get("bad_packets", 0)),
        "fixes_sent": int(link_status.get("fixes_sent", 0)),
        "fixes_dropped": sum(v for k, v in dropped.items() if k != "no_fix"),
        "fixes_dropped_by_reason": dropped,
        "last_fix_latency_ms": _num(link_status.get("last_fix_latency_ms"), 1),
        "last_error": link_status.get("last_error"),
    }


def dumps(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (NaN and infinity are refused: JSON has neither)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")
