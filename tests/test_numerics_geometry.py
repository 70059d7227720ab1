"""Tests of edge_runtime.numerics.geometry: homography estimation, projections, quad IoU / containment.

Real pairs: an SJER plot (tests/data/sjer) warped by a known homography (rotation + scale + perspective jitter, the
evaluation.md query model) into a 512x512 query; matches from SIFT. Quad IoU is checked against shapely.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Point, Polygon

from edge_runtime.numerics.geometry import (
    estimate_homography,
    estimate_similarity,
    footprint,
    homography_degeneracy,
    image_corners,
    is_convex_quad,
    project_points,
    quad_area,
    quad_contains,
    quad_iou,
)

DATA = Path(__file__).parent / "data" / "sjer"
QUERY_SIZE = 512


def _load(year: int, plot: str) -> np.ndarray:
    path = DATA / str(year) / f"SJER_{plot}.tif"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"cannot read {path}"
    return img


def _query_homography(rng: np.random.Generator, side: float, angle_deg: float, jitter: float) -> np.ndarray:
    """Query (512x512) -> plot homography: square of ``side`` px about the plot centre, corners jittered, rotated."""
    half = side / 2
    quad = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    quad = quad + rng.uniform(-jitter, jitter, (4, 2)) * side
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    quad = quad @ rot.T + 199.5
    src = image_corners(QUERY_SIZE, QUERY_SIZE).astype(np.float32)
    return cv2.getPerspectiveTransform(src, quad.astype(np.float32)).astype(np.float64)


def _sift_matches(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sift = cv2.SIFT_create()
    kq, dq = sift.detectAndCompute(query, None)
    kr, dr = sift.detectAndCompute(ref, None)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dq, dr, k=2)
    good = [m for m, n in pairs if m.distance < 0.8 * n.distance]
    pq = np.array([kq[m.queryIdx].pt for m in good], dtype=np.float64)
    pr = np.array([kr[m.trainIdx].pt for m in good], dtype=np.float64)
    return pq, pr


@pytest.fixture(scope="module")
def warped_pairs() -> list[dict]:
    """Per plot: the true H, SIFT matches query->2017 plot (same date) and query->2018 plot (cross-season)."""
    rng = np.random.default_rng(7)
    out = []
    for plot, angle in (("002", 35.0), ("009", 150.0), ("048", 260.0)):
        h_true = _query_homography(rng, side=float(rng.uniform(240, 320)), angle_deg=angle, jitter=0.05)
        plot17 = _load(2017, plot)
        # WARP_INVERSE_MAP: query(x) = plot(H x), i.e. H maps query pixels to plot pixels.
        query = cv2.warpPerspective(
            plot17, h_true, (QUERY_SIZE, QUERY_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
        out.append(
            {
                "plot": plot,
                "H": h_true,
                "same": _sift_matches(query, plot17),
                "cross": _sift_matches(query, _load(2018, plot)),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------ projections


def test_project_points_matches_opencv_and_round_trips():
    rng = np.random.default_rng(0)
    h = np.array([[0.9, -0.3, 12.0], [0.25, 1.1, -4.0], [1e-4, -2e-4, 1.0]])
    pts = rng.uniform(0, 500, (50, 2))
    got = project_points(h, pts)
    want = cv2.perspectiveTransform(pts.reshape(-1, 1, 2), h).reshape(-1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(project_points(np.linalg.inv(h), got), pts, atol=1e-9)
    np.testing.assert_allclose(project_points(np.eye(3), pts), pts)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        project_points(h, pts.T)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        project_points(h[:2], pts)


def test_image_corners_and_footprint_order():
    np.testing.assert_array_equal(image_corners(640, 480), [[0, 0], [640, 0], [640, 480], [0, 480]])
    shift = np.array([[2.0, 0, 10], [0, 2.0, 20], [0, 0, 1]])
    np.testing.assert_allclose(footprint(shift, 4, 3), [[10, 20], [18, 20], [18, 26], [10, 26]])
    with pytest.raises(ValueError, match="positive"):
        image_corners(0, 10)


# ------------------------------------------------------------------------------------------------------- homography


def test_homography_recovery_on_real_warped_pair(warped_pairs):
    """Same-date pair: corners of the estimated footprint within 1 px of the true ones."""
    for case in warped_pairs:
        pq, pr = case["same"]
        res = estimate_homography(pq, pr, threshold_px=3.0, image_size=(QUERY_SIZE, QUERY_SIZE))
        assert res.ok, f"SJER_{case['plot']}: {res.reason}"
        assert res.reason is None and res.H.dtype == np.float64 and res.H[2, 2] == pytest.approx(1.0)
        err = np.linalg.norm(
            footprint(res.H, QUERY_SIZE, QUERY_SIZE) - footprint(case["H"], QUERY_SIZE, QUERY_SIZE), axis=1
        )
        assert err.max() < 1.0, f"SJER_{case['plot']}: corner error {err.max():.3f} px"
        # Inlier mask agrees with the ground truth labelling of the matches.
        true_err = np.linalg.norm(project_points(case["H"], pq) - pr, axis=1)
        assert np.mean(true_err[res.inliers] < 3.0) > 0.98
        assert np.mean(res.inliers[true_err < 1.0]) > 0.95


def test_homography_recovery_cross_season(warped_pairs):
    """2017-derived query against the 2018 plot: seasonal change, 0-0.7 m (0-7 px) inter-year misregistration."""
    for case in warped_pairs:
        pq, pr = case["cross"]
        res = estimate_homography(pq, pr, image_size=(QUERY_SIZE, QUERY_SIZE))
        assert res.ok, f"SJER_{case['plot']}: {res.reason}"
        fp_true = footprint(case["H"], QUERY_SIZE, QUERY_SIZE)
        err = np.linalg.norm(footprint(res.H, QUERY_SIZE, QUERY_SIZE) - fp_true, axis=1)
        assert err.max() < 10.0, f"SJER_{case['plot']}: corner error {err.max():.2f} px"
        assert quad_iou(footprint(res.H, QUERY_SIZE, QUERY_SIZE), fp_true) > 0.95


def test_homography_failures_are_reported_not_raised(warped_pairs):
    pq, pr = warped_pairs[0]["same"]
    few = estimate_homography(pq[:3], pr[:3])
    assert few.H is None and "too few matches" in few.reason and few.inliers.shape == (3,) and not few.inliers.any()
    # All query points on a line: no area to support a homography.
    line_q = np.stack([np.linspace(0, 500, 30), np.linspace(0, 300, 30)], axis=1)
    line = estimate_homography(line_q, line_q * 0.5 + 3.0)
    assert line.H is None and "collinear" in line.reason and not line.inliers.any()
    # A mirrored mapping (impossible between a nadir view and a map) yields no homography.
    mirror = np.array([[-1.0, 0, 500], [0, 1.0, 0], [0, 0, 1.0]])
    grid = np.stack(np.meshgrid(np.arange(0, 500, 50.0), np.arange(0, 500, 50.0)), axis=-1).reshape(-1, 2)
    res = estimate_homography(grid, project_points(mirror, grid), image_size=(500, 500))
    assert res.H is None and res.reason and not res.inliers.any()
    # The same point set under a proper similarity is recovered exactly.
    sim = np.array([[0.0, -0.8, 450], [0.8, 0.0, 10], [0, 0, 1.0]])
    ok = estimate_homography(grid, project_points(sim, grid), image_size=(500, 500))
    assert ok.ok and ok.inliers.all() and np.allclose(ok.H, sim, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        estimate_homography(pq, pr[:-1])
    with pytest.raises(ValueError, match="threshold_px"):
        estimate_homography(pq, pr, threshold_px=0)


def test_homography_degeneracy_checks():
    region = image_corners(512, 512)
    assert homography_degeneracy(np.eye(3), region) is None
    assert "non-finite" in homography_degeneracy(np.full((3, 3), np.nan), region)
    assert "near-singular" in homography_degeneracy(np.diag([1.0, 1e-12, 1.0]), region)
    # Line at infinity through the region: w = 1 - x / 256 changes sign inside a 512 px image.
    horizon = np.array([[1.0, 0, 0], [0, 1.0, 0], [-1 / 256, 0, 1.0]])
    assert "line at infinity" in homography_degeneracy(horizon, region)
    assert "degenerate" in homography_degeneracy(np.eye(3), np.array([[0, 0], [1, 1], [2, 2], [3, 3.0]]))
    mirror = np.array([[-1.0, 0, 512], [0, 1.0, 0], [0, 0, 1.0]])
    assert "mirrored" in homography_degeneracy(mirror, region)
    assert homography_degeneracy(mirror, region, allow_reflection=True) is None


# ----------------------------------------------------------------------------------------------------- quad helpers


def _random_convex_quad(rng: np.random.Generator) -> np.ndarray:
    """Strictly convex quad: 4 sorted angles on a random ellipse, random orientation, random placement."""
    while True:
        ang = np.sort(rng.uniform(0, 2 * np.pi, 4))
        r = rng.uniform(5, 200, 2)
        quad = np.stack([r[0] * np.cos(ang), r[1] * np.sin(ang)], axis=1)
        t = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        quad = quad @ rot.T + rng.uniform(-100, 100, 2)
        if rng.random() < 0.5:
            quad = quad[::-1]
        if is_convex_quad(quad) and quad_area(quad) > 1.0:
            return quad


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a), Polygon(b)
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def test_is_convex_quad_cases():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])
    assert is_convex_quad(square) and is_convex_quad(square[::-1])
    assert not is_convex_quad(np.array([[0, 0], [1, 1], [1, 0], [0, 1.0]]))  # bow-tie
    assert not is_convex_quad(np.array([[0, 0], [2, 0], [0.5, 0.5], [0, 2.0]]))  # concave dart
    assert not is_convex_quad(np.array([[0, 0], [1, 0], [2, 0], [0, 1.0]]))  # collinear triple
    assert not is_convex_quad(np.array([[0, 0], [1, 0], [1, 0], [0, 1.0]]))  # repeated vertex
    assert not is_convex_quad(np.zeros((4, 2)))
    assert not is_convex_quad(np.array([[0, 0], [1, 0], [1, np.inf], [0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        is_convex_quad(np.zeros((3, 2)))


def test_quad_iou_matches_shapely_on_random_quads():
    rng = np.random.default_rng(42)
    n_overlapping = 0
    for _ in range(600):
        a, b = _random_convex_quad(rng), _random_convex_quad(rng)
        want = _shapely_iou(a, b)
        got = quad_iou(a, b)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), (a.tolist(), b.tolist())
        assert quad_iou(b, a) == pytest.approx(got, rel=1e-9, abs=1e-15)
        n_overlapping += want > 0
    assert n_overlapping > 200  # the random set exercises real intersections, not only disjoint pairs


def test_quad_iou_special_cases():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10.0]])
    assert quad_iou(a, a) == pytest.approx(1.0, abs=1e-12)
    assert quad_iou(a, a[::-1]) == pytest.approx(1.0, abs=1e-12)  # orientation does not matter
    assert quad_iou(a, np.roll(a, 1, axis=0)) == pytest.approx(1.0, abs=1e-12)  # nor the start vertex
    assert quad_iou(a, a + 100) == 0.0  # disjoint
    assert quad_iou(a, a + np.array([10.0, 0.0])) == pytest.approx(0.0, abs=1e-12)  # touching along an edge
    inner = np.array([[2, 3], [6, 2], [7, 7], [3, 6.0]])  # nested
    assert quad_iou(a, inner) == pytest.approx(quad_area(inner) / 100.0, rel=1e-12)
    assert quad_iou(a, a + np.array([5.0, 0.0])) == pytest.approx(50 / 150, rel=1e-12)  # half overlap
    diamond = np.array([[5, -2], [12, 5], [5, 12], [-2, 5.0]])
    assert quad_iou(a, diamond) == pytest.approx(_shapely_iou(a, diamond), rel=1e-9)
    with pytest.raises(ValueError, match="strictly convex"):
        quad_iou(a, np.array([[0, 0], [1, 1], [1, 0], [0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        quad_iou(a, np.array([[0, 0], [1, 0], [1, np.nan], [0, 1.0]]))


def test_quad_iou_of_estimated_vs_true_footprint_matches_shapely(warped_pairs):
    for case in warped_pairs:
        res = estimate_homography(*case["cross"], image_size=(QUERY_SIZE, QUERY_SIZE))
        a = footprint(res.H, QUERY_SIZE, QUERY_SIZE)
        b = footprint(case["H"], QUERY_SIZE, QUERY_SIZE)
        assert quad_iou(a, b) == pytest.approx(_shapely_iou(a, b), rel=1e-9)


def test_quad_contains_agrees_with_shapely(warped_pairs):
    rng = np.random.default_rng(3)
    for _ in range(100):
        quad = _random_convex_quad(rng)
        poly = Polygon(quad)
        for p in rng.uniform(-300, 300, (20, 2)):
            assert quad_contains(quad, p) == poly.covers(Point(p))
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4.0]])
    assert quad_contains(square, [4.0, 2.0]) and quad_contains(square, [0.0, 0.0])  # boundary counts as inside
    assert not quad_contains(square, [4.0 + 1e-6, 2.0])
    # R@k test (method.md decision 18): the true footprint contains H_gt(query centre).
    for case in warped_pairs:
        centre = project_points(case["H"], np.array([[QUERY_SIZE / 2, QUERY_SIZE / 2]]))[0]
        assert quad_contains(footprint(case["H"], QUERY_SIZE, QUERY_SIZE), centre)
        assert not quad_contains(footprint(case["H"], QUERY_SIZE, QUERY_SIZE), centre + 400.0)
    with pytest.raises(ValueError, match="strictly convex"):
        quad_contains(np.array([[0, 0], [1, 1], [1, 0], [0, 1.0]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="point"):
        quad_contains(square, [1.0, 2.0, 3.0])


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty],
                      [0.0, 0.0, 1.0]])


def test_similarity_recovery_with_outliers_and_failures_as_reasons():
    rng = np.random.default_rng(3)
    S = _similarity(0.42, 37.0, 310.0, -55.0)
    q = rng.uniform(0, 800, (80, 2))
    r = project_points(S, q) + rng.normal(0, 0.3, (80, 2))
    r[:20] = rng.uniform(0, 800, (20, 2))  # 25 % outliers
    res = estimate_similarity(q, r, threshold_px=2.0)
    assert res.ok and res.reason is None
    assert np.abs(res.H - S).max() < 0.5 and abs(np.linalg.det(res.H[:2, :2]) - 0.42**2) < 5e-3
    assert not res.inliers[:20].any() or res.inliers[:20].sum() <= 1  # outliers out
    assert res.inliers[20:].mean() > 0.95
    few = estimate_similarity(q[:3], r[:3])
    assert not few.ok and "too few matches" in few.reason
    with pytest.raises(ValueError):
        estimate_similarity(q, r[:10])


def test_auto_geometry_prefers_the_similarity_for_clustered_nadir_matches_and_the_homography_for_perspective():
    from edge_runtime.locator import LocatorConfig, fit_geometry

    rng = np.random.default_rng(4)
    frame = (1600, 900)
    # A nadir frame: the matches cluster in a band at the top of the frame and are noisy (2 px): a homography
    # fitted to them extrapolates its perspective terms over the rest of the frame.
    S = _similarity(0.3, -50.0, 400.0, 300.0)
    q = np.column_stack([rng.uniform(600, 1000, 40), rng.uniform(0, 120, 40)])
    r = project_points(S, q) + rng.normal(0, 1.0, (40, 2))
    fit, model = fit_geometry(q, r, frame, LocatorConfig())
    assert model == "similarity" and fit.ok
    centre = project_points(fit.H, np.array([[799.5, 449.5]]))[0]
    assert np.linalg.norm(centre - project_points(S, np.array([[799.5, 449.5]]))[0]) < 10.0
    # An oblique view: strong perspective over well spread matches; the similarity explains few of them.
    H = np.array([[0.5, 0.1, 100.0], [0.0, 0.9, 50.0], [0.0, 6e-4, 1.0]])
    q2 = rng.uniform([0, 0], frame, (120, 2))
    r2 = project_points(H, q2) + rng.normal(0, 0.5, (120, 2))
    fit2, model2 = fit_geometry(q2, r2, frame, LocatorConfig())
    assert model2 == "homography" and fit2.ok
    assert fit_geometry(q, r, frame, LocatorConfig(geometry="homography"))[1] == "homography"
    with pytest.raises(ValueError, match="geometry"):
        LocatorConfig(geometry="affine")
    # topicgeo-eval measures the same choice through the shared numerics (tests/test_eval.py)
    from edge_runtime.numerics.geometry import fit_query_to_map

    assert fit_query_to_map(q, r, 4.0, frame)[1] == "similarity"
    assert fit_query_to_map(q2, r2, 4.0, frame)[1] == "homography"
    assert fit_query_to_map(q2, r2, 4.0, frame, "similarity")[1] == "similarity"
    with pytest.raises(ValueError, match="model"):
        fit_query_to_map(q, r, 4.0, frame, "affine")

