"""MAVLink bridge without a link: config validation, fix encoding (units, accuracies, datums), time alignment."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_runtime.mavlink import MavlinkConfig, MavlinkConfigError, parse_connection
from edge_runtime.mavlink.encode import (
    DOP_UNKNOWN,
    GPS_INPUT_IGNORE_FLAG_ALT,
    fix_from_result,
    global_position_sensor_fields,
    gps_input_fields,
    gps_week_ms,
    horizontal_accuracy_m,
)
from edge_runtime.mavlink.priors import BootClock, PriorBuffer, Series, camera_attitude_deg, rotation_zyx
from edge_runtime.types import LocateResult

ROOT = Path(__file__).resolve().parent.parent
PX4 = {"autopilot": "px4", "connection": "udpin:127.0.0.1:14540"}
ARDU = {"autopilot": "ardupilot", "connection": "serial:/dev/ttyTHS1", "fix_altitude": "ground_plus_agl",
        "ground_elevation_amsl_m": 412.0, "ground_elevation_std_m": 3.0}


def located(**kw):
    base = {"ok": True, "map_id": "m", "lat": 36.8012345, "lon": -119.7312345, "std_m": (2.0, 3.0),
            "altitude_agl_m": 120.0, "capture_time": 1_700_000_000.25}
    base.update(kw)
    return LocateResult(**base)


# ------------------------------------------------------------------------------------------------- config
def test_config_from_dict_rejects_unknown_and_bad_keys():
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.max_rte_hz: unknown key") as e:
        MavlinkConfig.from_dict({**PX4, "max_rte_hz": 2})
    assert e.value.key == "max_rte_hz"
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.autopilot: is required"):
        MavlinkConfig.from_dict({"connection": "udpin:127.0.0.1:14540"})
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.max_rate_hz: must be > 0"):
        MavlinkConfig.from_dict({**PX4, "max_rate_hz": 0})
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.heartbeat_rate_hz: must be a finite number"):
        MavlinkConfig.from_dict({**PX4, "heartbeat_rate_hz": True})
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.baud"):
        MavlinkConfig.from_dict({**PX4, "baud": 12345})
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.autopilot: must be one of"):
        MavlinkConfig.from_dict({**PX4, "autopilot": "betaflight"})
    # ArduPilot reads 0 m AMSL when GPS_INPUT's altitude is ignored: the config must give one.
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.fix_altitude: ArduPilot needs an altitude"):
        MavlinkConfig.from_dict({"autopilot": "ardupilot", "connection": "tcp:127.0.0.1:5760"})
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.ground_elevation_amsl_m: is required"):
        MavlinkConfig.from_dict({**PX4, "fix_altitude": "ground_plus_agl"})
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.camera_mount_ypr_deg"):
        MavlinkConfig.from_dict({**PX4, "camera_mount_ypr_deg": [0, 90]})
    cfg = MavlinkConfig.from_dict({**ARDU, "camera_mount_ypr_deg": [90, 0, 0]})
    assert cfg.camera_mount_ypr_deg == (90, 0, 0) and cfg.endpoint.device == "/dev/ttyTHS1"
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.position_prior_radius_m: must be >= 1"):
        MavlinkConfig.from_dict({**PX4, "position_prior_radius_m": 0.5})
    assert MavlinkConfig.from_dict({**PX4, "position_prior_radius_m": 300}).position_prior_radius_m == 300


@pytest.mark.parametrize(("text", "expected"), [
    ("udpin:0.0.0.0:14540", ("udpin", "0.0.0.0", 14540, None)),
    ("udpout:192.168.1.10:14550", ("udpout", "192.168.1.10", 14550, None)),
    ("tcp:localhost:5760", ("tcp", "localhost", 5760, None)),
    ("serial:/dev/ttyACM0", ("serial", None, None, "/dev/ttyACM0")),
])
def test_parse_connection(text, expected):
    ep = parse_connection(text)
    assert (ep.transport, ep.host, ep.port, ep.device) == expected


@pytest.mark.parametrize("text", ["udp:1.2.3.4:5", "udpin:14540", "tcp:host:70000", "serial:ttyS0", "udpout:h:0", ""])
def test_parse_connection_rejects(text):
    with pytest.raises(MavlinkConfigError, match=r"mavlink\.connection"):
        parse_connection(text)


def test_docs_yaml_example_is_a_valid_config():
    """The example in docs/mavlink.md parses, so the documentation cannot drift from the code."""
    text = (ROOT / "docs" / "mavlink.md").read_text()
    block = re.search(r"```yaml\n(mavlink:.*?)```", text, re.S)
    assert block is not None
    cfg = MavlinkConfig.from_dict(yaml.safe_load(block.group(1))["mavlink"])
    assert cfg.autopilot == "px4" and cfg.fix_altitude == "ground_plus_agl" and cfg.endpoint.transport == "serial"


# ------------------------------------------------------------------------------------------------ encoding
def test_gps_week_matches_the_published_calendar():
    # GPS week 2048 began 2019-04-07 00:00 GPS (the second rollover); 2024-01-01 00:00:00 UTC is GPS week 2295,
    # Monday: 1 day + 18 leap seconds into the week.
    week, ms = gps_week_ms(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp(), 18)
    assert (week, ms) == (2295, 86_418_000)
    week, ms = gps_week_ms(datetime(2019, 4, 7, tzinfo=timezone.utc).timestamp() - 18 + 0.0004, 18)
    assert (week, ms) == (2048, 0)


def test_horizontal_accuracy_is_the_larger_axis_with_the_map_error():
    assert horizontal_accuracy_m((2.0, 3.0), 1.0, 1.0) == pytest.approx(math.sqrt(10.0), rel=1e-12)
    assert horizontal_accuracy_m((4.0, 0.5), 3.0, 2.0) == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(ValueError, match="std_m"):
        horizontal_accuracy_m((float("nan"), 1.0), 1.0, 1.0)


def test_fix_from_result_reasons_and_altitude():
    px4 = MavlinkConfig(**PX4)
    assert fix_from_result(LocateResult.failure("no match"), px4) == (None, "no_fix")
    assert fix_from_result(located(capture_time=None), px4) == (None, "no_capture_time")
    assert fix_from_result(located(std_m=None), px4) == (None, "no_accuracy")
    assert fix_from_result(located(std_m=(60.0, 1.0)), px4) == (None, "accuracy_too_large")
    with pytest.raises(ValueError, match="lat"):
        fix_from_result(located(lat=91.0), px4)
    fix, reason = fix_from_result(located(), px4)
    assert reason is None and fix.alt_amsl_m is None and fix.v_acc_m is None  # horizontal-only by default
    ardu = MavlinkConfig(**ARDU)
    fix, _ = fix_from_result(located(), ardu)
    assert fix.alt_amsl_m == pytest.approx(532.0) and fix.agl_m == 120.0
    assert fix.v_acc_m == pytest.approx(math.hypot(3.0, 0.05 * 120.0))
    assert fix_from_result(located(altitude_agl_m=None), ardu) == (None, "no_altitude")
    fallback = MavlinkConfig(**{**ARDU, "agl_fallback_vehicle": True})
    fix, _ = fix_from_result(located(altitude_agl_m=None), fallback, vehicle_agl_m=80.0)
    assert fix.alt_amsl_m == pytest.approx(492.0)


def test_global_position_sensor_fields():
    cfg = MavlinkConfig(**{**PX4, "sensor_id": 7, "fix_altitude": "ground_plus_agl", "ground_elevation_amsl_m": 10.0})
    fix, _ = fix_from_result(located(), cfg)
    f = global_position_sensor_fields(fix, cfg, publish_time=1_700_000_000.4321, target_system=3, target_component=1)
    assert (f["lat"], f["lon"]) == (368012345, -1197312345)  # degE7
    assert f["time_usec"] == 1_700_000_000_432_100
    assert f["time_usec"] - f["processing_time"] == 1_700_000_000_250_000  # the capture time, exactly
    assert (f["id"], f["source"], f["target_system"], f["flags"]) == (7, 2, 3, 0)
    assert f["alt"] == pytest.approx(130.0) and math.isnan(f["alt_ellipsoid"])
    assert f["eph"] == pytest.approx(math.sqrt(10.0)) and f["epv"] == pytest.approx(math.hypot(5.0, 6.0))
    fix, _ = fix_from_result(located(), MavlinkConfig(**PX4))
    f = global_position_sensor_fields(fix, MavlinkConfig(**PX4), 1_700_000_000.3, 1, 1)
    assert math.isnan(f["alt"]) and math.isnan(f["epv"])  # horizontal-only: invalid, not zero


def test_gps_input_fields():
    cfg = MavlinkConfig(**ARDU)
    fix, _ = fix_from_result(located(), cfg)
    f = gps_input_fields(fix, cfg)
    assert f["time_usec"] == 1_700_000_000_250_000  # capture time, not publish time
    week, ms = gps_week_ms(1_700_000_000.25, 18)
    assert (f["time_week"], f["time_week_ms"]) == (week, ms) and week == 2288
    assert f["fix_type"] == 3 and f["satellites_visible"] == 0 and f["yaw"] == 0
    assert f["ignore_flags"] == 2 | 4 | 8 | 16 | 32 and not f["ignore_flags"] & GPS_INPUT_IGNORE_FLAG_ALT
    assert f["hdop"] == DOP_UNKNOWN == 65535.0
    assert f["alt"] == pytest.approx(532.0)
    assert f["horiz_accuracy"] == pytest.approx(math.sqrt(10.0))


# ----------------------------------------------------------------------------------------- time alignment
def test_boot_clock_takes_the_fastest_packet_and_detects_reboots():
    rng = np.random.default_rng(0)
    clock = BootClock(window_s=20.0)
    offset = 1_700_000_000.0
    for k in range(200):
        boot = 5.0 + 0.02 * k
        clock.observe(boot, offset + boot + 0.002 + rng.exponential(0.03))  # 2 ms floor + random queueing
    assert clock.offset == pytest.approx(offset + 0.002, abs=0.002)
    assert clock.to_unix(7.0) == pytest.approx(offset + 7.002, abs=0.002)
    assert clock.observe(0.5, offset + 100.0) is True and clock.resets == 1
    assert clock.offset == pytest.approx(offset + 99.5)


def test_series_interpolates_angles_on_the_circle_and_respects_gaps():
    s = Series((True, False))
    s.add(1.0, (math.radians(170.0), 10.0))
    s.add(2.0, (math.radians(-170.0), 20.0))
    s.add(5.0, (0.0, 50.0))
    yaw, v = s.at(1.5, max_gap=1.0, max_extrapolation=0.25)
    assert abs(math.degrees(math.atan2(math.sin(yaw), math.cos(yaw)))) == pytest.approx(180.0, abs=1e-9)
    assert v == pytest.approx(15.0)
    assert s.at(3.5, 1.0, 0.25) is None  # inside a 3 s gap
    assert s.at(2.2, 1.0, 0.25)[1] == 20.0  # held from the sample before the gap
    assert s.at(5.2, 1.0, 0.25)[1] == 50.0 and s.at(5.3, 1.0, 0.25) is None


def test_camera_attitude_follows_calibration_convention():
    """Vehicle attitude composed with the mount agrees with calibration.geometry's camera attitude."""
    from calibration.geometry import _BODY_FROM_CAM, ENU_FROM_NED, rotation_from_ypr

    vr, vp, vy = np.radians([4.0, -7.0, 33.0])
    mount = (90.0, 5.0, -3.0)
    roll, pitch, yaw = camera_attitude_deg(vr, vp, vy, mount)
    expected = ENU_FROM_NED @ rotation_zyx(vy, vp, vr) @ rotation_zyx(*np.radians(mount)) @ _BODY_FROM_CAM
    np.testing.assert_allclose(rotation_from_ypr(yaw, pitch, roll), expected, atol=1e-12)
    # Nadir mount: the camera attitude is the vehicle's.
    assert camera_attitude_deg(vr, vp, vy, (0.0, 0.0, 0.0)) == pytest.approx((4.0, -7.0, 33.0), abs=1e-9)


