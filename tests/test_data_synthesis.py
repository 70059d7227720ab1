"""Query synthesis on real plots: exact homographies, filters, augmentation and the evaluation.md protocols."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from topicgeo.data.raster import GeoRaster, apply_homography, pixel_map_between
from topicgeo.data.synthesis import (
    NAIP_PROTOCOL,
    SJER_PROTOCOL,
    QuerySynthesisConfig,
    evaluation_queries,
    query_corners,
    synthesize_query,
    texture_score,
)

CLEAN = QuerySynthesisConfig(color_prob=0.0, noise_prob=0.0, max_invalid_fraction=1.0)


@pytest.fixture(scope="module")
def sjer_map(data_dir):
    return GeoRaster(data_dir / "sjer" / "2017" / "SJER_002.tif").read_rgb()


@pytest.fixture(scope="module")
def naip_paths(data_dir):
    return data_dir / "naip" / "naip_nd_20160816_x340_y330.tif", data_dir / "naip" / "naip_nd_20150926_x340_y330.tif"


def bilinear(image: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference float64 bilinear sampler (pixel centres at integers); ok = all four taps inside."""
    h, w = image.shape[:2]
    x0, y0 = np.floor(pts[:, 0]).astype(int), np.floor(pts[:, 1]).astype(int)
    fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
    x0, y0 = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
    a = image.astype(np.float64)
    out = (
        a[y0, x0] * ((1 - fx) * (1 - fy))[:, None]
        + a[y0, x0 + 1] * (fx * (1 - fy))[:, None]
        + a[y0 + 1, x0] * ((1 - fx) * fy)[:, None]
        + a[y0 + 1, x0 + 1] * (fx * fy)[:, None]
    )
    return out, ok


def test_quad_and_homography_agree_exactly(sjer_map):
    img, valid = sjer_map
    for seed in range(5):
        q = synthesize_query(img, np.random.default_rng(seed), CLEAN, valid)
        assert q.H_query_to_map.dtype == np.float64 and q.H_query_to_map.shape == (3, 3)
        err = np.abs(apply_homography(q.H_query_to_map, query_corners(512)) - q.quad_in_map).max()
        assert err < 1e-6
        back = apply_homography(np.linalg.inv(q.H_query_to_map), q.quad_in_map)
        assert np.abs(back - query_corners(512)).max() < 1e-6


def test_query_pixels_are_the_map_sampled_at_H(sjer_map):
    """Every query pixel equals the map bilinearly sampled at H(x, y); a half-pixel convention error would not."""
    img, valid = sjer_map
    ys, xs = np.mgrid[0:512, 0:512]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    for seed in (0, 1, 2):
        q = synthesize_query(img, np.random.default_rng(seed), CLEAN, valid)
        mapped = apply_homography(q.H_query_to_map, pts)
        ref, ok = bilinear(img, mapped)
        use = ok & q.valid.ravel()
        diff = np.abs(ref - q.image.reshape(-1, 3))[use]
        # OpenCV quantises sub-pixel positions to 1/32 px: a fraction of a grey level on average.
        assert diff.mean() < 0.5 and np.percentile(diff, 99) < 2.0
        shifted, ok2 = bilinear(img, mapped + 0.5)
        assert np.abs(shifted - q.image.reshape(-1, 3))[use & ok2].mean() > 4 * diff.mean()


def test_known_points_land_where_H_says(sjer_map):
    img, valid = sjer_map
    marked = img.copy()
    dots = np.array([[120, 140], [200, 200], [260, 150], [170, 260], [230, 250]], dtype=float)
    for x, y in dots.astype(int):
        marked[y - 1 : y + 2, x - 1 : x + 2] = (255, 0, 255)
    cfg = dataclasses.replace(CLEAN, side_fraction_range=(0.9, 0.95), corner_jitter=0.05)
    q = synthesize_query(marked, np.random.default_rng(7), cfg, valid)
    expected = apply_homography(np.linalg.inv(q.H_query_to_map), dots)
    magenta = (q.image[..., 0] > 200) & (q.image[..., 2] > 200) & (q.image[..., 1] < 90)
    n, labels, _, _ = cv2.connectedComponentsWithStats(magenta.astype(np.uint8))
    found = 0
    for k in range(1, n):
        ys, xs = np.nonzero(labels == k)
        w = q.image[ys, xs, 0].astype(float)
        c = np.array([np.average(xs, weights=w), np.average(ys, weights=w)])
        d = np.linalg.norm(expected - c, axis=1)
        assert d.min() < 0.35, f"blob at {c} is {d.min():.2f} px from every projected dot"
        found += 1
    inside = ((expected > 2) & (expected < 509)).all(axis=1)
    assert found == inside.sum() >= 3


