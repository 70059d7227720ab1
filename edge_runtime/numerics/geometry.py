"""Planar geometry for localisation and evaluation (numpy + OpenCV, torch-free).

- :func:`estimate_homography`: robust query -> reference homography (``cv2.USAC_MAGSAC``, method.md decision 20)
  with degeneracy checks.
- :func:`project_points`, :func:`image_corners`, :func:`footprint`: projecting query pixels and the query outline.
- :func:`is_convex_quad`, :func:`quad_iou`, :func:`quad_contains`: quadrilateral tests and IoU (method.md §9,
  decisions 18/19; evaluation.md), hand-written in float64 (no shapely on the vehicle).

Homographies are 3x3 float64 and map query pixel coordinates to reference/map pixel coordinates, OpenCV pixel
convention (pixel ``(x, y)`` centred at integer ``(x, y)``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "HomographyResult",
    "estimate_homography",
    "footprint",
    "homography_degeneracy",
    "image_corners",
    "is_convex_quad",
    "project_points",
    "quad_area",
    "quad_contains",
    "quad_iou",
]

#: Minimum number of correspondences for a homography.
MIN_MATCHES = 4
#: A homography whose singular values satisfy ``s_min / s_max`` below this is rejected as near-singular.
MIN_SINGULAR_RATIO = 1e-8
#: Inlier query (and reference) points whose centred singular values satisfy ``s_min / s_max`` below this are
#: treated as collinear: a homography is not determined by them.
MIN_SPREAD_RATIO = 1e-2
#: Relative tolerance (w.r.t. the squared quad extent) below which a cross product / area counts as zero.
_REL_EPS = 1e-12


@dataclass(frozen=True)
class HomographyResult:
    """Outcome of :func:`estimate_homography`.

    Attributes:
        H: ``(3, 3)`` float64 query -> reference homography normalised to ``H[2, 2] = 1``, or None on failure.
        inliers: ``(N,)`` bool inlier mask of the input matches (all False on failure).
        reason: None on success, else a short human-readable reason for the failure.
    """

    H: np.ndarray | None
    inliers: np.ndarray
    reason: str | None

    @property
    def ok(self) -> bool:
        """True when a homography was found and passed the degeneracy checks."""
        return self.H is not None

    @property
    def num_inliers(self) -> int:
        """Number of inlier matches."""
        return int(np.count_nonzero(self.inliers))


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {np.shape(points)}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{name} contains non-finite coordinates")
    return pts


def _as_homography(H: np.ndarray) -> np.ndarray:
    h = np.asarray(H, dtype=np.float64)
    if h.shape != (3, 3):
        raise ValueError(f"homography must have shape (3, 3), got {np.shape(H)}")
    if not np.all(np.isfinite(h)):
        raise ValueError("homography contains non-finite values")
    return h


def _as_quad(quad: np.ndarray, name: str) -> np.ndarray:
    q = np.asarray(quad, dtype=np.float64)
    if q.shape != (4, 2):
        raise ValueError(f"{name} must have shape (4, 2), got {np.shape(quad)}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name} contains non-finite coordinates")
    return q


def project_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Applies a homography to points.

    Args:
        H: ``(3, 3)`` homography.
        pts: ``(N, 2)`` points ``(x, y)``.

    Returns:
        ``(N, 2)`` float64 projected points. Points on the homography's line at infinity (``w = 0``) come out as
        ``inf``/``nan``; callers that need finite output check the footprint first (:func:`estimate_homography`
        rejects homographies whose region crosses that line).
    """
    h = _as_homography(H)
    p = _as_points(pts, "pts")
    hom = p @ h[:, :2].T + h[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return hom[:, :2] / hom[:, 2:3]


def image_corners(w: float, h: float) -> np.ndarray:
    """Image outline used for footprints (evaluation.md): ``(0, 0), (w, 0), (w, h), (0, h)``.

    Returns:
        ``(4, 2)`` float64.
    """
    if not (np.isfinite(w) and np.isfinite(h)) or w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got w={w}, h={h}")
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], dtype=np.float64)


def footprint(H: np.ndarray, w: float, h: float) -> np.ndarray:
    """Query outline ``image_corners(w, h)`` projected by ``H``: ``(4, 2)`` float64 reference pixels."""
    return project_points(H, image_corners(w, h))


