"""The reference checkpoint through the vehicle's path (ONNX Runtime bundle + map cache + locator) on real frames.

The bundled Brighton Beach DJI frames (demo_data/brighton, EXIF altitude and gimbal yaw as priors, Phantom 3 sensor
width for the intrinsics) on the bundled orthophotos: the frames are located within the error bound below against
the SfM camera positions; a frame turned by 90/180/270 degrees (no yaw prior: the locator searches the quarter turns)
lands on the same position; a frame of somewhere else is reported as not located instead of being placed.

The committed CPU reference checkpoint does NOT reach the first two yet (measured 2026-12-06 with the stage-4
checkpoint, step 22800, the refinement pass, three hypotheses per frame, rules 83 refined / 81 first-pass inliers, and
the 0.1 m point-cloud orthophoto matched on its 0.2 m overview level): of the six bundled frames one gets a fix,
DJI_0033 1.5 m from the SfM position (the rules chosen on three seeds, 63 / 79, also placed DJI_0030 15 m off; on the
twelve full-size frames of ``edge-bench``: 3 of 12, 1.5-1.8 m); the others stay below the rules. An SJER plot and a NAIP
crop are not placed on the Brighton maps, so that test runs unmarked. The others are strict xfails: they run the whole
vehicle path and fail loudly (XPASS) the day a checkpoint meets them, so the marks must then be removed. The issue's
targets (every frame, median <= 1 m) are measured by ``scripts/demo_brighton.py`` and ``edge-bench``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.metrics import haversine_m
from edge_runtime.locate_cli import frame_priors, read_frame
from edge_runtime.locator import Locator, LocatorConfig, heading_difference
from edge_runtime.types import LocateResult, Priors

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo_data" / "brighton"
REFERENCE = REPO / "topicgeo" / "assets" / "topicgeo_cpu.pt"
PHANTOM3_SENSOR_WIDTH_MM = 6.17

MIN_LOCATED = 6  # of the 6 bundled frames
MAX_MEDIAN_ERROR_M = 1.0
MAX_ROTATION_SPREAD_M = 1.0
NOT_YET = pytest.mark.xfail(strict=True, reason="the CPU reference checkpoint is not accurate enough yet "
                                                "(topicgeo/assets/MODEL_CARD.md); remove this mark when it passes")

pytestmark = pytest.mark.skipif(not REFERENCE.exists(), reason="reference checkpoint not committed")


@pytest.fixture(scope="module")
def locator(reference_demo: tuple[Path, Path]) -> Locator:
    return Locator.open(*reference_demo, LocatorConfig())


def _locate(locator: Locator, path: Path, frame: np.ndarray | None = None, yaw: bool = True) -> LocateResult:
    """Locate a bundled frame with its EXIF priors; ``frame`` replaces its pixels (a turned copy: the scale prior is
    then passed as the frame's GSD, since a quarter turn swaps the intrinsics' axes), ``yaw=False`` drops the yaw."""
    upright = read_frame(path)
    priors, camera = frame_priors(path, upright.shape[:2], None, None, True, PHANTOM3_SENSOR_WIDTH_MM)
    if frame is not None or not yaw:
        gsd = priors.altitude_agl_m / np.sqrt(camera.fx * camera.fy)
        priors = Priors(frame_gsd_m=gsd, yaw_deg=priors.yaw_deg if yaw else None, capture_time=priors.capture_time,
                        source="exif")
        camera = None
    locator.last_fix = None  # every frame on its own: no temporal prior between the cases
    return locator.locate(upright if frame is None else frame, priors, camera)


@pytest.mark.slow
@NOT_YET
def test_bundled_drone_frames_are_located_within_the_bound(locator: Locator, truth: dict) -> None:
    errors = []
    for path in sorted((DEMO / "frames").glob("*.JPG")):
        result = _locate(locator, path)
        if result.ok:
            errors.append(haversine_m(result.lat, result.lon, *truth[path.name]))
    assert len(errors) >= MIN_LOCATED, errors
    assert float(np.median(errors)) <= MAX_MEDIAN_ERROR_M, errors


@pytest.mark.slow
@NOT_YET
def test_a_turned_frame_lands_on_the_same_position(locator: Locator) -> None:
    path = DEMO / "frames" / "DJI_0021.JPG"
    upright = _locate(locator, path, np.ascontiguousarray(read_frame(path)), yaw=False)
    assert upright.ok, upright.reason
    for turns in (1, 2, 3):
        turned = np.ascontiguousarray(np.rot90(read_frame(path), -turns))
        result = _locate(locator, path, turned, yaw=False)
        assert result.ok, (turns, result.reason)
        assert haversine_m(result.lat, result.lon, upright.lat, upright.lon) <= MAX_ROTATION_SPREAD_M, turns
        # the heading follows the turn: clockwise turns of the image turn the camera heading counter-clockwise
        expected = (upright.heading_deg - 90.0 * turns) % 360.0
        assert abs((result.heading_deg - expected + 180.0) % 360.0 - 180.0) < 5.0, (turns, result.heading_deg)


@pytest.mark.slow
def test_a_frame_of_somewhere_else_is_not_located(locator: Locator, data_dir: Path) -> None:
    from topicgeo.data.raster import GeoRaster

    for path in (data_dir / "sjer" / "2018" / "SJER_002.tif", data_dir / "naip" / "naip_nd_20160816_x340_y330.tif"):
        with GeoRaster(path) as raster:
            image, _ = raster.read_rgb()
        for yaw in (0.0, None):
            result = locator.locate(image, Priors(yaw_deg=yaw))
            assert not result.ok, f"{path.name} placed on {result.map_id} at {result.lat}, {result.lon}"
            assert result.reason


def test_each_map_gsd_gets_a_query_at_its_own_scale(locator: Locator) -> None:
    """The bundled cache mixes a 0.1 m and a 0.5 m orthophoto: with an altitude prior each map is searched with the
    frame at ``target_ratio`` times its footprint in that map's pixels (one GSD for both would show the 0.5 m map a
    query at twice the trained scale ratio), the 0.1 m one on its 2x overview level: the frame covers ~680 of its
    pixels, more than the 512 px canvas shows at a ratio of 1."""
    path = DEMO / "frames" / "DJI_0027.JPG"
    frame = read_frame(path)
    priors, camera = frame_priors(path, frame.shape[:2], None, None, True, PHANTOM3_SENSOR_WIDTH_MM)
    plans = locator.query_plans(frame.shape[:2], priors, camera)
    assert sorted(m for p in plans for m in p.map_ids) == ["brighton_laz_0p10m@2x", "brighton_odm_0p5m"]
    assert len(plans) == 2
    frame_gsd = priors.altitude_agl_m / np.sqrt(camera.fx * camera.fy)
    for plan in plans:
        (map_id,) = plan.map_ids
        expected = max(frame.shape[:2]) * frame_gsd / locator.cache.map(map_id).georef.gsd_m
        assert plan.expected_px[map_id] == pytest.approx(expected)
        ratio = locator.config.target_ratio
        assert plan.content_px == pytest.approx(min(locator.query_size, ratio * expected), abs=0.5)
        assert plan.content_px / plan.expected_px[map_id] >= locator.config.min_overview_ratio
    assert plans[0].content_px > 1.5 * plans[1].content_px  # the finer map sees the larger query
    on_native = max(frame.shape[:2]) * frame_gsd / locator.cache.map("brighton_laz_0p10m").georef.gsd_m
    assert on_native > locator.query_size  # why the level: the frame would not fit the canvas at ratio 1
    unscaled = locator.query_plans(frame.shape[:2], Priors(), None)
    assert [(p.content_px, p.map_ids) for p in unscaled] == [
        (s * locator.query_size, frozenset(locator.cache.maps)) for s in locator.config.content_scales]


@pytest.mark.slow
def test_a_fix_never_contradicts_the_yaw_prior(locator: Locator) -> None:
    """With the EXIF gimbal yaw, and with that yaw off by 90 degrees (a wrong compass), every fix the locator gives
    heads within ``max_heading_error_deg`` of the prior it was given (a fit that turns the frame further is refused)."""
    limit = locator.config.max_heading_error_deg
    for path in sorted((DEMO / "frames").glob("*.JPG")):
        upright = read_frame(path)
        priors, camera = frame_priors(path, upright.shape[:2], None, None, True, PHANTOM3_SENSOR_WIDTH_MM)
        for offset in (0.0, 90.0):
            given = dataclasses.replace(priors, yaw_deg=(priors.yaw_deg + offset) % 360.0)
            locator.last_fix = None
            result = locator.locate(upright, given, camera)
            if result.ok:
                assert heading_difference(result.heading_deg, given.yaw_deg) <= limit, (path.name, offset)
            else:
                assert result.reason


@pytest.mark.slow
def test_the_demo_prints_and_records_what_the_locator_finds(reference_demo: tuple[Path, Path], locator: Locator,
                                                            demo_script, truth: dict, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``scripts/demo_brighton.py`` without ``--service`` (its export and cache reused): ``edge-locate --sequence`` on
    the bundled frames, each frame's outcome and error against the SfM position in its table and report, and the
    footprints picture. The outcomes are the locator's on the same frames in the same order."""
    import cv2

    out = tmp_path / "demo"
    out.mkdir()
    for name, path in zip(("bundle", "cache"), reference_demo, strict=True):
        (out / name).symlink_to(path)
    assert demo_script.main(["--out", str(out), "--reuse"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    frames = sorted((DEMO / "frames").glob("*.JPG"))
    assert [Path(r["image"]).name for r in report["frames"]] == [p.name for p in frames]
    locator.last_fix = None  # the demo's frames are one flight: the temporal prior carries from frame to frame
    errors = []
    for path, record in zip(frames, report["frames"], strict=True):
        frame = read_frame(path)
        priors, camera = frame_priors(path, frame.shape[:2], None, None, True, PHANTOM3_SENSOR_WIDTH_MM)
        expected = locator.locate(frame, priors, camera)
        assert record["ok"] == expected.ok, (path.name, record, expected.reason)
        if expected.ok:
            assert haversine_m(record["lat"], record["lon"], expected.lat, expected.lon) <= 0.01
            errors.append(haversine_m(expected.lat, expected.lon, *truth[path.name]))
            assert f"{errors[-1]:8.2f}" in printed  # the table's error column
        else:
            assert record["reason"] == expected.reason
    summary = report["summary"]
    assert summary["frames"] == len(frames) and summary["located"] == len(errors)
    if errors:
        assert summary["median_error_m"] == pytest.approx(float(np.median(errors)), abs=0.01)
    assert cv2.imread(str(out / "footprints.png")) is not None


def test_heading_difference_wraps_around_north() -> None:
    assert heading_difference(350.0, 10.0) == pytest.approx(20.0)
    assert heading_difference(10.0, 350.0) == pytest.approx(20.0)
    assert heading_difference(0.0, 180.0) == pytest.approx(180.0)
    assert heading_difference(-140.0, 220.0) == pytest.approx(0.0)
    assert heading_difference(45.0, 41.9) == pytest.approx(3.1)
