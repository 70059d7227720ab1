"""EXIF and DJI XMP metadata of JPEG frames, and camera intrinsics built from them.

* EXIF is read with Pillow (``Image.getexif``), a maintained parser of the TIFF/EXIF IFD structure; nothing is
  decoded beyond the headers. The XMP packet (APP1 ``http://ns.adobe.com/xap/1.0/``) is parsed here as text with
  regular expressions on ``prefix:Name="value"`` attributes and ``<prefix:Name>value</prefix:Name>`` elements,
  resolving prefixes through the packet's ``xmlns`` declarations (so ``drone-dji:`` is found by its namespace URI).
  No XML parser runs on the file's bytes, so entity-expansion tricks do nothing. Extended XMP is ignored.
* Intrinsics (:func:`camera_from_metadata`): DJI ``CalibratedFocalLength`` / ``CalibratedOpticalCenterX/Y`` (pixels
  of the frame as captured), or the EXIF focal length with a sensor width the caller states, or (explicitly asked
  for, approximate) ``FocalLengthIn35mmFilm``. EXIF carries no lens distortion, so ``D = 0`` (``plumb_bob``).
* Resized frames: the intrinsics refer to the frame as captured. Its size is taken, in this order, from XMP
  ``exif:PixelXDimension``/``tiff:ImageWidth``, from EXIF ``PixelXDimension`` when it differs from the pixels, or,
  when neither states it, from DJI's calibrated optical centre, which DJI writes as the nominal centre
  ``(W/2, H/2)`` of the captured frame on most models (inferred only when ``2 cx`` and ``2 cy`` are whole numbers that
  differ from the pixel size by more than 2 %), and last from EXIF ``PixelXDimension`` equal to the pixels (a resizer
  that rewrites EXIF makes this agree with the pixels, which is why it comes last). A uniform resize scales K
  (:meth:`CameraInfo.scaled`). A change of aspect ratio (e.g. the DJI test frame, 5472x3078 -> 1058x997) means a
  crop, a stretch or both; metadata cannot tell which, so it raises unless the caller says: ``crop=(x0, y0, w, h)`` in
  captured pixels and/or ``allow_anisotropic=True``.
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from calibration.camera_info import CameraInfo, same_aspect

logger = logging.getLogger(__name__)

DJI_NS = "http://www.dji.com/drone-dji/1.0/"
EXIF_NS = "http://ns.adobe.com/exif/1.0/"
TIFF_NS = "http://ns.adobe.com/tiff/1.0/"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_HEADER = b"Exif\x00\x00"
_FILM_WIDTH_MM = 36.0
_WARNED_35MM: set[str] = set()  # camera models whose approximate 35 mm focal length was already warned about
_DJI_INFER_MIN_CHANGE = 0.02

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}


# --------------------------------------------------------------------------------------------- JPEG segments
@dataclass(frozen=True)
class JpegSegment:
    """One marker segment before the scan data.

    Attributes:
        marker: the marker byte (``0xE1`` for APP1).
        start: offset of the ``0xFF`` that opens the segment.
        end: offset just past the segment.
        payload: bytes after the 2-byte length field.
    """

    marker: int
    start: int
    end: int
    payload: bytes = field(repr=False)


def jpeg_segments(data: bytes, source: str = "<bytes>") -> list[JpegSegment]:
    """Marker segments of a JPEG up to (not including) the first scan.

    Raises:
        ValueError: when ``data`` is not a JPEG or a segment runs past the end (names ``source``).
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"{source}: not a JPEG file (no SOI marker)")
    segments: list[JpegSegment] = []
    pos = 2
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            raise ValueError(f"{source}: corrupt JPEG: expected a marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        start = pos - 1
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: metadata ends here
            break
        if pos + 2 > n:
            raise ValueError(f"{source}: corrupt JPEG: truncated segment 0x{marker:02X} at byte {start}")
        length = int.from_bytes(data[pos : pos + 2], "big")
        end = pos + length
        if length < 2 or end > n:
            raise ValueError(f"{source}: corrupt JPEG: segment 0x{marker:02X} at byte {start} runs past the end")
        segments.append(JpegSegment(marker, start, end, data[pos + 2 : end]))
        pos = end
    return segments


def jpeg_pixel_size(segments: list[JpegSegment], source: str = "<bytes>") -> tuple[int, int]:
    """``(width, height)`` from the SOF segment.

    Raises:
        ValueError: when there is no SOF segment.
    """
    for seg in segments:
        if seg.marker in _SOF_MARKERS and len(seg.payload) >= 5:
            height = int.from_bytes(seg.payload[1:3], "big")
            width = int.from_bytes(seg.payload[3:5], "big")
            return width, height
    raise ValueError(f"{source}: JPEG has no frame header (SOF) before the scan")


def xmp_packet(segments: list[JpegSegment]) -> str | None:
    """The standard XMP packet text (first APP1 with the XMP header), or None."""
    for seg in segments:
        if seg.marker == 0xE1 and seg.payload.startswith(XMP_HEADER):
            return seg.payload[len(XMP_HEADER) :].decode("utf-8", errors="replace")
    return None


def transplant_metadata(pixels_jpeg: bytes, metadata_jpeg: bytes) -> bytes:
    """A JPEG with the pixels of ``pixels_jpeg`` and the EXIF and XMP APP1 segments of ``metadata_jpeg``, byte for byte.

    The APP0/APP1 segments of ``pixels_jpeg`` are dropped and the source's APP1 segments are placed right after SOI
    (where EXIF requires them). Other source segments (e.g. MPF in APP2, whose offsets point into the source file)
    are not copied. Used to build small test fixtures that keep a real frame's metadata.
    """
    src = jpeg_segments(metadata_jpeg, "metadata source")
    dst = jpeg_segments(pixels_jpeg, "pixel source")
    app1 = [metadata_jpeg[s.start : s.end] for s in src if s.marker == 0xE1]
    drop = [(s.start, s.end) for s in dst if s.marker in (0xE0, 0xE1)]
    body = bytearray(pixels_jpeg)
    for start, end in reversed(drop):
        del body[start:end]
    return bytes(body[:2]) + b"".join(app1) + bytes(body[2:])


# --------------------------------------------------------------------------------------------------- XMP text
_NS_RE = re.compile(r"xmlns:([\w.-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_ATTR_RE = re.compile(r"(?<![\w.:-])([\w.-]+):([\w.-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_ELEM_RE = re.compile(r"<([\w.-]+):([\w.-]+)(?:\s[^>]*)?>([^<]*)</\1:\2\s*>")


def parse_xmp(packet: str) -> dict[str, str]:
    """Simple XMP properties as ``{"{namespace-uri}Name": value}``.

    Reads ``prefix:Name="value"`` attributes and ``<prefix:Name>text</prefix:Name>`` elements with no child
    elements (structured values such as ``rdf:Alt`` lists are skipped). XML entities are unescaped. Prefixes without
    an ``xmlns`` declaration are kept as ``"{prefix:}Name"``. The first occurrence of a property wins.
    """
    namespaces = {m.group(1): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _NS_RE.finditer(packet)}
    values: dict[str, str] = {}

    def add(prefix: str, name: str, value: str) -> None:
        if prefix in ("xmlns", "xml", "rdf", "x"):
            return
        uri = namespaces.get(prefix, f"{prefix}:")
        values.setdefault(f"{{{uri}}}{name}", html.unescape(value).strip())

    for m in _ATTR_RE.finditer(packet):
        add(m.group(1), m.group(2), m.group(3) if m.group(3) is not None else m.group(4))
    for m in _ELEM_RE.finditer(packet):
        if m.group(3).strip():
            add(m.group(1), m.group(2), m.group(3))
    return values


# ------------------------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class ImageMetadata:
    """What EXIF and XMP say about one frame (None where a value is absent).

    Attributes:
        path: the file.
        width: pixel width of the JPEG as stored (SOF header).
        height: pixel height as stored.
        orientation: EXIF Orientation (1 = as stored).
        make: camera maker.
        model: camera model.
        capture_time: EXIF DateTimeOriginal (timezone-aware when OffsetTimeOriginal is present; DJI writes local
            time without offset).
        focal_length_mm: EXIF FocalLength.
        focal_length_35mm: EXIF FocalLengthIn35mmFilm.
        gps_latitude: degrees, north positive.
        gps_longitude: degrees, east positive.
        gps_altitude_m: EXIF GPSAltitude (metres above the reference, sea level for DJI).
        relative_altitude_m: DJI RelativeAltitude (metres above the take-off point).
        absolute_altitude_m: DJI AbsoluteAltitude.
        gimbal_roll_deg: DJI GimbalRollDegree.
        gimbal_pitch_deg: DJI GimbalPitchDegree (-90 = nadir).
        gimbal_yaw_deg: DJI GimbalYawDegree (clockwise from north).
        flight_roll_deg: DJI FlightRollDegree.
        flight_pitch_deg: DJI FlightPitchDegree.
        flight_yaw_deg: DJI FlightYawDegree.
        calibrated_focal_length_px: DJI CalibratedFocalLength (pixels of the captured frame).
        calibrated_optical_center_x: DJI CalibratedOpticalCenterX (pixels of the captured frame).
        calibrated_optical_center_y: DJI CalibratedOpticalCenterY.
        original_width: captured width when the metadata states or implies it (see module docstring).
        original_height: captured height.
        original_size_source: where ``original_width/height`` came from.
        xmp: every simple XMP property, ``{"{namespace-uri}Name": text}``.
    """

    path: Path
    width: int
    height: int
    orientation: int | None = None
    make: str | None = None
    model: str | None = None
    capture_time: datetime | None = None
    focal_length_mm: float | None = None
    focal_length_35mm: float | None = None
    gps_latitude: float | None = None
    gps_longitude: float | None = None
    gps_altitude_m: float | None = None
    relative_altitude_m: float | None = None
    absolute_altitude_m: float | None = None
    gimbal_roll_deg: float | None = None
    gimbal_pitch_deg: float | None = None
    gimbal_yaw_deg: float | None = None
    flight_roll_deg: float | None = None
    flight_pitch_deg: float | None = None
    flight_yaw_deg: float | None = None
    calibrated_focal_length_px: float | None = None
    calibrated_optical_center_x: float | None = None
    calibrated_optical_center_y: float | None = None
    original_width: int | None = None
    original_height: int | None = None
    original_size_source: str | None = None
    xmp: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def resized(self) -> bool:
        """True when the stated or inferred captured size differs from the stored pixel size."""
        return self.original_width is not None and (self.original_width, self.original_height) != (
            self.width,
            self.height,
        )


def read_metadata(path: str | os.PathLike[str]) -> ImageMetadata:
    """Read EXIF and XMP of a JPEG file (headers only; pixels are not decoded).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when it is not a readable JPEG, or a DJI/EXIF value is malformed (names the tag).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {p} does not exist")
    segments = jpeg_segments(p.read_bytes(), str(p))
    width, height = jpeg_pixel_size(segments, str(p))
    exif = _read_exif(p)
    xmp_text = xmp_packet(segments)
    xmp = parse_xmp(xmp_text) if xmp_text else {}
    meta: dict[str, Any] = {"path": p, "width": width, "height": height, "xmp": xmp, **exif}
    for attr, tag in (
        ("relative_altitude_m", "RelativeAltitude"),
        ("absolute_altitude_m", "AbsoluteAltitude"),
        ("gimbal_roll_deg", "GimbalRollDegree"),
        ("gimbal_pitch_deg", "GimbalPitchDegree"),
        ("gimbal_yaw_deg", "GimbalYawDegree"),
        ("flight_roll_deg", "FlightRollDegree"),
        ("flight_pitch_deg", "FlightPitchDegree"),
        ("flight_yaw_deg", "FlightYawDegree"),
        ("calibrated_focal_length_px", "CalibratedFocalLength"),
        ("calibrated_optical_center_x", "CalibratedOpticalCenterX"),
        ("calibrated_optical_center_y", "CalibratedOpticalCenterY"),
    ):
        meta[attr] = _xmp_float(xmp, DJI_NS, tag, p)
    if meta.get("make") is None and f"{{{TIFF_NS}}}Make" in xmp:
        meta["make"] = xmp[f"{{{TIFF_NS}}}Make"]
    if meta.get("model") is None and f"{{{TIFF_NS}}}Model" in xmp:
        meta["model"] = xmp[f"{{{TIFF_NS}}}Model"]
    exif_dims = meta.pop("_exif_pixel_dims", None)
    original, source = _original_size(xmp, exif_dims, meta, (width, height), p)
    if original is not None:
        meta["original_width"], meta["original_height"] = original
        meta["original_size_source"] = source
        if original != (width, height):
            logger.info("%s: stored %dx%d, captured %dx%d (%s)", p.name, width, height, *original, source)
    return ImageMetadata(**meta)


def _read_exif(p: Path) -> dict[str, Any]:
    """EXIF fields of interest via Pillow (IFD0, Exif IFD, GPS IFD)."""
    try:
        with Image.open(p) as im:
            exif = im.getexif()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{p}: cannot read EXIF: {exc}") from exc
    ifd0 = dict(exif)
    sub = dict(exif.get_ifd(ExifTags.IFD.Exif))
    gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo))
    T = ExifTags.Base
    out: dict[str, Any] = {
        "orientation": _exif_int(ifd0.get(T.Orientation)),
        "make": _exif_str(ifd0.get(T.Make)),
        "model": _exif_str(ifd0.get(T.Model)),
        "focal_length_mm": _exif_float(sub.get(T.FocalLength), "FocalLength", p),
        "focal_length_35mm": _exif_float(sub.get(T.FocalLengthIn35mmFilm), "FocalLengthIn35mmFilm", p),
        "capture_time": _exif_time(
            sub.get(T.DateTimeOriginal) or ifd0.get(T.DateTime), sub.get(T.OffsetTimeOriginal), p,
            sub.get(T.SubsecTimeOriginal) if sub.get(T.DateTimeOriginal) else sub.get(T.SubsecTime),
        ),
    }
    if out["focal_length_35mm"] == 0:
        out["focal_length_35mm"] = None  # EXIF: 0 means unknown
    dims = (_exif_int(sub.get(T.ExifImageWidth)), _exif_int(sub.get(T.ExifImageHeight)))
    out["_exif_pixel_dims"] = dims if None not in dims else None
    G = ExifTags.GPS
    lat = _gps_degrees(gps.get(G.GPSLatitude), gps.get(G.GPSLatitudeRef), "S", p)
    lon = _gps_degrees(gps.get(G.GPSLongitude), gps.get(G.GPSLongitudeRef), "W", p)
    alt = _exif_float(gps.get(G.GPSAltitude), "GPSAltitude", p)
    if alt is not None and gps.get(G.GPSAltitudeRef) in (1, b"\x01"):
        alt = -alt  # below sea level
    out.update(gps_latitude=lat, gps_longitude=lon, gps_altitude_m=alt)
    return out


def _exif_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip("\x00 ").strip()
    return text or None


def _exif_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _exif_float(value: Any, tag: str, p: Path) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"{p}: EXIF {tag} is not a number: {value!r}") from exc
    return None if math.isnan(out) else out


def _exif_time(value: Any, offset: Any, p: Path, subsec: Any = None) -> datetime | None:
    """The EXIF time ``value`` with its fraction of a second (``SubSecTimeOriginal``: the digits after the decimal
    point; ignored unless all digits) and its UTC ``offset`` when given."""
    text = _exif_str(value)
    if text is None:
        return None
    try:
        stamp = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError as exc:
        raise ValueError(f"{p}: EXIF DateTimeOriginal {text!r} is not 'YYYY:MM:DD HH:MM:SS'") from exc
    digits = (_exif_str(subsec) or "").strip()
    if digits.isdigit():  # "5" = 0.5 s, "042" = 0.042 s
        stamp += timedelta(microseconds=round(int(digits) / 10 ** len(digits) * 1e6))
    off = _exif_str(offset)
    if off and re.fullmatch(r"[+-]\d\d:\d\d", off):
        sign = -1 if off[0] == "-" else 1
        stamp = stamp.replace(tzinfo=timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[4:6]))))
    return stamp


def _gps_degrees(dms: Any, ref: Any, negative_ref: str, p: Path) -> float | None:
    if dms is None:
        return None
    try:
        d, m, s = (float(v) for v in dms)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"{p}: EXIF GPS coordinate is not (deg, min, sec): {dms!r}") from exc
    value = d + m / 60.0 + s / 3600.0
    return -value if _exif_str(ref) == negative_ref else value


def _xmp_float(xmp: dict[str, str], ns: str, name: str, p: Path) -> float | None:
    text = xmp.get(f"{{{ns}}}{name}")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ValueError(f"{p}: XMP {name} is not a number: {text!r}") from exc
    if not math.isfinite(value):
        raise ValueError(f"{p}: XMP {name} is not a finite number: {text!r}")
    return value


def _xmp_int(xmp: dict[str, str], ns: str, name: str) -> int | None:
    text = xmp.get(f"{{{ns}}}{name}")
    return int(text) if text is not None and text.strip().isdigit() else None


def _original_size(
    xmp: dict[str, str],
    exif_dims: tuple[int, int] | None,
    meta: dict[str, Any],
    actual: tuple[int, int],
    p: Path,
) -> tuple[tuple[int, int] | None, str | None]:
    """The captured size and where it came from (see the module docstring for the order)."""
    stated: list[tuple[tuple[int, int], str]] = []
    for ns, wname, hname, label in (
        (EXIF_NS, "PixelXDimension", "PixelYDimension", "XMP exif:PixelXDimension/PixelYDimension"),
        (TIFF_NS, "ImageWidth", "ImageLength", "XMP tiff:ImageWidth/ImageLength"),
    ):
        w, h = _xmp_int(xmp, ns, wname), _xmp_int(xmp, ns, hname)
        if w and h:
            stated.append(((w, h), label))
    if exif_dims is not None and all(exif_dims) and exif_dims != actual:
        stated.append((exif_dims, "EXIF PixelXDimension/PixelYDimension"))
    if stated:
        sizes = {s for s, _ in stated}
        if len(sizes) > 1:
            raise ValueError(f"{p}: metadata states conflicting captured sizes: {stated}")
        return stated[0]
    cx, cy = meta.get("calibrated_optical_center_x"), meta.get("calibrated_optical_center_y")
    if cx is not None and cy is not None and cx > 0 and cy > 0:
        w2, h2 = 2.0 * cx, 2.0 * cy
        if abs(w2 - round(w2)) < 1e-3 and abs(h2 - round(h2)) < 1e-3:
            cand = (round(w2), round(h2))
            change = max(abs(cand[0] - actual[0]) / cand[0], abs(cand[1] - actual[1]) / cand[1])
            if change > _DJI_INFER_MIN_CHANGE:
                return cand, "inferred from DJI CalibratedOpticalCenter (nominal centre = captured size / 2)"
    if exif_dims is not None and exif_dims == actual:
        return exif_dims, "EXIF PixelXDimension/PixelYDimension (equal to the pixels)"
    return None, None


# --------------------------------------------------------------------------------------------- intrinsics
def _focal_from_35mm(focal_35mm: float, captured_width: int) -> float:
    """Focal length in captured pixels from ``FocalLengthIn35mmFilm`` (taken across the 36 mm film width)."""
    return focal_35mm / _FILM_WIDTH_MM * captured_width


def camera_from_metadata(
    meta: ImageMetadata,
    *,
    sensor_width_mm: float | None = None,
    use_35mm_equivalent: bool = False,
    fallback_35mm: bool = False,
    original_size: tuple[int, int] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    allow_anisotropic: bool = False,
    camera_name: str | None = None,
) -> CameraInfo:
    """Pinhole intrinsics (``plumb_bob``, D = 0) of the stored pixels of a frame, from its EXIF/XMP.

    Focal length source, first that applies: ``sensor_width_mm`` when given (``fx = f_mm / sensor_width_mm *
    W_captured``, principal point at the image centre), ``use_35mm_equivalent`` (``fx = f35 / 36 mm *
    W_captured``: exact for a 3:2 sensor whose full width is imaged, approximate otherwise because the 35 mm
    equivalent is defined on the diagonal), else DJI ``CalibratedFocalLength`` with ``CalibratedOpticalCenterX/Y``,
    else, with ``fallback_35mm``, ``FocalLengthIn35mmFilm`` again (logged as a warning once per camera model).

    Then the captured-frame intrinsics are mapped to the stored pixels: optional ``crop`` (``x0, y0, w, h`` in
    captured pixels), then a resize to the stored size, which must keep the aspect ratio unless
    ``allow_anisotropic``.

    Args:
        meta: from :func:`read_metadata`.
        sensor_width_mm: width of the sensor area imaged by the captured frame's width.
        use_35mm_equivalent: use ``FocalLengthIn35mmFilm`` (must be asked for: it is approximate).
        fallback_35mm: use ``FocalLengthIn35mmFilm`` when no exact source applies (a camera without DJI calibration,
            e.g. the Phantom 3: within 2 % of its SfM calibration there) instead of raising. An approximate focal
            length still gives the locator its altitude scale prior; none gives it no scale prior at all.
        original_size: captured ``(width, height)``; overrides what the metadata states or implies.
        crop: window of the captured frame that the stored image shows.
        allow_anisotropic: accept a change of aspect ratio as a stretch.
        camera_name: name to store; default ``make_model``.

    Returns:
        The ``CameraInfo`` at the stored size ``meta.width x meta.height``.

    Raises:
        ValueError: when no focal length source applies, the frame is rotated by EXIF Orientation, the aspect ratio
            changed without ``crop``/``allow_anisotropic``, or the principal point ends up outside the image.
    """
    src = str(meta.path)
    if meta.orientation not in (None, 1):
        raise ValueError(
            f"{src}: EXIF Orientation is {meta.orientation}; the intrinsics of rotated or mirrored frames are not "
            "supported (store the frame upright, Orientation 1)"
        )
    cap_w, cap_h = original_size or (meta.original_width, meta.original_height)
    size_source = "given by the caller" if original_size else meta.original_size_source
    if cap_w is None or cap_h is None:
        cap_w, cap_h = meta.width, meta.height
        size_source = "assumed: no captured size stated"
    if cap_w <= 0 or cap_h <= 0:
        raise ValueError(f"{src}: captured size {cap_w}x{cap_h} is not positive")
    centre = ((cap_w - 1) / 2.0, (cap_h - 1) / 2.0)
    if sensor_width_mm is not None:
        if not sensor_width_mm > 0:
            raise ValueError(f"sensor_width_mm must be > 0, got {sensor_width_mm}")
        if meta.focal_length_mm is None or meta.focal_length_mm <= 0:
            raise ValueError(f"{src}: no EXIF FocalLength to combine with the sensor width")
        f = meta.focal_length_mm / sensor_width_mm * cap_w
        (cx, cy), how = centre, f"EXIF FocalLength {meta.focal_length_mm} mm / sensor width {sensor_width_mm} mm"
    elif use_35mm_equivalent:
        if meta.focal_length_35mm is None or meta.focal_length_35mm <= 0:
            raise ValueError(f"{src}: no EXIF FocalLengthIn35mmFilm")
        f = _focal_from_35mm(meta.focal_length_35mm, cap_w)
        (cx, cy), how = centre, f"EXIF FocalLengthIn35mmFilm {meta.focal_length_35mm:g} mm (approximate)"
    elif meta.calibrated_focal_length_px is not None:
        if meta.calibrated_optical_center_x is None or meta.calibrated_optical_center_y is None:
            raise ValueError(f"{src}: DJI CalibratedFocalLength without CalibratedOpticalCenterX/Y")
        f, cx, cy = meta.calibrated_focal_length_px, meta.calibrated_optical_center_x, meta.calibrated_optical_center_y
        how = "DJI CalibratedFocalLength/CalibratedOpticalCenter"
    elif fallback_35mm and meta.focal_length_35mm is not None and meta.focal_length_35mm > 0:
        f = _focal_from_35mm(meta.focal_length_35mm, cap_w)
        (cx, cy), how = centre, f"EXIF FocalLengthIn35mmFilm {meta.focal_length_35mm:g} mm (approximate, fallback)"
        model = _camera_name(meta)
        if model not in _WARNED_35MM:
            _WARNED_35MM.add(model)
            logger.warning("%s: no calibrated focal length in the metadata of %s; using the approximate 35 mm "
                           "equivalent (%g mm). A camera_info YAML (edge-locate --calibration, the service's "
                           "camera.info) or the sensor width (--sensor-width-mm) gives exact intrinsics",
                           meta.path.name, model, meta.focal_length_35mm)
    else:
        raise ValueError(
            f"{src}: no calibrated focal length in the metadata (DJI CalibratedFocalLength); give the sensor width "
            f"(EXIF FocalLength is {meta.focal_length_mm} mm) or explicitly allow the 35 mm equivalent "
            f"({meta.focal_length_35mm} mm)"
        )
    name = camera_name or _camera_name(meta)
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    cam = CameraInfo(int(cap_w), int(cap_h), K, np.zeros(5), "plumb_bob", None, None, name)
    if crop is not None:
        cam = cam.cropped(*crop)
    if cam.size != (meta.width, meta.height):
        if not allow_anisotropic and not same_aspect(cam.size, (meta.width, meta.height)):
            window = f"; the crop window is {cam.width}x{cam.height}" if crop is not None else ""
            raise ValueError(
                f"{src}: the frame was captured at {cap_w}x{cap_h} ({size_source}){window} (aspect "
                f"{cam.width / cam.height:.4f}) but is stored at {meta.width}x{meta.height} (aspect "
                f"{meta.width / meta.height:.4f}): it was cropped and/or stretched after capture and the metadata "
                "cannot tell which. State the crop window (captured pixels) or, if the whole frame was stretched, "
                "allow an anisotropic resize"
            )
        cam = cam.scaled(meta.width, meta.height, allow_anisotropic=allow_anisotropic)
    if not (-0.5 <= cam.cx <= cam.width - 0.5 and -0.5 <= cam.cy <= cam.height - 0.5):
        raise ValueError(
            f"{src}: principal point ({cam.cx:.1f}, {cam.cy:.1f}) lies outside the {cam.width}x{cam.height} image; "
            "the frame was probably cropped or resized after capture: state its captured size"
        )
    logger.info(
        "%s: intrinsics from %s: fx=%.2f fy=%.2f cx=%.2f cy=%.2f", meta.path.name, how, cam.fx, cam.fy, cam.cx, cam.cy
    )
    return cam


def _camera_name(meta: ImageMetadata) -> str:
    parts = [re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_") for s in (meta.make, meta.model) if s]
    return "_".join(p for p in parts if p).lower() or "camera"