def _cross_z(quad: np.ndarray) -> np.ndarray:
    """z-components of the cross products of consecutive edges at each vertex, ``(4,)``."""
    e = np.roll(quad, -1, axis=0) - quad
    e_next = np.roll(e, -1, axis=0)
    return e[:, 0] * e_next[:, 1] - e[:, 1] * e_next[:, 0]


def _signed_area(poly: np.ndarray) -> float:
    """Shoelace signed area of a polygon ``(M, 2)`` (positive for counter-clockwise in a y-up frame)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _scale2(quad: np.ndarray) -> float:
    extent = np.ptp(quad, axis=0)
    return float(np.dot(extent, extent))


def quad_area(quad: np.ndarray) -> float:
    """Absolute (shoelace) area of a quadrilateral ``(4, 2)``; meaningful for simple quads."""
    return abs(_signed_area(_as_quad(quad, "quad")))


def is_convex_quad(quad: np.ndarray) -> bool:
    """True iff ``quad`` ``(4, 2)`` is a strictly convex, non-degenerate quadrilateral (either orientation).

    Strict: all four turns have the same sign and none is (numerically) zero, so collinear triples, repeated
    vertices, zero area, self-intersecting ("bow-tie") and concave quads are all rejected. Non-finite coordinates
    give False.
    """
    q = np.asarray(quad, dtype=np.float64)
    if q.shape != (4, 2):
        raise ValueError(f"quad must have shape (4, 2), got {np.shape(quad)}")
    if not np.all(np.isfinite(q)):
        return False
    scale2 = _scale2(q)
    if scale2 == 0.0:
        return False
    cz = _cross_z(q)
    eps = _REL_EPS * scale2
    return bool(np.all(cz > eps) or np.all(cz < -eps))


def _ccw(quad: np.ndarray) -> np.ndarray:
    """Returns the quad with positive signed area (vertex order reversed if needed)."""
    return quad if _signed_area(quad) > 0 else quad[::-1].copy()


def _clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: ``subject`` polygon clipped by the convex, positively oriented ``clip`` polygon."""
    out = subject
    n_clip = clip.shape[0]
    for k in range(n_clip):
        if out.shape[0] == 0:
            break
        a = clip[k]
        edge = clip[(k + 1) % n_clip] - a
        # Signed distance-like value: >= 0 means on the inner (left) side of the clip edge.
        d = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
        nxt = np.roll(out, -1, axis=0)
        d_nxt = np.roll(d, -1)
        pieces = []
        for i in range(out.shape[0]):
            if d[i] >= 0:
                pieces.append(out[i])
            if (d[i] >= 0) != (d_nxt[i] >= 0):
                t = d[i] / (d[i] - d_nxt[i])
                pieces.append(out[i] + t * (nxt[i] - out[i]))
        out = np.array(pieces, dtype=np.float64).reshape(-1, 2)
    return out


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex quadrilaterals, in float64.

    The intersection is computed by clipping ``a`` against ``b`` (Sutherland-Hodgman, exact for convex inputs)
    and measured with the shoelace formula; it agrees with shapely to ~1e-12 relative.

    Args:
        a: ``(4, 2)`` strictly convex quad (either vertex orientation).
        b: ``(4, 2)`` strictly convex quad.

    Returns:
        IoU in ``[0, 1]``: 0 for disjoint or edge-touching quads, 1 for identical ones.

    Raises:
        ValueError: if either quad has the wrong shape, non-finite coordinates, or is not strictly convex
            (degenerate, concave or self-intersecting). Callers decide what an invalid footprint scores
            (evaluation.md counts it as a failure, IoU 0) by checking :func:`is_convex_quad` first.
    """
    qa = _as_quad(a, "a")
    qb = _as_quad(b, "b")
    for name, q in (("a", qa), ("b", qb)):
        if not is_convex_quad(q):
            raise ValueError(f"quad_iou needs strictly convex quads; {name}={q.tolist()} is not")
    qa, qb = _ccw(qa), _ccw(qb)
    area_a, area_b = _signed_area(qa), _signed_area(qb)
    inter_poly = _clip_convex(qa, qb)
    inter = abs(_signed_area(inter_poly)) if inter_poly.shape[0] >= 3 else 0.0
    inter = min(inter, area_a, area_b)
    union = area_a + area_b - inter
    return float(inter / union)


def quad_contains(quad: np.ndarray, point: np.ndarray) -> bool:
    """True iff ``point`` lies inside or on the boundary of the convex quad (R@k test, method.md decision 18).

    Args:
        quad: ``(4, 2)`` strictly convex quad (either orientation).
        point: ``(2,)`` point ``(x, y)``.

    Raises:
        ValueError: on bad shapes, non-finite values or a quad that is not strictly convex.
    """
    q = _as_quad(quad, "quad")
    p = np.asarray(point, dtype=np.float64)
    if p.shape != (2,) or not np.all(np.isfinite(p)):
        raise ValueError(f"point must be a finite (2,) array, got {point!r}")
    if not is_convex_quad(q):
        raise ValueError(f"quad_contains needs a strictly convex quad, got {q.tolist()}")
    q = _ccw(q)
    e = np.roll(q, -1, axis=0) - q
    d = e[:, 0] * (p[1] - q[:, 1]) - e[:, 1] * (p[0] - q[:, 0])
    # Boundary tolerance relative to the edge length and the quad size (absorbs float64 rounding only).
    tol = _REL_EPS * np.sqrt(_scale2(q)) * np.hypot(e[:, 0], e[:, 1])
    return bool(np.all(d >= -tol))


def _region_corners(pts_q: np.ndarray, image_size: tuple[float, float] | None) -> np.ndarray:
    if image_size is not None:
        return image_corners(float(image_size[0]), float(image_size[1]))
    lo, hi = pts_q.min(axis=0), pts_q.max(axis=0)
    return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]], dtype=np.float64)


def homography_degeneracy(H: np.ndarray, region: np.ndarray, allow_reflection: bool = False) -> str | None:
    """Reason why ``H`` is unusable over a convex query ``region`` ``(4, 2)``, or None if it is fine.

    Checks, in order: finite entries; ``s_min / s_max >= MIN_SINGULAR_RATIO`` (not near-singular); the projective
    denominator ``w = h31 x + h32 y + h33`` has one strict sign over the region (the footprint does not cross the
    line at infinity); the projected region is a strictly convex quad; and, unless ``allow_reflection``, the
    projection keeps the orientation (a mirrored map footprint is impossible for a camera looking at the ground).
    """
    h = np.asarray(H, dtype=np.float64)
    if h.shape != (3, 3) or not np.all(np.isfinite(h)):
        return "homography is non-finite"
    region = _as_quad(region, "region")
    if not is_convex_quad(region):
        return "query region is degenerate (matches span no area)"
    sv = np.linalg.svd(h, compute_uv=False)
    if sv[0] == 0.0 or sv[-1] / sv[0] < MIN_SINGULAR_RATIO:
        return f"homography is near-singular (singular value ratio {sv[-1] / max(sv[0], 1e-300):.2e})"
    w = region @ h[2, :2] + h[2, 2]
    if not (np.all(w > 0) or np.all(w < 0)):
        return "footprint crosses the line at infinity"
    quad = region @ h[:2, :2].T + h[:2, 2]
    quad = quad / w[:, None]
    if not is_convex_quad(quad):
        return "footprint is not a convex quadrilateral"
    if not allow_reflection and np.sign(_signed_area(quad)) != np.sign(_signed_area(region)):
        return "footprint is mirrored (orientation-reversing homography)"
    return None


def _robust_fit_inputs(pts_q: np.ndarray, pts_r: np.ndarray, threshold_px: float, confidence: float,
                       max_iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(N, 2)`` float64 point sets and RANSAC parameters of a robust fit (``ValueError`` otherwise)."""
    q = _as_points(pts_q, "pts_q")
    r = _as_points(pts_r, "pts_r")
    if q.shape != r.shape:
        raise ValueError(f"pts_q {q.shape} and pts_r {r.shape} must have the same shape")
    if not np.isfinite(threshold_px) or threshold_px <= 0:
        raise ValueError(f"threshold_px must be > 0, got {threshold_px}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(max_iters) != max_iters or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters}")
    return q, r


