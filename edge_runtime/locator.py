"""The locator: one camera frame -> a geo pose on the cached maps (torch-free; ONNX Runtime or TensorRT).

Stages of :meth:`Locator.locate` (each timed in ``latency_ms``):

1. ``prepare``: undistort (calibration), bring the frame to the working scale from the altitude prior and the
   intrinsics, place it on the square query canvas (padding = invalid cells). Without an altitude prior a few content
   scales are searched. Every canvas of the frame shrinks from its nearest area-filtered halving
   (:class:`~edge_runtime.frame_pyramid.FramePyramid`).
2. ``encode_query``: the exported query encoder.
3. ``retrieval``: for every map, dual-softmax + mutual nearest neighbours between the query's topic features and all
   of that map's cached coarse cells at once (one matrix product over the whole map, overlapping tiles deduplicated
   to one feature per map cell), then the geometric-consistency confidence of the matches; maps rank by it. The
   softmax spans the whole map as in ``topicgeo-eval`` (a per-tile softmax finds a confident partner for every
   query cell in any tile and loses the evidence that one place matches better than all others). A position prior
   (``Priors.near_lat`` / ``near_lon``, e.g. the last GNSS fix) or the temporal prior (the last good fix) is searched
   first, widening to all maps when the confidence drops or nothing there is accepted.
4. ``read_roi`` + ``encode_roi``: the region of interest around the retrieved location, read (windowed) from the
   original raster and encoded with the tile encoder; skipped when a region kept from an earlier frame lies close
   enough (``LocatorConfig.roi_cache_size``, :mod:`edge_runtime.region_cache`).
5. ``coarse_match`` + ``fine_match``: MKNN coarse matches and the exported multi-level fine matcher.
6. ``homography``: MAGSAC (the first fit).
7. ``refine_render`` and a second ``encode_query`` / ``coarse_match`` / ``fine_match`` / ``homography``
   (``LocatorConfig.refine``): the frame re-rendered north-up on the region's grid around the first fit, matched
   again with coarse matches gated to the cells the first fit predicts, fitted again. The refined fit is accepted with
   ``min_inliers`` inliers, else the first with ``min_first_pass_inliers``; then the pose (WGS84 via pyproj, map
   coordinates, heading, altitude, footprint, uncertainty). A frame that fails any check gets a reason, never a
   guessed pose.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.backends import BackendChoice, BackendSelection, open_graph
from edge_runtime.bundle import Bundle, open_bundle
from edge_runtime.frame_pyramid import FramePyramid, as_pyramid
from edge_runtime.map_cache import MapCache, open_map_cache
from edge_runtime.numerics.coarse import CoarseMatchConfig, alignment_gate, coarse_confidence, coarse_matches
from edge_runtime.numerics.consistency import ConsistencyConfig, geometric_consistency
from edge_runtime.numerics.geometry import (
    GEOMETRY_MODELS,
    HOMOGRAPHY_GAIN,
    HomographyResult,
    fit_query_to_map,
    footprint,
    is_convex_quad,
    project_points,
)
from edge_runtime.numerics.grid import cell_centers, cell_validity
from edge_runtime.numerics.matching import matches_from_mask, mutual_nearest_mask
from edge_runtime.region_cache import EncodedRegion, RegionCache
from edge_runtime.types import LocateResult, Priors

logger = logging.getLogger(__name__)

DEFAULT_MIN_INLIERS = 12  # acceptance rule of bundles whose checkpoint carries no calibrated one
PLAN_MERGE_RATIO = 1.05  # maps whose query content sizes differ by less than this factor share one query scale
# per verified hypothesis: both fits (first pass and refinement), for diagnosis and benchmarks.acceptance
PASS_KEYS = ("first_pass_inliers", "first_pass_footprint_px", "refined_inliers", "refined_footprint_px")


class LocatorError(ValueError):
    """A locator that cannot be opened (bundle / cache mismatch, bad config) or a frame that is not an image."""


@dataclass(frozen=True)
class LocatorConfig:
    """Locator parameters.

    Attributes:
        backend: inference backend choice (ONNX Runtime CPU by default; TensorRT with explicit fallback).
        content_scales: fractions of the query side the frame content is fitted to when no altitude is known. One
            scale by default: the network is trained across a ~3x scale range, and on the SJER dev queries adding
            0.5 found no more places while doubling the encoder runs.
        search_rotations_deg: clockwise rotations of the frame tried when there is no yaw prior (the network is
            trained on north-up +-45 degrees, so the four quarter turns cover the circle); with a yaw prior the frame
            is rotated north-up by the yaw alone.
        target_ratio: wanted query/map scale ratio when the altitude is known (the reference checkpoint ends its
            training on ~0.85-2.6x, see configs/train_cpu_stage2.yaml); maps of different GSDs each get a query at
            this ratio (:meth:`Locator.query_plans`).
        min_overview_ratio: with a scale prior, a map is searched on its own pixels only when the frame, fitted to
            the query canvas, is shown there at no less than this query/map scale ratio (its footprint fits the
            canvas at that ratio); otherwise on the finest of the map's cached overview levels that reaches it (the
            coarsest when none does; :func:`overview_for_frame`). The Brighton Beach frames (~680 px of the 0.1 m
            orthophoto, ratio 0.75 on a 512 px canvas) go to its 0.2 m level (ratio 1.5).
        shortlist: retrieval candidates (maps, best first) reported with a result.
        verify_candidates: retrieval hypotheses (one per map, scale and rotation of the frame) verified by the fine
            stage, best retrieval score first, until one is accepted; a clear frame costs one fine stage, a frame
            without a fix this many. Retrieval ranks the right place among its first few hypotheses more often than
            first, so three by default: on the 132 pooled SJER + NAIP dev tuning queries (seeds 1-3, stage-4
            checkpoint, refinement pass, rules calibrated per value at >= 90 % precision; the release's
            ``topicgeo/assets/acceptance.json`` now pools seeds 1-6) one hypothesis keeps 34 right fixes of 36
            accepted (rules 64 / 124), two 45 of 47 (63 / 118), three 51 of 56 (63 / 79), four 52 of 57 (83 / 79);
            on the 264 queries of seeds 1-6, each at its own rule, one 76 right fixes, two 91 (rules from a coarser
            grid), three 100 (83 / 81).
            Three became the default once
            the region cache and the frame pyramid had made a fine stage cheap: on the 20 NAIP report queries (17
            km2, no priors; same sitting) the median latency went from 127 to 171 ms and the p95 from 217 to 326 ms
            against two. With the stage-9 weights (release thresholds, rules recalibrated): three 55 of 61, four 55
            of 60, five 57 of 63. One-pass history: SJER tuning queries kept 18 right fixes with one hypothesis
            (rule 90), 25 with two, 28 with three. The acceptance rules must be calibrated for the value used
            (``benchmarks.acceptance --verify-candidates``) and stored in the checkpoint (``python -m
            topicgeo.train.card --checkpoint CKPT --acceptance REPORT``, ``scripts/recalibrate_acceptance.sh``).
        consistency: geometric-consistency parameters (method.md §8, reading A by default).
        min_confidence: retrieval confidence below which a frame is not located.
        min_inliers: inliers the fix's final fit needs (the refinement pass's fit when ``refine`` is on); None
            (default) takes the bundle's calibrated value (``model_config.matching.min_inliers``, chosen per
            checkpoint on dev tuning queries so that accepted fixes are right; 12 for bundles without one).
        min_first_pass_inliers: a first fit with at least this many inliers is accepted even when its refinement
            falls short of ``min_inliers`` (some right places match better as first encoded, e.g. NAIP at a high
            zoom); with ``refine`` off it is the rule for the one fit there is. None (default) takes the bundle's
            (``model_config.matching.min_first_pass_inliers``, calibrated jointly with ``min_inliers`` by
            ``benchmarks.acceptance``); a bundle without one accepts first fits only when not refining, by
            ``min_inliers``.
        homography_threshold_px: MAGSAC threshold in map pixels.
        geometry: frame -> map model. ``homography`` (MAGSAC, 8 DoF), ``similarity`` (RANSAC, 4 DoF: a nadir camera
            over flat ground) or ``auto``: both are fitted and the homography is kept only when it explains at
            least ``homography_gain`` times the similarity's inliers (and at least 12 more); with
            matches clustered in part of the frame its perspective terms are otherwise unconstrained and the
            footprint extrapolates wildly.
        homography_gain: see ``geometry``.
        max_scale_error: with an altitude prior, the found scale may differ by at most this factor.
        max_heading_error_deg: with a yaw prior, the found heading (image top, clockwise from true north) may differ
            from it by at most this many degrees. A compass and gimbal yaw are good to a few degrees; a fit that
            turns the north-up frame by more than that has matched the wrong place. (The frame is de-rotated onto
            the map's grid with the yaw prior; grid north is within ~2 degrees of true north in UTM.)
        temporal_prior: frames are a sequence (one camera in flight, in capture order): after a fix the next frame
            is retrieved among the cells within ``prior_radius_m`` of it first (a canvas with nothing there above
            ``min_confidence`` at once against every map), and when no hypothesis found there is accepted, against
            every map again, skipping the places already verified (:func:`same_place`). On for the onboard service;
            ``edge-locate`` turns it on with ``--sequence`` only: its images are unrelated unless said otherwise.
            Without the second search the prior lost frames a search of every map finds: on the 24 SJER report
            queries (three per plot in order, so a query often follows a fix on another plot) fp32 R@1 / mIoU were
            54.2 / 43.4 % with it against 66.7 / 54.4 % with each image on its own; with it 70.8 / 57.4 % (the
            prior now helps the queries of the plot just found), at 280 / 548 ms median / p95 against 177 / 331
            (a frame that fails near the last fix pays for a second fine stage; stage-4 checkpoint,
            ``benchmarks/results/2026-12-06_cpu_independent`` and its ``sequence/``).
        prior_radius_m: the temporal prior searches tiles within this distance of the last fix first; so does a
            position prior (``Priors.near_lat`` / ``near_lon``) without its own ``near_radius_m``.
        refine: verify a hypothesis in two passes. The first fit (frame matched as encoded for retrieval: turned by a
            quarter turn, never rectified) predicts where the frame lies on the region of interest; the frame is then
            re-rendered north-up and rectified on that region's grid, encoded again and matched with coarse matches
            gated to ``refine_gate_cells`` cells of the predicted position, and fitted again. The second fit's
            inliers decide acceptance: at the right place they grow (the two images now agree in rotation, scale
            and perspective), at a wrong place the gate leaves no consistent set. Costs one query encode and one
            fine match more per verified hypothesis.
        refine_max_ratio: the refinement canvas zooms the map grid by 1 to this factor (the footprint fills ~90 %
            of the canvas when it can).
        refine_gate_cells: Chebyshev radius, in coarse cells, around the predicted position (see ``refine``).
        refine_geometry: the second fit's model (``geometry``'s choices). ``similarity`` by default: a nadir camera
            over flat ground, and on the 72 pooled SJER dev tuning queries (seeds 1-3, stage-4 checkpoint, one
            hypothesis) it kept the most right fixes at >= 90 % precision: 23 of 24 accepted (rule 64 inliers),
            against 22 of 24 with ``auto`` (rule 100) and 18 of 19 without the refinement (rule 90); a gate of 0 or 2
            cells kept 21 and 23. Set ``auto`` for an oblique camera.
        refine_min_first_inliers: a first fit with fewer inliers is not refined (the hypothesis is rejected: the
            first-pass rule is far stricter). On the 132 pooled dev tuning queries no right fix came from a first
            fit with fewer than 20 inliers, with two hypotheses or with three; 16 skips 66 of 231 refinements with
            two and 82 of 314 with three (~90 ms each on this CPU) and keeps every fix.
        attitude_std_deg: 1-sigma error of the camera attitude behind a position that is not a 6-DoF PnP pose (a
            gimbal's roll / pitch prior, or the nadir assumption), in degrees. Such a position is the ground point
            under the principal point moved by ``altitude * tan(tilt)``, so its reported horizontal std adds
            ``altitude * tan(attitude_std_deg)`` (in quadrature) to the fit's: 1.4 m at 40 m AGL with the default
            2 degrees. The fit alone claimed ~0.1 m where the Brighton Beach fixes were 1.5-1.8 m off: the SfM
            orientations of those frames differ from the gimbal's reported -89.9 degree pitch by 0.8-2.7 degrees,
            and an autopilot weights a fix by this std.
        roi_cache_size: encoded regions of interest kept across frames (:class:`~edge_runtime.region_cache.RegionCache`;
            ~9 MB each for the reference bundle's 512-px tiles). A frame whose wanted region lies within
            ``roi_reuse_fraction`` of the tile side of a kept region on the same map level reuses it instead of
            reading and encoding the raster again (~90 ms on this CPU): consecutive frames of a vehicle see the same
            ground. 0 keeps nothing between frames (each frame then encodes each distinct region once).
        roi_reuse_fraction: see ``roi_cache_size``; the footprint then still lies within ~1/8 tile of the region's
            centre. With a scale prior the shift is further limited to the margin the frame's expected footprint
            leaves in the window, so a kept region never cuts off part of the frame's ground.
        verify: verify bundle and cache hashes when opening.
    """

    backend: BackendChoice = field(default_factory=BackendChoice)
    content_scales: tuple[float, ...] = (1.0,)
    search_rotations_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    target_ratio: float = 1.6
    min_overview_ratio: float = 1.0
    shortlist: int = 3
    verify_candidates: int = 3
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    min_confidence: float = 0.01
    min_inliers: int | None = None
    min_first_pass_inliers: int | None = None
    homography_threshold_px: float = 4.0
    geometry: str = "auto"
    homography_gain: float = HOMOGRAPHY_GAIN
    max_scale_error: float = 2.0
    max_heading_error_deg: float = 15.0
    temporal_prior: bool = True
    prior_radius_m: float = 150.0
    refine: bool = True
    refine_max_ratio: float = 2.0
    refine_gate_cells: int = 1
    refine_geometry: str = "similarity"
    refine_min_first_inliers: int = 16
    attitude_std_deg: float = 2.0
    roi_cache_size: int = 4
    roi_reuse_fraction: float = 0.125
    verify: bool = True

    def __post_init__(self) -> None:
        if not self.content_scales or any(not 0.1 <= s <= 1.0 for s in self.content_scales):
            raise ValueError(f"content_scales must lie in [0.1, 1], got {self.content_scales}")
        if not self.search_rotations_deg or not all(math.isfinite(r) for r in self.search_rotations_deg):
            raise ValueError(f"search_rotations_deg must be finite angles, got {self.search_rotations_deg}")
        rules = (self.min_inliers, self.min_first_pass_inliers)
        if self.target_ratio <= 0 or self.shortlist < 1 or any(r is not None and r < 4 for r in rules):
            raise ValueError("target_ratio > 0, shortlist >= 1, min_inliers >= 4 and min_first_pass_inliers >= 4 "
                             "are required")
        if not 0 < self.min_overview_ratio <= self.target_ratio:
            raise ValueError(f"min_overview_ratio must lie in (0, target_ratio], got {self.min_overview_ratio}")
        if self.verify_candidates < 1:
            raise ValueError(f"verify_candidates must be >= 1, got {self.verify_candidates}")
        if self.refine_geometry not in GEOMETRY_MODELS:
            raise ValueError(f"refine_geometry must be auto, homography or similarity, got {self.refine_geometry!r}")
        if self.geometry not in GEOMETRY_MODELS or self.homography_gain < 1:
            raise ValueError(f"geometry must be auto, homography or similarity (got {self.geometry!r}) and "
                             f"homography_gain >= 1 (got {self.homography_gain})")
        if self.homography_threshold_px <= 0 or self.max_scale_error < 1 or self.prior_radius_m <= 0:
            raise ValueError("homography_threshold_px > 0, max_scale_error >= 1, prior_radius_m > 0 are required")
        if self.refine_max_ratio < 1 or self.refine_gate_cells < 0 or self.refine_min_first_inliers < 0:
            raise ValueError(f"refine_max_ratio must be >= 1, refine_gate_cells and refine_min_first_inliers >= 0, "
                             f"got {self.refine_max_ratio}, {self.refine_gate_cells}, {self.refine_min_first_inliers}")
        if not 0 <= self.attitude_std_deg < 45:
            raise ValueError(f"attitude_std_deg must lie in [0, 45), got {self.attitude_std_deg}")
        if not 0 < self.max_heading_error_deg <= 180:
            raise ValueError(f"max_heading_error_deg must lie in (0, 180], got {self.max_heading_error_deg}")
        if self.roi_cache_size < 0 or not 0 <= self.roi_reuse_fraction <= 0.25:
            raise ValueError(f"roi_cache_size must be >= 0 and roi_reuse_fraction in [0, 0.25], got "
                             f"{self.roi_cache_size}, {self.roi_reuse_fraction}")


def fit_geometry(pts_f: np.ndarray, pts_r: np.ndarray, frame_size: tuple[int, int],
                 config: LocatorConfig, geometry: str | None = None) -> tuple[HomographyResult, str]:
    """Frame -> map transform from matches ``pts_f, pts_r (N, 2)`` per ``geometry`` (default ``config.geometry``;
    :func:`~edge_runtime.numerics.geometry.fit_query_to_map`, shared with ``topicgeo-eval``).

    Returns:
        the fit (its ``H`` is ``(3, 3)`` either way) and the model used: ``homography`` or ``similarity``.
    """
    return fit_query_to_map(pts_f, pts_r, config.homography_threshold_px, frame_size, geometry or config.geometry,
                            config.homography_gain)


def first_pass_rule(config: LocatorConfig, matching: dict[str, Any], min_inliers: int) -> int | None:
    """Inliers a first fit needs to be accepted on its own: the config's ``min_first_pass_inliers``, else the
    bundle's calibrated one (``matching``: the manifest's ``model_config.matching``), else ``min_inliers`` when the
    locator does not refine (the one fit there is) and None (never) when it does."""
    if config.min_first_pass_inliers is not None:
        return config.min_first_pass_inliers
    if matching.get("min_first_pass_inliers") is not None:
        return int(matching["min_first_pass_inliers"])
    return None if config.refine else min_inliers


def overview_for_frame(expected_px: float, factors: Sequence[float], query_size: int, target_ratio: float,
                       min_ratio: float) -> float:
    """The level (overview, the map itself or a zoom-in level) a frame is matched on when a scale prior gives its
    footprint.

    Args:
        expected_px: the frame's long side in the map's own pixels. factors: the map's levels as base pixels per
            level pixel (1 = the map itself, 2 = a 2x overview, 0.5 = a 2x zoom-in level).
        query_size: canvas side. target_ratio / min_ratio: see :class:`LocatorConfig` (``min_overview_ratio``).

    Returns:
        the finest factor ``f`` at which the frame, fitted to ``min(query_size, target_ratio * expected_px / f)``
        canvas pixels, is shown at a query/map ratio of at least ``min_ratio``; the coarsest when none is.
    """
    levels = sorted(set(factors))
    for f in levels:
        footprint_px = expected_px / f
        if min(float(query_size), target_ratio * footprint_px) / footprint_px >= min_ratio:
            return f
    return levels[-1]


@dataclass(frozen=True)
class PreparedQuery:
    """A frame on the query canvas.

    Attributes:
        canvas: ``(S, S, 3)`` uint8. cell_valid: ``(Nq,)`` bool. frame_to_canvas: ``(3, 3)`` frame px -> canvas px.
        scale: canvas pixels per frame pixel.
    """

    canvas: np.ndarray
    cell_valid: np.ndarray
    frame_to_canvas: np.ndarray
    scale: float


def area_shrink(frame: np.ndarray | FramePyramid, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``frame (H, W, 3)`` shrunk by ``factor < 1`` with the area filter (before a warp that would alias; from the
    nearest level when ``frame`` is a :class:`FramePyramid`), and the ``(3, 3)`` frame px -> shrunk px transform
    (pixel-centre convention)."""
    h, w = frame.shape[:2]
    src = as_pyramid(frame).resized(max(1, round(w * factor)), max(1, round(h * factor)))
    pre = np.diag([src.shape[1] / w, src.shape[0] / h, 1.0])
    pre[:2, 2] = 0.5 * np.diag(pre)[:2] - 0.5
    return src, pre


def local_scale(H: np.ndarray, at: tuple[float, float]) -> float:
    """Output pixels per input pixel of the homography ``H (3, 3)`` at point ``at``: the square root of its Jacobian
    determinant, by differences over one pixel."""
    x, y = at
    p = project_points(H, np.array([[x, y], [x + 1.0, y], [x, y + 1.0]]))
    return math.sqrt(abs(np.linalg.det(np.stack([p[1] - p[0], p[2] - p[0]], axis=1))))


def prepare_query(frame: np.ndarray | FramePyramid, size: int, content_px: float, cell: int = 64,
                  rotation_deg: float = 0.0) -> PreparedQuery:
    """Resize ``frame (H, W, 3)`` (or a :class:`FramePyramid` of it, shared by the canvases of one frame) so its long
    side is ``content_px``, rotate it clockwise by ``rotation_deg`` about its centre and centre it on a
    ``size x size`` canvas (rotated corners that leave the canvas are cut off).

    With the yaw prior (clockwise from north, the image top pointing at the yaw) ``rotation_deg = yaw`` puts north up,
    the orientation the network sees most in training.
    """
    pyramid = as_pyramid(frame)
    h, w = pyramid.shape[:2]
    s = min(content_px, size) / max(h, w)
    if rotation_deg % 360.0 == 0.0:
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        resized = pyramid.resized(nw, nh)
        x0, y0 = (size - nw) // 2, (size - nh) // 2
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[y0 : y0 + nh, x0 : x0 + nw] = resized
        valid = np.zeros((size, size), np.float32)
        valid[y0 : y0 + nh, x0 : x0 + nw] = 1.0
        sx, sy = nw / w, nh / h
        # frame pixel centres -> canvas pixel centres (pixel-centre convention): x' = (x + 0.5) * s - 0.5 + x0
        T = np.array([[sx, 0, 0.5 * sx - 0.5 + x0], [0, sy, 0.5 * sy - 0.5 + y0], [0, 0, 1]], dtype=np.float64)
        scale = float(np.sqrt(sx * sy))
    else:
        src, pre = area_shrink(pyramid, s) if s < 1 else (pyramid.frame, np.eye(3))
        t = math.radians(rotation_deg)
        k = s / pre[0, 0]
        # clockwise on screen (y down) = the rotation matrix of +t in x-right / y-down coordinates
        R = np.array([[k * math.cos(t), -k * math.sin(t)], [k * math.sin(t), k * math.cos(t)]])
        c_src = np.array([(src.shape[1] - 1) / 2.0, (src.shape[0] - 1) / 2.0])
        c_dst = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
        A = np.eye(3)
        A[:2, :2] = R
        A[:2, 2] = c_dst - R @ c_src
        canvas = cv2.warpAffine(src, A[:2], (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        valid = cv2.warpAffine(np.ones(src.shape[:2], np.float32), A[:2], (size, size), flags=cv2.INTER_NEAREST)
        T = A @ pre
        scale = float(s)
    return PreparedQuery(canvas, cell_validity(valid > 0, cell, 0.5), T, scale)


@dataclass(frozen=True)
class RefinementCanvas:
    """The frame re-rendered on the region of interest's grid around a first fit (:func:`refinement_canvas`).

    Attributes:
        canvas: ``(S, S, 3)`` uint8. cell_valid: ``(Nq,)`` bool. frame_to_canvas: ``(3, 3)`` frame px -> canvas px.
        canvas_to_tile: ``(3, 3)`` canvas px -> ROI tile px, the alignment the first fit predicts (a scale and a
            shift: the canvas is the tile's grid, zoomed).
    """

    canvas: np.ndarray
    cell_valid: np.ndarray
    frame_to_canvas: np.ndarray
    canvas_to_tile: np.ndarray


def refinement_canvas(frame: np.ndarray | FramePyramid, frame_to_tile: np.ndarray, size: int, tile_size: int, cell: int,
                      max_ratio: float) -> RefinementCanvas | None:
    """Warp ``frame (H, W, 3)`` by ``frame_to_tile (3, 3)`` (frame px -> ROI tile px, a first fit) onto a
    ``size x size`` canvas that shows the tile's grid zoomed by ``s`` about the footprint's centre: north-up,
    perspective removed, the footprint (clipped to the tile) filling ~90 % of the canvas with ``1 <= s <= max_ratio``
    (the query/map scale ratios the network is trained on start near 1).

    Returns:
        the canvas, or None when the footprint does not overlap the tile by at least a cell each way.
    """
    h, w = frame.shape[:2]
    quad = footprint(frame_to_tile, w, h)
    lo = np.maximum(quad.min(axis=0), 0.0)
    hi = np.minimum(quad.max(axis=0), float(tile_size))
    if not np.all(np.isfinite(quad)) or np.any(hi - lo < cell):
        return None
    s = float(np.clip(0.9 * size / float(np.max(hi - lo)), 1.0, max_ratio))
    centre = (lo + hi) / 2.0
    c0 = (size - 1) / 2.0
    canvas_to_tile = np.array([[1.0 / s, 0.0, centre[0] - c0 / s], [0.0, 1.0 / s, centre[1] - c0 / s],
                               [0.0, 0.0, 1.0]])
    frame_to_canvas = np.linalg.inv(canvas_to_tile) @ frame_to_tile
    frame_to_canvas /= frame_to_canvas[2, 2]
    # shrink big frames first (area filter) so the perspective warp samples without aliasing
    zoom = local_scale(frame_to_canvas, ((w - 1) / 2.0, (h - 1) / 2.0))
    pyramid = as_pyramid(frame)
    src, pre = area_shrink(pyramid, zoom) if zoom < 0.5 else (pyramid.frame, np.eye(3))
    M = frame_to_canvas @ np.linalg.inv(pre)
    canvas = cv2.warpPerspective(src, M, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    valid = cv2.warpPerspective(np.ones(src.shape[:2], np.float32), M, (size, size), flags=cv2.INTER_NEAREST)
    return RefinementCanvas(canvas, cell_validity(valid > 0, cell, 0.5), frame_to_canvas, canvas_to_tile)


@dataclass(frozen=True)
class QueryPlan:
    """One content size of the query canvas and the maps that query is retrieved against.

    Attributes:
        content_px: long side of the frame on the canvas. expected_px: per map, the frame's long side in that map's
            pixels from the scale prior (empty without one). map_ids: the cache entries (maps or overview levels;
            None = every entry).
    """

    content_px: float
    expected_px: dict[str, float]
    map_ids: frozenset[str] | None


@dataclass(frozen=True)
class Hypothesis:
    """One retrieval candidate of one encoded query canvas: where the frame might be.

    Attributes:
        candidate: the :meth:`Locator.retrieve` entry (map, score, consistent coarse matches). prepared / encoded: the
        query canvas and its encoder outputs. plan: the query plan. rotation_deg: clockwise turn of the frame.
    """

    candidate: dict[str, Any]
    prepared: PreparedQuery
    encoded: dict[str, np.ndarray]
    plan: QueryPlan
    rotation_deg: float

    @property
    def score(self) -> float:
        """Retrieval confidence."""
        return float(self.candidate["score"])


def same_place(a: Hypothesis, b: Hypothesis, tile_size: int) -> bool:
    """Whether two hypotheses would verify the same thing: the same canvas (content size and rotation) on the same map
    entry, their consistent coarse matches centred within half a tile of each other on the map."""
    if a.candidate["map_id"] != b.candidate["map_id"] or a.rotation_deg != b.rotation_deg \
            or a.plan.content_px != b.plan.content_px:
        return False
    ca, cb = np.median(a.candidate["pts_r"], axis=0), np.median(b.candidate["pts_r"], axis=0)
    return bool(np.linalg.norm(ca - cb) < tile_size / 2.0)


@dataclass(frozen=True)
class MapCells:
    """One map's coarse cells for retrieval: one feature per map cell.

    Attributes:
        features: ``(M, C)`` float32 topic features. centres_px: ``(M, 2)`` float64 cell centres in map pixels.
    """

    features: np.ndarray
    centres_px: np.ndarray


def unique_map_cells(coarse: np.ndarray, cell_valid: np.ndarray, origins: np.ndarray, tile_size: int,
                     cell: int) -> MapCells:
    """Deduplicate the valid cells of overlapping tiles: where tiles overlap, a map cell keeps the feature of the tile
    in which it lies most centrally (the most context on every side).

    Args:
        coarse: ``(T, N, C)`` tile features, ``N = (tile_size / cell) ** 2`` row-major cells per tile.
        cell_valid: ``(T, N)`` bool.
        origins: ``(T, 2)`` tile origins ``(x0, y0)`` in map pixels (multiples of ``cell`` in a cache: the tiling
            stride is a whole number of cells, so cells of different tiles coincide exactly).
        tile_size: tile side in pixels. cell: coarse stride in pixels.

    Returns:
        the unique valid cells, ordered by map cell (row-major over the map's cell grid).
    """
    t, n, c = coarse.shape
    g = tile_size // cell
    if n != g * g or cell_valid.shape != (t, n) or origins.shape != (t, 2):
        raise ValueError(f"tile arrays disagree: coarse {coarse.shape}, cell_valid {cell_valid.shape}, "
                         f"origins {origins.shape} for {g}x{g} cells per tile")
    local = cell_centers(g, g, cell)  # (N, 2)
    centres = origins[:, None, :].astype(np.float64) + local[None]  # (T, N, 2)
    off_centre = np.abs(local - (tile_size - 1) / 2.0).max(axis=1)  # (N,) Chebyshev distance to the tile centre
    tt, nn = np.nonzero(cell_valid)
    if len(tt) == 0:
        return MapCells(np.zeros((0, c), np.float32), np.zeros((0, 2), np.float64))
    xy = centres[tt, nn]
    key_uv = np.floor(xy / cell).astype(np.int64)
    key_uv -= key_uv.min(axis=0)
    key = key_uv[:, 1] * (int(key_uv[:, 0].max()) + 1) + key_uv[:, 0]
    order = np.lexsort((off_centre[nn], key))  # by map cell, most central first
    _, first = np.unique(key[order], return_index=True)
    pick = order[first]
    return MapCells(np.asarray(coarse[tt[pick], nn[pick]], dtype=np.float32), xy[pick])


class Locator:
    """Frame -> pose on the maps of a cache. Open with :meth:`open`."""

    def __init__(self, bundle: Bundle, cache: MapCache, config: LocatorConfig, camera: Any = None) -> None:
        self.bundle = bundle
        self.cache = cache
        self.config = config
        self.camera = camera
        self.query_size = bundle.query_size
        self.tile_size = bundle.tile_size
        self.cell = int(bundle.manifest["coarse_stride"])
        self.grid_q = (self.query_size // self.cell, self.query_size // self.cell)
        self.grid_t = (self.tile_size // self.cell, self.tile_size // self.cell)
        self.query_cell_centres = cell_centers(*self.grid_q, self.cell)  # (Nq, 2) canvas px
        model_cfg = bundle.model_config
        self.coarse_config = CoarseMatchConfig.from_model_config(model_cfg)
        self.retrieval_config = replace(self.coarse_config, k=0)
        matching = model_cfg.get("matching", {})
        calibrated = int(matching.get("min_inliers", DEFAULT_MIN_INLIERS))
        self.min_inliers = config.min_inliers if config.min_inliers is not None else calibrated
        self.min_first_pass_inliers = first_pass_rule(config, matching, self.min_inliers)
        self.selections: dict[str, BackendSelection] = {
            g: open_graph(bundle, g, config.backend) for g in ("encoder_query", "encoder_tile", "fine_matcher")
        }
        self.map_precision = cache.manifest["bundle"].get("precision")  # of the cached features, as computed
        query_precision = self.selections["encoder_query"].backend.precision
        if self.map_precision is not None and self.map_precision != query_precision:
            # expected with a cache built on a CPU (FP32 graphs) for an FP16 GPU vehicle: the same network within
            # FP16 rounding, so it matches; said once, and in backend_status
            logger.info("map cache %s holds %s features, the query encoder runs %s", cache.root, self.map_precision,
                        query_precision)
        self.cells = self._map_cells()
        # without a scale prior the maps and their zoom-in levels are searched (None: there are no overview levels)
        unscaled = frozenset(m for m in self.cells if self.cache.map(m).overview == 1)
        self.unscaled_ids: frozenset[str] | None = None if unscaled == frozenset(self.cells) else unscaled
        self.last_fix: tuple[str, np.ndarray] | None = None  # (map id, frame centre in that map's pixels)
        self._warned_unusable_altitude = False  # an altitude prior without intrinsics: said once per locator
        self.regions = RegionCache(config.roi_cache_size, round(config.roi_reuse_fraction * self.tile_size))

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls, bundle_dir: str | Path, cache_dir: str | Path, config: LocatorConfig | None = None,
        camera: Any = None,
    ) -> Locator:
        """Open (and verify) a bundle and a map cache built with it."""
        config = config or LocatorConfig()
        bundle = open_bundle(bundle_dir, verify=config.verify)
        cache = open_map_cache(cache_dir, bundle=bundle, verify=config.verify)
        return cls(bundle, cache, config, camera)

    def _map_cells(self) -> dict[str, MapCells]:
        out = {}
        for entry in self.cache.entries():
            map_id = entry.map_id
            if entry.grid.tile_size != self.tile_size:
                raise LocatorError(f"map {map_id!r} was tiled at {entry.grid.tile_size} px, the bundle's tile is "
                                   f"{self.tile_size} px")
            keep = entry.encoded_tiles()
            cells = unique_map_cells(np.asarray(entry.coarse[keep]), np.asarray(entry.cell_valid[keep], dtype=bool),
                                     np.asarray(entry.origins[keep]), self.tile_size, self.cell)
            if len(cells.features):
                out[map_id] = cells
        if not out:
            raise LocatorError(f"cache {self.cache.root} holds no encoded tile")
        return out

    @property
    def backend_status(self) -> dict[str, Any]:
        """Backend in use, precision and whether (and why) it is degraded; ``map_precision``: the precision the map
        cache's features were computed in (None for caches that do not record it)."""
        sel = self.selections["encoder_query"]
        degraded = [s for s in self.selections.values() if s.degraded]
        return {
            "backend": sel.backend.name, "device": sel.backend.device, "precision": sel.backend.precision,
            "requested": sel.requested, "degraded": bool(degraded),
            "reason": "; ".join(str(s.reason) for s in degraded) or None, "map_precision": self.map_precision,
        }

    def warmup(self) -> None:
        """Run every graph once (first-run allocations, engine deserialisation) on blank inputs."""
        blank = np.zeros((self.query_size, self.query_size, 3), np.uint8)
        enc = self._encode("encoder_query", blank, np.ones(self.grid_q[0] * self.grid_q[1], bool))
        tile = self._encode("encoder_tile", np.zeros((self.tile_size, self.tile_size, 3), np.uint8),
                            np.ones(self.grid_t[0] * self.grid_t[1], bool))
        m = self.coarse_config.max_matches
        self._fine(enc, tile, np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m, bool))

    # ------------------------------------------------------------------ inference helpers
    def _encode(self, graph: str, image: np.ndarray, cell_valid: np.ndarray) -> dict[str, np.ndarray]:
        chw = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        return self.selections[graph].backend.run({"image": chw, "cell_valid": cell_valid[None]})

    def _fine(self, enc_q: dict, enc_r: dict, iq: np.ndarray, ir: np.ndarray, valid: np.ndarray) -> dict:
        feeds = {"fine1_q": enc_q["fine1"], "fine2_q": enc_q["fine2"], "fine1_r": enc_r["fine1"],
                 "fine2_r": enc_r["fine2"], "idx_q": iq[None], "idx_r": ir[None], "match_valid": valid[None]}
        return self.selections["fine_matcher"].backend.run(feeds)

    # ------------------------------------------------------------------ retrieval
    def search_area(self, priors: Priors | None = None) -> dict[str, np.ndarray] | None:
        """Where to search first (``{entry id: (M,) bool}`` over each map entry's cells), or None (every map, every
        cell).

        The temporal prior (``temporal_prior``): the cells of the last fix's map (and its levels) within
        ``prior_radius_m`` of it. A position prior (``priors.near_lat`` / ``near_lon``): the cells of every
        georeferenced map within ``near_radius_m`` (default ``prior_radius_m``) of that point, on each map's levels;
        the last fix's area instead when that fix lies inside the prior's circle and ``prior_radius_m`` is smaller
        than ``near_radius_m`` (a mission-area prior then still gets the tight search around each new fix). A
        prior with no cell near it gives None: the frame gets the plain search at once.
        """
        own = self.last_fix if self.config.temporal_prior else None
        if priors is not None and priors.near_lat is not None and priors.near_lon is not None and \
                not (own is not None and self._last_fix_is_tighter(own, priors)):
            point = np.array([[priors.near_lon, priors.near_lat]], dtype=np.float64)
            radius_m = priors.near_radius_m or self.config.prior_radius_m
            bases = {self.cache.map(m).base_id for m in self.cells}
            centres = {b: self.cache.map(b).georef.lonlat_to_pixels(point)[0] for b in sorted(bases)
                       if self.cache.map(b).georef.crs_wkt is not None}  # a map placed with --gsd only: no lon/lat
        elif own is not None:
            map_id, xy = own
            radius_m = self.config.prior_radius_m
            centres = {map_id: np.asarray(xy, dtype=np.float64)}
        else:
            return None
        area = {}
        for entry_id, cells in self.cells.items():
            entry = self.cache.map(entry_id)
            if entry.base_id not in centres:
                continue
            at = project_points(np.linalg.inv(entry.to_base_px), centres[entry.base_id][None])[0]
            radius_px = radius_m / entry.georef.gsd_m + self.tile_size / 2
            area[entry_id] = np.linalg.norm(cells.centres_px - at, axis=1) <= radius_px
        return area if any(mask.any() for mask in area.values()) else None

    def _last_fix_is_tighter(self, fix: tuple[str, np.ndarray], priors: Priors) -> bool:
        """Whether a fix (map id, map px) lies within the position prior's circle and the temporal prior's radius
        is the smaller (a fix on a map without a CRS cannot be placed against the prior: no)."""
        radius_m = priors.near_radius_m or self.config.prior_radius_m
        georef = self.cache.map(fix[0]).georef
        if georef.crs_wkt is None or self.config.prior_radius_m >= radius_m:
            return False
        from pyproj import Geod

        lon, lat = georef.pixels_to_lonlat(np.asarray(fix[1], dtype=np.float64)[None])[0]
        _, _, distance = Geod(ellps="WGS84").inv(lon, lat, priors.near_lon, priors.near_lat)
        return bool(distance <= radius_m)

    def retrieve(self, coarse_q: np.ndarray, valid_q: np.ndarray, area: dict[str, np.ndarray] | None = None,
                 maps: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """Score every map (or the cells of ``area``, see :meth:`search_area`; only ``maps`` when given) for query
        features ``(Nq, C)``.

        Per map: dual-softmax confidences against all its cells, mutual nearest neighbours above the retrieval
        threshold (MKNN with k = 0, the supplement's retrieval setting), then the geometric-consistency confidence
        normalised by the whole query grid (shared by every scale and rotation candidate of a frame, as in
        ``topicgeo-eval``: normalising by the valid cells would inflate small-content candidates).

        Returns:
            candidates with a positive score, best first: ``map_id``, ``score``, ``matches``, ``scale``, ``angle``
            and the consistent matches ``pts_q`` (query canvas px) / ``pts_r`` (map px).
        """
        cfg = self.retrieval_config
        q_centres = self.query_cell_centres
        out = []
        for map_id, cells in self.cells.items():
            if maps is not None and map_id not in maps:
                continue
            feats, centres = cells.features, cells.centres_px
            if area is not None:
                if map_id not in area or not area[map_id].any():
                    continue
                feats, centres = feats[area[map_id]], centres[area[map_id]]
            conf = coarse_confidence(coarse_q, feats, cfg.temperature, valid_q, None)
            iq, ir, _ = matches_from_mask(mutual_nearest_mask(conf, cfg.threshold, valid_q, None), conf)
            if len(iq) == 0:
                continue
            res = geometric_consistency(q_centres[iq], centres[ir], int(valid_q.size), self.config.consistency)
            if res.score <= 0:
                continue
            out.append({"map_id": map_id, "score": float(res.score), "matches": len(iq), "scale": float(res.scale),
                        "angle": float(res.angle), "pts_q": q_centres[iq][res.inliers],
                        "pts_r": centres[ir][res.inliers]})
        out.sort(key=lambda c: -c["score"])
        return out

    # ------------------------------------------------------------------ locate
    def query_plans(self, frame_shape: tuple[int, int], priors: Priors, camera: Any) -> list[QueryPlan]:
        """The query canvases a frame is encoded at, and the maps each is retrieved against.

        With a scale prior (``priors.frame_gsd_m``, or the altitude and the intrinsics) each map is searched on one
        level, its own pixels or the overview level :func:`overview_for_frame` picks, and the frame is brought to
        ``target_ratio`` times its footprint there (one plan per distinct content size, so a cache that mixes a
        0.25 m and a 0.5 m orthophoto shows each map a query at its own scale; sizes within ``PLAN_MERGE_RATIO`` of
        each other share one plan and its median size); without one, every content scale of the config is tried
        against every map on its own pixels and on its zoom-in levels (``edge-maps build --zooms``). An altitude
        without intrinsics cannot scale the frame: it is searched as without one, and a warning says so (once per
        locator).
        """
        if priors.frame_gsd_m is not None:
            frame_gsd = float(priors.frame_gsd_m)
        elif priors.altitude_agl_m is not None and camera is not None:
            seen_by = frame_camera(camera)  # the pinhole of the undistorted frame the locator matches
            frame_gsd = priors.altitude_agl_m / math.sqrt(seen_by.fx * seen_by.fy)
        else:
            if priors.altitude_agl_m is not None and not self._warned_unusable_altitude:
                self._warned_unusable_altitude = True
                logger.warning("an altitude prior (%.1f m) without camera intrinsics cannot scale the frame: searched "
                               "without a scale prior (give a camera_info calibration, intrinsics in the EXIF or a "
                               "sensor width, or the frame's GSD instead of the altitude)", priors.altitude_agl_m)
            return [QueryPlan(s * self.query_size, {}, self.unscaled_ids) for s in self.config.content_scales]
        levels: dict[str, dict[float, str]] = {}  # base map -> {scale (base px per entry px): entry id}
        for m in self.cells:
            entry = self.cache.map(m)
            levels.setdefault(entry.base_id, {})[entry.scale] = m
        expected = {}
        for base_id, by_factor in levels.items():
            on_map = max(frame_shape) * frame_gsd / self.cache.map(base_id).georef.gsd_m
            f = overview_for_frame(on_map, list(by_factor), self.query_size, self.config.target_ratio,
                                   self.config.min_overview_ratio)
            expected[by_factor[f]] = on_map / f
        content = {m: min(float(self.query_size), self.config.target_ratio * e) for m, e in expected.items()}
        groups: list[list[str]] = []  # maps whose content sizes lie within PLAN_MERGE_RATIO share one encode
        for m in sorted(content, key=lambda m: -content[m]):
            if groups and content[groups[-1][0]] <= PLAN_MERGE_RATIO * content[m]:
                groups[-1].append(m)
            else:
                groups.append([m])
        return [QueryPlan(float(np.median([content[m] for m in g])), {m: expected[m] for m in g}, frozenset(g))
                for g in groups]

    def locate(self, frame: np.ndarray, priors: Priors | None = None, camera: Any = None) -> LocateResult:
        """Locate an RGB frame ``(H, W, 3)`` uint8; ``camera`` overrides the default one."""
        priors = priors or Priors()
        camera = camera if camera is not None else self.camera
        t0 = time.perf_counter()
        lat: dict[str, float] = {}
        status = self.backend_status
        common = {"backend": status["backend"], "precision": status["precision"], "degraded": status["degraded"],
                  "capture_time": priors.capture_time}
        frame = self._check_frame(frame)
        if camera is not None and camera.size != (frame.shape[1], frame.shape[0]):
            raise LocatorError(
                f"camera calibration is for {camera.size}, the frame is {frame.shape[1]}x{frame.shape[0]}"
            )
        if camera is not None and needs_undistortion(camera):
            from calibration.geometry import undistort_image

            frame = undistort_image(frame, rectified_for_matching(camera))
        plans = self.query_plans(frame.shape[:2], priors, camera)
        pyramid = FramePyramid(frame)  # every canvas of this frame shrinks from its nearest halving
        rotations = (priors.yaw_deg,) if priors.yaw_deg is not None else self.config.search_rotations_deg
        lat["prepare"] = _ms(t0)

        area = self.search_area(priors)  # position or temporal prior: the same for every canvas of this frame
        canvases = []  # (prepared, encoded, plan, rotation): each canvas is encoded once per frame
        for plan, rotation in itertools.product(plans, rotations):
            t = time.perf_counter()
            prep = prepare_query(pyramid, self.query_size, plan.content_px, self.cell, rotation)
            canvases.append((prep, self._encode("encoder_query", prep.canvas, prep.cell_valid), plan, float(rotation)))
            _add_ms(lat, "encode_query", t)
        everywhere: dict[int, list[dict[str, Any]]] = {}  # canvas index -> its candidates against every map
        hypotheses, shortlist, widened = self._hypotheses(canvases, area, lat, everywhere)
        if not hypotheses or hypotheses[0].score < self.config.min_confidence:
            score = hypotheses[0].score if hypotheses else 0.0
            lat["total"] = _ms(t0)
            return LocateResult.failure(f"no map region matches (retrieval confidence {score:.3f} < "
                                        f"{self.config.min_confidence})", confidence=score, latency_ms=lat, **common)
        to_verify = [h for h in hypotheses if h.score >= self.config.min_confidence][: self.config.verify_candidates]
        result, verified = self.verify(pyramid, to_verify, priors, camera, lat, common)
        if not result.ok and area is not None:
            # Nothing near the last fix was accepted: the frame gets the search it would have had without the prior
            # (its canvases are already encoded), skipping the places already verified.
            anywhere, shortlist, _ = self._hypotheses(canvases, None, lat, everywhere)
            fresh = [h for h in anywhere if h.score >= self.config.min_confidence
                     and not any(same_place(h, v, self.tile_size) for v in to_verify)]
            if fresh:
                widened = True
                retry, more = self.verify(pyramid, fresh[: self.config.verify_candidates], priors, camera, lat, common)
                verified += more
                if retry.ok or retry.inliers > result.inliers:
                    result = retry
        if result.ok:
            self.last_fix = (result.map_id, np.asarray(result.extra["centre_px"]))
        elif self.last_fix is not None:
            self.last_fix = None  # widen to all maps on the next frame
        lat["total"] = _ms(t0)
        result.extra.update({"widened": widened, "verified": verified, "candidates": [
            {"map_id": self.cache.map(c["map_id"]).base_id, "map_entry": c["map_id"], "score": c["score"],
             "matches": c["matches"]} for c in shortlist[: self.config.shortlist]]})
        return result

    def _hypotheses(self, canvases: list[tuple[PreparedQuery, dict, QueryPlan, float]],
                    area: dict[str, np.ndarray] | None, lat: dict[str, float],
                    everywhere: dict[int, list[dict[str, Any]]],
                    ) -> tuple[list[Hypothesis], list[dict[str, Any]], bool]:
        """Retrieval for every encoded canvas of a frame, within ``area`` (the temporal prior's cells) when given;
        a canvas whose best candidate there stays under ``min_confidence`` is retrieved against every map.
        ``everywhere`` (canvas index -> candidates against every map) is filled and reused: a canvas already
        retrieved against every map is not retrieved again.

        Returns:
            the hypotheses, best first (stable: ties keep the canvas order); the best-scoring canvas's map ranking
            (reported with the result); and whether any canvas left ``area``.
        """
        hypotheses: list[Hypothesis] = []
        shortlist: list[dict[str, Any]] = []
        widened = False
        for i, (prep, enc, plan, rotation) in enumerate(canvases):
            t = time.perf_counter()
            cands = everywhere.get(i) if area is None else None
            if cands is None:
                cands = self.retrieve(enc["coarse"][0], prep.cell_valid, area, plan.map_ids)
                if area is None:
                    everywhere[i] = cands
                elif not cands or cands[0]["score"] < self.config.min_confidence:
                    widened = True
                    cands = everywhere[i] = self.retrieve(enc["coarse"][0], prep.cell_valid, None, plan.map_ids)
            _add_ms(lat, "retrieval", t)
            if cands and (not shortlist or cands[0]["score"] > shortlist[0]["score"]):
                shortlist = cands
            hypotheses += [Hypothesis(c, prep, enc, plan, rotation) for c in cands]
        hypotheses.sort(key=lambda h: -h.score)
        return hypotheses, shortlist, widened

    def verify(self, frame: np.ndarray | FramePyramid, hypotheses: list[Hypothesis], priors: Priors, camera: Any,
               lat: dict[str, float], common: dict) -> tuple[LocateResult, list[dict[str, Any]]]:
        """Run the fine stage on ``hypotheses`` in order until one is accepted.

        Returns:
            the first accepted result, else the failure with the most inliers (the first on a tie), and one record
            per verified hypothesis (``map_id``, ``score``, ``rotation_deg``, ``ok``, ``inliers``, ``fine_matches``
            (the fit's input), ``reason`` and ``footprint_px``: the accepted or rejected geometry's frame corners in
            map px; the last two None without a fit; and both passes' inliers and footprints, ``PASS_KEYS``) for
            diagnosis and for calibrating the acceptance rule (``benchmarks.acceptance``); never published.
        """
        # encoded regions: kept across frames, or (roi_cache_size 0) one encode per distinct region of this frame
        regions = self.regions if self.config.roi_cache_size else RegionCache(len(hypotheses), 0)
        chosen: LocateResult | None = None
        verified = []
        for h in hypotheses:
            expected = h.plan.expected_px.get(h.candidate["map_id"])
            res = self._fine_stage(frame, h.prepared, h.encoded, h.candidate, priors, camera, expected, lat, common,
                                   regions)
            source = res.extra if res.ok else res.extra.get("rejected", {})
            quad = res.footprint_px if res.ok else source.get("footprint_px")
            entry_id = h.candidate["map_id"]
            verified.append({"map_id": res.map_id or entry_id, "map_entry": entry_id,  # the fine stage's: base id
                             "score": h.score, "rotation_deg": h.rotation_deg,
                             "ok": res.ok, "inliers": int(res.inliers or 0), "fine_matches": source.get("fine_matches"),
                             "reason": res.reason, "footprint_px": None if quad is None else np.asarray(quad).tolist(),
                             **{k: source.get(k) for k in PASS_KEYS}})
            if res.ok:
                return res, verified
            if chosen is None or (res.inliers or 0) > (chosen.inliers or 0):
                chosen = res
        assert chosen is not None  # at least one hypothesis is verified
        return chosen, verified

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise LocatorError(f"a frame must be an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
        if min(arr.shape[:2]) < 32:
            raise LocatorError(f"frame of {arr.shape[1]}x{arr.shape[0]} px is too small")
        return arr

    def _roi_origin(self, map_id: str, top: dict[str, Any]) -> tuple[int, int]:
        """ROI of tile size centred on the retrieval inliers, kept inside the map where it fits."""
        entry = self.cache.map(map_id)
        centre = np.median(top["pts_r"], axis=0)  # retrieval candidates always carry consistent matches
        half = self.tile_size / 2.0
        x0 = round(float(centre[0]) - half)
        y0 = round(float(centre[1]) - half)
        w, h = entry.georef.width, entry.georef.height
        x0 = min(max(x0, 0), max(w - self.tile_size, 0)) if w >= self.tile_size else (w - self.tile_size) // 2
        y0 = min(max(y0, 0), max(h - self.tile_size, 0)) if h >= self.tile_size else (h - self.tile_size) // 2
        return x0, y0

    def _region(self, map_id: str, wanted: tuple[int, int], regions: RegionCache, lat: dict[str, float],
                footprint_px: float | None = None) -> EncodedRegion:
        """The encoded region of interest at ``wanted``, or a kept one near it (``roi_cache_size``) when the frame's
        expected footprint (long side ``footprint_px`` in the entry's pixels, from the scale prior) still fits that
        window: the shift may use at most the free margin around the footprint."""
        margin = None if footprint_px is None else max(0, int((self.tile_size - footprint_px) // 2))
        region = regions.find(map_id, wanted, margin)
        if region is not None:
            return region
        t = time.perf_counter()
        roi, roi_valid = self.cache.map(map_id).read_roi(wanted[0], wanted[1], self.tile_size, self.tile_size)
        _add_ms(lat, "read_roi", t)
        t = time.perf_counter()
        roi_cells = cell_validity(roi_valid, self.cell, 0.5)
        region = EncodedRegion(map_id, wanted, roi_cells, self._encode("encoder_tile", roi, roi_cells))
        _add_ms(lat, "encode_roi", t)
        regions.put(region)
        return region

    def _fine_stage(self, frame: np.ndarray | FramePyramid, prep: PreparedQuery, enc_q: dict, top: dict, priors: Priors,
                    camera: Any, expected: float | None, lat: dict[str, float],
                    common: dict, regions: RegionCache) -> LocateResult:
        map_id = top["map_id"]
        entry = self.cache.map(map_id)
        region = self._region(map_id, self._roi_origin(map_id, top), regions, lat, expected)
        (x0, y0), roi_cells, enc_r = region.origin, region.cell_valid, region.encoded
        to_base = entry.to_base_px  # results are reported on the map's own pixels (an overview level's are coarser)
        fail = {"map_id": entry.base_id, "confidence": top["score"], "latency_ms": lat, **common}
        fit = self._match_and_fit(frame, enc_q, prep.cell_valid, prep.frame_to_canvas, enc_r, roi_cells, (x0, y0),
                                  lat)
        if isinstance(fit, str):
            return LocateResult.failure(fit, **fail)
        first = fit
        final: tuple[np.ndarray, np.ndarray, HomographyResult, str] | str = first
        if self.config.refine and first[2].ok:
            if first[2].num_inliers < self.config.refine_min_first_inliers:
                final = (f"too few inliers to refine ({first[2].num_inliers} < "
                         f"{self.config.refine_min_first_inliers})")
            else:
                final = self._refine(frame, first[2].H, enc_r, roi_cells, (x0, y0), lat)
                if isinstance(final, str):
                    final = f"refinement: {final}"
        accepted, why = self._accept(first, final)
        if accepted is None:
            shown = final if not isinstance(final, str) and final[2].ok else first
            if not shown[2].ok:
                return LocateResult.failure(why, inliers=0, **fail)
            pts_f, pts_r, hom, model = shown
            # kept for pictures and diagnosis only (edge-locate --viz): never published as a pose
            rejected = {"footprint_px": footprint(to_base @ hom.H, frame.shape[1], frame.shape[0]),
                        "geometry_model": model, "fine_matches": len(pts_f),
                        "matches": (pts_f[hom.inliers], project_points(to_base, pts_r[hom.inliers])),
                        **self._pass_record(first, final, frame.shape, to_base)}
            return LocateResult.failure(why, inliers=hom.num_inliers, extra={"rejected": rejected}, **fail)
        pts_f, pts_r, hom, model = accepted
        t = time.perf_counter()
        result = self._pose(frame, hom.H, pts_f[hom.inliers], pts_r[hom.inliers], entry, top, priors, camera,
                            expected, common, lat)
        result.extra.update({"geometry_model": model, "fine_matches": len(pts_f),
                             **self._pass_record(first, final, frame.shape, to_base)})
        _add_ms(lat, "pose", t)
        return result

    def _accept(self, first: tuple[np.ndarray, np.ndarray, HomographyResult, str],
                final: tuple[np.ndarray, np.ndarray, HomographyResult, str] | str,
                ) -> tuple[tuple[np.ndarray, np.ndarray, HomographyResult, str] | None, str]:
        """The acceptance rule: the final (refined) fit with ``min_inliers``, else the first fit with
        ``min_first_pass_inliers``. Returns the accepted fit (None) and why not."""
        refined = final is not first  # without a refinement the one fit meets the first-pass rule
        if refined and not isinstance(final, str) and final[2].ok and final[2].num_inliers >= self.min_inliers:
            return final, ""
        n1 = first[2].num_inliers if first[2].ok else 0
        if first[2].ok and self.min_first_pass_inliers is not None and n1 >= self.min_first_pass_inliers:
            return first, ""
        if not refined:
            if not first[2].ok:
                return None, f"no homography: {first[2].reason}"
            return None, f"too few inliers ({n1} < {self.min_first_pass_inliers})"
        first_rule = ("" if self.min_first_pass_inliers is None else
                      f"; first pass {n1} < {self.min_first_pass_inliers}")
        if isinstance(final, str):
            return None, f"{final}{first_rule}"
        if not final[2].ok:
            return None, f"refinement: no homography: {final[2].reason}{first_rule}"
        return None, f"too few inliers ({final[2].num_inliers} < {self.min_inliers}{first_rule})"

    @staticmethod
    def _pass_record(first: tuple[np.ndarray, np.ndarray, HomographyResult, str],
                     final: tuple[np.ndarray, np.ndarray, HomographyResult, str] | str,
                     shape: tuple[int, ...], to_base: np.ndarray) -> dict[str, Any]:
        """Both fits of a hypothesis, for diagnosis and for calibrating the two rules (``benchmarks.acceptance``):
        ``first_pass_inliers`` / ``first_pass_footprint_px`` and ``refined_inliers`` / ``refined_footprint_px``
        (None without that fit; footprints on the map's own pixels, ``to_base`` ``(3, 3)`` from the entry's)."""
        out: dict[str, Any] = {}
        for name, fit in (("first_pass", first), ("refined", None if final is first else final)):
            ok = fit is not None and not isinstance(fit, str) and fit[2].ok
            out[f"{name}_inliers"] = fit[2].num_inliers if ok else None
            out[f"{name}_footprint_px"] = footprint(to_base @ fit[2].H, shape[1], shape[0]).tolist() if ok else None
        return out

    def _match_and_fit(self, frame: np.ndarray | FramePyramid, enc_q: dict, cells_q: np.ndarray,
                       frame_to_canvas: np.ndarray, enc_r: dict, roi_cells: np.ndarray, roi_origin: tuple[int, int],
                       lat: dict[str, float],
                       allowed: np.ndarray | None = None, geometry: str | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, HomographyResult, str] | str:
        """Coarse (MKNN, optionally gated by ``allowed (Nq, Nr)``) and fine matches of an encoded query canvas against
        the encoded region of interest, then the frame -> map fit (``geometry``, default ``config.geometry``).

        Returns:
            frame points ``(N, 2)``, map points ``(N, 2)``, the fit and its model; or the reason there is no match.
        """
        t = time.perf_counter()
        iq, ir, _, valid, _ = coarse_matches(enc_q["coarse"][0], enc_r["coarse"][0], self.grid_q, self.grid_t,
                                             self.coarse_config, cells_q, roi_cells, allowed)
        _add_ms(lat, "coarse_match", t)
        if not valid.any():
            return "no coarse match on the retrieved region"
        t = time.perf_counter()
        out = self._fine(enc_q, enc_r, iq, ir, valid)
        ok = out["valid"][0]
        pts_q = out["pts_q"][0][ok].astype(np.float64)
        pts_r = out["pts_r"][0][ok].astype(np.float64) + np.asarray(roi_origin, dtype=np.float64)
        _add_ms(lat, "fine_match", t)
        t = time.perf_counter()
        pts_f = project_points(np.linalg.inv(frame_to_canvas), pts_q)
        hom, model = fit_geometry(pts_f, pts_r, (frame.shape[1], frame.shape[0]), self.config, geometry)
        _add_ms(lat, "homography", t)
        return pts_f, pts_r, hom, model

    def _refine(self, frame: np.ndarray | FramePyramid, H: np.ndarray, enc_r: dict, roi_cells: np.ndarray,
                roi_origin: tuple[int, int], lat: dict[str, float],
                ) -> tuple[np.ndarray, np.ndarray, HomographyResult, str] | str:
        """Second pass around a first fit ``H`` (frame px -> map px): the frame re-rendered north-up and rectified on
        the region of interest's grid (:func:`refinement_canvas`), encoded again, matched against the same encoded
        region with coarse matches gated to the cells the first fit predicts (:func:`alignment_gate`), fitted again
        (``config.refine_geometry``).
        """
        x0, y0 = roi_origin
        to_tile = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ H
        t = time.perf_counter()
        canvas = refinement_canvas(frame, to_tile, self.query_size, self.tile_size, self.cell,
                                   self.config.refine_max_ratio)
        _add_ms(lat, "refine_render", t)
        if canvas is None:
            return "the first fit's footprint misses the region of interest"
        t = time.perf_counter()
        enc_q = self._encode("encoder_query", canvas.canvas, canvas.cell_valid)
        _add_ms(lat, "encode_query", t)
        gate = alignment_gate(canvas.canvas_to_tile, self.grid_q, self.grid_t, self.cell,
                              self.config.refine_gate_cells)
        return self._match_and_fit(frame, enc_q, canvas.cell_valid, canvas.frame_to_canvas, enc_r, roi_cells,
                                   roi_origin, lat, gate, self.config.refine_geometry)

    def _pose(self, frame: np.ndarray | FramePyramid, H: np.ndarray, in_f: np.ndarray, in_r: np.ndarray, entry: Any,
              top: dict, priors: Priors, camera: Any, expected: float | None, common: dict,
              lat: dict[str, float]) -> LocateResult:
        h, w = frame.shape[:2]
        quad = footprint(H, w, h)
        fail = {"map_id": entry.base_id, "confidence": top["score"], "inliers": len(in_f), "latency_ms": lat,
                **common}
        if not is_convex_quad(quad):
            return LocateResult.failure("degenerate footprint", **fail)
        if entry.georef.crs_wkt is None:  # placed with --gsd only: map coordinates but no latitude/longitude
            return LocateResult.failure(f"map {entry.base_id} has no CRS (built with --gsd only): no latitude/"
                                        "longitude to report", **fail)
        centre = project_points(H, np.array([[(w - 1) / 2.0, (h - 1) / 2.0]]))[0]
        up = project_points(H, np.array([[(w - 1) / 2.0, (h - 1) / 2.0 - 1.0]]))[0]
        map_px_per_frame_px = local_scale(H, ((w - 1) / 2.0, (h - 1) / 2.0))  # at the frame centre
        if expected is not None:
            expected_scale = expected / max(h, w)
            ratio = map_px_per_frame_px / expected_scale
            if not 1.0 / self.config.max_scale_error <= ratio <= self.config.max_scale_error:
                return LocateResult.failure(
                    f"scale {map_px_per_frame_px:.4f} map px per frame px disagrees with the altitude prior "
                    f"({expected_scale:.4f}, ratio {ratio:.2f})", **fail)
        metric = entry.georef.metres_per_pixel(centre)  # (2, 2): map px -> metres east / north, here
        gsd = math.sqrt(abs(float(np.linalg.det(metric))))  # the map's GSD at the fix (its centre's elsewhere)
        d = metric @ (up - centre)
        heading = (math.degrees(math.atan2(d[0], d[1])) + 360.0) % 360.0  # clockwise from true north
        if priors.yaw_deg is not None:
            turn = heading_difference(heading, priors.yaw_deg)
            if turn > self.config.max_heading_error_deg:
                return LocateResult.failure(
                    f"heading {heading:.1f} deg disagrees with the yaw prior ({priors.yaw_deg:.1f} deg, "
                    f"{turn:.1f} > {self.config.max_heading_error_deg:g} deg)", **fail)
        lonlat = entry.georef.pixels_to_lonlat(np.vstack([centre[None], quad]))
        residual = np.linalg.norm(project_points(H, in_f) - in_r, axis=1)
        sigma_px = float(np.sqrt(np.mean(residual**2)) / math.sqrt(max(len(in_f) / 4.0, 1.0)))
        std = max(sigma_px * gsd, gsd / 4.0)
        altitude = None
        attitude = None
        position_lonlat = lonlat[0]
        world = entry.georef.pixels_to_world(centre[None])[0]
        map_xy = (float(world[0]), float(world[1]))
        to_base = entry.to_base_px  # reported on the map's own pixels (the entry may be an overview level)
        extra: dict[str, Any] = {"centre_px": project_points(to_base, centre[None])[0].tolist(),
                                 "retrieval_score": top["score"], "map_entry": entry.map_id,
                                 "map_px_per_frame_px": map_px_per_frame_px * entry.scale,
                                 "H_frame_to_map": (to_base @ H).tolist(),
                                 "matches": (in_f, project_points(to_base, in_r)),
                                 "ground_centre_lonlat": lonlat[0].tolist(),
                                 "position": "frame centre ground point (nadir assumption)"}
        if camera is not None:
            seen_by = frame_camera(camera)
            altitude = altitude_from_scale(map_px_per_frame_px, gsd, seen_by)
            # A gimbal's roll and pitch, the fit's heading and its scale place the camera. Not the 6-DoF PnP pose:
            # over flat ground with matches in part of the frame its tilt trades off against its translation
            # (Brighton Beach, gimbal at -89.9 degrees: PnP found a 54 degree roll and a camera 40 m from the SfM
            # one, where this position was 1.1 m off).
            camera_px = position_from_attitude_prior(H, camera, metric, altitude, heading, priors)
            pose = None
            if camera_px is not None:
                extra["position"] = "camera centre (attitude prior, fitted heading and scale)"
                attitude = (float(priors.roll_deg), float(priors.pitch_deg), float(heading))
            elif (found := self._camera_pose(in_f, in_r, entry, seen_by)) is not None:
                pose, camera_px = found
                altitude = float(pose.altitude_agl_m)
                attitude = (float(pose.roll_deg), float(pose.pitch_deg), float(pose.yaw_deg))
                std = float(max(np.sqrt(pose.covariance[0, 0]), np.sqrt(pose.covariance[1, 1]), std))
                extra.update({"position": "camera centre (6-DoF PnP pose)", "pose_rms_px": pose.rms_px,
                              "pose_std": pose.std.tolist()})
            if camera_px is not None:
                position_lonlat = entry.georef.pixels_to_lonlat(camera_px[None])[0]
                camera_world = entry.georef.pixels_to_world(camera_px[None])[0]
                map_xy = (float(camera_world[0]), float(camera_world[1]))
            if pose is None:  # the attitude is a prior or assumed nadir
                attitude_m = altitude * math.tan(math.radians(self.config.attitude_std_deg))
                extra["std_parts_m"] = {"fit": round(std, 3), "attitude": round(attitude_m, 3)}
                std = math.hypot(std, attitude_m)
        confidence = float(min(1.0, top["score"]) * min(1.0, len(in_f) / 100.0))
        return LocateResult(
            ok=True, map_id=entry.base_id, lat=float(position_lonlat[1]), lon=float(position_lonlat[0]),
            map_xy=map_xy, crs=_crs_name(entry.georef),
            footprint_px=project_points(to_base, quad), footprint_lonlat=lonlat[1:], heading_deg=heading,
            altitude_agl_m=altitude,
            attitude_deg=attitude, std_m=(std, std), confidence=confidence, inliers=len(in_f), latency_ms=lat,
            extra=extra, **common,
        )

    @staticmethod
    def _camera_pose(in_f: np.ndarray, in_r: np.ndarray, entry: Any, camera: Any) -> tuple[Any, np.ndarray] | None:
        """6-DoF camera pose from frame <-> map inliers on a flat ground plane (IPPE) for the pinhole ``camera`` the
        frame is seen by (:func:`frame_camera`), solved in metres east / north around the inliers (the map's local
        ground metric, whatever its CRS's units). Returns the pose (metres, in that local frame) and the camera's map
        pixel ``(2,)``; None when it fails."""
        from calibration.geometry import PoseConfig, estimate_pose

        keep = np.linspace(0, len(in_f) - 1, min(len(in_f), 400)).astype(int)
        origin = in_r[keep].mean(axis=0)
        metric = entry.georef.metres_per_pixel(origin)
        ground = (in_r[keep] - origin) @ metric.T
        try:
            pose = estimate_pose(in_f[keep], ground, camera, config=PoseConfig(ransac_threshold_px=8.0))
            camera_px = origin + np.linalg.solve(metric, np.asarray(pose.position[:2], np.float64))
        except (ValueError, np.linalg.LinAlgError) as exc:
            logger.info("no 6-DoF pose: %s", exc)
            return None
        return pose, camera_px


def _crs_name(georef: Any) -> str | None:
    if georef.epsg:
        return f"EPSG:{georef.epsg}"
    return georef.crs_wkt


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


def needs_undistortion(camera: Any) -> bool:
    """Whether the locator rectifies a frame of ``camera`` before matching: any distortion coefficient, or a fisheye
    (``equidistant``) model, whose f-theta projection is not a pinhole even with all coefficients 0."""
    return bool(camera.is_fisheye or np.any(np.asarray(camera.D) != 0))


def rectified_for_matching(camera: Any) -> Any:
    """``camera`` with the rectified image's ``P`` made square-pixelled: the matcher fits a similarity (one scale),
    so the undistorted frame must show the ground at one scale in x and y. ``P`` from ``getOptimalNewCameraMatrix``
    scales x and y apart (fx' / fy' = 0.95 for OpenCV's sample lens); here ``f = sqrt(fx' fy')`` at ``P``'s
    principal point, at the frame's size."""
    from calibration.camera_info import CameraInfo

    square = np.hstack([_square_pixel_matrix(camera), np.zeros((3, 1))])
    return CameraInfo(camera.width, camera.height, camera.K, camera.D, camera.distortion_model, camera.R, square,
                      camera.camera_name)


def _square_pixel_matrix(camera: Any) -> np.ndarray:
    """``(3, 3)``: ``f = sqrt(fx' fy')`` of the rectified image's ``P`` at ``P``'s principal point."""
    P = np.asarray(camera.P, np.float64)
    f = math.sqrt(P[0, 0] * P[1, 1])
    return np.array([[f, 0.0, P[0, 2]], [0.0, f, P[1, 2]], [0.0, 0.0, 1.0]])


def frame_camera(camera: Any) -> Any:
    """The pinhole camera of the frame the locator matches: ``camera`` itself, or, when the locator rectified the
    frame (:func:`needs_undistortion`; in :meth:`Locator.locate`), the square-pixel pinhole of
    :func:`rectified_for_matching`."""
    if not needs_undistortion(camera):
        return camera
    from calibration.camera_info import CameraInfo

    return CameraInfo(camera.width, camera.height, _square_pixel_matrix(camera), np.zeros(5), "plumb_bob",
                      camera_name=camera.camera_name)


def altitude_from_scale(map_px_per_frame_px: float, map_gsd_m: float, camera: Any) -> float:
    """Height above flat ground, in metres, of a nadir ``camera`` whose frame pixel spans ``map_px_per_frame_px``
    map pixels of ``map_gsd_m`` metres (the fit's local scale at the frame centre). Shared with the benchmark's
    peers."""
    return map_px_per_frame_px * map_gsd_m * math.sqrt(camera.fx * camera.fy)


def position_from_attitude_prior(H: np.ndarray, camera: Any, metres_per_px: np.ndarray, altitude_m: float,
                                 heading_deg: float, priors: Priors) -> np.ndarray | None:
    """Camera map pixel ``(2,)`` from a fit and the attitude prior: the camera at ``altitude_m`` (from the fit's
    scale) that looks, at the prior's roll and pitch and the fit's heading (clockwise from true north), at the
    ground point under the principal point of the frame's pinhole (:func:`frame_camera`), projected by
    ``H (3, 3)`` (frame px -> map px); ``metres_per_px (2, 2)`` is the map's ground metric there
    (:meth:`~edge_runtime.map_cache.MapGeoref.metres_per_pixel`: columns = metres east / north per pixel step in x
    and y), which turns the camera's offset in metres into map pixels. None without a roll / pitch prior, or when
    the prior looks above the horizon (the matches decide then). Shared with the benchmark's peers."""
    if priors.roll_deg is None or priors.pitch_deg is None:
        return None
    seen_by = frame_camera(camera)
    principal = project_points(H, np.array([[seen_by.cx, seen_by.cy]]))[0]
    try:
        offset_en = camera_position_from_attitude(np.zeros(2), altitude_m, heading_deg, priors.pitch_deg,
                                                  priors.roll_deg)
    except ValueError as exc:
        logger.info("attitude prior not used for the position: %s", exc)
        return None
    return principal + np.linalg.solve(np.asarray(metres_per_px, np.float64), np.asarray(offset_en, np.float64))


def camera_position_from_attitude(ground_en: np.ndarray, altitude_m: float, yaw_deg: float, pitch_deg: float,
                                  roll_deg: float) -> tuple[float, float]:
    """Camera ``(east, north)`` whose optical axis, at the given attitude (``calibration.geometry`` convention),
    meets flat ground ``altitude_m`` below it at ``ground_en`` (the principal point's ground point)."""
    from calibration.geometry import rotation_from_ypr

    axis = rotation_from_ypr(yaw_deg, pitch_deg, roll_deg) @ np.array([0.0, 0.0, 1.0])  # ENU; OpenCV z = optical
    if axis[2] >= -1e-6:
        raise ValueError(f"the attitude (pitch {pitch_deg}, roll {roll_deg}) does not look at the ground")
    t = altitude_m / -axis[2]
    return float(ground_en[0] - t * axis[0]), float(ground_en[1] - t * axis[1])


def heading_difference(a_deg: float, b_deg: float) -> float:
    """Smallest absolute angle between two headings in degrees, in ``[0, 180]``."""
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def _add_ms(lat: dict[str, float], stage: str, t0: float) -> None:
    """Add the time since ``t0`` to ``lat[stage]`` (a stage may run once per verified hypothesis)."""
    lat[stage] = round(lat.get(stage, 0.0) + _ms(t0), 2)
