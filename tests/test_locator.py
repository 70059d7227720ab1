"""The locator and edge-locate: query preparation geometry, JSON contract, bad inputs, cache/bundle mismatch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.locate_cli import FrameError, main, read_frame
from edge_runtime.locator import (
    Locator,
    LocatorConfig,
    LocatorError,
    prepare_query,
    refinement_canvas,
    unique_map_cells,
)
from edge_runtime.numerics.coarse import alignment_gate
from edge_runtime.numerics.geometry import project_points
from edge_runtime.types import LocateResult, Priors
from topicgeo.data.raster import GeoRaster


@pytest.fixture(scope="module")
def plot_rgb(data_dir: Path) -> np.ndarray:
    with GeoRaster(data_dir / "sjer" / "2018" / "SJER_009.tif") as raster:
        image, _ = raster.read_rgb()
    return image


@pytest.mark.parametrize(("crop", "content"), [((400, 300), 512.0), ((400, 300), 256.0), ((120, 400), 400.0)])
def test_prepare_query_maps_frame_pixels_onto_the_canvas(plot_rgb: np.ndarray, crop: tuple[int, int],
                                                         content: float) -> None:
    w, h = crop
    frame = np.ascontiguousarray(plot_rgb[:h, :w])
    prep = prepare_query(frame, 512, content)
    assert prep.canvas.shape == (512, 512, 3)
    # Sample the canvas at the projections of frame points: bilinear values must match the frame there.
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(8, w - 9, 200), rng.uniform(8, h - 9, 200)])
    on_canvas = project_points(prep.frame_to_canvas, pts).astype(np.float32)
    sampled = cv2.remap(prep.canvas, on_canvas[:, None, 0], on_canvas[:, None, 1], cv2.INTER_LINEAR)[:, 0]
    blurred = cv2.resize(cv2.resize(frame, (prep.canvas.shape[1], prep.canvas.shape[0])), (w, h))  # scale-matched
    direct = blurred[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]
    assert np.mean(np.abs(sampled.astype(float) - direct.astype(float))) < 30
    # Geometry is exact: the frame corners land on the content rectangle, centred.
    corners = project_points(prep.frame_to_canvas, np.array([[-0.5, -0.5], [w - 0.5, h - 0.5]]))
    size = corners[1] - corners[0]
    assert max(size) == pytest.approx(min(content, 512), abs=1.0)
    assert (corners[0] + corners[1]) / 2 == pytest.approx([255.5, 255.5], abs=0.6)
    # Cells that are mostly padding are invalid.
    assert prep.cell_valid.sum() == pytest.approx((size[0] / 64) * (size[1] / 64), abs=8)


@pytest.mark.parametrize(("rotation", "content"), [(30.0, 400.0), (90.0, 512.0), (217.5, 256.0), (-45.0, 700.0)])
def test_prepare_query_rotates_the_frame_clockwise_about_its_centre(plot_rgb: np.ndarray, rotation: float,
                                                                    content: float) -> None:
    h, w = 300, 400
    frame = np.ascontiguousarray(plot_rgb[:h, :w])
    prep = prepare_query(frame, 512, content, rotation_deg=rotation)
    scale = min(content, 512) / w
    # The frame centre lands on the canvas centre; the top edge's midpoint lies at ``rotation`` clockwise from up.
    centre, top = project_points(prep.frame_to_canvas, np.array([[(w - 1) / 2, (h - 1) / 2], [(w - 1) / 2, 0.0]]))
    assert centre == pytest.approx([255.5, 255.5], abs=1e-6)
    up = top - centre  # canvas y grows downwards: up = (0, -1); clockwise by t = (sin t, -cos t)
    t = np.radians(rotation)
    assert up / np.linalg.norm(up) == pytest.approx([np.sin(t), -np.cos(t)], abs=1e-9)
    assert np.linalg.norm(up) == pytest.approx(scale * (h - 1) / 2, rel=2e-3)
    assert prep.scale == pytest.approx(scale)
    # Content: canvas pixels at projected frame points equal the (scale-matched) frame there.
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(20, w - 21, 300), rng.uniform(20, h - 21, 300)])
    on_canvas = project_points(prep.frame_to_canvas, pts)
    inside = np.all((on_canvas > 1) & (on_canvas < 510), axis=1)
    assert inside.sum() > 150
    sampled = cv2.remap(prep.canvas, on_canvas[inside, None, 0].astype(np.float32),
                        on_canvas[inside, None, 1].astype(np.float32), cv2.INTER_LINEAR)[:, 0]
    blurred = cv2.resize(cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), (w, h))
    direct = blurred[np.round(pts[inside, 1]).astype(int), np.round(pts[inside, 0]).astype(int)]
    assert np.mean(np.abs(sampled.astype(float) - direct.astype(float))) < 30
    # Cells left empty by the rotation are invalid; cells under the content are valid.
    cell_centres = np.array([[64 * u + 31.5, 64 * v + 31.5] for v in range(8) for u in range(8)])
    in_frame = project_points(np.linalg.inv(prep.frame_to_canvas), cell_centres)
    deep_inside = np.all((in_frame > 40 / scale) & (in_frame < np.array([w, h]) - 40 / scale), axis=1)
    far_outside = np.any((in_frame < -40 / scale) | (in_frame > np.array([w, h]) + 40 / scale), axis=1)
    assert prep.cell_valid[deep_inside].all() and not prep.cell_valid[far_outside].any()


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    t = np.radians(angle_deg)
    return np.array([[scale * np.cos(t), -scale * np.sin(t), shift[0]],
                     [scale * np.sin(t), scale * np.cos(t), shift[1]], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(("angle", "zoom", "tilt"), [(0.0, 1.0, 0.0), (63.0, 2.5, 0.0), (200.0, 0.7, 4e-4)])
def test_refinement_canvas_shows_the_tile_grid_north_up_around_the_footprint(
        plot_rgb: np.ndarray, angle: float, zoom: float, tilt: float) -> None:
    # The real 2018 plot on a 512 tile (as the cache centres a small map); a "frame" is that tile seen turned,
    # zoomed and in perspective. Given the exact frame -> tile homography, the refinement canvas must show the
    # tile's own pixels at canvas_to_tile of every valid canvas pixel.
    tile = np.zeros((512, 512, 3), np.uint8)
    tile[56:456, 56:456] = plot_rgb
    tile_to_frame = _similarity(angle, zoom, (0.0, 0.0))
    tile_to_frame[2, :2] = [tilt, 0.0]
    tile_to_frame = tile_to_frame @ np.array([[1, 0, -256.0], [0, 1, -256.0], [0, 0, 1]])  # about the tile centre
    corners = project_points(tile_to_frame, np.array([[120.0, 120.0], [392.0, 120.0], [392.0, 392.0], [120.0, 392.0]]))
    shift = -corners.min(axis=0)
    tile_to_frame = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]]) @ tile_to_frame
    w, h = np.ceil(corners.max(axis=0) - corners.min(axis=0)).astype(int)
    frame = cv2.warpPerspective(tile, tile_to_frame, (int(w), int(h)), flags=cv2.INTER_LINEAR)
    rc = refinement_canvas(frame, np.linalg.inv(tile_to_frame), 512, 512, 64, 2.0)
    assert rc is not None
    s = 1.0 / rc.canvas_to_tile[0, 0]
    assert 1.0 <= s <= 2.0 and rc.canvas_to_tile[0, 1] == rc.canvas_to_tile[1, 0] == 0.0  # north-up, zoom only
    # the frame's footprint, clipped to the tile, fills ~90 % of the canvas where the zoom allows it
    quad = np.clip(project_points(np.linalg.inv(tile_to_frame), np.array([[-0.5, -0.5], [w - 0.5, -0.5],
                                                                           [w - 0.5, h - 0.5], [-0.5, h - 0.5]])),
                   0, 512)
    assert s == pytest.approx(np.clip(0.9 * 512 / np.max(np.ptp(quad, axis=0)), 1.0, 2.0), rel=0.02)
    rng = np.random.default_rng(2)
    c = rng.uniform(0, 511, (4000, 2))
    ys, xs = np.round(c[:, 1]).astype(int), np.round(c[:, 0]).astype(int)
    t = project_points(rc.canvas_to_tile, c)
    inside = np.all((t > 130) & (t < 382), axis=1) & (rc.canvas.reshape(-1, 3)[ys * 512 + xs].sum(axis=1) > 0)
    assert inside.sum() > 500
    blurred = cv2.GaussianBlur(tile, (0, 0), 1.5)
    canvas_blurred = cv2.GaussianBlur(rc.canvas, (0, 0), 1.5 * s)
    truth = cv2.remap(blurred, t[inside, None, 0].astype(np.float32), t[inside, None, 1].astype(np.float32),
                      cv2.INTER_LINEAR)[:, 0].astype(float)
    seen = canvas_blurred[ys[inside], xs[inside]].astype(float)
    assert np.mean(np.abs(seen - truth)) < 12
    shuffled = truth[rng.permutation(len(truth))]
    assert np.mean(np.abs(seen - shuffled)) > 2 * np.mean(np.abs(seen - truth))  # the check can fail
    # cells under the footprint are valid, cells far outside are not
    centres = np.array([[64 * u + 31.5, 64 * v + 31.5] for v in range(8) for u in range(8)])
    in_tile = project_points(rc.canvas_to_tile, centres)
    assert rc.cell_valid[np.all((in_tile > 170) & (in_tile < 342), axis=1)].all()
    assert not rc.cell_valid[np.any((in_tile < 60) | (in_tile > 452), axis=1)].any()


def test_refinement_canvas_is_none_when_the_first_fit_misses_the_tile(plot_rgb: np.ndarray) -> None:
    frame = np.ascontiguousarray(plot_rgb[:300, :300])
    far_away = np.array([[1.0, 0, 900.0], [0, 1.0, 40.0], [0, 0, 1]])
    assert refinement_canvas(frame, far_away, 512, 512, 64, 2.0) is None
    grazing = np.array([[1.0, 0, 512.0 - 30.0], [0, 1.0, 40.0], [0, 0, 1]])  # 30 px of overlap: under a cell
    assert refinement_canvas(frame, grazing, 512, 512, 64, 2.0) is None


def test_alignment_gate_allows_the_cells_around_the_predicted_position() -> None:
    uv = np.array([[u, v] for v in range(8) for u in range(8)])
    cheb = np.max(np.abs(uv[:, None] - uv[None]), axis=2)
    assert np.array_equal(alignment_gate(np.eye(3), (8, 8), (8, 8), 64, 1), cheb <= 1)
    assert np.array_equal(alignment_gate(np.eye(3), (8, 8), (8, 8), 64, 0), np.eye(64, dtype=bool))
    # zoom 2 about the origin: query cell (u, v) lands in reference cell (u // 2, v // 2)
    half = np.diag([0.5, 0.5, 1.0])
    gate = alignment_gate(half, (8, 8), (8, 8), 64, 0)
    assert all(gate[i].sum() == 1 and tuple(uv[gate[i].argmax()]) == (uv[i][0] // 2, uv[i][1] // 2)
               for i in range(64))
    # a shift by 200 px: query columns 5-7 fall off the reference grid and allow nothing
    shifted = np.array([[1.0, 0, 200.0], [0, 1.0, 0], [0, 0, 1]])
    gate = alignment_gate(shifted, (8, 8), (8, 8), 64, 1)
    off = uv[:, 0] >= 5
    assert not gate[off].any() and gate[~off].sum(axis=1).min() >= 4
    with pytest.raises(ValueError, match="homography"):
        alignment_gate(np.full((3, 3), np.nan), (8, 8), (8, 8), 64, 1)


def test_locate_result_never_carries_a_pose_without_a_fix() -> None:
    with pytest.raises(ValueError, match="reason"):
        LocateResult(ok=False)
    with pytest.raises(ValueError, match="lat"):
        LocateResult(ok=True, map_id="x")
    with pytest.raises(ValueError, match="altitude"):
        Priors(altitude_agl_m=-3.0)


def test_bad_frames_give_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(FrameError, match="empty"):
        read_frame(empty)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(FrameError, match="cannot decode"):
        read_frame(corrupt)
    with pytest.raises(FrameError, match="not found"):
        read_frame(tmp_path / "missing.jpg")


@pytest.fixture(scope="module")
def sjer_cache(tiny_bundle: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from maps.build import BuildConfig, build_cache

    out = tmp_path_factory.mktemp("cache") / "sjer"
    build_cache(tiny_bundle, sorted((data_dir / "sjer" / "2018").glob("*.tif")), out, BuildConfig())
    return out


def test_edge_locate_json_contract_and_bad_inputs(tiny_bundle: Path, sjer_cache: Path, data_dir: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with GeoRaster(data_dir / "sjer" / "2017" / "SJER_002.tif") as raster:
        image, _ = raster.read_rgb()
    good = tmp_path / "query.png"
    cv2.imwrite(str(good), cv2.cvtColor(image[40:340, 60:360], cv2.COLOR_RGB2BGR))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8garbage")
    code = main(["--bundle", str(tiny_bundle), "--cache", str(sjer_cache), "--json", str(good), str(broken)])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and code == 1  # the broken frame is reported, the run goes on
    assert lines[1]["ok"] is False and "cannot decode" in lines[1]["reason"]
    first = lines[0]
    assert set(first) >= {"image", "ok", "confidence", "inliers", "latency_ms", "verified"}
    assert 0 <= first["verified"] <= LocatorConfig().verify_candidates
    assert first["verified"] >= 1 or "no map region matches" in first["reason"]
    assert first["latency_ms"]["total"] > 0 and "retrieval" in first["latency_ms"]
    if first["ok"]:
        assert len(first["footprint_px"]) == 4 and {"map_id", "lat", "lon", "heading_deg"} <= set(first)
    else:
        assert first["reason"]


def test_a_folder_given_as_an_image_says_so(tmp_path: Path) -> None:
    with pytest.raises(FrameError, match="is a folder: pass image files"):
        read_frame(tmp_path)


def test_a_calibration_file_skips_the_exif_intrinsics(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --calibration the EXIF intrinsics (and their approximate-focal-length warning) are not consulted; the
    EXIF priors still are."""
    import calibration.exif as exif
    from edge_runtime.locate_cli import frame_priors

    frame = Path(__file__).resolve().parent.parent / "demo_data" / "brighton" / "frames" / "DJI_0033.JPG"
    priors, camera = frame_priors(frame, (900, 1600), None, None)
    assert camera is not None and priors.altitude_agl_m is not None

    def refuse(*args, **kwargs):
        raise AssertionError("EXIF intrinsics consulted despite a calibration file")

    monkeypatch.setattr(exif, "camera_from_metadata", refuse)
    priors, camera = frame_priors(frame, (900, 1600), None, None, need_camera=False)
    assert camera is None and priors.altitude_agl_m is not None and priors.yaw_deg is not None


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("a: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "camera_info"),
    (b"\xff\xfe\x00 binary", "not a UTF-8 text file"),
])
def test_a_bad_calibration_file_is_a_clear_error(content: str | bytes | None, message: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A missing, malformed, binary or non-camera_info ``--calibration`` file: exit 2 (could not start) with the file
    named, not a traceback and exit 1 (which says "some image not located")."""
    calibration = tmp_path / "camera.yaml"
    if isinstance(content, bytes):
        calibration.write_bytes(content)
    elif content is not None:
        calibration.write_text(content)
    code = main(["--bundle", str(tmp_path / "b"), "--cache", str(tmp_path / "c"), "--calibration", str(calibration),
                 "x.jpg"])
    err = capsys.readouterr().err
    assert code == 2
    assert "edge-locate: error: --calibration" in err and str(calibration) in err and message in err


def test_an_altitude_without_intrinsics_is_searched_unscaled_and_said(
        tiny_bundle: Path, sjer_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An altitude cannot scale a frame without intrinsics: the locator searches as without a scale prior and warns,
    once per locator (a service at 2 fps would otherwise log it twice a second)."""
    locator = Locator.open(tiny_bundle, sjer_cache, LocatorConfig())
    unscaled = locator.query_plans((288, 512), Priors(), None)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.locator"):
        for _ in range(2):
            plans = locator.query_plans((288, 512), Priors(altitude_agl_m=40.0), None)
            assert [(p.content_px, p.map_ids) for p in plans] == [(p.content_px, p.map_ids) for p in unscaled]
    warnings = [r for r in caplog.records if "without camera intrinsics" in r.getMessage()]
    assert len(warnings) == 1 and "40.0 m" in warnings[0].getMessage()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"near_lat": 36.9}, "go together"),
    ({"near_lat": 95.0, "near_lon": 1.0}, "near_lat must be a latitude"),
    ({"near_lat": 1.0, "near_lon": float("nan")}, "near_lon must be a longitude"),
    ({"near_radius_m": 50.0}, "needs near_lat"),
    ({"near_lat": 1.0, "near_lon": 2.0, "near_radius_m": 0.5}, "near_radius_m must be a finite number of metres"),
])
def test_a_position_prior_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Priors(**kwargs)


