"""Geometric-consistency confidence of a retrieval candidate from its matches (numpy, torch-free).

Implements method.md §8 (decision 13). Given matches ``(p_i, q_i)`` (query / reference pixel positions, normally
coarse-cell centres), every pair ``(i, j)`` whose query points are at least ``min_pair_distance`` apart gives

- a length ratio ``r_ij = ||q_j - q_i|| / ||p_j - p_i||`` and
- a relative angle ``phi_ij = wrap(atan2(q_j - q_i) - atan2(p_j - p_i))`` in ``(-pi, pi]``.

The consensus is ``s* = median(r_ij)`` and ``theta* = circular median(phi_ij)`` (:func:`circular_median`), and the
normalised residual is ``e_ij = ((r_ij / s* - 1) / delta_d)^2 + (wrap(phi_ij - theta*) / delta_c)^2`` (``e_ij <= 1``:
"length ratio within +-0.2 and angle within +-pi/18"). Pairs whose two reference points coincide have no angle;
they are left out of the angle consensus and scored on their length ratio (0, hence incompatible). Three scores
sit behind :func:`geometric_consistency`:

- ``"spectral"`` (reading A, default): ``A_ij = max(0, 1 - e_ij)``, ``A_ii = 0`` (and 0 for pairs closer than
  ``min_pair_distance``); sparse power iteration truncated at ``Z`` steps, ``x = 1 / sqrt(N)``;
  ``y = A x; y = max(y - lambda * max(y), 0); x = y / ||y||``; score ``x^T A x / N_q``; inliers = support of ``x``.
- ``"robust"`` (reading B): ``rho_ij = min(e_ij, Z)``; score ``exp(-mean rho_ij) * (N / N_q)^lambda``. Reading B
  defines no per-match selection; here a match is an inlier when it is compatible (``e_ij <= 1``) with at least half
  of the matches it forms a valid pair with.
- ``"ransac"``: inlier count of ``cv2.findHomography(..., USAC_MAGSAC)`` divided by ``N_q`` (the baselines' score).

Scores are divided by ``N_q`` (number of query cells) so that candidates with different match counts compare.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from edge_runtime.numerics.geometry import estimate_homography

logger = logging.getLogger(__name__)

__all__ = [
    "ConsistencyConfig",
    "ConsistencyResult",
    "circular_median",
    "geometric_consistency",
    "pairwise_residuals",
    "wrap_angle",
]

Method = Literal["spectral", "robust", "ransac"]
_METHODS = ("spectral", "robust", "ransac")


@dataclass(frozen=True)
class ConsistencyConfig:
    """Parameters of the geometric-consistency score (defaults: SUPP §1 / method.md §8).

    Attributes:
        method: ``"spectral"`` (reading A), ``"robust"`` (reading B) or ``"ransac"``.
        delta_d: Length-ratio tolerance (relative, ``> 0``); SUPP: 0.2.
        delta_c: Angle tolerance in radians (``> 0``); SUPP: 0.175 = pi/18.
        truncation_z: ``Z`` (integer ``>= 1``): power-iteration count of reading A, penalty cap of reading B;
            SUPP: 10.
        sparsity_lambda: ``lambda`` in ``[0, 1)``: soft threshold of reading A, density exponent of reading B;
            SUPP: 0.2.
        min_pair_distance: Pairs whose query points are closer than this (pixels, ``> 0``) are ignored; default one
            coarse cell (stride 64). Cell-centre quantisation makes near pairs noisy, so raise it for coarse inputs
            if needed.
        ransac_threshold: MAGSAC inlier threshold in reference pixels (``> 0``); default one coarse cell.
        ransac_confidence: MAGSAC confidence in ``(0, 1)``.
        ransac_max_iters: MAGSAC iteration cap (``>= 1``).
    """

    method: Method = "spectral"
    delta_d: float = 0.2
    delta_c: float = math.pi / 18.0
    truncation_z: int = 10
    sparsity_lambda: float = 0.2
    min_pair_distance: float = 64.0
    ransac_threshold: float = 64.0
    ransac_confidence: float = 0.999
    ransac_max_iters: int = 2000

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"ConsistencyConfig.method must be one of {_METHODS}, got {self.method!r}")
        for name in ("delta_d", "delta_c", "min_pair_distance", "ransac_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ConsistencyConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("truncation_z", "ransac_max_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConsistencyConfig.{name} must be an integer >= 1, got {value!r}")
        lam = self.sparsity_lambda
        if not isinstance(lam, (int, float)) or not 0.0 <= lam < 1.0:
            raise ValueError(f"ConsistencyConfig.sparsity_lambda must be in [0, 1), got {lam!r}")
        conf = self.ransac_confidence
        if not isinstance(conf, (int, float)) or not 0.0 < conf < 1.0:
            raise ValueError(f"ConsistencyConfig.ransac_confidence must be in (0, 1), got {conf!r}")


class ConsistencyResult(NamedTuple):
    """Outcome of :func:`geometric_consistency`.

    Attributes:
        score: Candidate confidence (``>= 0``; 0 when there is too little to measure).
        inliers: ``(N,)`` bool, matches consistent with the dominant geometry.
        scale: Estimated reference/query scale (``s*`` for spectral/robust, local scale of H at the inliers'
            centroid for ransac); NaN when undefined.
        angle: Estimated rotation in radians in ``(-pi, pi]`` (``theta*``, or that of H); NaN when undefined.
    """

    score: float
    inliers: np.ndarray
    scale: float
    angle: float


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wraps angles (radians) into ``(-pi, pi]``; float64 array of the input's shape."""
    a = np.asarray(angle, dtype=np.float64)
    return np.pi - np.mod(np.pi - a, 2.0 * np.pi)


