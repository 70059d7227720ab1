"""EXIF / DJI XMP of real DJI frames and intrinsics from them, including the resized-frame trap.

* ``DJI_0018_metadata_4000x2250.JPG``: Brighton Beach frame, original EXIF + XMP byte for byte, stored at its captured
  size 4000x2250 (not resized). Its values are compared with ``poses_exif_xmp.csv`` tabulated beside the data.
* ``AWPE_Pigeon_Lake_2020_DJI_0005.JPG``: Phantom 4 Pro frame stored at 1058x997 whose XMP intrinsics
  (CalibratedFocalLength 3666.67 px, optical centre 2736/1539) belong to the captured 5472x3078 frame. The aspect ratio
  changed (16:9 -> ~1.06), so it is a crop and/or a stretch: the default must refuse, each stated interpretation must
  give its own intrinsics.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.camera_info import read_camera_info
from calibration.cli import main
from calibration.exif import (
    DJI_NS,
    camera_from_metadata,
    jpeg_segments,
    parse_xmp,
    read_metadata,
    transplant_metadata,
)

EXIF_DIR = Path(__file__).parent / "data" / "exif"
BRIGHTON = EXIF_DIR / "DJI_0018_metadata_4000x2250.JPG"
PIGEON = EXIF_DIR / "AWPE_Pigeon_Lake_2020_DJI_0005.JPG"
# README of the shared data: the DJI frame's XMP intrinsics are for the ORIGINAL 5472x3078 frame.
CAPTURED = (5472, 3078)
# OpenDroneMap's calibrated camera for this flight (odm/cameras.json of the Brighton data): focal 0.56169 of the
# larger image side (OpenSfM's normalisation), i.e. 0.56169 * 4000 px.
ODM_FOCAL_PX = 0.5616905969087824 * 4000


def _csv_row(name: str) -> dict[str, str]:
    with (EXIF_DIR / "poses_exif_xmp.csv").open(newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["filename"] == name)


def test_brighton_metadata_matches_the_tabulated_values():
    meta = read_metadata(BRIGHTON)
    row = _csv_row("DJI_0018.JPG")
    assert (meta.width, meta.height) == (int(row["width"]), int(row["height"])) == (4000, 2250)
    assert meta.make == row["make"] and meta.model == row["model"]
    assert meta.capture_time == datetime.strptime(row["datetime_original"], "%Y:%m:%d %H:%M:%S")
    for attr, col in [
        ("relative_altitude_m", "rel_alt_m"),
        ("absolute_altitude_m", "abs_alt_m"),
        ("gps_altitude_m", "gps_alt_m"),
        ("gimbal_yaw_deg", "gimbal_yaw"),
        ("gimbal_pitch_deg", "gimbal_pitch"),
        ("gimbal_roll_deg", "gimbal_roll"),
        ("flight_yaw_deg", "flight_yaw"),
        ("flight_pitch_deg", "flight_pitch"),
        ("flight_roll_deg", "flight_roll"),
        ("focal_length_mm", "focal_mm"),
    ]:
        assert getattr(meta, attr) == pytest.approx(float(row[col]), abs=1e-6), attr
    assert meta.gps_latitude == pytest.approx(float(row["lat"]), abs=1e-8)
    assert meta.gps_longitude == pytest.approx(float(row["lon"]), abs=1e-8)
    assert meta.orientation == 1 and meta.focal_length_35mm == 20
    assert meta.calibrated_focal_length_px is None  # the Phantom 3 does not write DJI calibration
    assert not meta.resized and (meta.original_width, meta.original_height) == (4000, 2250)


def test_brighton_intrinsics_need_an_explicit_focal_source():
    meta = read_metadata(BRIGHTON)
    with pytest.raises(ValueError, match="no calibrated focal length"):
        camera_from_metadata(meta)
    cam = camera_from_metadata(meta, use_35mm_equivalent=True)
    assert cam.size == (4000, 2250)
    assert cam.fx == pytest.approx(20 / 36 * 4000) and cam.fy == cam.fx
    assert (cam.cx, cam.cy) == (1999.5, 1124.5)  # image centre in the pixel-centre convention
    assert cam.fx == pytest.approx(ODM_FOCAL_PX, rel=0.02)  # the 35 mm equivalent is close to the SfM calibration
    cam_sensor = camera_from_metadata(meta, sensor_width_mm=6.17)
    assert cam_sensor.fx == pytest.approx(3.61 / 6.17 * 4000)


def test_35mm_fallback_only_when_no_exact_source(caplog):
    """``fallback_35mm`` (edge-locate's default) gives the Phantom 3 its approximate focal length with a warning, but
    never overrides an exact source: a stated sensor width or DJI's calibration."""
    import calibration.exif as exif

    meta = read_metadata(BRIGHTON)
    exif._WARNED_35MM.discard("dji_fc300s")
    with caplog.at_level("WARNING", logger="calibration.exif"):
        cam = camera_from_metadata(meta, fallback_35mm=True)
    assert cam.fx == pytest.approx(20 / 36 * 4000) and (cam.cx, cam.cy) == (1999.5, 1124.5)
    assert any("approximate 35 mm equivalent" in r.getMessage() for r in caplog.records)
    assert camera_from_metadata(meta, sensor_width_mm=6.17, fallback_35mm=True).fx == pytest.approx(3.61 / 6.17 * 4000)
    calibrated = replace(meta, calibrated_focal_length_px=2247.0, calibrated_optical_center_x=2000.0,
                         calibrated_optical_center_y=1125.0)
    cam = camera_from_metadata(calibrated, fallback_35mm=True)
    assert (cam.fx, cam.cx, cam.cy) == (2247.0, 2000.0, 1125.0)
    with pytest.raises(ValueError, match="no calibrated focal length"):  # nothing to fall back on
        camera_from_metadata(replace(meta, focal_length_35mm=None), fallback_35mm=True)


def test_uniformly_resized_copy_is_detected_and_scaled(tmp_path):
    """A 4x smaller re-encode that keeps the EXIF (which still says 4000x2250) must get K scaled by 1/4."""
    src = BRIGHTON.read_bytes()
    pixels = cv2.imdecode(np.frombuffer(src, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(pixels, (1000, 562), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small)
    assert ok
    path = tmp_path / "small.jpg"
    path.write_bytes(transplant_metadata(buf.tobytes(), src))
    meta = read_metadata(path)
    assert (meta.width, meta.height) == (1000, 562) and meta.resized
    assert (meta.original_width, meta.original_height) == (4000, 2250)
    assert "EXIF PixelXDimension" in meta.original_size_source
    full = camera_from_metadata(read_metadata(BRIGHTON), use_35mm_equivalent=True)
    cam = camera_from_metadata(meta, use_35mm_equivalent=True)
    assert cam.size == (1000, 562)
    assert cam.fx == pytest.approx(full.fx * 1000 / 4000) and cam.fy == pytest.approx(full.fy * 562 / 2250)
    assert cam.cx == pytest.approx((1999.5 + 0.5) * 0.25 - 0.5)  # still the image centre, 499.5
    assert cam.cy == pytest.approx((1124.5 + 0.5) * 562 / 2250 - 0.5)


def test_dji_frame_metadata_and_inferred_captured_size():
    meta = read_metadata(PIGEON)
    assert (meta.width, meta.height) == (1058, 997)
    assert meta.model == "FC6310"
    assert meta.calibrated_focal_length_px == pytest.approx(3666.67, abs=0.01)
    assert (meta.calibrated_optical_center_x, meta.calibrated_optical_center_y) == (2736.0, 1539.0)
    assert meta.relative_altitude_m == pytest.approx(61.1) and meta.gimbal_pitch_deg == pytest.approx(-88.0)
    assert meta.gimbal_yaw_deg == pytest.approx(111.3) and meta.flight_yaw_deg == pytest.approx(110.6)
    assert meta.xmp[f"{{{DJI_NS}}}RtkFlag"] == "0"
    # EXIF PixelXDimension was rewritten to 1058x997; the captured size comes from the nominal optical centre.
    assert (meta.original_width, meta.original_height) == CAPTURED and meta.resized
    assert "CalibratedOpticalCenter" in meta.original_size_source
    # Consistency inside the file: the 35 mm equivalent (24 mm on a 3:2 sensor) agrees with DJI's calibration.
    assert meta.focal_length_35mm / 36 * CAPTURED[0] == pytest.approx(meta.calibrated_focal_length_px, rel=0.01)


def test_dji_frame_aspect_change_is_refused_by_default():
    meta = read_metadata(PIGEON)
    with pytest.raises(ValueError, match=r"5472x3078 .* 1058x997 .* cropped and/or stretched"):
        camera_from_metadata(meta)
    # Claiming it was never resized puts DJI's principal point far outside the 1058x997 image.
    with pytest.raises(ValueError, match=r"principal point .* outside"):
        camera_from_metadata(meta, original_size=(1058, 997))


def test_dji_frame_intrinsics_for_each_stated_interpretation():
    meta = read_metadata(PIGEON)
    f, cx, cy = meta.calibrated_focal_length_px, 2736.0, 1539.0
    # 1. The whole 5472x3078 frame stretched to 1058x997: per-axis scale, pixel-centre mapping.
    sx, sy = 1058 / 5472, 997 / 3078
    cam = camera_from_metadata(meta, allow_anisotropic=True)
    assert cam.fx == pytest.approx(f * sx) and cam.fy == pytest.approx(f * sy)  # 708.94 and 1187.68 px
    assert cam.cx == pytest.approx((cx + 0.5) * sx - 0.5) and cam.cy == pytest.approx((cy + 0.5) * sy - 0.5)
    # 2. A full-resolution 1058x997 crop at (2000, 1000): focal unchanged, principal point shifted.
    cam = camera_from_metadata(meta, crop=(2000, 1000, 1058, 997))
    assert cam.fx == pytest.approx(f) and cam.fy == pytest.approx(f)
    assert (cam.cx, cam.cy) == pytest.approx((cx - 2000, cy - 1000))
    # 3. A 2116x1994 crop at (1678, 542) downscaled by 2: focal halves, centre follows both steps.
    cam = camera_from_metadata(meta, crop=(1678, 542, 2116, 1994))
    assert cam.fx == pytest.approx(f / 2) and cam.fy == pytest.approx(f / 2)
    assert cam.cx == pytest.approx((cx - 1678 + 0.5) / 2 - 0.5) and cam.cy == pytest.approx((cy - 542 + 0.5) / 2 - 0.5)
    # A crop whose aspect still differs from the stored pixels is refused again.
    with pytest.raises(ValueError, match="cropped and/or stretched"):
        camera_from_metadata(meta, crop=(0, 0, 3000, 1000))


def test_jpeg_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        read_metadata(tmp_path / "missing.jpg")
    png = tmp_path / "frame.png"
    cv2.imwrite(str(png), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"frame.png: not a JPEG"):
        read_metadata(png)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(PIGEON.read_bytes()[:3000])  # ends inside the XMP segment
    with pytest.raises(ValueError, match=r"cut.jpg: corrupt JPEG"):
        read_metadata(truncated)
    meta = read_metadata(BRIGHTON)
    with pytest.raises(ValueError, match="EXIF Orientation is 6"):
        camera_from_metadata(type(meta)(**{**meta.__dict__, "orientation": 6}), use_35mm_equivalent=True)


def test_a_non_finite_xmp_value_is_an_error_naming_the_tag(tmp_path):
    """A NaN gimbal yaw would blank the query canvas and switch the heading check off (nan > limit is False)."""
    frame = Path(__file__).resolve().parents[1] / "demo_data" / "brighton" / "frames" / "DJI_0033.JPG"
    data = frame.read_bytes()
    assert data.count(b'GimbalYawDegree="+42.90"') == 1
    for bad in (b"   nan", b"  +inf"):  # same length: the XMP segment's size field stays right
        broken = tmp_path / f"yaw_{bad.strip().decode()}.jpg"
        broken.write_bytes(data.replace(b'GimbalYawDegree="+42.90"', b'GimbalYawDegree="' + bad + b'"'))
        with pytest.raises(ValueError, match=r"GimbalYawDegree is not a finite number"):
            read_metadata(broken)
    assert read_metadata(frame).gimbal_yaw_deg == pytest.approx(42.9)


def test_capture_time_keeps_its_fraction_of_a_second(tmp_path):
    """Whole EXIF seconds would date a fix up to 1 s early (5 m at 10 m/s for an autopilot that fuses it)."""
    from PIL import Image

    path = tmp_path / "subsec.jpg"
    image = Image.new("RGB", (16, 16))
    exif = image.getexif()
    sub = exif.get_ifd(0x8769)
    sub[36867] = "2016:06:23 16:31:59"  # DateTimeOriginal
    sub[37521] = "25"  # SubSecTimeOriginal: 0.25 s
    image.save(path, exif=exif)
    assert read_metadata(path).capture_time == datetime(2016, 6, 23, 16, 31, 59, 250000)
    sub[37521] = "n/a"
    image.save(path, exif=exif)
    assert read_metadata(path).capture_time == datetime(2016, 6, 23, 16, 31, 59)


def test_transplant_keeps_metadata_segments_byte_for_byte():
    src = PIGEON.read_bytes()
    ok, buf = cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))
    assert ok
    out = transplant_metadata(buf.tobytes(), src)
    app1 = lambda data: [s.payload for s in jpeg_segments(data) if s.marker == 0xE1]  # noqa: E731
    assert app1(out) == app1(src) and len(app1(src)) == 2
    assert cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR).shape == (16, 24, 3)