def _near(loc: Locator, map_id: str, at_px: tuple[float, float], radius_m: float | None = None) -> Priors:
    lon, lat = loc.cache.map(map_id).georef.pixels_to_lonlat(np.array([at_px], dtype=np.float64))[0]
    return Priors(near_lat=float(lat), near_lon=float(lon), near_radius_m=radius_m)


def test_a_position_prior_searches_the_cells_around_it_first(tiny_bundle: Path, sjer_cache: Path) -> None:
    """``Priors.near_lat`` / ``near_lon`` (e.g. the last GNSS fix): the cells within the radius of that point, on
    whichever map holds it; the area of the locator's own last fix instead when that lies inside a circle wider than
    the temporal prior's (a mission area), the prior's when the fix is outside it or the prior is the tighter; a point
    with no cell near it: the plain search (None)."""
    loc = Locator.open(tiny_bundle, sjer_cache, LocatorConfig())
    entry = loc.cache.map("SJER_009")
    corner = (0.0, 0.0)
    area = loc.search_area(_near(loc, "SJER_009", corner, 1.0))
    assert {loc.cache.map(m).base_id for m, mask in area.items() if mask.any()} == {"SJER_009"}
    mask = area["SJER_009"]
    reach = 1.0 / entry.georef.gsd_m + loc.tile_size / 2
    distance = np.linalg.norm(loc.cells["SJER_009"].centres_px - corner, axis=1)
    assert mask.any() and not mask.all()  # the far corner of the plot is out of reach
    np.testing.assert_array_equal(mask, distance <= reach)
    # the default radius is the locator's prior_radius_m (150 m: the whole 40 m plot)
    assert loc.search_area(_near(loc, "SJER_009", corner))["SJER_009"].all()

    def maps(area: dict) -> set[str]:
        return {loc.cache.map(m).base_id for m, k in area.items() if k.any()}

    mission = _near(loc, "SJER_009", (200.0, 200.0), 2000.0)  # SJER_048 lies 0.9 km away, SJER_002 4 km
    assert maps(loc.search_area(mission)) == {"SJER_009", "SJER_048"}
    loc.last_fix = ("SJER_009", np.array([380.0, 380.0]))  # inside the mission area: its 150 m around the fix
    assert maps(loc.search_area(mission)) == {"SJER_009"}
    tight = _near(loc, "SJER_009", (380.0, 380.0), 10.0)  # the fix lies inside, but the prior is the tighter
    mask = loc.search_area(tight)["SJER_009"]
    assert not mask.all()  # (around the fix, 150 m, every cell of the plot)
    np.testing.assert_array_equal(mask, np.linalg.norm(loc.cells["SJER_009"].centres_px - (380.0, 380.0), axis=1)
                                  <= 10.0 / entry.georef.gsd_m + loc.tile_size / 2)
    loc.last_fix = ("SJER_002", np.array([10.0, 10.0]))  # km away: the prior's circle is searched
    assert {m for m, k in loc.search_area(_near(loc, "SJER_009", corner, 1.0)).items() if k.any()} == \
        {m for m, k in area.items() if k.any()}
    loc.last_fix = None
    assert loc.search_area(Priors(near_lat=0.0, near_lon=0.0)) is None  # off every map