def estimate_homography(
    pts_q: np.ndarray,
    pts_r: np.ndarray,
    threshold_px: float = 3.0,
    confidence: float = 0.999,
    max_iters: int = 10000,
    image_size: tuple[float, float] | None = None,
) -> HomographyResult:
    """Robust query -> reference homography with ``cv2.findHomography(..., cv2.USAC_MAGSAC)``.

    Args:
        pts_q: ``(N, 2)`` query pixel coordinates.
        pts_r: ``(N, 2)`` matching reference pixel coordinates.
        threshold_px: MAGSAC inlier threshold in reference pixels (method.md decision 20: 3 px at 1024 px query scale).
        confidence: RANSAC confidence in ``(0, 1)``.
        max_iters: Maximum number of iterations ``>= 1``.
        image_size: Optional query size ``(w, h)``; the degeneracy checks use its outline
            (:func:`image_corners`), else the bounding box of ``pts_q``.

    OpenCV's USAC already discards orientation-reversing (mirroring) minimal samples, so a mirrored point set
    yields "no model"; :func:`homography_degeneracy` rejects mirrored homographies as well.

    Returns:
        :class:`HomographyResult`. Fewer than 4 matches or inliers, a solver failure, (nearly) collinear inliers
        (centred singular-value ratio below ``MIN_SPREAD_RATIO``) or a degenerate homography (see
        :func:`homography_degeneracy`) give ``H = None``, all-False inliers and a ``reason``; no exception.

    Raises:
        ValueError: on malformed inputs (shapes, non-finite values, parameters out of range).
    """
    q, r = _robust_fit_inputs(pts_q, pts_r, threshold_px, confidence, max_iters)
    n = q.shape[0]
    no_inliers = np.zeros(n, dtype=bool)
    if n < MIN_MATCHES:
        return HomographyResult(None, no_inliers, f"too few matches ({n} < {MIN_MATCHES})")
    try:
        H, mask = cv2.findHomography(
            q,
            r,
            method=cv2.USAC_MAGSAC,
            ransacReprojThreshold=float(threshold_px),
            maxIters=int(max_iters),
            confidence=float(confidence),
        )
    except cv2.error as exc:  # OpenCV raises on some degenerate configurations
        logger.debug("findHomography raised: %s", exc)
        return HomographyResult(None, no_inliers, f"findHomography failed: {exc.msg if hasattr(exc, 'msg') else exc}")
    if H is None or mask is None:
        return HomographyResult(None, no_inliers, "findHomography found no model")
    H = np.asarray(H, dtype=np.float64)
    if H[2, 2] != 0.0 and np.isfinite(H[2, 2]):
        H = H / H[2, 2]
    reason = homography_degeneracy(H, _region_corners(q, image_size))
    if reason is not None:
        return HomographyResult(None, no_inliers, reason)
    inliers = mask.ravel().astype(bool)
    if int(inliers.sum()) < MIN_MATCHES:
        return HomographyResult(None, no_inliers, f"too few inliers ({int(inliers.sum())} < {MIN_MATCHES})")
    for name, pts in (("query", q[inliers]), ("reference", r[inliers])):
        sv = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
        if sv[0] == 0.0 or sv[1] / sv[0] < MIN_SPREAD_RATIO:
            return HomographyResult(None, no_inliers, f"inlier {name} points are (nearly) collinear")
    return HomographyResult(H, inliers, None)


