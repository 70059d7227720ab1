"""Priors for a frame: from its EXIF/XMP, from an MQTT telemetry topic, or fixed in the config.

* EXIF/XMP (DJI): ``RelativeAltitude`` (metres above the take-off point, used as altitude above ground: right over
  flat terrain, wrong by the terrain height difference otherwise), the gimbal attitude (converted from DJI's
  optical-axis angles to the project convention with :mod:`calibration.geometry`) and ``DateTimeOriginal``. EXIF
  times without ``OffsetTimeOriginal`` are local times; the configured UTC offset turns them into UTC.
* MQTT telemetry: JSON samples following ``edge_runtime/schemas/telemetry.schema.json``; the newest sample is used
  for a frame when it arrived at most ``max_age_s`` before. The service also refuses a sample whose own time ``t``
  is more than ``max_age_s`` (+ 5 s of clock skew) old by its clock, and ignores retained messages.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, UnidentifiedImageError

from calibration.exif import DJI_NS, ImageMetadata, jpeg_segments, parse_xmp, read_metadata, xmp_packet
from calibration.geometry import rotation_from_dji_gimbal, ypr_from_rotation
from edge_runtime.types import Priors

logger = logging.getLogger(__name__)

TELEMETRY_SCHEMA = "topicgeo-edge/telemetry/1"
TELEMETRY_KEYS = ("schema", "t", "altitude_agl_m", "roll_deg", "pitch_deg", "yaw_deg", "frame_gsd_m", "near_lat",
                  "near_lon", "near_radius_m")

#: plausible Unix times in seconds (2001-09-09 .. 2096-10-02): outside it a time stamp is in another unit
#: (milliseconds ~1.7e12, microseconds, nanoseconds ~1.7e18), a clock that was never set, or garbage
EPOCH_RANGE_S = (1e9, 4e9)
#: how far the telemetry sender's clock may lag this one before its samples count as stale by their own time (the
#: freshness that matters, ``max_age_s`` since arrival, is measured on this clock alone)
CLOCK_SKEW_S = 5.0


class TelemetryError(ValueError):
    """Telemetry (EXIF/XMP or an MQTT sample) that cannot be turned into priors; the message says why."""


def epoch_seconds(value: str | float, what: str) -> float:
    """``value`` (a number or its text) as Unix seconds within :data:`EPOCH_RANGE_S`.

    Raises:
        TelemetryError: not a number, not finite, or outside the range (names ``what`` and the value).
    """
    try:
        t = float(value)
    except ValueError as exc:
        raise TelemetryError(f"{what}={value!r} is not seconds since the epoch") from exc
    lo, hi = EPOCH_RANGE_S
    if not lo <= t <= hi:  # also NaN and infinity
        span = "..".join(str(datetime.fromtimestamp(x, tz=timezone.utc).date()) for x in EPOCH_RANGE_S)
        raise TelemetryError(f"{what}={value!r} is not Unix seconds within {span} (milliseconds or nanoseconds? "
                             "a clock that was never set?)")
    return t


def epoch_from_exif_time(stamp: datetime, utc_offset_h: float) -> float:
    """Seconds since the epoch of an EXIF time; a naive time is local time ``utc_offset_h`` hours ahead of UTC."""
    if stamp.tzinfo is not None:
        return stamp.timestamp()
    return stamp.replace(tzinfo=timezone.utc).timestamp() - utc_offset_h * 3600.0


def attitude_from_dji_gimbal(
    yaw_deg: float | None, pitch_deg: float | None, roll_deg: float | None
) -> tuple[float, float, float] | None:
    """``(roll, pitch, yaw)`` in the project convention (nadir, image top north = 0, 0, 0) from DJI gimbal angles.

    Returns:
        None unless all three angles are known.
    """
    if yaw_deg is None or pitch_deg is None or roll_deg is None:
        return None
    yaw, pitch, roll = ypr_from_rotation(rotation_from_dji_gimbal(yaw_deg, pitch_deg, roll_deg))
    return roll, pitch, yaw


def _priors(
    altitude: float | None,
    attitude: tuple[float, float, float] | None,
    capture_time: float | None,
    source: str,
    name: str,
) -> Priors:
    if altitude is not None and not (math.isfinite(altitude) and altitude > 0):
        raise TelemetryError(f"{name}: relative altitude {altitude} m is not above the ground")
    roll, pitch, yaw = attitude if attitude is not None else (None, None, None)
    return Priors(altitude, roll, pitch, yaw, capture_time, source=source)


def priors_from_metadata(meta: ImageMetadata, utc_offset_h: float) -> Priors:
    """Priors from :func:`calibration.exif.read_metadata` output (source ``exif``).

    Raises:
        TelemetryError: a relative altitude that is not above ground.
    """
    t = epoch_from_exif_time(meta.capture_time, utc_offset_h) if meta.capture_time else None
    attitude = attitude_from_dji_gimbal(meta.gimbal_yaw_deg, meta.gimbal_pitch_deg, meta.gimbal_roll_deg)
    return _priors(meta.relative_altitude_m, attitude, t, "exif", str(meta.path))


def priors_from_jpeg_file(path: Path, utc_offset_h: float) -> tuple[Priors, ImageMetadata]:
    """Priors and metadata of a JPEG file.

    Raises:
        TelemetryError: unreadable or malformed metadata (names the file and the tag).
    """
    try:
        meta = read_metadata(path)
    except (ValueError, OSError) as exc:
        raise TelemetryError(str(exc)) from exc
    return priors_from_metadata(meta, utc_offset_h), meta


def priors_from_jpeg_bytes(data: bytes, name: str, utc_offset_h: float) -> Priors:
    """Priors from the DJI XMP and EXIF ``DateTimeOriginal`` of an in-memory JPEG (MQTT frames).

    Raises:
        TelemetryError: not a JPEG, or a malformed tag (names ``name`` and the tag).
    """
    try:
        xmp_text = xmp_packet(jpeg_segments(data, name))
    except ValueError as exc:
        raise TelemetryError(str(exc)) from exc
    xmp = parse_xmp(xmp_text) if xmp_text else {}

    def number(tag: str) -> float | None:
        text = xmp.get(f"{{{DJI_NS}}}{tag}")
        if text is None:
            return None
        try:
            return float(text)
        except ValueError as exc:
            raise TelemetryError(f"{name}: XMP {tag} is not a number: {text!r}") from exc

    attitude = attitude_from_dji_gimbal(number("GimbalYawDegree"), number("GimbalPitchDegree"),
                                        number("GimbalRollDegree"))
    stamp = _exif_datetime(data, name)
    t = epoch_from_exif_time(stamp, utc_offset_h) if stamp else None
    return _priors(number("RelativeAltitude"), attitude, t, "exif", name)


def _exif_datetime(data: bytes, name: str) -> datetime | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            exif = im.getexif()
        sub = exif.get_ifd(ExifTags.IFD.Exif)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise TelemetryError(f"{name}: cannot read EXIF: {exc}") from exc  # what PIL raises on corrupt headers
    raw = sub.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
    if raw is None:
        return None
    text = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip("\x00 ")
    try:
        stamp = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError as exc:
        raise TelemetryError(f"{name}: EXIF DateTimeOriginal {text!r} is not 'YYYY:MM:DD HH:MM:SS'") from exc
    offset = str(sub.get(ExifTags.Base.OffsetTimeOriginal) or "").strip("\x00 ")
    if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
        sign = -1 if offset[0] == "-" else 1
        try:
            minutes = sign * (int(offset[1:3]) * 60 + int(offset[4:6]))
            stamp = stamp.replace(tzinfo=timezone(timedelta(minutes=minutes)))
        except ValueError as exc:
            raise TelemetryError(f"{name}: EXIF OffsetTimeOriginal {offset!r} is not '+HH:MM'") from exc
    return stamp


# ---------------------------------------------------------------------------------------------- MQTT samples
@dataclass(frozen=True)
class TelemetrySample:
    """One parsed telemetry message.

    Attributes:
        priors: the priors it carries (source ``mqtt``; ``capture_time`` is filled per frame later).
        t: the sample's own time stamp (s since the epoch) when it has one.
        received_mono: ``time.monotonic()`` when it arrived.
    """

    priors: Priors
    t: float | None
    received_mono: float


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer beyond the float range
        return False


def parse_telemetry(payload: bytes, received_mono: float) -> TelemetrySample:
    """Parse one MQTT telemetry message (JSON object, keys of ``telemetry.schema.json``).

    Raises:
        TelemetryError: empty payload, not JSON, unknown key, or a value that is not a finite number (names the key).
    """
    if not payload:
        raise TelemetryError("empty telemetry payload")
    try:
        raw = json.loads(payload)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise TelemetryError(f"telemetry payload is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise TelemetryError(f"telemetry payload must be a JSON object, got {type(raw).__name__}")
    for key in raw:
        if key not in TELEMETRY_KEYS:
            raise TelemetryError(f"telemetry key {key!r} is unknown (known: {', '.join(TELEMETRY_KEYS)})")
    if raw.get("schema", TELEMETRY_SCHEMA) != TELEMETRY_SCHEMA:
        raise TelemetryError(f"telemetry schema {raw['schema']!r} is not {TELEMETRY_SCHEMA!r}")
    values: dict[str, float | None] = {}
    for key in TELEMETRY_KEYS[1:]:
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not _finite(value)):
            raise TelemetryError(f"telemetry {key} must be a finite number or null, got {value!r}")
        values[key] = None if value is None else float(value)
    try:
        priors = Priors(values["altitude_agl_m"], values["roll_deg"], values["pitch_deg"], values["yaw_deg"],
                        None, frame_gsd_m=values["frame_gsd_m"], source="mqtt", near_lat=values["near_lat"],
                        near_lon=values["near_lon"], near_radius_m=values["near_radius_m"])
    except ValueError as exc:
        raise TelemetryError(f"telemetry: {exc}") from exc
    return TelemetrySample(priors, values["t"], received_mono)


class TelemetryStore:
    """The newest telemetry sample, shared between the MQTT thread and the processing loop.

    Args:
        max_age_s: a sample older than this is not used.
    """

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._sample: TelemetrySample | None = None
        self._lock = threading.Lock()
        self.received = 0

    def update(self, payload: bytes, now_wall: float | None = None) -> TelemetrySample:
        """Parse and keep a message.

        Args:
            now_wall: the current ``time.time()``; when given, a sample carrying its own time ``t`` must be Unix
                seconds (:data:`EPOCH_RANGE_S`) at most ``max_age_s`` + :data:`CLOCK_SKEW_S` old by this clock.
                None: ``t`` is not checked.

        Raises:
            TelemetryError: see :func:`parse_telemetry`, or a sample that is too old (the previous sample is kept).
        """
        sample = parse_telemetry(payload, time.monotonic())
        if now_wall is not None and sample.t is not None:
            self._check_time(sample.t, now_wall)
        with self._lock:
            self._sample = sample
            self.received += 1
        return sample

    def _check_time(self, t: float, now_wall: float) -> None:
        t = epoch_seconds(t, "telemetry t")
        age = now_wall - t
        if age > self.max_age_s + CLOCK_SKEW_S:
            raise TelemetryError(f"telemetry sample is {age:.1f} s old (t={t:.3f}; max_age_s {self.max_age_s:g} + "
                                 f"{CLOCK_SKEW_S:g} s for clock skew); ignored (late delivery, or the sender's clock "
                                 "is behind)")

    def latest(self, now_mono: float | None = None) -> TelemetrySample | None:
        """The newest sample if it is fresh enough, else None."""
        now = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            sample = self._sample
        if sample is None or now - sample.received_mono > self.max_age_s:
            return None
        return sample


def fixed_priors(values: dict[str, Any]) -> Priors:
    """Priors from fixed config values (source ``fixed``)."""
    return Priors(values.get("altitude_agl_m"), values.get("roll_deg"), values.get("pitch_deg"),
                  values.get("yaw_deg"), None, source="fixed", near_lat=values.get("near_lat"),
                  near_lon=values.get("near_lon"), near_radius_m=values.get("near_radius_m"))