def test_locate_retrieves_near_the_prior_first_and_off_map_priors_change_nothing(
        tiny_bundle: Path, sjer_cache: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loc = Locator.open(tiny_bundle, sjer_cache, LocatorConfig(temporal_prior=False))
    with GeoRaster(data_dir / "sjer" / "2017" / "SJER_009.tif") as raster:
        image, _ = raster.read_rgb()
    query = np.ascontiguousarray(image[40:340, 60:360])
    areas: list[dict | None] = []
    original = loc.retrieve

    def spy(coarse_q: np.ndarray, valid_q: np.ndarray, area: dict | None = None, maps: frozenset | None = None):
        areas.append(area)
        return original(coarse_q, valid_q, area, maps)

    monkeypatch.setattr(loc, "retrieve", spy)
    loc.locate(query, _near(loc, "SJER_002", (200.0, 200.0), 20.0))
    first = areas[0]
    assert first is not None and {loc.cache.map(m).base_id for m, k in first.items() if k.any()} == {"SJER_002"}
    areas.clear()
    plain = loc.locate(query, Priors())
    assert areas and all(a is None for a in areas)
    off_map = loc.locate(query, Priors(near_lat=0.0, near_lon=0.0))
    assert (off_map.ok, off_map.map_id, off_map.inliers, off_map.reason) == \
        (plain.ok, plain.map_id, plain.inliers, plain.reason)
    assert len(off_map.extra["verified"]) == len(plain.extra["verified"]) and not off_map.extra["widened"]


def test_a_position_prior_skips_maps_without_a_crs(tiny_bundle: Path, map_paths: list[Path], data_dir: Path,
                                                   tmp_path: Path) -> None:
    """A map placed with ``--gsd`` only has no latitude / longitude: a position prior leaves it out of the first
    search (instead of failing every frame) and the frame is still located against it afterwards."""
    import rasterio

    from maps.build import BuildConfig, build_cache

    png = tmp_path / "plot.png"
    with rasterio.open(map_paths[1]) as src:
        rgb = src.read([1, 2, 3])
    with rasterio.open(png, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1], count=3,
                       dtype="uint8") as dst:
        dst.write(rgb)
    cache = tmp_path / "mixed"
    build_cache(tiny_bundle, [data_dir / "sjer" / "2018" / "SJER_009.tif", png], cache,
                BuildConfig(gsd=0.1, progress=False))
    loc = Locator.open(tiny_bundle, cache, LocatorConfig())
    assert loc.cache.map("plot").georef.crs_wkt is None
    near = _near(loc, "SJER_009", (200.0, 200.0))
    area = loc.search_area(near)
    assert area is not None and {loc.cache.map(m).base_id for m in area} == {"SJER_009"}
    result = loc.locate(np.ascontiguousarray(rgb.transpose(1, 2, 0)[50:350, 50:350]), near)
    assert result.ok or result.reason  # located or refused, never an exception


