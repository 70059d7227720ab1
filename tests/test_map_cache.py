"""The torch-free cache reader: georeference round trips in three CRSs, ROI reads, hash verification, sources.

Rasters: Brighton Beach 0.10 m with alpha (EPSG:32615), SJER 0.10 m (EPSG:32611), NAIP 5 m (EPSG:26914).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyproj
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


def test_a_source_raster_of_the_wrong_size_fails_every_read_not_only_the_first(tmp_path: Path) -> None:
    """A map file swapped for one of another size (same byte count: a transposed uncompressed raster) is refused on
    every read: the service carries on after the first error, so a second read must not use the wrong pixels."""
    from rasterio.transform import from_origin

    from edge_runtime.map_cache import CachedMap, MapGeoref, RasterReadSpec, TileGrid

    path = tmp_path / "plot.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=128, count=3, dtype="uint8", crs="EPSG:32615",
                       transform=from_origin(500000, 4000000, 0.5, 0.5)) as ds:
        ds.write(np.full((3, 128, 64), 100, np.uint8))
    georef = MapGeoref(128, 64, (0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0), None, None, 0.5, "gsd")  # built 128 x 64
    entry = CachedMap("plot", {"path": str(path), "name": path.name, "size": path.stat().st_size, "sha256": "-"},
                      georef, RasterReadSpec(bands=(1, 2, 3)), TileGrid(128, 128, 64, 1, 1), None, None,
                      np.zeros((1, 2), np.int64), {})
    for _ in range(2):
        with pytest.raises(MapCacheError, match=r"is 64x128, the cache says 128x64"):
            entry.read_roi(0, 0, 128, 64)


def test_gsd_is_metres_on_the_ground_also_in_web_mercator_and_degrees() -> None:
    """A Web Mercator grid metre is cos(latitude) metres on the ground (0.63 m at 50.8 degrees, Brighton UK); a degree
    of longitude shrinks with cos(latitude) too. The GSD is the ground's, from pyproj's point scale (independent of
    the geodesics the cache computes), and the local metric's columns point east and north."""
    from pyproj import CRS

    from edge_runtime.map_cache import ground_sample_distance, metres_per_pixel

    lon, lat = -0.14, 50.83
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    transform = (0.3, 0.0, x - 150.0, 0.0, -0.3, y + 150.0)  # 1000 x 1000 px of 0.3 grid m centred there
    wkt = CRS("EPSG:3857").to_wkt()
    # Web Mercator projects latitudes with the sphere's formula (dy = a sec(lat) dlat, dx = a dlon) while the ground is
    # the WGS84 ellipsoid: east-west metres are N cos(lat) dlon, north-south M dlat (N, M: its radii of curvature)
    e2 = 0.00669437999014  # WGS84 first eccentricity squared
    w = 1.0 - e2 * math.sin(math.radians(lat)) ** 2
    east = 0.3 * math.cos(math.radians(lat)) / math.sqrt(w)  # ground metres per 0.3 grid m eastwards
    north = 0.3 * math.cos(math.radians(lat)) * (1.0 - e2) / w**1.5
    assert ground_sample_distance(transform, wkt, 1000, 1000) == pytest.approx(math.sqrt(east * north), rel=1e-5)
    assert math.sqrt(east * north) == pytest.approx(0.3 * math.cos(math.radians(lat)), rel=0.001)  # about 0.19 m
    jac = metres_per_pixel(transform, wkt, (499.5, 499.5))
    np.testing.assert_allclose(jac, [[east, 0.0], [0.0, -north]], rtol=1e-5, atol=1e-7)
    degrees = (1e-5, 0.0, lon, 0.0, -1e-5, lat)  # 1e-5 degrees: 0.70 m east-west, 1.11 m north-south there
    jac = metres_per_pixel(degrees, CRS("EPSG:4326").to_wkt(), (0.0, 0.0))
    assert jac[0, 0] == pytest.approx(0.704, abs=0.002) and jac[1, 1] == pytest.approx(-1.113, abs=0.002)


def test_pixel_world_lonlat_round_trips_in_three_crss(cache_dir, map_paths):
    cache = open_map_cache(cache_dir)
    epsgs = []
    for path in map_paths:
        geo = cache.map(path.stem).georef
        with rasterio.open(path) as ds:
            crs, transform, res = ds.crs, ds.transform, ds.res
        epsgs.append(geo.epsg)
        assert geo.epsg == crs.to_epsg()
        centre = rio_xy(transform, (geo.height - 1) / 2.0, (geo.width - 1) / 2.0, offset="center")
        lon, lat = warp_transform(crs, "EPSG:4326", [centre[0]], [centre[1]])
        factors = pyproj.Proj(crs.to_wkt()).get_factors(lon[0], lat[0])  # the CRS's point scale there
        assert geo.gsd_m == pytest.approx(res[0] / math.sqrt(factors.areal_scale), rel=1e-6)  # metres on the ground
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


def test_a_cache_is_refused_by_a_bundle_whose_encoder_graph_changed_under_the_same_id(tiny_bundle, cache_dir):
    """The bundle id names the checkpoint and export settings; a re-export (another exporter, another onnx) keeps
    it but may change the encoder's bytes, so the cache records the encoder graph's sha256 and the vehicle refuses a
    mismatch. A cache from before the record is checked by the id (and a logged manifest difference) only."""
    from edge_runtime.map_cache import check_bundle, encoder_sha256, read_cache_manifest

    bundle = open_bundle(tiny_bundle)
    manifest = read_cache_manifest(cache_dir)
    assert manifest["bundle"]["encoder_sha256"] == encoder_sha256(bundle) is not None
    assert manifest["bundle"]["encoder_backend"] == "onnxruntime:cpu"
    check_bundle(manifest, bundle)
    changed = json.loads(json.dumps(manifest))
    changed["bundle"]["encoder_sha256"] = "0" * 64
    with pytest.raises(MapCacheError, match=r"another encoder_tile graph.*re-exported"):
        check_bundle(changed, bundle)
    del changed["bundle"]["encoder_sha256"]
    check_bundle(changed, bundle)


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
