"""GeoRaster reads, radiometry and pixel<->world geometry on real NAIP / SJER crops (tests/data)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from topicgeo.data.raster import GeoRaster, RasterConfig, apply_homography, pixel_map_between


@pytest.fixture(scope="module")
def naip(data_dir):
    return data_dir / "naip" / "naip_nd_20150926_x340_y330.tif", data_dir / "naip" / "naip_nd_20160816_x340_y330.tif"


def _write(path, array, transform, crs, nodata=None):
    profile = {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": array.dtype,
        "transform": transform,
        "crs": crs,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def test_uint8_rgb_is_the_first_three_bands_unchanged(naip):
    with rasterio.open(naip[0]) as ds:
        raw = ds.read()
    r = GeoRaster(naip[0])
    img, valid = r.read_rgb()
    assert r.count == 4 and not r.needs_stretch
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, raw[:3].transpose(1, 2, 0))
    assert not np.all(raw[:3] == 0, axis=0).any() and valid.all()


def test_isolated_nodata_valued_pixels_are_data_but_nodata_regions_are_not(data_dir, tmp_path):
    """SJER declares nodata = 255, yet hundreds of isolated pixels are saturated white: those are real data."""
    path = data_dir / "sjer" / "2017" / "SJER_009.tif"
    with rasterio.open(path) as ds:
        raw, t, crs, nodata = ds.read(), ds.transform, ds.crs, ds.nodata
    white = np.all(raw == 255, axis=0)
    assert nodata == 255 and white.sum() > 100
    img, valid = GeoRaster(path).read_rgb()
    assert valid.all() and (img[white] == 255).all()
    strict_img, strict = GeoRaster(path, RasterConfig(nodata_min_size=1)).read_rgb()  # GDAL per-pixel rule
    np.testing.assert_array_equal(strict, ~white)
    assert (strict_img[white] == 0).all()
    # A real nodata region (a 30x20 block, plus the left raster edge strip) is invalid, whatever the window.
    holed = raw.copy()
    holed[:, 200:220, 100:130] = 255
    holed[:, :, :4] = 255
    r = GeoRaster(_write(tmp_path / "holed.tif", holed, t, crs, nodata=255))
    full, fvalid = r.read_rgb()
    region = np.zeros((400, 400), dtype=bool)
    region[200:220, 100:130] = True
    region[:, :4] = True
    np.testing.assert_array_equal(fvalid, ~region)
    for x0, y0 in ((95, 195), (-3, 10), (120, 210), (2, 300)):
        win, wvalid = r.read_window(x0, y0, 40, 33)
        cx0, cy0 = max(0, x0), max(0, y0)
        np.testing.assert_array_equal(wvalid[cy0 - y0 :, cx0 - x0 :], fvalid[cy0 : y0 + 33, cx0 : x0 + 40])
        np.testing.assert_array_equal(win[cy0 - y0 :, cx0 - x0 :], full[cy0 : y0 + 33, cx0 : x0 + 40])


def test_pixel_centre_convention_matches_rasterio_xy(naip):
    r = GeoRaster(naip[0])
    rng = np.random.default_rng(0)
    cols, rows = rng.integers(0, 256, 50), rng.integers(0, 256, 50)
    with rasterio.open(naip[0]) as ds:
        xs, ys = ds.xy(rows, cols)  # rasterio: world coordinates of pixel centres
    world = r.pixels_to_world(np.stack([cols, rows], axis=1).astype(float))
    np.testing.assert_allclose(world, np.stack([xs, ys], axis=1), atol=1e-6)
    np.testing.assert_allclose(r.world_to_pixels(world), np.stack([cols, rows], axis=1), atol=1e-9)


def test_pixel_map_between_dates_goes_through_world_coordinates(naip):
    H = pixel_map_between(naip[0], naip[1])
    pts = np.random.default_rng(1).uniform(-10, 260, size=(40, 2))
    with rasterio.open(naip[0]) as a, rasterio.open(naip[1]) as b:
        world = [a.transform @ (x + 0.5, y + 0.5) for x, y in pts]
        expected = np.array([~b.transform @ w for w in world]) - 0.5
    got = apply_homography(H, pts)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # The grid origins differ by metres: the map is a non-trivial translation (more than 0.1 px) and nothing else.
    assert np.abs(H[:2, 2]).max() > 0.1
    np.testing.assert_allclose(H[:2, :2], np.eye(2), atol=1e-12)
    np.testing.assert_allclose(pixel_map_between(naip[0], naip[0]), np.eye(3), atol=1e-12)


def test_pixel_map_between_crs_reprojects_and_refuses_non_affine(naip, tmp_path):
    with rasterio.open(naip[0]) as ds:
        raw, t, crs = ds.read(), ds.transform, ds.crs
    # Same pixels, georeferenced in the neighbouring UTM zone (EPSG:32615) through three projected corners.
    xs, ys = warp_transform(crs, "EPSG:32615", [t.c, t.c + 256 * t.a, t.c], [t.f, t.f, t.f + 256 * t.e])
    t2 = rasterio.Affine((xs[1] - xs[0]) / 256, (xs[2] - xs[0]) / 256, xs[0], (ys[1] - ys[0]) / 256,
                         (ys[2] - ys[0]) / 256, ys[0])
    other = _write(tmp_path / "utm15.tif", raw, t2, "EPSG:32615")
    H = pixel_map_between(naip[0], other)
    pts = np.random.default_rng(2).uniform(0, 255, size=(30, 2))
    wa = GeoRaster(naip[0]).pixels_to_world(pts)
    wx, wy = warp_transform(crs, "EPSG:32615", wa[:, 0].tolist(), wa[:, 1].tolist())
    expected = GeoRaster(other).world_to_pixels(np.stack([wx, wy], axis=1))
    np.testing.assert_allclose(apply_homography(H, pts), expected, atol=0.05)
    # Nearly the same grid: the map is close to the identity (within a small fraction of a pixel).
    assert np.abs(apply_homography(H, pts) - pts).max() < 0.5
    with pytest.raises(ValueError, match="not affine"):
        pixel_map_between(naip[0], other, max_residual_px=1e-12)


def test_uint16_is_stretched_once_per_raster_and_nodata_masked(naip, tmp_path):
    with rasterio.open(naip[0]) as ds:
        raw, t, crs = ds.read(), ds.transform, ds.crs
    raw16 = raw.astype(np.uint16) * 40 + 300
    raw16[:, 100:140, 50:90] = 0  # a nodata hole in every band
    path = _write(tmp_path / "u16.tif", raw16, t, crs, nodata=0)
    r = GeoRaster(path)
    assert r.needs_stretch and r.dtype == "uint16"
    img, valid = r.read_rgb()
    assert img.dtype == np.uint8
    hole = np.zeros((256, 256), dtype=bool)
    hole[100:140, 50:90] = True
    np.testing.assert_array_equal(valid, ~hole)
    assert (img[hole] == 0).all()
    for band in range(3):
        a = img[..., band][valid].astype(float)
        b = raw[band][valid].astype(float)
        assert np.corrcoef(a, b)[0, 1] > 0.99
        assert np.percentile(a, 0.5) <= 3 and np.percentile(a, 99.5) >= 252
    # The stretch is per raster: a window read agrees with the same pixels of the full read.
    win, wvalid = r.read_window(30, 170, 64, 50)
    np.testing.assert_array_equal(win, img[170:220, 30:94])
    np.testing.assert_array_equal(wvalid, valid[170:220, 30:94])


def test_single_band_becomes_grey_rgb(naip, tmp_path):
    with rasterio.open(naip[0]) as ds:
        band, t, crs = ds.read(2), ds.transform, ds.crs
    path = _write(tmp_path / "pan.tif", (band.astype(np.uint16) * 16)[None], t, crs)
    img, _ = GeoRaster(path).read_rgb()
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert np.corrcoef(img[..., 0].ravel(), band.ravel())[0, 1] > 0.99


def test_boundless_window_marks_outside_invalid(data_dir):
    r = GeoRaster(data_dir / "sjer" / "2018" / "SJER_009.tif")
    full, fvalid = r.read_rgb()
    clone = pickle.loads(pickle.dumps(r))  # data-loader workers receive pickled copies; the handle is re-opened
    np.testing.assert_array_equal(clone.read_rgb()[0], full)
    win, valid = r.read_window(-20, 380, 64, 64)
    assert win.shape == (64, 64, 3)
    assert not valid[:, :20].any() and not valid[20:, :].any()
    np.testing.assert_array_equal(win[:20, 20:], full[380:, :44])
    np.testing.assert_array_equal(valid[:20, 20:], fvalid[380:, :44])
    assert (win[~valid] == 0).all()


def test_bad_inputs_are_clear_errors(naip, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        GeoRaster(tmp_path / "missing.tif")
    with pytest.raises(ValueError, match="4 bands"):
        GeoRaster(naip[0], RasterConfig(bands=(1, 2, 5)))
    with pytest.raises(ValueError, match="percentiles"):
        RasterConfig(percentiles=(50.0, 10.0))
    plain = _write(tmp_path / "plain.tif", np.zeros((3, 8, 8), np.uint8), from_origin(0, 8, 1, 1), None)
    with pytest.raises(ValueError, match="no CRS"):
        pixel_map_between(plain, naip[0])