def test_edge_locate_near_flag_reaches_the_priors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import edge_runtime.locate_cli as cli

    seen: list[Priors] = []

    class Recording:
        def locate(self, frame: np.ndarray, priors: Priors, camera: object) -> LocateResult:
            seen.append(priors)
            return LocateResult.failure("recorded")

    monkeypatch.setattr(cli.Locator, "open", staticmethod(lambda *a: Recording()))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 100, np.uint8))
    assert main(["--bundle", str(tmp_path), "--cache", str(tmp_path), "--near", "-33.8568", "151.2153",
                 "--near-radius-m", "400", str(image)]) == 1  # a southern latitude is a value, not an option
    assert (seen[0].near_lat, seen[0].near_lon, seen[0].near_radius_m) == (-33.8568, 151.2153, 400.0)
    for bad in (["--near", "91", "0"], ["--near-radius-m", "50"], ["--near", "1", "2", "--near-radius-m", "-3"],
                ["--near", "1", "2", "--near-radius-m", "0.5"]):
        with pytest.raises(SystemExit):
            main(["--bundle", str(tmp_path), "--cache", str(tmp_path), *bad, str(image)])
    err = capsys.readouterr().err
    assert "near_lat must be a latitude" in err and "--near-radius-m needs --near" in err
    assert "positive number" in err and "near_radius_m must be a finite number of metres >= 1" in err