def estimate_similarity(
    pts_q: np.ndarray,
    pts_r: np.ndarray,
    threshold_px: float = 3.0,
    confidence: float = 0.999,
    max_iters: int = 10000,
) -> HomographyResult:
    """Robust query -> reference similarity (rotation, uniform scale, translation; 4 degrees of freedom) with
    ``cv2.estimateAffinePartial2D`` (RANSAC, then least-squares refinement on the inliers).

    A nadir camera over flat ground sees the map through a similarity; the 8-degree-of-freedom homography is then
    poorly conditioned when the matches cluster in part of the frame (its perspective terms extrapolate wildly).

    Args:
        pts_q, pts_r: ``(N, 2)`` matching pixel coordinates.
        threshold_px: inlier threshold in reference pixels.
        confidence: RANSAC confidence in ``(0, 1)``. max_iters: maximum iterations ``>= 1``.

    Returns:
        :class:`HomographyResult` whose ``H`` is the similarity as a ``(3, 3)`` matrix; fewer than 4 matches or
        inliers, a solver failure, a vanishing scale or (nearly) coincident inliers give ``H = None`` and a reason.

    Raises:
        ValueError: on malformed inputs.
    """
    q, r = _robust_fit_inputs(pts_q, pts_r, threshold_px, confidence, max_iters)
    n = q.shape[0]
    no_inliers = np.zeros(n, dtype=bool)
    if n < MIN_MATCHES:
        return HomographyResult(None, no_inliers, f"too few matches ({n} < {MIN_MATCHES})")
    try:
        A, mask = cv2.estimateAffinePartial2D(q, r, method=cv2.RANSAC, ransacReprojThreshold=float(threshold_px),
                                              maxIters=int(max_iters), confidence=float(confidence), refineIters=10)
    except cv2.error as exc:
        return HomographyResult(None, no_inliers, f"estimateAffinePartial2D failed: {exc}")
    if A is None or mask is None:
        return HomographyResult(None, no_inliers, "estimateAffinePartial2D found no model")
    H = np.vstack([np.asarray(A, dtype=np.float64), [0.0, 0.0, 1.0]])
    scale = math.sqrt(abs(np.linalg.det(H[:2, :2])))
    if not np.all(np.isfinite(H)) or scale < 1e-6:
        return HomographyResult(None, no_inliers, "degenerate similarity (vanishing scale)")
    inliers = mask.ravel().astype(bool)
    if int(inliers.sum()) < MIN_MATCHES:
        return HomographyResult(None, no_inliers, f"too few inliers ({int(inliers.sum())} < {MIN_MATCHES})")
    spread = np.linalg.svd(q[inliers] - q[inliers].mean(axis=0), compute_uv=False)
    if spread[0] == 0.0:
        return HomographyResult(None, no_inliers, "inlier query points coincide")
    return HomographyResult(H, inliers, None)