def _arc_cost(a: np.ndarray, theta: float) -> float:
    return float(np.abs(wrap_angle(a - theta)).sum())


def circular_median(angles: np.ndarray) -> float:
    """Circular median: an angle minimising the summed arc distance ``f(theta) = sum_m |wrap(a_m - theta)|``.

    ``f`` is piecewise linear with concave kinks at the antipodes, so a minimum is attained at a sample; all samples
    are evaluated in ``O(M log M)`` with prefix sums over the angles unrolled three times. Samples within a rounding
    tolerance of the minimum count as tied. When the tied samples form one contiguous run (a flat stretch, e.g. for
    an even count as with the linear median; if every sample ties, the circle minus its largest gap) the arc
    midpoint of the run is returned provided it is itself a minimiser; in any other tie the smallest tied angle is
    returned. The result is therefore always a minimiser of ``f`` and independent of the input order.

    Args:
        angles: ``(M,)`` radians, ``M >= 1`` (any range; wrapped first).

    Returns:
        The circular median in ``(-pi, pi]``.
    """
    a = np.sort(wrap_angle(np.asarray(angles, dtype=np.float64).ravel()))
    if a.size == 0:
        raise ValueError("circular_median needs at least one angle")
    if not np.all(np.isfinite(a)):
        raise ValueError("circular_median got non-finite angles")
    m = a.size
    two_pi = 2.0 * np.pi
    # b = [a - 2pi, a, a + 2pi] (sorted); for theta = a_k the window (theta - pi, theta + pi] of b holds exactly one
    # copy of every sample, at its wrapped offset from theta.
    b = np.concatenate([a - two_pi, a, a + two_pi])
    prefix = np.concatenate([[0.0], np.cumsum(b)])
    theta = a
    mid = m + np.searchsorted(a, theta, side="left")
    up = np.searchsorted(a, theta + np.pi, side="right")
    down = np.searchsorted(a, theta - np.pi, side="right")
    lo = np.where(theta - np.pi < -np.pi, up, m + down)
    hi = np.where(theta <= 0.0, m + up, 2 * m + down)
    cost = theta * (mid - lo) - (prefix[mid] - prefix[lo]) + (prefix[hi] - prefix[mid]) - theta * (hi - mid)
    tol = 1e-10 * m * np.pi + 1e-12
    c_min = float(cost.min())
    near = cost <= c_min + tol
    first = int(np.argmax(near))
    n_near = int(near.sum())
    if n_near == 1:
        return float(theta[first])
    if n_near == m:
        # Every sample is tied: the run is the circle minus its largest gap.
        gaps = np.mod(np.roll(theta, -1) - theta, two_pi)
        end = int(np.argmax(gaps))
        start = (end + 1) % m
    else:
        starts = near & ~np.roll(near, 1)
        if int(starts.sum()) != 1:
            return float(theta[first])
        start = int(np.argmax(starts))
        end = (start + n_near - 1) % m
    arc = float(np.mod(theta[end] - theta[start], two_pi))
    midpoint = float(wrap_angle(theta[start] + arc / 2.0))
    if _arc_cost(a, midpoint) <= c_min + tol:
        return midpoint
    return float(theta[first])