def test_parse_xmp_resolves_namespaces_elements_and_entities():
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:dji="{DJI_NS}" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        "dji:RelativeAltitude='+12.50' dji:Note=\"a &amp; b\">"
        "<exif:PixelXDimension>5472</exif:PixelXDimension>"
        "<dji:GimbalYawDegree>-3.5</dji:GimbalYawDegree>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    values = parse_xmp(packet)
    assert values[f"{{{DJI_NS}}}RelativeAltitude"] == "+12.50"  # found by namespace, whatever the prefix
    assert values[f"{{{DJI_NS}}}Note"] == "a & b"
    assert values[f"{{{DJI_NS}}}GimbalYawDegree"] == "-3.5"
    assert values["{http://ns.adobe.com/exif/1.0/}PixelXDimension"] == "5472"


def test_cli_from_exif(tmp_path, capsys):
    out = tmp_path / "dji.yaml"
    assert main(["from-exif", str(PIGEON), "--out", str(out)]) == 1
    assert "cropped and/or stretched" in capsys.readouterr().err and not out.exists()
    assert main(["from-exif", str(PIGEON), "--out", str(out), "--stretch"]) == 0
    assert "captured 5472x3078" in capsys.readouterr().out
    cam = read_camera_info(out)
    assert cam.size == (1058, 997) and cam.fx == pytest.approx(3666.666504 * 1058 / 5472)
    out2 = tmp_path / "brighton.yaml"
    assert main(["from-exif", str(BRIGHTON), "--out", str(out2), "--use-35mm", "--camera-name", "p3"]) == 0
    cam2 = read_camera_info(out2)
    assert cam2.camera_name == "p3" and cam2.fx == pytest.approx(20 / 36 * 4000)
    with pytest.raises(SystemExit):
        main(["from-exif", str(BRIGHTON), "--out", str(out2), "--crop", "1,2,3"])