def test_prior_buffer_rangefinder_tilt_and_fallback():
    buf = PriorBuffer(agl_source="auto")
    t0 = 1_700_000_000.0
    for k in range(11):  # 10 Hz for 1 s, boot time 100 s
        boot_ms = 100_000 + 100 * k
        arrival = t0 + 0.1 * k
        buf.add_attitude(boot_ms, math.radians(10.0), math.radians(5.0), 0.0, arrival)
        buf.add_global_position(boot_ms, 80_000, 9000, arrival)
        if k <= 5:
            assert buf.add_distance(boot_ms, 5000, 20, 12000, 25, arrival)
    assert not buf.add_distance(100_000, 5000, 20, 12000, 24, t0)  # upward-looking: not a height
    assert not buf.add_distance(100_000, 13000, 20, 12000, 25, t0)  # beyond max_distance
    p = buf.priors_at(t0 + 0.25, now_unix=t0 + 1.0)
    assert p.altitude_agl_m == pytest.approx(50.0 * math.cos(math.radians(10.0)) * math.cos(math.radians(5.0)))
    assert (p.roll_deg, p.pitch_deg, p.yaw_deg) == pytest.approx((10.0, 5.0, 0.0))
    assert p.source == "mavlink" and p.capture_time == t0 + 0.25
    assert buf.priors_at(t0 + 0.9, now_unix=t0 + 1.0).altitude_agl_m == pytest.approx(80.0)  # no range: relative_alt
    assert buf.priors_at(t0 - 5.0, now_unix=t0 + 1.0) is None  # before the history
    only_range = PriorBuffer(agl_source="rangefinder")
    only_range.add_global_position(100_000, 80_000, 9000, t0)
    assert only_range.priors_at(t0, now_unix=t0) is not None and only_range.priors_at(t0, t0).altitude_agl_m is None


