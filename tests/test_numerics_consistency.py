"""Tests of edge_runtime.numerics.consistency (method.md §8, decision 13).

Real pairs: SJER plots (tests/data/sjer) warped by known homographies with rotation + scale (+ mild perspective);
SIFT matches query -> plot, labelled by the true homography. Consistent match sets must score far above the same
matches with the reference side shuffled, and the inliers must recover the true matches.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.numerics.consistency import (
    ConsistencyConfig,
    circular_median,
    geometric_consistency,
    pairwise_residuals,
    wrap_angle,
)
from edge_runtime.numerics.geometry import image_corners, project_points
from edge_runtime.numerics.grid import cell_centers, point_to_cell

DATA = Path(__file__).parent / "data" / "sjer"
QUERY_SIZE = 512
N_Q = 64  # 512 px query at the coarse stride 64 -> 8 x 8 cells
METHODS = ("spectral", "robust", "ransac")
GT_TOL_PX = 4.0  # a SIFT match is "true" when the true H maps it within this distance


def _load(year: int, plot: str) -> np.ndarray:
    path = DATA / str(year) / f"SJER_{plot}.tif"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"cannot read {path}"
    return img


def _similarity_h(scale: float, angle_deg: float, centre_q: float, centre_r: float) -> np.ndarray:
    t = math.radians(angle_deg)
    a = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    h = np.eye(3)
    h[:2, :2] = a
    h[:2, 2] = centre_r - a @ np.array([centre_q, centre_q])
    return h


def _local_similarity(h: np.ndarray, at: np.ndarray) -> tuple[float, float]:
    """Scale and rotation of H around ``at`` by central finite differences (independent of the library)."""
    eps = 1e-3
    dx, dy = np.array([eps, 0.0]), np.array([0.0, eps])
    pts = np.array([at + dx, at - dx, at + dy, at - dy])
    p = project_points(h, pts)
    jac = np.stack([(p[0] - p[1]) / (2 * eps), (p[2] - p[3]) / (2 * eps)], axis=1)
    return math.sqrt(abs(np.linalg.det(jac))), math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1])


@pytest.fixture(scope="module")
def real_cases() -> list[dict]:
    """SIFT matches between a warped SJER plot (query) and the plot itself / its other-season image."""
    rng = np.random.default_rng(11)
    sift = cv2.SIFT_create()
    cases = []
    for plot, angle, ref_year in (("009", 35.0, 2017), ("048", 250.0, 2017), ("009", 120.0, 2018)):
        scale = float(rng.uniform(0.5, 0.6))  # plot px per query px (a 256-307 px crop shown at 512 px)
        h = _similarity_h(scale, angle, (QUERY_SIZE - 1) / 2, 199.5)
        jitter = np.eye(3)
        jitter[2, :2] = rng.uniform(-5e-5, 5e-5, 2)  # mild perspective
        h = h @ jitter
        query = cv2.warpPerspective(
            _load(2017, plot), h, (QUERY_SIZE, QUERY_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
        ref = _load(ref_year, plot)
        kq, dq = sift.detectAndCompute(query, None)
        kr, dr = sift.detectAndCompute(ref, None)
        good = [m for m, n in cv2.BFMatcher(cv2.NORM_L2).knnMatch(dq, dr, k=2) if m.distance < 0.8 * n.distance]
        pq = np.array([kq[m.queryIdx].pt for m in good], dtype=np.float64)
        pr = np.array([kr[m.trainIdx].pt for m in good], dtype=np.float64)
        true = np.linalg.norm(project_points(h, pq) - pr, axis=1) < GT_TOL_PX
        cases.append({"name": f"SJER_{plot}/{ref_year}", "H": h, "pq": pq, "pr": pr, "true": true})
    return cases


def _config(method: str) -> ConsistencyConfig:
    # SIFT keypoints are pixel-accurate, so RANSAC gets a pixel-level threshold instead of the coarse-cell default.
    return ConsistencyConfig(method=method, ransac_threshold=GT_TOL_PX)


# ------------------------------------------------------------------------------------------------------- real pairs


@pytest.mark.parametrize("method", METHODS)
def test_true_matches_score_far_above_shuffled_on_real_pairs(real_cases, method):
    rng = np.random.default_rng(5)
    cfg = _config(method)
    for case in real_cases:
        pq, pr, true = case["pq"], case["pr"], case["true"]
        assert true.sum() >= 50 and true.mean() >= 0.5, f"{case['name']}: weak test data ({true.sum()} true)"
        res = geometric_consistency(pq, pr, N_Q, cfg)
        shuffled = [geometric_consistency(pq, pr[rng.permutation(len(pr))], N_Q, cfg).score for _ in range(3)]
        assert res.score > 0
        assert res.score >= 10 * max(shuffled), f"{case['name']} {method}: {res.score:.4f} vs {max(shuffled):.4f}"
        recall = (res.inliers & true).sum() / true.sum()
        precision = (res.inliers & true).sum() / max(res.inliers.sum(), 1)
        assert recall >= 0.9, f"{case['name']} {method}: inlier recall {recall:.2f}"
        assert precision >= 0.9, f"{case['name']} {method}: inlier precision {precision:.2f}"
        # Scale / rotation estimates agree with the true homography at the centroid of the true matches.
        s_true, a_true = _local_similarity(case["H"], pq[true].mean(axis=0))
        assert res.scale == pytest.approx(s_true, rel=0.05), f"{case['name']} {method}"
        assert abs(float(wrap_angle(res.angle - a_true))) < math.radians(2.0), f"{case['name']} {method}"


def test_spectral_score_tracks_number_of_consistent_matches(real_cases):
    """Removing true matches lowers the spectral score roughly in proportion (score ~ inlier support / N_q)."""
    case = real_cases[0]
    pq, pr, true = case["pq"], case["pr"], case["true"]
    full = geometric_consistency(pq, pr, N_Q).score
    idx_true = np.flatnonzero(true)
    keep = np.ones(len(pq), bool)
    keep[idx_true[: len(idx_true) // 2]] = False
    half = geometric_consistency(pq[keep], pr[keep], N_Q).score
    assert 0.35 * full < half < 0.65 * full


def test_cell_centre_matches_with_outliers(real_cases):
    """Quantised coarse-cell matches (stride 16 here) under a rotation + scale: inliers found, outliers rejected."""
    rng = np.random.default_rng(2)
    h = _similarity_h(0.55, 35.0, (QUERY_SIZE - 1) / 2, 199.5)
    stride = 16
    pq = cell_centers(QUERY_SIZE // stride, QUERY_SIZE // stride, stride)
    proj = project_points(h, pq)
    inside = np.all((proj >= -0.5) & (proj < 399.5), axis=1)
    pq = pq[inside]
    pr = point_to_cell(proj[inside], stride) * stride + (stride - 1) / 2
    outlier = rng.random(len(pq)) < 0.3
    pr[outlier] = point_to_cell(rng.uniform(0, 400, (outlier.sum(), 2)), stride) * stride + (stride - 1) / 2
    n_q = (QUERY_SIZE // stride) ** 2
    cfg = ConsistencyConfig(min_pair_distance=float(stride))
    res = geometric_consistency(pq, pr, n_q, cfg)
    shuffled = geometric_consistency(pq, pr[rng.permutation(len(pr))], n_q, cfg)
    assert res.score >= 10 * shuffled.score
    assert res.inliers[~outlier].mean() >= 0.95
    assert res.inliers[outlier].mean() <= 0.1
    assert res.scale == pytest.approx(0.55, rel=0.03)
    assert abs(math.degrees(float(wrap_angle(res.angle - math.radians(35.0))))) < 1.0


# ---------------------------------------------------------------------------------------------- exact formula checks


def _reference_spectral(pq, pr, n_q, cfg):
    """Loop implementation of method.md §8 reading A (with a brute-force circular median)."""
    n = len(pq)
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            dp, dq = pq[j] - pq[i], pr[j] - pr[i]
            if np.hypot(*dp) >= cfg.min_pair_distance:
                r = np.hypot(*dq) / np.hypot(*dp)
                phi = float(wrap_angle(math.atan2(dq[1], dq[0]) - math.atan2(dp[1], dp[0])))
                pairs.append((i, j, r, phi))
    r_all = np.array([p[2] for p in pairs])
    phi_all = np.array([p[3] for p in pairs])
    s_star = float(np.median(r_all))
    # The circular median's tie rule is tested on its own; here only check that it is a brute-force minimiser.
    t_star = circular_median(phi_all)
    cost = [np.abs(wrap_angle(phi_all - t)).sum() for t in phi_all]
    assert np.abs(wrap_angle(phi_all - t_star)).sum() == pytest.approx(min(cost), abs=1e-9)
    a = np.zeros((n, n))
    for i, j, r, phi in pairs:
        e = ((r / s_star - 1) / cfg.delta_d) ** 2 + (float(wrap_angle(phi - t_star)) / cfg.delta_c) ** 2
        a[i, j] = a[j, i] = max(0.0, 1.0 - e)
    x = np.full(n, 1 / math.sqrt(n))
    for _ in range(cfg.truncation_z):
        y = a @ x
        y = np.maximum(y - cfg.sparsity_lambda * y.max(), 0)
        x = y / np.linalg.norm(y)
    return float(x @ a @ x) / n_q, x > 0, s_star, t_star


@pytest.mark.parametrize("seed", range(4))
def test_spectral_equals_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n = 40
    pq = rng.uniform(0, 512, (n, 2))
    h = _similarity_h(rng.uniform(0.4, 2.5), rng.uniform(0, 360), 256, 300)
    pr = project_points(h, pq) + rng.normal(0, 2.0, (n, 2))
    bad = rng.random(n) < 0.3
    pr[bad] = rng.uniform(0, 600, (bad.sum(), 2))
    cfg = ConsistencyConfig(min_pair_distance=40.0)
    score, inliers, s_star, t_star = _reference_spectral(pq, pr, 64, cfg)
    res = geometric_consistency(pq, pr, 64, cfg)
    assert res.score == pytest.approx(score, rel=1e-9)
    np.testing.assert_array_equal(res.inliers, inliers)
    assert res.scale == pytest.approx(s_star, rel=1e-12)
    assert res.angle == pytest.approx(t_star, abs=1e-12)


def test_exact_values_for_a_perfect_similarity():
    """All pairs compatible with e = 0: A = J - I, so x stays uniform and the score is (N - 1) / N_q (reading A);
    reading B gives (N / N_q)^lambda."""
    pq = cell_centers(5, 6, 64)  # 30 matches, every pair >= 64 px apart
    pr = project_points(_similarity_h(1.7, -70.0, 100.0, 900.0), pq)
    n = len(pq)
    spectral = geometric_consistency(pq, pr, 100)
    assert spectral.score == pytest.approx((n - 1) / 100, rel=1e-9)
    assert spectral.inliers.all()
    assert spectral.scale == pytest.approx(1.7, rel=1e-12)
    assert spectral.angle == pytest.approx(math.radians(-70.0), abs=1e-12)
    cfg_b = ConsistencyConfig(method="robust")
    robust = geometric_consistency(pq, pr, 100, cfg_b)
    assert robust.score == pytest.approx((n / 100) ** cfg_b.sparsity_lambda, rel=1e-9)
    assert robust.inliers.all()


def test_robust_score_decreases_with_outliers_and_caps_penalty():
    rng = np.random.default_rng(9)
    pq = rng.uniform(0, 1024, (120, 2))
    pr = project_points(_similarity_h(0.8, 20.0, 512, 512), pq)
    cfg = ConsistencyConfig(method="robust")
    scores = []
    for frac in (0.0, 0.1, 0.2, 0.4):
        noisy = pr.copy()
        k = int(frac * len(pq))
        noisy[:k] = rng.uniform(0, 1024, (k, 2))
        scores.append(geometric_consistency(pq, noisy, 256, cfg).score)
    assert all(np.diff(scores) < 0), scores
    # The cap Z bounds every pair's penalty, so even all-random matches keep exp(-Z) * density > 0.
    random = geometric_consistency(pq, rng.uniform(0, 1024, pq.shape), 256, cfg).score
    assert random >= math.exp(-cfg.truncation_z) * (120 / 256) ** cfg.sparsity_lambda * (1 - 1e-12)


@pytest.mark.parametrize("method", ("spectral", "robust"))
def test_invariances(method, real_cases):
    """Scores are invariant to match order and to a similarity transform of the reference points."""
    case = real_cases[1]
    pq, pr = case["pq"], case["pr"]
    cfg = ConsistencyConfig(method=method)
    base = geometric_consistency(pq, pr, N_Q, cfg)
    perm = np.random.default_rng(0).permutation(len(pq))
    permuted = geometric_consistency(pq[perm], pr[perm], N_Q, cfg)
    assert permuted.score == pytest.approx(base.score, rel=1e-9)
    np.testing.assert_array_equal(permuted.inliers, base.inliers[perm])
    moved = geometric_consistency(pq, project_points(_similarity_h(2.0, 90.0, 0.0, 50.0), pr), N_Q, cfg)
    assert moved.score == pytest.approx(base.score, rel=1e-6)
    np.testing.assert_array_equal(moved.inliers, base.inliers)
    assert moved.scale == pytest.approx(2.0 * base.scale, rel=1e-9)


def test_pairwise_residuals_thresholds_match_supp_wording():
    """e <= 1 exactly when the length ratio is within +-delta_d and the angle within +-delta_c of the consensus."""
    pq = cell_centers(5, 5, 100)  # 25 identity matches dominate the consensus (s* = 1, theta* = 0)
    pr = pq.copy()
    v = np.array([600.0, 0.0])
    origin = pq[0]

    def rotated(deg: float) -> np.ndarray:
        t = math.radians(deg)
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ v

    extra_q = np.array([origin + v] * 4)
    extra_r = np.array([origin + 1.19 * v, origin + 1.21 * v, origin + rotated(9.5), origin + rotated(10.5)])
    pq_all, pr_all = np.vstack([pq, extra_q]), np.vstack([pr, extra_r])
    cfg = ConsistencyConfig(min_pair_distance=50.0)
    i, j, e, s_star, t_star = pairwise_residuals(pq_all, pr_all, cfg)
    assert s_star == pytest.approx(1.0, abs=1e-12) and t_star == pytest.approx(0.0, abs=1e-12)
    assert np.all(j > i)
    lookup = {(a, b): v for a, b, v in zip(i.tolist(), j.tolist(), e.tolist(), strict=True)}
    assert lookup[(0, 25)] == pytest.approx((0.19 / 0.2) ** 2, rel=1e-9)
    assert lookup[(0, 26)] == pytest.approx((0.21 / 0.2) ** 2, rel=1e-9)
    assert lookup[(0, 27)] == pytest.approx((9.5 / 10) ** 2, rel=1e-9)
    assert lookup[(0, 28)] == pytest.approx((10.5 / 10) ** 2, rel=1e-9)
    assert lookup[(0, 1)] == 0.0
    # The four extra query points coincide: those pairs are below min_pair_distance and absent.
    assert (25, 26) not in lookup


# ------------------------------------------------------------------------------------------ circular median & edges


def test_circular_median_equals_bruteforce():
    rng = np.random.default_rng(1)
    for trial in range(200):
        m = int(rng.integers(1, 50))
        kind = trial % 3
        if kind == 0:
            a = rng.uniform(-np.pi, np.pi, m)
        elif kind == 1:
            a = rng.normal(np.pi, 0.4, m)  # cluster straddling the +-pi seam
        else:
            a = rng.integers(-4, 5, m) * (np.pi / 4)  # many exact ties and exact antipodes
        got = circular_median(a)
        cost = np.abs(wrap_angle(wrap_angle(a)[None, :] - wrap_angle(a)[:, None])).sum(axis=1)
        got_cost = np.abs(wrap_angle(wrap_angle(a) - got)).sum()
        assert got_cost == pytest.approx(cost.min(), abs=1e-9)
        assert -np.pi < got <= np.pi
        assert circular_median(rng.permutation(a)) == got  # order independent
    # Flat stretches (even counts) resolve to the arc midpoint, like numpy's median, also across the seam.
    assert circular_median(np.array([0.1, 0.3])) == pytest.approx(0.2, abs=1e-12)
    assert circular_median(np.array([0.1, 0.2, 0.3, 0.5])) == pytest.approx(0.25, abs=1e-12)
    assert abs(float(wrap_angle(circular_median(np.array([3.0, -3.0])) - np.pi))) < 1e-12
    # A tight cluster across the seam has its median at the seam, not near 0 as a linear median would be.
    assert abs(float(wrap_angle(circular_median(np.array([3.1, -3.1, 3.12, -3.12, 3.13])) - np.pi))) < 0.05
    with pytest.raises(ValueError, match="at least one"):
        circular_median(np.array([]))


@pytest.mark.parametrize("method", METHODS)
def test_too_few_matches_give_zero_without_exceptions(method):
    cfg = ConsistencyConfig(method=method)
    for n in (0, 1, 3) if method == "ransac" else (0, 1):
        pts = np.arange(2 * n, dtype=float).reshape(n, 2) * 100
        res = geometric_consistency(pts, pts, 16, cfg)
        assert res.score == 0.0 and res.inliers.shape == (n,) and not res.inliers.any()
    # All query points closer than min_pair_distance: nothing to measure.
    tight = np.random.default_rng(0).uniform(0, 10, (12, 2))
    res = geometric_consistency(tight, tight + 5, 16, ConsistencyConfig(method=method, min_pair_distance=64.0))
    if method != "ransac":
        assert res.score == 0.0 and not res.inliers.any()
    # Every match on the same reference point (a collapsed candidate).
    spread = cell_centers(4, 4, 64)
    res = geometric_consistency(spread, np.zeros_like(spread), 16, cfg)
    assert res.score == 0.0 and not res.inliers.any()


def test_config_validation_and_input_errors():
    for kwargs, match in (
        ({"method": "magic"}, "method"),
        ({"delta_d": 0.0}, "delta_d"),
        ({"delta_c": -1.0}, "delta_c"),
        ({"truncation_z": 0}, "truncation_z"),
        ({"truncation_z": 2.5}, "truncation_z"),
        ({"sparsity_lambda": 1.0}, "sparsity_lambda"),
        ({"min_pair_distance": float("nan")}, "min_pair_distance"),
        ({"ransac_threshold": 0}, "ransac_threshold"),
        ({"ransac_confidence": 1.0}, "ransac_confidence"),
        ({"ransac_max_iters": 0}, "ransac_max_iters"),
    ):
        with pytest.raises(ValueError, match=match):
            ConsistencyConfig(**kwargs)
    pts = image_corners(10, 10)
    with pytest.raises(ValueError, match="n_query_cells"):
        geometric_consistency(pts, pts, 0)
    with pytest.raises(ValueError, match="pts_r"):
        geometric_consistency(pts, pts[:3], 4)
    with pytest.raises(ValueError, match="non-finite"):
        geometric_consistency(pts, pts * np.nan, 4)


@pytest.mark.slow
def test_spectral_separates_inliers_among_2000_matches():
    # Scale test of the dense pairwise path (its speed is measured by benchmarks, not asserted here).
    rng = np.random.default_rng(4)
    pq = rng.uniform(0, 4096, (2000, 2))
    pr = project_points(_similarity_h(0.7, 10.0, 2048, 2048), pq) + rng.normal(0, 2, pq.shape)
    pr[:600] = rng.uniform(0, 4096, (600, 2))
    res = geometric_consistency(pq, pr, 4096)
    assert res.inliers[600:].mean() > 0.99 and res.inliers[:600].mean() < 0.05