class _Pairs(NamedTuple):
    i: np.ndarray  # (P,) int64 first match index
    j: np.ndarray  # (P,) int64 second match index (i < j)
    e: np.ndarray  # (P,) float64 normalised residual
    scale: float
    angle: float


def pairwise_residuals(
    pts_q: np.ndarray, pts_r: np.ndarray, config: ConsistencyConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Consensus and normalised residuals of all valid match pairs (method.md §8, shared part).

    Args:
        pts_q: ``(N, 2)`` query points (pixels).
        pts_r: ``(N, 2)`` reference points (pixels).
        config: Supplies ``delta_d``, ``delta_c`` and ``min_pair_distance``.

    Returns:
        ``i (P,) int64``, ``j (P,) int64`` (``i < j``, pairs with ``||p_j - p_i|| >= min_pair_distance``),
        ``e (P,) float64`` residuals, ``s*`` and ``theta*``. With no valid pair (or ``s* = 0``) ``P = 0`` and
        ``s*``, ``theta*`` are NaN.
    """
    p, q = _check_points(pts_q, pts_r)
    pairs = _pairs(p, q, config)
    return pairs.i, pairs.j, pairs.e, pairs.scale, pairs.angle


def _check_points(pts_q: np.ndarray, pts_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pts_q, dtype=np.float64)
    q = np.asarray(pts_r, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pts_q must have shape (N, 2), got {np.shape(pts_q)}")
    if q.shape != p.shape:
        raise ValueError(f"pts_r shape {np.shape(pts_r)} must equal pts_q shape {p.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise ValueError("pts_q / pts_r contain non-finite coordinates")
    return p, q


def _pairs(p: np.ndarray, q: np.ndarray, config: ConsistencyConfig) -> _Pairs:
    n = p.shape[0]
    empty = np.zeros(0, dtype=np.int64)
    iu, ju = np.triu_indices(n, 1)
    dpx = p[ju, 0] - p[iu, 0]
    dpy = p[ju, 1] - p[iu, 1]
    len2_p = dpx * dpx + dpy * dpy
    keep = len2_p >= config.min_pair_distance**2
    if not np.any(keep):
        return _Pairs(empty, empty, np.zeros(0), math.nan, math.nan)
    if not np.all(keep):
        iu, ju, dpx, dpy, len2_p = iu[keep], ju[keep], dpx[keep], dpy[keep], len2_p[keep]
    dqx = q[ju, 0] - q[iu, 0]
    dqy = q[ju, 1] - q[iu, 1]
    len2_q = dqx * dqx + dqy * dqy
    ratio = np.sqrt(len2_q / len2_p)
    scale = float(np.median(ratio))
    if scale <= 0.0:
        return _Pairs(empty, empty, np.zeros(0), math.nan, math.nan)
    # Angle from dp to dq in one atan2 (cross, dot), mapped from [-pi, pi] to (-pi, pi]. It is undefined when both
    # reference points coincide (atan2 of signed zeros); such pairs stay out of the angle consensus and get no angle
    # penalty (their length ratio 0 already makes them incompatible).
    defined = len2_q > 0.0
    phi = np.arctan2(dpx * dqy - dpy * dqx, dpx * dqx + dpy * dqy)
    phi[phi == -np.pi] = np.pi
    angle = circular_median(phi[defined])
    d_angle = np.where(defined, wrap_angle(phi - angle), 0.0)
    e = ((ratio / scale - 1.0) / config.delta_d) ** 2 + (d_angle / config.delta_c) ** 2
    return _Pairs(iu.astype(np.int64), ju.astype(np.int64), e, scale, angle)


def _spectral(n: int, pairs: _Pairs, n_query_cells: int, config: ConsistencyConfig) -> tuple[float, np.ndarray]:
    """Reading A: sparse truncated power iteration on the clipped compatibility matrix."""
    a = np.zeros((n, n), dtype=np.float64)
    a[pairs.i, pairs.j] = np.maximum(0.0, 1.0 - pairs.e)
    a += a.T
    x = np.full(n, 1.0 / math.sqrt(n))
    for _ in range(config.truncation_z):
        y = a @ x
        peak = float(y.max())
        if peak <= 0.0:
            return 0.0, np.zeros(n, dtype=bool)
        y = np.maximum(y - config.sparsity_lambda * peak, 0.0)
        x = y / np.linalg.norm(y)
    score = float(x @ (a @ x)) / n_query_cells
    return score, x > 0.0


def _robust(n: int, pairs: _Pairs, n_query_cells: int, config: ConsistencyConfig) -> tuple[float, np.ndarray]:
    """Reading B: capped mean residual times a density term; inliers compatible with >= half of their pairs."""
    rho = np.minimum(pairs.e, float(config.truncation_z))
    score = math.exp(-float(rho.mean())) * (n / n_query_cells) ** config.sparsity_lambda
    compatible = pairs.e <= 1.0
    total = np.bincount(pairs.i, minlength=n) + np.bincount(pairs.j, minlength=n)
    good = np.bincount(pairs.i[compatible], minlength=n) + np.bincount(pairs.j[compatible], minlength=n)
    inliers = (total > 0) & (2 * good >= total)
    return score, inliers


def _similarity_of_homography(H: np.ndarray, at: np.ndarray) -> tuple[float, float]:
    """Local scale ``sqrt|det J|`` and rotation of the Jacobian of ``H`` at point ``at`` ``(2,)``."""
    w = H[2, 0] * at[0] + H[2, 1] * at[1] + H[2, 2]
    x = (H[0, 0] * at[0] + H[0, 1] * at[1] + H[0, 2]) / w
    y = (H[1, 0] * at[0] + H[1, 1] * at[1] + H[1, 2]) / w
    jac = np.array([[H[0, 0] - x * H[2, 0], H[0, 1] - x * H[2, 1]], [H[1, 0] - y * H[2, 0], H[1, 1] - y * H[2, 1]]]) / w
    scale = math.sqrt(abs(float(np.linalg.det(jac))))
    angle = float(wrap_angle(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1])))
    return scale, angle


def geometric_consistency(
    pts_q: np.ndarray,
    pts_r: np.ndarray,
    n_query_cells: int,
    config: ConsistencyConfig | None = None,
) -> ConsistencyResult:
    """Geometric-consistency confidence of one retrieval candidate (method.md §8).

    Args:
        pts_q: ``(N, 2)`` query positions of the matches (pixels; normally coarse-cell centres).
        pts_r: ``(N, 2)`` reference positions of the same matches (pixels).
        n_query_cells: ``N_q >= 1``, the number of query cells (normaliser shared by all candidates).
        config: Score parameters; default :class:`ConsistencyConfig` (reading A).

    Returns:
        :class:`ConsistencyResult`. Too few matches (``N < 2``, or ``N < 4`` for ransac), no pair at least
        ``min_pair_distance`` apart, or a failed homography give score 0, no inliers (and NaN scale/angle where
        they are undefined); no exception.

    Raises:
        ValueError: on malformed points or ``n_query_cells < 1``.
    """
    cfg = config if config is not None else ConsistencyConfig()
    p, q = _check_points(pts_q, pts_r)
    if isinstance(n_query_cells, bool) or int(n_query_cells) != n_query_cells or n_query_cells < 1:
        raise ValueError(f"n_query_cells must be a positive integer, got {n_query_cells!r}")
    n_q = int(n_query_cells)
    n = p.shape[0]
    none = np.zeros(n, dtype=bool)

    if cfg.method == "ransac":
        result = estimate_homography(
            p, q, threshold_px=cfg.ransac_threshold, confidence=cfg.ransac_confidence, max_iters=cfg.ransac_max_iters
        )
        if result.H is None:
            logger.debug("ransac consistency: %s", result.reason)
            return ConsistencyResult(0.0, none, math.nan, math.nan)
        scale, angle = _similarity_of_homography(result.H, p[result.inliers].mean(axis=0))
        return ConsistencyResult(result.num_inliers / n_q, result.inliers, scale, angle)

    if n < 2:
        return ConsistencyResult(0.0, none, math.nan, math.nan)
    pairs = _pairs(p, q, cfg)
    if pairs.e.size == 0:
        return ConsistencyResult(0.0, none, pairs.scale, pairs.angle)
    if cfg.method == "spectral":
        score, inliers = _spectral(n, pairs, n_q, cfg)
    else:
        score, inliers = _robust(n, pairs, n_q, cfg)
    return ConsistencyResult(score, inliers, pairs.scale, pairs.angle)
