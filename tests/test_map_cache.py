"""The torch-free cache reader: georeference round trips in three CRSs, ROI reads, hash verification, sources.

Rasters: Brighton Beach 0.10 m with alpha (EPSG:32615), SJER 0.10 m (EPSG:32611), NAIP 5 m (EPSG:26914).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import xy as rio_xy
from rasterio.warp import transform as warp_transform

from edge_runtime.bundle import open_bundle
from edge_runtime.map_cache import (
    MapCacheError,
    RasterSource,
    compute_read_spec,
    open_map_cache,
)
from maps.build import BuildConfig, build_cache
from topicgeo.data.raster import GeoRaster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tiny_bundle, map_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("map_cache") / "cache"
    build_cache(tiny_bundle, map_paths, out, BuildConfig(progress=False))
    return out


def _probe_points(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    fixed = [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1], [-0.5, -0.5], [width / 2, height / 3]]
    return np.concatenate([np.array(fixed, dtype=np.float64), rng.uniform(-10, [width + 10, height + 10], (20, 2))])


def test_pixel_world_lonlat_round_trips_in_three_crss(cache_dir, map_paths):
    cache = open_map_cache(cache_dir)
    epsgs = []
    for path in map_paths:
        geo = cache.map(path.stem).georef
        with rasterio.open(path) as ds:
            crs, transform, res = ds.crs, ds.transform, ds.res
        epsgs.append(geo.epsg)
        assert geo.epsg == crs.to_epsg()
        assert geo.gsd_m == pytest.approx(res[0], rel=1e-9)
        pts = _probe_points(geo.width, geo.height)
        world = geo.pixels_to_world(pts)
        # rasterio's own pixel-centre convention: xy(row, col, offset="center") is the centre of pixel (col, row)
        xs, ys = rio_xy(transform, pts[:, 1], pts[:, 0], offset="center")
        np.testing.assert_allclose(world, np.stack([xs, ys], axis=1), atol=1e-6)
        np.testing.assert_allclose(geo.world_to_pixels(world), pts, atol=1e-7)
        lonlat = geo.pixels_to_lonlat(pts)
        lon, lat = warp_transform(crs, "EPSG:4326", world[:, 0], world[:, 1])  # GDAL, independent of pyproj
        np.testing.assert_allclose(lonlat, np.stack([lon, lat], axis=1), atol=1e-9)
        np.testing.assert_allclose(geo.lonlat_to_pixels(lonlat), pts, atol=1e-5)
        one = geo.pixels_to_lonlat(pts[:1])
        assert one.shape == (1, 2)
        np.testing.assert_allclose(one, lonlat[:1], atol=1e-12)
    assert len(set(epsgs)) == 3


def test_read_roi_matches_georaster_for_rasters_without_alpha(cache_dir, map_paths):
    cache = open_map_cache(cache_dir)
    windows = [(0, 0, 64, 48), (-20, -10, 100, 80), (200, 180, 120, 120), (390, 250, 50, 20), (1000, 0, 8, 8)]
    for path in map_paths[1:]:
        raster = GeoRaster(path)
        for win in windows:
            rgb, valid = cache.read_roi(path.stem, *win)
            ref_rgb, ref_valid = raster.read_window(*win)
            np.testing.assert_array_equal(rgb, ref_rgb)
            np.testing.assert_array_equal(valid, ref_valid)
    # SJER has real nodata (255 in all bands) pixels, NAIP none: both paths are exercised
    _, valid = cache.read_roi(map_paths[1].stem, 0, 0, 400, 400)
    assert 0 < (~valid).sum() < valid.size


def test_uint16_stretch_matches_georaster(map_paths, tmp_path):
    """A 16-bit raster (real NAIP values x 37 + 100) goes through the same percentile stretch as GeoRaster."""
    with rasterio.open(map_paths[2]) as ds:
        raw = ds.read().astype(np.uint16) * 37 + 100
        profile = {**ds.profile, "dtype": "uint16", "nodata": None}
    path = tmp_path / "naip16.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(raw)
    spec = compute_read_spec(path)
    ref = GeoRaster(path)
    np.testing.assert_allclose(np.asarray(spec.stretch), ref.stretch_limits(), rtol=0, atol=0)
    rgb, valid = RasterSource(path, spec).read(-5, 30, 200, 100)
    ref_rgb, ref_valid = ref.read_window(-5, 30, 200, 100)
    np.testing.assert_array_equal(rgb, ref_rgb)
    np.testing.assert_array_equal(valid, ref_valid)
    assert rgb[valid].std() > 20  # stretched to a real 8-bit range


def test_read_roi_honours_the_alpha_band(cache_dir, map_paths):
    cache = open_map_cache(cache_dir)
    rgb, valid = cache.read_roi(map_paths[0].stem, 100, 50, 300, 200)
    with rasterio.open(map_paths[0]) as ds:
        raw = ds.read(window=rasterio.windows.Window(100, 50, 300, 200))
    np.testing.assert_array_equal(valid, raw[3] > 0)
    np.testing.assert_array_equal(rgb, np.where((raw[3] > 0)[..., None], raw[:3].transpose(1, 2, 0), 0))
    assert 0.1 < valid.mean() < 0.9


def test_arrays_are_read_only_memory_maps_and_cells_have_map_coordinates(cache_dir, map_paths):
    cache = open_map_cache(cache_dir)
    entry = cache.map(map_paths[0].stem)
    for arr in (entry.coarse, entry.cell_valid, entry.origins):
        assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert entry.coarse.shape == (4, 64, cache.coarse_dim) and entry.coarse.dtype == np.float16
    centres = entry.cell_centers_px(3)
    np.testing.assert_allclose(centres[0], [448 + 31.5, 448 + 31.5])
    np.testing.assert_allclose(centres[9], [448 + 64 + 31.5, 448 + 64 + 31.5])  # row-major: index 9 = (u 1, v 1)
    assert list(cache.iter_tiles()) == [(map_paths[0].stem, 0), (map_paths[0].stem, 1), (map_paths[0].stem, 2),
                                        (map_paths[1].stem, 0), (map_paths[2].stem, 0)]
    with pytest.raises(MapCacheError, match="has no map 'nowhere'"):
        cache.map("nowhere")


@pytest.mark.parametrize("name", ["coarse", "cell_valid", "origins"])
def test_verification_catches_one_flipped_byte(cache_dir, map_paths, tmp_path, name):
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    rel = f"maps/{map_paths[0].stem}/{name}.npy"
    data = bytearray((copy / rel).read_bytes())
    data[-3] ^= 0x10  # inside the array data, after the header
    (copy / rel).write_bytes(bytes(data))
    with pytest.raises(MapCacheError, match=rf"cache file .*{rel} is corrupt or modified"):
        open_map_cache(copy)
    assert open_map_cache(copy, verify=False).map(map_paths[0].stem).n_tiles == 4


def test_missing_or_damaged_cache_files(cache_dir, map_paths, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    rel = f"maps/{map_paths[1].stem}/cell_valid.npy"
    (copy / rel).unlink()
    with pytest.raises(MapCacheError, match=f"cache file missing: .*{rel}"):
        open_map_cache(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema"] = "something-else/9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MapCacheError, match="schema 'something-else/9'"):
        open_map_cache(copy)
    with pytest.raises(MapCacheError, match="not a map cache"):
        open_map_cache(tmp_path)


def test_source_raster_resolution_and_checks(tiny_bundle, map_paths, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    local = Path(shutil.copy(map_paths[1], src / map_paths[1].name))
    out = tmp_path / "cache"
    build_cache(tiny_bundle, [local], out, BuildConfig(progress=False))
    moved = tmp_path / "moved"
    os.replace(src, moved)
    cache = open_map_cache(out, bundle=open_bundle(tiny_bundle))
    with pytest.raises(MapCacheError, match=r"source raster of map 'SJER_002' not found"):
        cache.read_roi("SJER_002", 0, 0, 8, 8)
    cache = open_map_cache(out, source_dirs=[moved])
    rgb, _ = cache.read_roi("SJER_002", 10, 20, 30, 40)
    np.testing.assert_array_equal(rgb, GeoRaster(map_paths[1]).read_window(10, 20, 30, 40)[0])
    cache.map("SJER_002").verify_source()
    with open(moved / map_paths[1].name, "r+b") as fh:  # same size, different content
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(MapCacheError, match=r"SJER_002\.tif of map 'SJER_002' changed"):
        cache.map("SJER_002").verify_source()
    with open(moved / map_paths[1].name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(MapCacheError, match=r"has \d+ bytes, the cache was built from"):
        open_map_cache(out, source_dirs=[moved]).read_roi("SJER_002", 0, 0, 8, 8)


def test_reader_does_not_import_torch():
    code = ("import sys, edge_runtime.map_cache, edge_runtime.backends; "
            "sys.exit(1 if 'torch' in sys.modules or 'topicgeo' in sys.modules else 0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=60).returncode == 0