GEOMETRY_MODELS = ("auto", "homography", "similarity")
HOMOGRAPHY_GAIN = 1.25  # "auto": the homography must explain this factor of the similarity's inliers ...
HOMOGRAPHY_MIN_EXTRA_INLIERS = 12  # ... and this many more


def fit_query_to_map(
    pts_q: np.ndarray,
    pts_r: np.ndarray,
    threshold_px: float,
    image_size: tuple[int, int] | None = None,
    model: str = "auto",
    homography_gain: float = HOMOGRAPHY_GAIN,
    homography_min_extra_inliers: int = HOMOGRAPHY_MIN_EXTRA_INLIERS,
) -> tuple[HomographyResult, str]:
    """Query -> map transform from matches ``pts_q, pts_r (N, 2)``: the one geometry choice of the vehicle's locator
    and of ``topicgeo-eval``.

    ``homography`` (MAGSAC, 8 DoF), ``similarity`` (RANSAC, 4 DoF: a nadir camera over flat ground) or ``auto``:
    both are fitted and the homography is kept only when it explains at least ``homography_gain`` times the
    similarity's inliers and ``homography_min_extra_inliers`` more; with matches clustered in part of the query its
    perspective terms are otherwise unconstrained and the footprint extrapolates wildly.

    Returns:
        the fit (its ``H`` is ``(3, 3)`` either way) and the model used: ``homography`` or ``similarity``.
    """
    if model not in GEOMETRY_MODELS or homography_gain < 1:
        raise ValueError(f"model must be one of {GEOMETRY_MODELS} (got {model!r}) and homography_gain >= 1")
    if model == "similarity":
        return estimate_similarity(pts_q, pts_r, threshold_px), "similarity"
    hom = estimate_homography(pts_q, pts_r, threshold_px, image_size=image_size)
    if model == "homography":
        return hom, "homography"
    sim = estimate_similarity(pts_q, pts_r, threshold_px)
    if not sim.ok:
        return hom, "homography"
    if hom.ok and hom.num_inliers >= max(homography_gain * sim.num_inliers,
                                         sim.num_inliers + homography_min_extra_inliers):
        return hom, "homography"
    return sim, "similarity"