def test_synthesis_is_deterministic_per_seed(sjer_map):
    img, valid = sjer_map
    a = synthesize_query(img, np.random.default_rng(11), None, valid)
    b = synthesize_query(img, np.random.default_rng(11), None, valid)
    c = synthesize_query(img, np.random.default_rng(12), None, valid)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.H_query_to_map, b.H_query_to_map)
    assert not np.allclose(a.H_query_to_map, c.H_query_to_map)


def test_side_rotation_and_jitter_follow_the_config(sjer_map):
    img, valid = sjer_map
    cfg = dataclasses.replace(CLEAN, side_fraction_range=(0.5, 0.7), corner_jitter=0.0, rotation_deg=(0.0, 360.0))
    angles = []
    for seed in range(20):
        q = synthesize_query(img, np.random.default_rng(seed), cfg, valid)
        assert 0.5 * 400 - 1e-9 <= q.side <= 0.7 * 400 + 1e-9
        quad = q.quad_in_map
        sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
        np.testing.assert_allclose(sides, q.side, atol=1e-3)  # no jitter: a square of side L
        top = quad[1] - quad[0]
        angles.append(np.degrees(np.arctan2(-top[1], top[0])) % 360)
        assert abs((angles[-1] - q.rotation_deg + 180) % 360 - 180) < 1e-3
    assert max(angles) - min(angles) > 180  # the full circle is used


def test_textureless_queries_are_rejected(naip_paths):
    img, _ = GeoRaster(naip_paths[1]).read_rgb()
    water = np.ascontiguousarray(img[70:150, 90:170])  # inside the large pond of the 2015 crop
    field = np.ascontiguousarray(img[180:256, 150:230])  # harvested field
    loose = QuerySynthesisConfig(
        query_size=256, side_fraction_range=(0.5, 0.6), min_texture=0.0, max_flat_fraction=1.0, color_prob=0.0,
        noise_prob=0.0,
    )
    water_scores = [synthesize_query(water, np.random.default_rng(s), loose).texture for s in range(10)]
    field_scores = [synthesize_query(field, np.random.default_rng(s), loose).texture for s in range(10)]
    assert max(water_scores) < 6.0 < min(field_scores)
    strict = dataclasses.replace(loose, min_texture=6.0, max_tries=10)
    with pytest.raises(RuntimeError, match="10 textureless"):
        synthesize_query(water, np.random.default_rng(0), strict)
    assert synthesize_query(field, np.random.default_rng(0), strict).texture >= 6.0
    # The flat-pixel rule alone also rejects the pond.
    flat_only = dataclasses.replace(loose, max_flat_fraction=0.5, max_tries=10)
    with pytest.raises(RuntimeError, match="textureless"):
        synthesize_query(water, np.random.default_rng(0), flat_only)


def test_invalid_map_pixels_stay_black_and_bounded(sjer_map):
    img, valid = sjer_map
    holed = valid.copy()
    holed[:, :150] = False
    cfg = QuerySynthesisConfig(max_invalid_fraction=0.3)
    for seed in range(6):
        q = synthesize_query(img, np.random.default_rng(seed), cfg, holed)
        assert 1.0 - q.valid.mean() <= 0.3
        assert (q.image[~q.valid] == 0).all()
        inside = q.valid.ravel()
        ys, xs = np.mgrid[0:512, 0:512]
        mapped = apply_homography(q.H_query_to_map, np.stack([xs.ravel(), ys.ravel()], axis=1)[inside])
        assert mapped[:, 0].min() >= 149.0  # valid query pixels only sample valid map pixels


def test_colour_augmentation_and_noise_change_values_not_geometry(sjer_map):
    img, valid = sjer_map
    clean = synthesize_query(img, np.random.default_rng(5), CLEAN, valid)
    aug_cfg = dataclasses.replace(CLEAN, color_prob=1.0, noise_prob=1.0, noise_sigma_range=(0.05, 0.1))
    aug = synthesize_query(img, np.random.default_rng(5), aug_cfg, valid)
    np.testing.assert_array_equal(aug.H_query_to_map, clean.H_query_to_map)
    diff = np.abs(aug.image.astype(float) - clean.image.astype(float))[clean.valid]
    assert diff.mean() > 5.0
    assert (aug.image[~aug.valid] == 0).all()
    # Still the same scene: strongly correlated grey levels.
    ga = cv2.cvtColor(aug.image, cv2.COLOR_RGB2GRAY)[clean.valid].astype(float)
    gc = cv2.cvtColor(clean.image, cv2.COLOR_RGB2GRAY)[clean.valid].astype(float)
    assert np.corrcoef(ga, gc)[0, 1] > 0.7


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        QuerySynthesisConfig(side_range=(100, 200))
    with pytest.raises(ValueError, match="corner_jitter"):
        QuerySynthesisConfig(corner_jitter=0.6)
    with pytest.raises(ValueError, match="side_sampling"):
        QuerySynthesisConfig(side_sampling="normal")
    with pytest.raises(ValueError, match="does not fit"):
        QuerySynthesisConfig(side_range=(500, 600), side_fraction_range=None).side_limits(400, 400)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        synthesize_query(np.zeros((64, 64), np.uint8), np.random.default_rng(0))