def test_edge_locate_precision_flag_reaches_the_backend(tiny_bundle: Path, sjer_cache: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``--precision fp16`` asks for FP16 graphs: the FP32-only bundle has none: a clear error (exit 2)."""
    assert main(["--bundle", str(tiny_bundle), "--cache", str(sjer_cache), "--precision", "fp16", "x.png"]) == 2
    assert "no fp16 ONNX" in capsys.readouterr().err


@pytest.mark.parametrize("flags, temporal", [([], False), (["--sequence"], True)])
def test_edge_locate_locates_each_image_on_its_own_unless_told_they_are_a_sequence(
        flags: list[str], temporal: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Unrelated images must not narrow each other's search (the temporal prior cost the SJER report queries 12.5
    points of R@1); frames of one flight may (``--sequence``), as in the onboard service."""
    import edge_runtime.locate_cli as cli

    seen: list[LocatorConfig] = []

    def fake_open(bundle: Path, cache: Path, config: LocatorConfig) -> None:
        seen.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(cli.Locator, "open", staticmethod(fake_open))
    assert main(["--bundle", str(tmp_path), "--cache", str(tmp_path), str(tmp_path / "a.png"), *flags]) == 2
    assert "stop here" in capsys.readouterr().err
    assert len(seen) == 1 and seen[0].temporal_prior is temporal
    assert LocatorConfig().temporal_prior  # the service's default: a live camera is a sequence


def test_edge_locate_viz_draws_fixes_and_no_fixes_but_not_unreadable_files(
        tiny_bundle: Path, sjer_cache: Path, data_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with GeoRaster(data_dir / "sjer" / "2017" / "SJER_002.tif") as raster:
        image, _ = raster.read_rgb()
    good = tmp_path / "query.png"
    cv2.imwrite(str(good), cv2.cvtColor(image[40:340, 60:360], cv2.COLOR_RGB2BGR))
    blank = tmp_path / "blank.png"  # no texture at all: never a fix
    cv2.imwrite(str(blank), np.full((300, 400, 3), 128, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8garbage")
    viz = tmp_path / "viz"
    main(["--bundle", str(tiny_bundle), "--cache", str(sjer_cache), "--json", "--viz", str(viz), str(good),
          str(blank), str(broken)])
    lines = {Path(x["image"]).stem: x for x in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert lines["blank"]["ok"] is False
    assert sorted(p.name for p in viz.iterdir()) == ["blank.png", "query.png"]  # no picture of an unreadable file
    for stem in ("blank", "query"):
        picture = cv2.imread(str(viz / f"{stem}.png"))
        assert picture is not None and picture.shape[1] >= 512 and picture.shape[0] >= 384  # frame at 512 px
    # the no-fix picture shows the frame (left) and is titled with the reason (yellow text on the top-left)
    picture = cv2.cvtColor(cv2.imread(str(viz / "blank.png")), cv2.COLOR_BGR2RGB)
    assert (picture[:30, :200] == (255, 255, 0)).all(axis=2).sum() > 50
    assert (picture[100:384, :512] == 128).all(axis=2).mean() > 0.8  # the grey frame, under any drawn matches


def test_cache_from_another_bundle_is_refused(tiny_bundle: Path, sjer_cache: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other_bundle"
    shutil.copytree(tiny_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["bundle_id"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="bundle"):
        Locator.open(other, sjer_cache, LocatorConfig(verify=False))


def test_locator_rejects_non_images(tiny_bundle: Path, sjer_cache: Path) -> None:
    locator = Locator.open(tiny_bundle, sjer_cache)
    with pytest.raises(LocatorError, match="uint8"):
        locator.locate(np.zeros((100, 100), np.float32))
    with pytest.raises(LocatorError, match="too small"):
        locator.locate(np.zeros((10, 10, 3), np.uint8))
    result = locator.locate(np.zeros((300, 300, 3), np.uint8))  # featureless: no fix, with a reason
    assert not result.ok and result.reason and result.lat is None


def test_calibrated_pose_path_recovers_a_known_camera(data_dir: Path) -> None:
    """The locator's 6-DoF step (calibration.geometry, IPPE on map inliers) recovers a known camera pose."""
    import pyproj
    import rasterio

    from calibration.camera_info import CameraInfo
    from calibration.geometry import CameraPose, project_to_image
    from edge_runtime.map_cache import MapGeoref

    with rasterio.open(data_dir / "sjer" / "2018" / "SJER_009.tif") as ds:
        georef = MapGeoref(ds.width, ds.height, tuple(ds.transform)[:6], ds.crs.to_wkt(), ds.crs.to_epsg(), 0.1)
    centre = georef.pixels_to_world(np.array([[200.0, 200.0]]))[0]
    camera = CameraInfo(1600, 900, np.array([[1400.0, 0, 799.5], [0, 1400.0, 449.5], [0, 0, 1]]), np.zeros(5))
    truth = CameraPose.from_ypr(np.array([centre[0] + 3.0, centre[1] - 2.0, 40.0]), 37.0, 4.0, -2.0)
    rng = np.random.default_rng(0)
    ground_px = rng.uniform(20, 380, (300, 2))
    ground = np.column_stack([georef.pixels_to_world(ground_px), np.zeros(300)])
    image = project_to_image(ground, truth, camera)
    inside = np.all((image >= 0) & (image < [1600, 900]), axis=1)
    assert inside.sum() > 50

    class Entry:  # the two attributes _camera_pose reads from a CachedMap
        def __init__(self, g: MapGeoref) -> None:
            self.georef = g

    found = Locator._camera_pose(image[inside], ground_px[inside], Entry(georef), camera)
    assert found is not None
    pose, camera_px = found
    assert np.linalg.norm(georef.pixels_to_world(camera_px[None])[0] - truth.position[:2]) < 0.01
    # solved in metres on the ground and headings from true north: UTM's point scale and meridian convergence there
    lon, lat = georef.pixels_to_lonlat(np.array([[200.0, 200.0]]))[0]
    factors = pyproj.Proj(georef.crs_wkt).get_factors(lon, lat)
    assert abs(pose.altitude_agl_m - 40.0 / factors.meridional_scale) < 0.002
    expected = (37.0 + factors.meridian_convergence, 4.0, -2.0)  # about -1.65 deg at SJER (UTM 11N, 2.7 deg west)
    assert np.allclose(pose.pose.ypr_deg, expected, atol=0.02)


@pytest.mark.parametrize("crs, origin, step", [
    ("EPSG:4326", (-91.99, 46.84), (2e-6, 2e-6)),  # lon/lat degrees: a pixel is 0.15 x 0.22 m at Brighton Beach
    ("EPSG:3857", (-10240700.0, 5915000.0), (0.3, 0.3)),  # Web Mercator metres: 0.2 m on the ground there
])
def test_a_fix_on_a_map_in_degrees_or_web_mercator_puts_the_camera_metres_not_grid_units_away(
        tiny_bundle: Path, sjer_cache: Path, crs: str, origin: tuple[float, float],
        step: tuple[float, float]) -> None:
    """The pose step works in metres on the ground whatever the map's CRS: the camera's offset from the ground point
    under its principal point (gimbal 1 degree off nadir at 40 m: 0.70 m) lands 0.70 m away on the ground along the
    fit's true heading, which is the geodesic bearing of the frame's top. Before, metres were added to degrees
    (a camera kilometres away) and headings ignored cos(latitude)."""
    from dataclasses import dataclass, field

    from pyproj import CRS, Geod

    from calibration.camera_info import CameraInfo
    from edge_runtime.map_cache import MapGeoref
    from edge_runtime.numerics.geometry import project_points

    georef = MapGeoref(2000, 2000, (step[0], 0.0, origin[0], 0.0, -step[1], origin[1]), CRS(crs).to_wkt(),
                       CRS(crs).to_epsg(), 0.2)

    @dataclass
    class Entry:  # what _pose reads from a CachedMap
        georef: MapGeoref
        base_id: str = "elsewhere"
        map_id: str = "elsewhere"
        scale: float = 1.0
        to_base_px: np.ndarray = field(default_factory=lambda: np.eye(3))

    loc = Locator.open(tiny_bundle, sjer_cache, LocatorConfig())
    angle = np.radians(30.0)  # frame px -> map px: turned 30 degrees, 0.8 map px per frame px
    H = np.array([[0.8 * np.cos(angle), -0.8 * np.sin(angle), 900.0],
                  [0.8 * np.sin(angle), 0.8 * np.cos(angle), 1000.0], [0.0, 0.0, 1.0]])
    in_f = np.array([[10.0, 10.0], [390.0, 20.0], [380.0, 290.0], [20.0, 280.0], [200.0, 150.0]])
    camera = CameraInfo(400, 300, np.array([[300.0, 0, 199.5], [0, 300.0, 149.5], [0, 0, 1]]), np.zeros(5))
    result = loc._pose(np.zeros((300, 400, 3), np.uint8), H, in_f, project_points(H, in_f), Entry(georef),
                       {"score": 0.5}, Priors(roll_deg=0.0, pitch_deg=1.0), camera, None, {}, {})
    assert result.ok, result.reason
    geod = Geod(ellps="WGS84")
    ends = georef.pixels_to_lonlat(project_points(H, np.array([[199.5, 149.5], [199.5, 148.5]])))
    bearing = geod.inv(ends[0, 0], ends[0, 1], ends[1, 0], ends[1, 1])[0] % 360.0
    assert result.heading_deg == pytest.approx(bearing, abs=0.01)
    p = project_points(H, np.array([[199.5, 149.5]]))[0]
    steps = georef.pixels_to_lonlat(p + np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    dx, dy = (geod.inv(*steps[0], *steps[k])[2] for k in (1, 2))
    assert result.altitude_agl_m == pytest.approx(0.8 * np.sqrt(dx * dy) * 300.0, rel=1e-3)  # 0.8 map px per frame px
    azimuth, _, offset = geod.inv(*ends[0], result.lon, result.lat)  # principal point = frame centre here
    assert offset == pytest.approx(result.altitude_agl_m * np.tan(np.radians(1.0)), rel=1e-3)
    assert abs((azimuth - bearing + 180.0) % 360.0 - 180.0) == pytest.approx(180.0, abs=0.05)  # tilted forward


def test_edge_locate_reads_the_stored_pixels_whatever_the_exif_orientation(tmp_path: Path) -> None:
    """The EXIF/XMP priors (gimbal yaw, intrinsics) describe the stored pixels, and the service decodes those: an
    Orientation tag (6 = display turned 90 degrees) must not make edge-locate turn the frame under its priors."""
    import struct

    from edge_runtime.locate_cli import read_frame

    src = Path(__file__).resolve().parents[1] / "demo_data" / "brighton" / "frames" / "DJI_0033.JPG"
    data = bytearray(src.read_bytes())
    tiff = 12  # APP1 "Exif\0\0" header, then the TIFF header
    endian = "<" if data[tiff:tiff + 2] == b"II" else ">"
    ifd = tiff + struct.unpack(endian + "I", data[tiff + 4:tiff + 8])[0]
    entries = struct.unpack(endian + "H", data[ifd:ifd + 2])[0]
    tagged = False
    for k in range(entries):
        at = ifd + 2 + 12 * k
        if struct.unpack(endian + "H", data[at:at + 2])[0] == 0x0112:  # Orientation, SHORT
            data[at + 8:at + 10] = struct.pack(endian + "H", 6)
            tagged = True
    assert tagged
    turned = tmp_path / "DJI_0033_orientation6.jpg"
    turned.write_bytes(bytes(data))
    stored = read_frame(src)
    assert cv2.imread(str(turned)).shape[:2] == (stored.shape[1], stored.shape[0])  # OpenCV alone turns it
    np.testing.assert_array_equal(read_frame(turned), stored)


def test_the_locator_rectifies_a_distorted_frame_to_square_pixels() -> None:
    """``getOptimalNewCameraMatrix`` gives the rectified image fx' != fy' (0.951 for OpenCV's sample lens, what
    ``edge-calibrate`` writes as P); the matcher fits one scale, so the locator rectifies to a square-pixel pinhole at
    P's principal point: a square on the ground stays a square. A fisheye (equidistant) camera is rectified even with
    all coefficients 0, since f-theta is not a pinhole."""
    from calibration.camera_info import CameraInfo
    from calibration.geometry import undistort_image, undistortion_maps
    from edge_runtime.locator import frame_camera, needs_undistortion, rectified_for_matching

    w, h = 640, 480
    K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])
    D = np.array([-0.28, 0.07, 0.0, 0.0, 0.0])
    ideal = np.zeros((h, w), np.uint8)
    ideal[180:300, 260:380] = 255  # a 120 x 120 px square seen by the distortion-free K
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1).reshape(-1, 2)
    seen = cv2.undistortPoints(grid[:, None], K, D, P=K).reshape(h, w, 2).astype(np.float32)
    raw = cv2.remap(ideal, seen[..., 0], seen[..., 1], cv2.INTER_LINEAR)  # what the lens records
    P = np.array([[476.0, 0.0, 318.0, 0.0], [0.0, 500.6, 240.0, 0.0], [0.0, 0.0, 1.0, 0.0]])  # fx' / fy' = 0.951
    camera = CameraInfo(w, h, K, D, "plumb_bob", None, P, "sample")

    def aspect(image: np.ndarray) -> float:
        ys, xs = np.nonzero(image > 127)
        return float(np.ptp(xs) + 1) / float(np.ptp(ys) + 1)

    assert aspect(undistort_image(raw, camera)) == pytest.approx(0.951, abs=0.015)  # P as written: squashed
    assert aspect(undistort_image(raw, rectified_for_matching(camera))) == pytest.approx(1.0, abs=0.015)
    pinhole = frame_camera(camera)
    assert pinhole.fx == pinhole.fy == pytest.approx(np.sqrt(476.0 * 500.6))
    assert (pinhole.cx, pinhole.cy) == (318.0, 240.0) and not np.any(pinhole.D)
    fisheye = CameraInfo(w, h, K, np.zeros(4), "equidistant")
    assert needs_undistortion(fisheye) and not needs_undistortion(CameraInfo(w, h, K, np.zeros(5)))
    assert undistortion_maps(rectified_for_matching(fisheye)).map1.shape[:2] == (h, w)


def test_unique_map_cells_keep_one_feature_per_map_cell_from_the_most_central_tile() -> None:
    """Overlapping tiles (stride 3 cells, tile 4 cells): every map cell appears once, with the feature of the tile
    where it lies farthest from the tile border; cells invalid in every tile are dropped."""
    cell, g, stride_cells = 8, 4, 3
    tile = g * cell
    origins = np.array([[x * stride_cells * cell, y * stride_cells * cell] for y in range(2) for x in range(2)])
    t, n = len(origins), g * g
    feats = np.zeros((t, n, 3), np.float32)
    valid = np.ones((t, n), bool)
    for k, (x0, y0) in enumerate(origins):
        for j in range(n):
            u, v = x0 // cell + j % g, y0 // cell + j // g
            feats[k, j] = (u, v, k)  # global cell and the tile it came from
    valid[3, n - 1] = False  # the bottom-right map cell exists only in tile 3: invalid there, so nowhere
    cells = unique_map_cells(feats, valid, origins, tile, cell)
    uv = cells.features[:, :2].astype(int)
    assert len({tuple(p) for p in uv}) == len(uv) == 7 * 7 - 1  # 7 x 7 map cells, one dropped
    assert np.allclose(cells.centres_px, uv * cell + (cell - 1) / 2.0)
    for (u, v), k in zip(uv, cells.features[:, 2].astype(int), strict=True):
        x0, y0 = origins[k] // cell
        lu, lv = u - x0, v - y0
        chosen = max(abs(lu - 1.5), abs(lv - 1.5))
        for k2, (a0, b0) in enumerate(origins // cell):
            if 0 <= u - a0 < g and 0 <= v - b0 < g and valid[k2, (v - b0) * g + (u - a0)]:
                assert chosen <= max(abs(u - a0 - 1.5), abs(v - b0 - 1.5))  # no other tile holds it more centrally
    with pytest.raises(ValueError, match="disagree"):
        unique_map_cells(feats[:, :4], valid, origins, tile, cell)


def test_maps_of_nearly_equal_gsd_share_one_query_scale() -> None:
    """Dates of one area differ by a few centimetres of GSD: they share one encode, a 2x different map does not."""
    from types import SimpleNamespace

    gsds = {"a": 0.5000, "b": 0.5004, "c": 0.4990, "d": 0.25}
    fake = object.__new__(Locator)
    fake.cells = dict.fromkeys(gsds)
    fake.cache = SimpleNamespace(map=lambda m: SimpleNamespace(georef=SimpleNamespace(gsd_m=gsds[m]), base_id=m,
                                                               overview=1, scale=1.0))
    fake.query_size, fake.config = 512, LocatorConfig()
    plans = fake.query_plans((900, 1600), Priors(frame_gsd_m=0.05), None)
    assert [sorted(p.map_ids) for p in plans] == [["d"], ["a", "b", "c"]]
    assert plans[1].content_px == pytest.approx(1.6 * 1600 * 0.05 / 0.5, rel=0.01)
    assert plans[1].expected_px["c"] == pytest.approx(1600 * 0.05 / 0.499)


def _fake_result(ok: bool, inliers: int, tag: str) -> LocateResult:
    if ok:
        return LocateResult(ok=True, map_id=tag, lat=1.0, lon=2.0, inliers=inliers,
                            footprint_px=np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float))
    return LocateResult.failure(f"too few inliers ({inliers})", map_id=tag, inliers=inliers)


@pytest.mark.parametrize(("outcomes", "chosen", "verified"), [
    ([(False, 10), (True, 40), (False, 90)], "h1", 2),  # stops at the first accepted, even if a later one has more
    ([(True, 25), (True, 90)], "h0", 1),  # a clear frame costs one fine stage
    ([(False, 5), (False, 19), (False, 19)], "h1", 3),  # no fix: the failure with the most inliers, first on a tie
])
def test_verify_stops_at_the_first_accepted_hypothesis(outcomes: list[tuple[bool, int]], chosen: str,
                                                       verified: int) -> None:
    from edge_runtime.locator import Hypothesis, PreparedQuery, QueryPlan

    fake = object.__new__(Locator)
    calls: list[str] = []

    def fine_stage(frame, prep, enc, cand, *args):  # stands in for the real fine stage
        calls.append(cand["map_id"])
        ok, inliers = outcomes[int(cand["map_id"][1:])]
        return _fake_result(ok, inliers, cand["map_id"])

    fake._fine_stage = fine_stage
    fake.config = LocatorConfig(roi_cache_size=0)  # verify's per-frame region store
    prep = PreparedQuery(np.zeros((8, 8, 3), np.uint8), np.ones(1, bool), np.eye(3), 1.0)
    plan = QueryPlan(8.0, {}, None)
    hyps = [Hypothesis({"map_id": f"h{i}", "score": 1.0 - 0.1 * i}, prep, {}, plan, 90.0 * i)
            for i in range(len(outcomes))]
    result, records = fake.verify(np.zeros((8, 8, 3), np.uint8), hyps, Priors(), None, {}, {})
    assert result.map_id == chosen and result.ok == any(ok for ok, _ in outcomes)
    assert calls == [f"h{i}" for i in range(verified)] and len(records) == verified
    assert [r["inliers"] for r in records] == [n for _, n in outcomes[:verified]]
    assert [r["rotation_deg"] for r in records] == [90.0 * i for i in range(verified)]
    assert records[-1]["ok"] == result.ok and (records[-1]["footprint_px"] is not None) == result.ok


class _PriorLocator(Locator):
    """A locator whose retrieval and fine stage are scripted: near the last fix retrieval finds ``near``, everywhere
    ``everywhere``; ``accept`` lists the places the fine stage accepts."""

    def __init__(self, near: list[str], everywhere: list[str], accept: set[str]) -> None:
        from types import SimpleNamespace

        self.config, self.camera, self.query_size, self.cell, self.tile_size = LocatorConfig(), None, 64, 64, 64
        self.cache = SimpleNamespace(map=lambda m: SimpleNamespace(base_id=m))
        self.near, self.everywhere, self.accept, self.verified_places = near, everywhere, accept, []
        self.last_fix = ("m", np.array([10.0, 10.0]))
        self.retrievals_everywhere = 0

    @property
    def backend_status(self) -> dict:
        return {"backend": "fake", "precision": "fp32", "degraded": False}

    def query_plans(self, frame_shape, priors, camera):
        from edge_runtime.locator import QueryPlan

        return [QueryPlan(64.0, {}, None)]

    def _encode(self, graph, image, cell_valid):
        return {"coarse": np.zeros((1, 1, 4), np.float32)}

    def search_area(self, priors=None):
        return {"m": np.ones(1, bool)} if self.last_fix is not None else None

    def retrieve(self, coarse_q, valid_q, area=None, map_ids=None):
        places = self.near if area is not None else self.everywhere
        self.retrievals_everywhere += area is None
        return [{"map_id": p.split("@")[0], "score": 0.5 - 0.01 * i, "matches": 9, "scale": 1.0, "angle": 0.0,
                 "pts_q": np.zeros((4, 2)), "pts_r": np.full((4, 2), 100.0 * int(p.split("@")[1]))}
                for i, p in enumerate(places)]

    def verify(self, frame, hypotheses, priors, camera, lat, common):
        tags = [f"{h.candidate['map_id']}@{int(h.candidate['pts_r'][0, 0] / 100)}" for h in hypotheses]
        self.verified_places += tags
        for tag in tags:
            if tag in self.accept:
                result = _fake_result(True, 80, tag.split("@")[0])
                result.extra["centre_px"] = [1.0, 2.0]
                return result, [{"place": t} for t in tags[: tags.index(tag) + 1]]
        return _fake_result(False, 30, tags[0].split("@")[0]), [{"place": t} for t in tags]


@pytest.mark.parametrize(("near", "everywhere", "accept", "verified", "ok"), [
    (["m@1"], ["m@1", "n@0"], {"m@1"}, ["m@1"], True),  # found near the last fix: no wider search
    (["m@1"], ["m@1", "n@0"], {"n@0"}, ["m@1", "n@0"], True),  # not there: every map, the place verified skipped
    (["m@1"], ["m@1", "m@9"], set(), ["m@1", "m@9"], False),  # the same map far away is another place
    (["m@1"], ["m@1"], set(), ["m@1"], False),  # nothing new anywhere: no second fine stage
])
def test_a_frame_not_found_near_the_last_fix_is_searched_everywhere(near: list[str], everywhere: list[str],
                                                                   accept: set[str], verified: list[str],
                                                                   ok: bool) -> None:
    """The temporal prior may narrow the first search, never lose a frame a search of every map finds (it had held
    the SJER report queries, searched near the previous plot's fix, 12.5 points of R@1 down)."""
    loc = _PriorLocator(near, everywhere, accept)
    result = loc.locate(np.zeros((64, 64, 3), np.uint8), Priors(yaw_deg=0.0))
    assert loc.verified_places == verified and result.ok is ok
    assert result.extra["widened"] is (len(verified) > 1)
    assert (loc.last_fix is not None) is ok  # a lost fix widens the next frame's search from the start


def test_a_canvas_already_searched_everywhere_is_not_retrieved_again() -> None:
    """Nothing near the last fix: the first search widens at once, and the second search (nothing was accepted)
    reuses that retrieval instead of repeating it."""
    loc = _PriorLocator([], ["n@0"], set())
    result = loc.locate(np.zeros((64, 64, 3), np.uint8), Priors(yaw_deg=0.0))
    assert not result.ok and result.extra["widened"] and loc.verified_places == ["n@0"]
    assert loc.retrievals_everywhere == 1


def test_verify_candidates_must_be_positive() -> None:
    with pytest.raises(ValueError, match="verify_candidates"):
        LocatorConfig(verify_candidates=0)


@pytest.mark.parametrize("bad", [-0.5, 45.0, float("nan")])
def test_attitude_std_must_be_a_small_angle(bad: float) -> None:
    with pytest.raises(ValueError, match="attitude_std_deg"):
        LocatorConfig(attitude_std_deg=bad)


def _fit(inliers: int | None) -> tuple:
    """A stand-in fit with ``inliers`` inliers (None: no geometry), as ``Locator._match_and_fit`` returns it."""
    from edge_runtime.numerics.geometry import HomographyResult

    if inliers is None:
        return np.zeros((0, 2)), np.zeros((0, 2)), HomographyResult(None, np.zeros(0, bool), "too few"), "homography"
    mask = np.zeros(300, bool)
    mask[:inliers] = True
    return np.zeros((300, 2)), np.zeros((300, 2)), HomographyResult(np.eye(3), mask, None), "similarity"


@pytest.mark.parametrize(("first", "refined", "accepted", "reason"), [
    (50, 70, "refined", ""),                              # the refined fit meets its rule
    (130, 40, "first", ""),                               # a strong first fit is the second chance
    (130, "refinement: no coarse match", "first", ""),    # ... also when the refinement found nothing
    (100, 40, None, "too few inliers (40 < 64; first pass 100 < 120)"),
    (100, "refinement: the first fit's footprint misses the region of interest", None,
     "refinement: the first fit's footprint misses the region of interest; first pass 100 < 120"),
    (100, None, None, "refinement: no homography: too few; first pass 100 < 120"),
    (12, "too few inliers to refine (12 < 16)", None, "too few inliers to refine (12 < 16); first pass 12 < 120"),
])
def test_acceptance_takes_the_refined_fit_else_a_strong_first_fit(first, refined, accepted, reason) -> None:
    fake = object.__new__(Locator)
    fake.min_inliers, fake.min_first_pass_inliers = 64, 120
    f = _fit(first)
    r = refined if isinstance(refined, str) else _fit(refined)
    fit, why = fake._accept(f, r)
    assert why == reason
    assert fit is {"refined": r, "first": f, None: None}[accepted]


def test_without_refinement_the_one_fit_meets_the_first_pass_rule() -> None:
    from edge_runtime.locator import first_pass_rule

    # the rule for a first fit: the config's, else the bundle's, else min_inliers when not refining, else never
    assert first_pass_rule(LocatorConfig(min_first_pass_inliers=50), {"min_first_pass_inliers": 124}, 30) == 50
    assert first_pass_rule(LocatorConfig(), {"min_first_pass_inliers": 124}, 30) == 124
    assert first_pass_rule(LocatorConfig(refine=False), {}, 30) == 30
    assert first_pass_rule(LocatorConfig(), {}, 30) is None
    fake = object.__new__(Locator)
    fake.min_inliers, fake.min_first_pass_inliers = 30, 50
    f = _fit(40)
    assert fake._accept(f, f) == (None, "too few inliers (40 < 50)")  # one fit: the first-pass rule judges it
    assert fake._accept(_fit(60), _fit(60))[0] is not None
    fake.min_first_pass_inliers = None  # refining without a calibrated second chance: a first fit never suffices
    assert fake._accept(_fit(500), _fit(20))[0] is None
    with pytest.raises(ValueError, match="min_first_pass_inliers"):
        LocatorConfig(min_first_pass_inliers=3)


def test_region_cache_reuses_the_nearest_kept_region_of_the_same_map_and_evicts_the_oldest() -> None:
    from edge_runtime.region_cache import EncodedRegion, RegionCache, nearest_origin

    assert nearest_origin([(0, 0), (100, 0), (60, 10)], (70, 0), 16) == 2
    assert nearest_origin([(0, 0), (100, 0)], (50, 0), 16) is None  # 50 px from both: encode afresh
    assert nearest_origin([(0, 0), (0, 16)], (0, 8), 8) == 0  # a tie goes to the earlier region

    def region(map_id: str, x: int, y: int) -> EncodedRegion:
        return EncodedRegion(map_id, (x, y), np.ones(4, bool), {"coarse": np.full((1, 4, 2), x, np.float32)})

    cache = RegionCache(capacity=2, reuse_px=32)
    cache.put(region("a", 0, 0))
    cache.put(region("b", 0, 0))
    assert cache.find("a", (20, -30)).origin == (0, 0)  # within 32 px (Chebyshev) on the same map
    assert cache.find("a", (20, 0), reuse_px=16) is None  # the footprint leaves only 16 px of margin
    assert cache.find("a", (20, 0), reuse_px=64).origin == (0, 0)  # never more than the cache's own limit...
    assert cache.find("a", (40, 0), reuse_px=64) is None  # ...of 32 px
    assert cache.find("a", (40, 0)) is None and cache.find("c", (0, 0)) is None
    cache.put(region("a", 512, 0))  # over capacity: "b" was used least recently ("a" was just found)
    assert cache.find("b", (0, 0)) is None and cache.find("a", (0, 0)) is not None
    assert cache.stats() == {"hits": 3, "misses": 5, "regions": 2}
    off = RegionCache(capacity=0, reuse_px=32)
    off.put(region("a", 0, 0))
    assert len(off) == 0 and off.find("a", (0, 0)) is None
    with pytest.raises(ValueError):
        RegionCache(capacity=-1, reuse_px=0)


def test_a_repeated_frame_reuses_the_encoded_region_and_gets_the_same_fit(
        tiny_bundle: Path, sjer_cache: Path, data_dir: Path) -> None:
    with GeoRaster(data_dir / "sjer" / "2018" / "SJER_002.tif") as raster:
        image, _ = raster.read_rgb()
    frame = np.ascontiguousarray(image[40:340, 60:360])
    opened = {"min_confidence": 0.0, "min_inliers": 4, "min_first_pass_inliers": 4, "verify_candidates": 1}
    kept = Locator.open(tiny_bundle, sjer_cache, LocatorConfig(**opened))
    first, again = kept.locate(frame), kept.locate(frame)
    assert first.extra["verified"], "the opened gates verify the best hypothesis"
    assert "encode_roi" in first.latency_ms and "read_roi" in first.latency_ms
    assert "encode_roi" not in again.latency_ms and "read_roi" not in again.latency_ms
    assert kept.regions.stats()["hits"] >= 1
    assert again.ok == first.ok and again.inliers == first.inliers
    if first.ok:
        np.testing.assert_allclose(again.footprint_px, first.footprint_px, atol=1e-6)
    fresh = Locator.open(tiny_bundle, sjer_cache, LocatorConfig(**opened, roi_cache_size=0))
    fresh.locate(frame)
    assert "encode_roi" in fresh.locate(frame).latency_ms and len(fresh.regions) == 0
    with pytest.raises(ValueError, match="roi_cache_size"):
        LocatorConfig(roi_cache_size=-1)


@pytest.fixture(scope="module")
def drone_frame() -> np.ndarray:
    """A bundled real DJI frame (1600 x 900) as RGB."""
    path = Path(__file__).resolve().parent.parent / "demo_data" / "brighton" / "frames" / "DJI_0033.JPG"
    return read_frame(path)


def test_frame_pyramid_shrinks_from_the_nearest_halving_like_a_direct_area_shrink(drone_frame: np.ndarray) -> None:
    from edge_runtime.frame_pyramid import FramePyramid, as_pyramid

    pyramid = FramePyramid(drone_frame)
    assert as_pyramid(pyramid) is pyramid and pyramid.shape == drone_frame.shape
    for width, height in ((512, 288), (300, 169), (1000, 562)):
        direct = cv2.resize(drone_frame, (width, height), interpolation=cv2.INTER_AREA).astype(np.float64)
        shrunk = pyramid.resized(width, height)
        assert shrunk.shape == (height, width, 3) and shrunk.dtype == np.uint8
        assert np.abs(shrunk - direct).mean() < 3.0  # area averages compose: a few grey levels apart at most
    assert pyramid.levels == 3  # 1600 -> 800 -> 400 px, made once and reused (300 px comes from the 400 px level)
    assert pyramid.resized(1600, 900) is drone_frame
    bigger = pyramid.resized(2000, 1125)
    np.testing.assert_array_equal(bigger, cv2.resize(drone_frame, (2000, 1125), interpolation=cv2.INTER_LINEAR))
    # the canvases of one frame: the same geometry from the pyramid as from the frame
    for rotation in (0.0, 37.0):
        plain, shared = (prepare_query(f, 512, 480.0, rotation_deg=rotation) for f in (drone_frame, pyramid))
        np.testing.assert_allclose(shared.frame_to_canvas, plain.frame_to_canvas, atol=1e-9)
        np.testing.assert_array_equal(shared.cell_valid, plain.cell_valid)
        assert np.abs(shared.canvas.astype(np.float64) - plain.canvas).mean() < 3.0
