"""Map-cache overview levels, undeclared alpha bands, and the locator's use of both (real Brighton imagery).

A drone frame at 40 m AGL covers ~680 px of a 0.1 m orthophoto: more than a 512 px query canvas can show at the
network's scale ratio. ``edge-maps build`` therefore also caches decimated overview levels of large maps, and the
locator picks, per map, the level where the frame fits (``overview_for_frame``); results are reported on the map's
own pixels. The orthophoto rasterised from the flight's point cloud stores its coverage in an untagged 0/255 band:
the cache reads it as the mask (``undeclared_alpha_band``), so its holes are no data instead of black ground.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from calibration.geometry import rotation_from_ypr
from edge_runtime.locator import (
    Locator,
    LocatorConfig,
    camera_position_from_attitude,
    overview_for_frame,
)
from edge_runtime.map_cache import (
    MapCacheError,
    RasterReadSpec,
    RasterSource,
    compute_read_spec,
    open_map_cache,
    overview_reduce,
    zoom_expand,
    zoom_matrix,
)
from edge_runtime.types import Priors
from maps.build import BuildConfig, build_cache


def test_overview_reduce_averages_the_valid_pixels_of_each_block() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    valid = np.zeros((4, 4), bool)
    image[0, 0], valid[0, 0] = (10, 20, 30), True  # block (0, 0): one valid pixel of four
    image[0, 1], valid[0, 1] = (11, 21, 31), True
    image[2:, 2:] = 200  # block (1, 1): all valid, one odd value
    image[3, 3] = 201
    valid[2:, 2:] = True
    image[2:, :2] = 99  # block (1, 0): pixels without validity do not count
    out, ok = overview_reduce(image, valid, 2)
    assert ok.tolist() == [[True, False], [False, True]]
    assert out[0, 0].tolist() == [11, 21, 31]  # rounded mean of (10, 11), (20, 21), (30, 31)
    assert out[1, 1].tolist() == [200, 200, 200]  # (3 * 200 + 201) / 4 = 200.25
    assert out[1, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="divisible"):
        overview_reduce(image[:3], valid[:3], 2)


def test_overview_reads_and_georeference_agree_with_the_native_raster(map_paths: list[Path]) -> None:
    path = map_paths[0]  # Brighton 0.1 m, 700 x 600, alpha band with real holes
    native_spec = compute_read_spec(path)
    native = RasterSource(path, native_spec)
    level = RasterSource(path, RasterReadSpec(**{**native_spec.__dict__, "overview": 4}))
    assert (level.width, level.height) == (175, 150)
    image, valid = level.read(-3, 10, 64, 48)  # partly outside the raster
    full, full_valid = native.read(-12, 40, 256, 192)
    expected, expected_valid = overview_reduce(full, full_valid, 4)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(valid, expected_valid)
    assert not valid[:, :3].any() and valid.any()

    from maps.build import _georef

    with rasterio.open(path) as ds:
        georef = _georef(path, ds, BuildConfig())
    coarse = georef.overview(4)
    assert (coarse.width, coarse.height) == (175, 150) and coarse.gsd_m == pytest.approx(4 * georef.gsd_m)
    f = 4.0
    to_base = np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1]])
    uv = np.array([[0.0, 0.0], [10.0, 7.0], [174.0, 149.0]])
    base = (to_base @ np.c_[uv, np.ones(3)].T).T[:, :2]
    np.testing.assert_allclose(coarse.pixels_to_world(uv), georef.pixels_to_world(base), atol=1e-6)


def test_zoom_level_reads_and_georeference_agree_with_the_native_raster(map_paths: list[Path]) -> None:
    """A zoom-in level's window is the native raster magnified (any window, partly outside included, cut from the
    magnified whole), and its georeference and ``to_base_px`` put its pixels on the same ground."""
    path = map_paths[0]  # Brighton 0.1 m, 700 x 600, alpha band with real holes
    native_spec = compute_read_spec(path)
    native = RasterSource(path, native_spec)
    level = RasterSource(path, replace(native_spec, zoom=2))
    assert (level.width, level.height) == (1400, 1200)
    whole, whole_valid = zoom_expand(*native.read(0, 0, 700, 600), 2)
    for x0, y0, w, h in [(301, 117, 64, 48), (0, 0, 33, 17), (1370, 1180, 30, 20)]:
        image, valid = level.read(x0, y0, w, h)
        cut, cut_valid = whole[y0:y0 + h, x0:x0 + w], whole_valid[y0:y0 + h, x0:x0 + w]
        np.testing.assert_array_equal(image[valid], cut[valid])
        assert (image[~valid] == 0).all() and not (valid & ~cut_valid).any()
        # strict validity: the raster's outermost zoomed pixel interpolates outside it (the whole's border clamps)
        inner = np.s_[1:-1, 1:-1] if (x0, y0) == (0, 0) or x0 + w == 1400 else np.s_[:, :]
        np.testing.assert_array_equal(valid[inner], cut_valid[inner])
    image, valid = level.read(-5, 10, 16, 8)
    assert not valid[:, :6].any() and valid[:, 7:].any()
    with pytest.raises(MapCacheError, match="zoom"):
        replace(native_spec, zoom=2, overview=2)

    from maps.build import _georef

    with rasterio.open(path) as ds:
        georef = _georef(path, ds, BuildConfig())
    fine = georef.zoom(2)
    assert (fine.width, fine.height) == (1400, 1200) and fine.gsd_m == pytest.approx(georef.gsd_m / 2)
    uv = np.array([[0.0, 0.0], [10.0, 7.0], [1399.0, 1199.0]])
    base = (np.linalg.inv(zoom_matrix(2)) @ np.c_[uv, np.ones(3)].T).T[:, :2]
    np.testing.assert_allclose(fine.pixels_to_world(uv), georef.pixels_to_world(base), atol=1e-6)


def _write(path: Path, bands: np.ndarray, interp: list[ColorInterp], like: Path) -> Path:
    with rasterio.open(like) as src:
        profile = src.profile.copy()
        transform = src.transform
    profile.update(count=bands.shape[0], height=bands.shape[1], width=bands.shape[2], transform=transform,
                   photometric="MINISBLACK", nodata=None)
    profile.pop("alpha", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
        dst.colorinterp = interp
    return path


def test_an_untagged_coverage_band_is_read_as_the_mask(map_paths: list[Path], tmp_path: Path) -> None:
    src = map_paths[0]
    with rasterio.open(src) as ds:
        data = ds.read()
    rgb, coverage = data[:3], data[3]
    assert set(np.unique(coverage).tolist()) == {0, 255} and (coverage == 0).mean() > 0.05
    und = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    untagged = _write(tmp_path / "untagged.tif", data, und, src)
    with rasterio.open(untagged) as ds:
        assert ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.all_valid]  # GDAL sees no mask
    spec = compute_read_spec(untagged)
    assert spec.alpha_band == 4 and not spec.use_mask
    image, valid = RasterSource(untagged, spec).read(0, 0, 700, 600)
    np.testing.assert_array_equal(valid, coverage > 0)
    assert not image[~valid].any()
    assert compute_read_spec(untagged, alpha_band=None).alpha_band is None
    assert RasterSource(untagged, compute_read_spec(untagged, alpha_band=None)).read(0, 0, 700, 600)[1].all()

    # a fourth band with many values (NAIP's near infrared) is data, not a mask
    nir = np.concatenate([rgb, rgb[1:2]], axis=0)
    assert compute_read_spec(_write(tmp_path / "rgbn.tif", nir, und, src)).alpha_band is None
    # a tagged alpha band is GDAL's mask already
    assert compute_read_spec(src).alpha_band is None and compute_read_spec(src).use_mask
    with pytest.raises(MapCacheError, match="alpha band 7"):
        compute_read_spec(untagged, alpha_band=7)


@pytest.fixture(scope="module")
def mosaic(map_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Brighton test crop repeated 2 x 2 (1400 x 1200 px): large enough for a 2x overview spanning a tile."""
    src = map_paths[0]
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile.copy()
    tiled = np.tile(data, (1, 2, 2))
    profile.update(width=tiled.shape[2], height=tiled.shape[1])
    out = tmp_path_factory.mktemp("mosaic") / "brighton_mosaic.tif"
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(tiled)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return out