def test_sjer_protocol_matches_evaluation_md(data_dir):
    assert (SJER_PROTOCOL.side_range, SJER_PROTOCOL.corner_jitter, SJER_PROTOCOL.queries_per_source) == (
        (0.55, 0.95), 0.08, 3)
    pairs = [(data_dir / "sjer" / "2017" / f"{p}.tif", data_dir / "sjer" / "2018" / f"{p}.tif")
             for p in ("SJER_002", "SJER_009", "SJER_048")]
    qs = evaluation_queries(pairs, SJER_PROTOCOL, seed=0)
    assert len(qs) == 9
    assert [q.map_id for q in qs] == ["SJER_002"] * 3 + ["SJER_009"] * 3 + ["SJER_048"] * 3
    for q in qs:
        assert q.image.shape == (512, 512, 3)
        assert 0.55 * 400 <= q.side <= 0.95 * 400
        np.testing.assert_allclose(q.H_query_to_map, q.H_query_to_source, atol=1e-9)  # 2017 and 2018 share a grid
        quad = apply_homography(q.H_query_to_source, query_corners(512))
        centroid = quad.mean(axis=0)
        # centre uniform where the square fits, moved by at most the mean corner jitter
        assert (centroid >= q.side / 2 - 0.5 - 0.08 * q.side).all()
        assert (centroid <= 399.5 - q.side / 2 + 0.08 * q.side).all()
    again = evaluation_queries(pairs[::-1], SJER_PROTOCOL, seed=0)
    by_id = {q.query_id: q for q in again}
    for q in qs:  # a plot's queries do not depend on the other plots or their order
        np.testing.assert_array_equal(by_id[q.query_id].image, q.image)
    other = evaluation_queries(pairs[:1], SJER_PROTOCOL, seed=1)
    assert not np.allclose(other[0].H_query_to_map, qs[0].H_query_to_map)


def test_naip_style_protocol_skips_textureless_and_maps_across_grids(naip_paths):
    # NAIP_PROTOCOL's sides (100-360 px) need the full 934x723 raster; the same rule on the 256-px test crop:
    assert (NAIP_PROTOCOL.side_range, NAIP_PROTOCOL.min_texture, NAIP_PROTOCOL.side_mode) == ((100.0, 360.0), 6.0,
                                                                                              "pixels")
    proto = dataclasses.replace(NAIP_PROTOCOL, side_range=(40.0, 90.0), queries_per_source=12, max_attempts=200)
    qs = evaluation_queries([naip_paths], proto, seed=3)
    assert len(qs) == 12
    draws = [int(q.query_id.split("#")[1]) for q in qs]
    assert all(q.texture >= 6.0 for q in qs)
    assert draws[-1] > 11, "the pond must have made the protocol skip some draws"
    to_map = pixel_map_between(*naip_paths)
    for q in qs:
        np.testing.assert_allclose(q.H_query_to_map, to_map @ q.H_query_to_source, atol=1e-9)
    # A skipped draw really is textureless: re-render the first missing k.
    skipped = min(set(range(draws[-1])) - set(draws))
    src = GeoRaster(naip_paths[0])
    rng = np.random.default_rng([3, *(int(v) for v in _ids(naip_paths)), skipped])
    from topicgeo.data.synthesis import homography_from_quad, render_query, sample_quad

    quad, _, _ = sample_quad(rng, src.height, src.width, (40.0, 90.0), 0.08, (0.0, 360.0), "uniform")
    H, _ = homography_from_quad(quad, 512)
    image, valid = render_query(src.read_window, H, 512)
    assert texture_score(image, valid)[0] < 6.0


def _ids(paths):
    import zlib

    return [zlib.crc32(p.stem.encode()) for p in paths]


def test_seed_list_parses_pooled_protocol_seeds() -> None:
    import argparse

    from topicgeo.data.synthesis import seed_list

    assert seed_list("1,2,3") == [1, 2, 3] and seed_list("0") == [0]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        seed_list("1,x")