def test_prior_buffer_position_prior_from_the_autopilot():
    """With ``position_radius_m`` the autopilot's lat / lon at the capture time (interpolated, across the
    antimeridian too) is the frame's position prior; (0, 0) means no estimate; without the radius it is not used."""
    t0 = 1_700_000_000.0
    buf = PriorBuffer(position_radius_m=250.0)
    plain = PriorBuffer()
    for k in range(11):  # 10 Hz for 1 s, flying east across the antimeridian at 0.0001 degrees per sample
        lon = 179.9995 + 0.0001 * k
        lon_e7 = round((lon - 360.0 if lon > 180.0 else lon) * 1e7)
        for b in (buf, plain):
            b.add_global_position(100_000 + 100 * k, 80_000, 9000, t0 + 0.1 * k, lat_e7=-168_000_000,
                                  lon_e7=lon_e7)
    p = buf.priors_at(t0 + 0.25, now_unix=t0 + 1.0)
    assert p.near_lat == pytest.approx(-16.8, abs=1e-9) and p.near_radius_m == 250.0
    assert p.near_lon == pytest.approx(179.99975, abs=1e-9)
    # between the samples on either side of the antimeridian (179.9999 and -179.9999): on the circle, not via 0
    assert buf.priors_at(t0 + 0.55, now_unix=t0 + 1.0).near_lon == pytest.approx(-179.99995, abs=1e-9)
    across = buf.priors_at(t0 + 0.75, now_unix=t0 + 1.0)
    assert across.near_lon == pytest.approx(179.99975 + 0.0005 - 360.0, abs=1e-9)  # 180.00025 wraps to -179.99975
    assert plain.priors_at(t0 + 0.25, now_unix=t0 + 1.0).near_lat is None
    unknown = PriorBuffer(position_radius_m=250.0)
    unknown.add_global_position(100_000, 80_000, 9000, t0, lat_e7=0, lon_e7=0)  # no estimate yet
    assert unknown.priors_at(t0, now_unix=t0).near_lat is None


def test_import_without_pymavlink():
    """edge_runtime.mavlink imports and validates configs without pymavlink; start() names the extra."""
    code = (
        "import sys; sys.modules['pymavlink'] = None\n"
        "from edge_runtime.mavlink import MavlinkBridge, MavlinkConfig\n"
        "b = MavlinkBridge(MavlinkConfig(autopilot='px4', connection='udpin:127.0.0.1:0'))\n"
        "try:\n    b.start()\nexcept ImportError as e:\n    print('IMPORT-ERROR', e)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert "IMPORT-ERROR" in out and "topicgeo-edge[mavlink]" in out
    assert out.strip().endswith("False")