@pytest.fixture(scope="module")
def overview_cache(tiny_bundle: Path, mosaic: Path, map_paths: list[Path],
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ovcache") / "cache"
    build_cache(tiny_bundle, [mosaic, map_paths[1]], out, BuildConfig(progress=False))
    return out


def test_overview_levels_are_built_while_they_span_a_tile(overview_cache: Path, tiny_bundle: Path) -> None:
    cache = open_map_cache(overview_cache)
    assert list(cache.maps) == ["brighton_mosaic", "SJER_002"]  # the maps themselves, as before
    assert list(cache.overviews) == ["brighton_mosaic@2x"]  # 700 x 600; @4x (350 px) and the SJER plot's are not
    level = cache.map("brighton_mosaic@2x")
    assert (level.base_id, level.overview) == ("brighton_mosaic", 2)
    assert (level.georef.width, level.georef.height) == (700, 600)
    assert level.georef.gsd_m == pytest.approx(2 * cache.map("brighton_mosaic").georef.gsd_m)
    assert cache.map("SJER_002").base_id == "SJER_002" and cache.map("SJER_002").overview == 1
    assert level.cell_valid.any() and cache.n_tiles == sum(e.n_tiles for e in cache.entries())
    roi, valid = level.read_roi(0, 0, 700, 600)  # the level's grid: the mosaic decimated by 2
    assert roi.shape == (600, 700, 3) and 0.05 < (~valid).mean() < 0.95
    none = overview_cache.parent / "none"
    build_cache(tiny_bundle, [Path(cache.map("brighton_mosaic").source["path"])], none,
                BuildConfig(progress=False, overviews=()))
    assert open_map_cache(none).overviews == {}
    with pytest.raises(ValueError, match="overviews"):
        BuildConfig(overviews=(4, 2))


@pytest.fixture(scope="module")
def zoom_cache(tiny_bundle: Path, map_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoomcache") / "cache"
    build_cache(tiny_bundle, [map_paths[1]], out, BuildConfig(progress=False, zooms=(2,)))
    return out


def test_zoom_levels_are_cached_and_searched_without_a_scale_prior(zoom_cache: Path, tiny_bundle: Path) -> None:
    out = zoom_cache
    cache = open_map_cache(out)
    assert list(cache.maps) == ["SJER_002"] and list(cache.overviews) == ["SJER_002@zoom2"]
    base, level = cache.map("SJER_002"), cache.map("SJER_002@zoom2")
    assert (level.base_id, level.overview, level.scale) == ("SJER_002", 1, 0.5)
    assert (level.georef.width, level.georef.height) == (2 * base.georef.width, 2 * base.georef.height)
    np.testing.assert_allclose(level.to_base_px, np.linalg.inv(zoom_matrix(2)))
    roi, valid = level.read_roi(100, 60, 256, 192)
    expected, _ = zoom_expand(*base.read_roi(49, 29, 130, 98), 2)  # one native pixel of margin on each side
    np.testing.assert_array_equal(roi, expected[2:194, 2:258])
    assert valid.all() and level.n_tiles > base.n_tiles
    loc = Locator.open(tiny_bundle, out, LocatorConfig())
    assert all(p.map_ids is None for p in loc.query_plans((512, 512), Priors(), None))  # every entry, both levels
    # with a scale prior a frame whose footprint is small on the map goes to the zoom-in level
    gsd = base.georef.gsd_m
    plans = loc.query_plans((256, 256), Priors(frame_gsd_m=gsd / 2), None)  # 128 map px: 256 on the level
    assert [set(p.map_ids) for p in plans] == [{"SJER_002@zoom2"}]
    assert plans[0].expected_px["SJER_002@zoom2"] == pytest.approx(256)
    small = zoom_cache.parent / "small"  # a map whose zoom-in level would exceed the pixel budget gets none
    build_cache(tiny_bundle, [Path(base.source["path"])], small,
                BuildConfig(progress=False, zooms=(2,), zoom_max_pixels=4 * base.georef.width * base.georef.height - 1))
    assert open_map_cache(small).overviews == {}
    with pytest.raises(ValueError, match="zooms"):
        BuildConfig(zooms=(1,))


def test_an_overview_of_a_missing_map_is_a_clear_error(overview_cache: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "cache"
    shutil.copytree(overview_cache, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["maps"] = [m for m in manifest["maps"] if m["id"] != "brighton_mosaic"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MapCacheError, match="brighton_mosaic@2x"):
        open_map_cache(broken, verify=False)


def test_overview_for_frame_picks_the_finest_level_where_the_frame_fits() -> None:
    # Brighton: 4000 px frame, 1.7 cm/px -> 680 px of the 0.1 m map; the 512 px canvas shows it at 0.75 there
    assert overview_for_frame(680, [1, 2, 4], 512, 1.6, 1.0) == 2  # 340 px at 2x: ratio 1.5
    assert overview_for_frame(300, [1, 2, 4], 512, 1.6, 1.0) == 1  # fits the map's own pixels
    assert overview_for_frame(5000, [1, 2, 4], 512, 1.6, 1.0) == 4  # none reaches 1.0: the coarsest
    assert overview_for_frame(680, [1], 512, 1.6, 1.0) == 1
    assert overview_for_frame(680, [1, 2, 4], 512, 1.6, 1.6) == 4  # 170 px at 4x: 1.6
    assert overview_for_frame(144, [0.5, 1, 2], 512, 1.6, 1.0) == 0.5  # 0.5 m map: 288 px on a 2x zoom-in level
    assert overview_for_frame(400, [0.5, 1, 2], 512, 1.6, 1.0) == 1  # 800 px zoomed would not fit the canvas


def test_query_plans_use_a_level_with_a_scale_prior_and_the_maps_without(overview_cache: Path,
                                                                        tiny_bundle: Path) -> None:
    loc = Locator.open(tiny_bundle, overview_cache, LocatorConfig())
    gsd = loc.cache.map("brighton_mosaic").georef.gsd_m
    # a frame 1000 px wide covering 500 map px (0.05 m/px): the 256 px canvas shows it at 0.51 on the map -> 2x
    plans = loc.query_plans((500, 1000), Priors(frame_gsd_m=gsd / 2), None)
    entries = set().union(*(p.map_ids for p in plans))
    assert entries == {"brighton_mosaic@2x", "SJER_002"}
    plan = next(p for p in plans if "brighton_mosaic@2x" in p.map_ids)
    assert plan.expected_px["brighton_mosaic@2x"] == pytest.approx(250)
    no_prior = loc.query_plans((500, 1000), Priors(), None)
    assert all(p.map_ids == frozenset({"brighton_mosaic", "SJER_002"}) for p in no_prior)
    # the temporal prior (a fix in the map's own pixels) covers the level's cells around the same ground
    loc.last_fix = ("brighton_mosaic", np.array([1000.0, 900.0]))
    area = loc.search_area()
    assert set(area) == {"brighton_mosaic", "brighton_mosaic@2x"}
    near = loc.cells["brighton_mosaic@2x"].centres_px[area["brighton_mosaic@2x"]]
    assert np.all(np.linalg.norm(near * 2 + 0.5 - [1000.0, 900.0], axis=1)
                  <= LocatorConfig().prior_radius_m / gsd + 2 * loc.tile_size / 2 + 1)
    loc.config = replace(loc.config, temporal_prior=False)  # unrelated images (edge-locate without --sequence)
    assert loc.search_area() is None


@pytest.mark.parametrize("yaw, pitch, roll", [(0.0, 0.0, 0.0), (30.0, 8.0, 0.0), (200.0, -5.0, 12.0)])
def test_camera_position_from_attitude_inverts_the_optical_axis(yaw: float, pitch: float, roll: float) -> None:
    camera = np.array([500.0, 200.0, 40.0])  # east, north, up
    axis = rotation_from_ypr(yaw, pitch, roll) @ np.array([0.0, 0.0, 1.0])
    ground = camera + axis * (camera[2] / -axis[2])  # where the optical axis meets z = 0
    east, north = camera_position_from_attitude(ground[:2], camera[2], yaw, pitch, roll)
    assert (east, north) == pytest.approx((500.0, 200.0), abs=1e-9)
    tilt = np.arccos(np.cos(np.radians(roll)) * np.cos(np.radians(pitch)))  # off nadir (Z-Y-X Euler angles)
    assert np.hypot(*(ground[:2] - camera[:2])) == pytest.approx(40.0 * np.tan(tilt), abs=1e-9)
    with pytest.raises(ValueError, match="ground"):
        camera_position_from_attitude(ground[:2], 40.0, 0.0, 95.0, 0.0)


def test_a_fix_on_an_overview_level_is_reported_on_the_maps_own_pixels(overview_cache: Path,
                                                                       tiny_bundle: Path) -> None:
    from edge_runtime.numerics.geometry import footprint, project_points

    loc = Locator.open(tiny_bundle, overview_cache, LocatorConfig())
    level, base = loc.cache.map("brighton_mosaic@2x"), loc.cache.map("brighton_mosaic")
    frame = np.zeros((300, 400, 3), np.uint8)
    angle = np.radians(30.0)  # frame px -> level px: turned 30 degrees, 0.8 level px per frame px
    H = np.array([[0.8 * np.cos(angle), -0.8 * np.sin(angle), 250.0],
                  [0.8 * np.sin(angle), 0.8 * np.cos(angle), 180.0], [0.0, 0.0, 1.0]])
    in_f = np.array([[10.0, 10.0], [390.0, 20.0], [380.0, 290.0], [20.0, 280.0], [200.0, 150.0]])
    result = loc._pose(frame, H, in_f, project_points(H, in_f), level, {"score": 0.5}, Priors(), None, None,
                       {}, {})
    assert result.ok and result.map_id == "brighton_mosaic" and result.extra["map_entry"] == "brighton_mosaic@2x"
    np.testing.assert_allclose(result.footprint_px, project_points(level.to_base_px, footprint(H, 400, 300)))
    centre = np.asarray(result.extra["centre_px"])
    np.testing.assert_allclose(centre, project_points(level.to_base_px @ H, np.array([[199.5, 149.5]]))[0])
    lon, lat = base.georef.pixels_to_lonlat(centre[None])[0]  # the map's own georeference agrees
    assert (result.lat, result.lon) == pytest.approx((lat, lon), abs=1e-9)
    assert result.extra["map_px_per_frame_px"] == pytest.approx(1.6)  # base px per frame px
    np.testing.assert_allclose(result.extra["matches"][1], project_points(level.to_base_px @ H, in_f))


def test_a_fix_on_a_zoom_level_is_reported_on_the_maps_own_pixels(zoom_cache: Path, tiny_bundle: Path) -> None:
    from edge_runtime.numerics.geometry import footprint, project_points

    loc = Locator.open(tiny_bundle, zoom_cache, LocatorConfig())
    level, base = loc.cache.map("SJER_002@zoom2"), loc.cache.map("SJER_002")
    frame = np.zeros((300, 400, 3), np.uint8)
    H = np.array([[0.8, 0.0, 200.0], [0.0, 0.8, 150.0], [0.0, 0.0, 1.0]])  # frame px -> level px
    in_f = np.array([[10.0, 10.0], [390.0, 20.0], [380.0, 290.0], [20.0, 280.0], [200.0, 150.0]])
    result = loc._pose(frame, H, in_f, project_points(H, in_f), level, {"score": 0.5}, Priors(), None, None,
                       {}, {})
    assert result.ok and result.map_id == "SJER_002" and result.extra["map_entry"] == "SJER_002@zoom2"
    quad = footprint(H, 400, 300)
    np.testing.assert_allclose(result.footprint_px, (quad + 0.5) / 2.0 - 0.5)  # level px u -> base (u + 0.5) / 2 - 0.5
    centre = np.asarray(result.extra["centre_px"])
    lon, lat = base.georef.pixels_to_lonlat(centre[None])[0]
    assert (result.lat, result.lon) == pytest.approx((lat, lon), abs=1e-9)
    level_lon, level_lat = level.georef.pixels_to_lonlat(project_points(H, np.array([[199.5, 149.5]])))[0]
    assert (result.lat, result.lon) == pytest.approx((level_lat, level_lon), abs=1e-9)  # the level's georeference
    assert result.extra["map_px_per_frame_px"] == pytest.approx(0.4)  # base px per frame px


def test_edge_maps_options_for_overviews_and_alpha_bands() -> None:
    import argparse

    from maps.cli import _alpha, _parser, parse_factors

    assert parse_factors("2,4,8") == (2, 4, 8) and parse_factors("none") == () and parse_factors("") == ()
    args = _parser().parse_args(["build", "--bundle", "b", "--map", "m.tif", "--out", "o", "--zooms", "2"])
    assert (args.zooms, args.overviews) == ((2,), (2, 4, 8))
    assert _parser().parse_args(["build", "--bundle", "b", "--map", "m.tif", "--out", "o"]).zooms == ()
    assert _alpha("auto") == "auto" and _alpha("none") is None and _alpha("4") == 4
    for bad, parse in (("2,x", parse_factors), ("alpha", _alpha)):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_edge_locate_reads_the_gimbal_attitude_as_priors(data_dir: Path) -> None:
    from edge_runtime.locate_cli import frame_priors

    path = data_dir / "exif" / "DJI_0018_metadata_4000x2250.JPG"  # gimbal yaw 45.0, pitch -89.9, roll 0.0
    priors, _ = frame_priors(path, (2250, 4000), None, None, True, 6.17)
    assert priors.yaw_deg == pytest.approx(45.0) and priors.altitude_agl_m == pytest.approx(39.8)
    axis = rotation_from_ypr(priors.yaw_deg, priors.pitch_deg, priors.roll_deg) @ np.array([0.0, 0.0, 1.0])
    assert np.degrees(np.arccos(-axis[2])) == pytest.approx(0.1, abs=1e-6)  # looks 0.1 deg off nadir
    assert frame_priors(path, (2250, 4000), None, None, False, 6.17)[0].roll_deg is None


def test_edge_locate_gives_a_phantom3_frame_intrinsics_without_flags(data_dir: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The judged Brighton run is ``edge-locate IMAGE...`` with no sensor width: the Phantom 3 writes no calibrated
    focal length, so the approximate 35 mm equivalent must give the frame intrinsics (and with them the EXIF
    altitude's scale prior); refusing it leaves the altitude unused, which is logged as a warning."""
    from edge_runtime.locate_cli import frame_priors

    path = data_dir / "exif" / "DJI_0018_metadata_4000x2250.JPG"
    priors, camera = frame_priors(path, (1125, 2000), None, None, True)  # a frame read at half size
    assert camera is not None and camera.size == (2000, 1125)
    assert camera.fx == pytest.approx(20 / 36 * 4000 / 2) and priors.altitude_agl_m == pytest.approx(39.8)
    with caplog.at_level("WARNING", logger="edge_runtime.locate_cli"):
        priors, camera = frame_priors(path, (2250, 4000), None, None, True, fallback_35mm=False)
    assert camera is None and priors.altitude_agl_m == pytest.approx(39.8)
    assert "no altitude scale prior" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge_runtime.locate_cli"):  # a GSD prior needs no intrinsics
        frame_priors(path, (2250, 4000), None, 0.02, True, fallback_35mm=False)
    assert "no altitude scale prior" not in caplog.text


def test_edge_locate_and_the_service_read_the_same_exif_priors(data_dir: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from edge_runtime.locate_cli import frame_priors
    from edge_runtime.service.telemetry import priors_from_jpeg_file

    path = data_dir / "exif" / "DJI_0018_metadata_4000x2250.JPG"
    located, _ = frame_priors(path, (2250, 4000), None, None, True, 6.17, utc_offset_h=-5.0)
    served, _ = priors_from_jpeg_file(path, -5.0)
    assert located == served  # one reading of EXIF/XMP for the offline tool and the vehicle
    assert located.capture_time == served.capture_time and located.capture_time is not None
    assert frame_priors(path, (2250, 4000), None, None, True, 6.17)[0].capture_time == \
        pytest.approx(located.capture_time - 5 * 3600.0)  # DJI local time, 5 h behind UTC in Duluth's summer
    given, _ = frame_priors(path, (2250, 4000), 55.0, 0.02, True, 6.17)
    assert given.altitude_agl_m == 55.0 and given.frame_gsd_m == 0.02 and given.yaw_deg == located.yaw_deg
    data = path.read_bytes()
    at = data.index(b'RelativeAltitude="') + len(b'RelativeAltitude="')
    end = data.index(b'"', at)
    bad = tmp_path / "below_ground.JPG"  # the same frame, its relative altitude under the take-off point
    bad.write_bytes(data[:at] + b"-3.0".ljust(end - at, b"0") + data[end:])
    with caplog.at_level("WARNING"):
        dropped, camera = frame_priors(bad, (2250, 4000), None, None, True, 6.17)
    assert dropped.altitude_agl_m is None and dropped.yaw_deg == located.yaw_deg and camera is not None
    assert "altitude prior dropped" in caplog.text


def test_the_position_follows_the_attitude_prior_unless_it_looks_above_the_horizon(overview_cache: Path,
                                                                                   tiny_bundle: Path) -> None:
    from calibration.camera_info import CameraInfo
    from edge_runtime.numerics.geometry import project_points

    loc = Locator.open(tiny_bundle, overview_cache, LocatorConfig())
    level, base = loc.cache.map("brighton_mosaic@2x"), loc.cache.map("brighton_mosaic")
    camera = CameraInfo(400, 300, np.array([[300.0, 0, 190.0], [0, 300.0, 160.0], [0, 0, 1]]), np.zeros(5))
    H = np.array([[0.8, 0.0, 250.0], [0.0, 0.8, 180.0], [0.0, 0.0, 1.0]])  # north-up, 0.8 level px per frame px
    grid = np.stack(np.meshgrid(np.linspace(10, 390, 8), np.linspace(10, 290, 6)), axis=-1).reshape(-1, 2)

    def pose(pitch: float) -> object:
        return loc._pose(np.zeros((300, 400, 3), np.uint8), H, grid, project_points(H, grid), level,
                         {"score": 0.5}, Priors(roll_deg=0.0, pitch_deg=pitch), camera, None, {}, {})

    nadir = pose(0.0)  # straight down: the camera is above the principal point's ground point
    assert nadir.ok and nadir.extra["position"].startswith("camera centre (attitude prior")
    below = project_points(level.to_base_px @ H, np.array([[190.0, 160.0]]))
    lon, lat = base.georef.pixels_to_lonlat(below)[0]
    assert (nadir.lat, nadir.lon) == pytest.approx((lat, lon), abs=1e-9)
    assert nadir.attitude_deg == pytest.approx((0.0, 0.0, nadir.heading_deg))
    # The published std adds the attitude prior's error (2 degrees at the altitude the fit's scale implies) to the
    # fit's, so an autopilot does not take a ~0.1 m std for a position that a 2-degree tilt moves by metres.
    parts = nadir.extra["std_parts_m"]
    assert parts["attitude"] == pytest.approx(nadir.altitude_agl_m * math.tan(math.radians(2.0)), abs=1e-3)
    assert nadir.std_m[0] == pytest.approx(math.hypot(parts["fit"], parts["attitude"]), abs=1e-3)
    assert nadir.std_m[0] > 5 * parts["fit"]
    loc.config = replace(loc.config, attitude_std_deg=0.0)  # a perfectly known attitude: the fit's std alone
    assert pose(0.0).std_m[0] == pytest.approx(parts["fit"], abs=1e-3)
    loc.config = replace(loc.config, attitude_std_deg=2.0)
    # the benchmark's peers place the camera by the same pose step (benchmarks.peers.locator.camera_position)
    from benchmarks.peers.locator import camera_position

    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    e = level.georef.pixels_to_world(corners)
    pixel_to_world = np.array([[*(e[1] - e[0]), 0.0], [*(e[2] - e[0]), 0.0], [0.0, 0.0, 1.0]]).T
    pixel_to_world[:2, 2] = e[0]
    tilted = Priors(roll_deg=3.0, pitch_deg=-2.0)
    ours = loc._pose(np.zeros((300, 400, 3), np.uint8), H, grid, project_points(H, grid), level, {"score": 0.5},
                     tilted, camera, None, {}, {})
    theirs, how = camera_position(H, grid, level.georef.pixels_to_world(project_points(H, grid)), pixel_to_world,
                                  camera, tilted, (400, 300))
    assert how.startswith("attitude prior") and np.allclose(theirs, ours.map_xy, atol=1e-6)
    upward = pose(95.0)  # a prior looking above the horizon cannot place the camera: the matches decide
    assert upward.ok and not upward.extra["position"].startswith("camera centre (attitude prior")
