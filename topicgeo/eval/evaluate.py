"""Retrieval + matching evaluation against whole-map galleries (evaluation.md protocol).

For every query: encode it once, score every gallery map with coarse MKNN (k = 0) matches and the
geometric-consistency confidence (numpy, exactly what the vehicle runs), take the best map, match coarse (k = 1) ->
level 1 -> level 2 on it, estimate the homography with MAGSAC and compare footprints. R@1 = the right map (several
maps) or the footprint contains the true query centre (one map); IoU counts 0 on failure. SIFT + MAGSAC is measured
on the same queries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge_runtime.numerics.consistency import ConsistencyConfig, geometric_consistency
from edge_runtime.numerics.geometry import (
    GEOMETRY_MODELS,
    estimate_homography,
    fit_query_to_map,
    footprint,
    is_convex_quad,
    project_points,
    quad_contains,
    quad_iou,
)
from edge_runtime.numerics.grid import cell_centers
from edge_runtime.numerics.matching import matches_from_mask, mknn_mask
from topicgeo.config import COARSE_STRIDE
from topicgeo.data.synthesis import EvalQuery
from topicgeo.model.topicgeo import EncodedImage, TopicGeo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation parameters.

    Attributes:
        retrieval_k: MKNN k used to score candidates (0 per the supplement).
        consistency: geometric-consistency score parameters (reading A by default).
        homography_threshold_px: MAGSAC threshold in map pixels.
        geometry: query -> map model, as the vehicle's locator (``LocatorConfig.geometry``): ``auto`` (the homography
            only where it explains clearly more inliers than a similarity), ``homography`` or ``similarity``
            (:func:`~edge_runtime.numerics.geometry.fit_query_to_map`).
        recall_ks: the k of R@k to report.
        quarter_turns: clockwise quarter turns of each query tried (best retrieval score wins); ``(0,)`` is the
            supplement's protocol, ``(0, 1, 2, 3)`` the vehicle's search without a yaw prior (the locator's
            ``search_rotations_deg``). Turns are exact pixel permutations (``np.rot90``).
    """

    retrieval_k: int = 0
    quarter_turns: tuple[int, ...] = (0,)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    homography_threshold_px: float = 4.0
    geometry: str = "auto"
    recall_ks: tuple[int, ...] = (1, 3)

    def __post_init__(self) -> None:
        if self.retrieval_k < 0 or self.homography_threshold_px <= 0 or not self.recall_ks:
            raise ValueError("invalid EvalConfig")
        if self.geometry not in GEOMETRY_MODELS:
            raise ValueError(f"geometry must be one of {GEOMETRY_MODELS}, got {self.geometry!r}")
        if not self.quarter_turns or any(t not in (0, 1, 2, 3) for t in self.quarter_turns):
            raise ValueError(f"quarter_turns must be a non-empty subset of 0..3, got {self.quarter_turns}")


class GalleryMap(NamedTuple):
    """One map of the retrieval gallery: ``image (H, W, 3)`` uint8 and ``valid (H, W)`` bool."""

    map_id: str
    image: np.ndarray
    valid: np.ndarray


class QueryOutcome(NamedTuple):
    """Per-query result (``footprint`` in the top-1 map's pixels, None on failure; ``gallery_size``: maps searched,
    0 = not recorded)."""

    query_id: str
    true_map: str
    ranking: list[str]
    predicted_map: str | None
    footprint: np.ndarray | None
    correct: bool
    iou: float
    inliers: int
    seconds: float
    reason: str | None
    gallery_size: int = 0


def pad_to_multiple(
    image: np.ndarray, valid: np.ndarray, multiple: int = COARSE_STRIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to a multiple of ``multiple`` (padding marked invalid)."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image, valid
    return (
        np.pad(image, ((0, ph), (0, pw), (0, 0))),
        np.pad(valid, ((0, ph), (0, pw)), constant_values=False),
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


def quarter_turn(image: np.ndarray, turns: int) -> tuple[np.ndarray, np.ndarray]:
    """``image (H, W, ...)`` turned clockwise by ``turns`` quarter turns and the ``(3, 3)`` homography from the
    original's pixel centres to the turned image's."""
    turned = np.ascontiguousarray(np.rot90(image, -turns))
    H = np.eye(3)
    h, w = image.shape[:2]
    for _ in range(turns % 4):  # one clockwise turn of an h x w image: (x, y) -> (h - 1 - y, x)
        H = np.array([[0.0, -1.0, h - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ H
        h, w = w, h
    return turned, H


def coarse_candidate_score(
    model: TopicGeo, query: EncodedImage, ref: EncodedImage, config: EvalConfig
) -> tuple[float, int]:
    """Geometric-consistency confidence of one gallery map and the number of its coarse matches."""
    conf = model.coarse_confidence(query, ref)[0].numpy()
    mcfg = model.config.matching
    mask = mknn_mask(
        conf, query.grid, ref.grid, config.retrieval_k, mcfg.threshold, 0,
        query.valid[0].numpy(), ref.valid[0].numpy(),
    )
    iq, ir, _ = matches_from_mask(mask, conf)
    pts_q = cell_centers(*query.grid, COARSE_STRIDE)[iq]
    pts_r = cell_centers(*ref.grid, COARSE_STRIDE)[ir]
    result = geometric_consistency(pts_q, pts_r, query.grid[0] * query.grid[1], config.consistency)
    return float(result.score), len(iq)


def locate_on_map(
    model: TopicGeo, query: EncodedImage, ref: EncodedImage, query_size: tuple[int, int], config: EvalConfig,
    query_to_input: np.ndarray | None = None,
) -> tuple[np.ndarray | None, int, str | None, tuple[np.ndarray, np.ndarray]]:
    """Fine matching + homography on one map; returns footprint (4, 2) or None, inliers, reason, matches.

    ``query`` encodes the query image of ``query_size (w, h)`` itself or, when ``query_to_input (3, 3)`` is given,
    a transformed copy of it (a quarter turn): the footprint is always the original query's outline, and the
    returned matches are in the encoded image's pixels.
    """
    coarse = model.match_coarse(query, ref)
    level1 = model.match_level1(query, ref, coarse.idx_q, coarse.idx_r, coarse.valid)
    l2q, l2r, l2v = model.select_level2_windows(level1)
    level2 = model.match_level2(query, ref, l2q, l2r, l2v)
    valid = level2.valid[0].numpy()
    pts_q = level2.pts_q[0].numpy()[valid].astype(np.float64)
    pts_r = level2.pts_r[0].numpy()[valid].astype(np.float64)
    if not coarse.valid.any():
        return None, 0, "no coarse match", (pts_q, pts_r)
    to_input = np.eye(3) if query_to_input is None else np.asarray(query_to_input, dtype=np.float64)
    input_size = tuple(np.abs(to_input[:2, :2]) @ np.asarray(query_size, dtype=np.float64))  # (w, h) turned
    hom, _ = fit_query_to_map(pts_q, pts_r, config.homography_threshold_px,
                              (round(input_size[0]), round(input_size[1])), config.geometry)
    if not hom.ok:
        return None, 0, hom.reason, (pts_q, pts_r)
    return footprint(hom.H @ to_input, *query_size), hom.num_inliers, None, (pts_q, pts_r)


def encode_gallery(model: TopicGeo, gallery: list[GalleryMap]) -> dict[str, EncodedImage]:
    """Encode every (padded) gallery map once."""
    out = {}
    with torch.no_grad():
        for m in tqdm(gallery, desc="encode gallery", leave=False):
            image, valid = pad_to_multiple(m.image, m.valid)
            out[m.map_id] = model.encode(to_tensor(image), torch.from_numpy(valid)[None])
    return out


def evaluate_topicgeo(
    model: TopicGeo, queries: list[EvalQuery], gallery: list[GalleryMap], config: EvalConfig | None = None
) -> list[QueryOutcome]:
    """Run the TopicGeo retrieval + matching pipeline on every query."""
    config = config or EvalConfig()
    model.eval()
    encoded = encode_gallery(model, gallery)
    outcomes = []
    with torch.no_grad():
        for q in tqdm(queries, desc="topicgeo", leave=False):
            t0 = time.perf_counter()
            h, w = q.image.shape[:2]
            scores: dict[str, float] = {}
            turn_of: dict[str, tuple[np.ndarray, EncodedImage]] = {}
            for turns in config.quarter_turns:
                image, to_turned = quarter_turn(q.image, turns)
                enc_q = model.encode(to_tensor(image))
                for mid, enc in encoded.items():
                    score = coarse_candidate_score(model, enc_q, enc, config)[0]
                    if mid not in scores or score > scores[mid]:
                        scores[mid], turn_of[mid] = score, (to_turned, enc_q)
            # Only candidates with evidence are ranked: ties at zero must not count as retrievals.
            ranking = sorted((k for k in scores if scores[k] > 0), key=lambda k: -scores[k])
            if not ranking:
                outcomes.append(_score(q, [], None, None, 0, "no candidate with a positive retrieval score",
                                       time.perf_counter() - t0, len(gallery)))
                continue
            best = ranking[0]
            to_turned, enc_q = turn_of[best]
            quad, inliers, reason, _ = locate_on_map(model, enc_q, encoded[best], (w, h), config, to_turned)
            outcomes.append(_score(q, ranking, best, quad, inliers, reason, time.perf_counter() - t0, len(gallery)))
    return outcomes


def _score(
    q: EvalQuery, ranking: list[str], best: str | None, quad: np.ndarray | None, inliers: int, reason: str | None,
    seconds: float, n_maps: int,
) -> QueryOutcome:
    h, w = q.image.shape[:2]
    truth = footprint(q.H_query_to_map, w, h)
    centre = project_points(q.H_query_to_map, np.array([[w / 2.0, h / 2.0]]))[0]
    if n_maps > 1:
        correct = best == q.map_id
    else:
        correct = best == q.map_id and quad is not None and is_convex_quad(quad) and quad_contains(quad, centre)
    iou = quad_iou(quad, truth) if (correct and quad is not None and is_convex_quad(quad)) else 0.0
    return QueryOutcome(q.query_id, q.map_id, ranking, best, quad, bool(correct), float(iou), inliers, seconds, reason,
                        n_maps)


class SiftMatcher:
    """SIFT + ratio test + MAGSAC, whole-map matching; candidates ranked by inlier count (the baseline)."""

    def __init__(self, ratio: float = 0.8, threshold_px: float = 4.0, max_features: int = 4000) -> None:
        self.sift = cv2.SIFT_create(nfeatures=max_features)
        self.ratio = ratio
        self.threshold_px = threshold_px
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)

    def features(self, image: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Keypoints ``(N, 2)`` and descriptors ``(N, 128)`` of an RGB image."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        mask = None if valid is None else valid.astype(np.uint8) * 255
        kps, desc = self.sift.detectAndCompute(grey, mask)
        return np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2), desc

    def match(self, fq: tuple[np.ndarray, np.ndarray | None], fr: tuple[np.ndarray, np.ndarray | None],
              size: tuple[int, int]) -> tuple[np.ndarray | None, int]:
        """Homography query -> map and its inlier count (None, 0 on failure)."""
        (kq, dq), (kr, dr) = fq, fr
        if dq is None or dr is None or len(kq) < 4 or len(kr) < 4:
            return None, 0
        pairs = self.matcher.knnMatch(dq, dr, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < 4:
            return None, 0
        pq = kq[[m.queryIdx for m in good]]
        pr = kr[[m.trainIdx for m in good]]
        hom = estimate_homography(pq, pr, self.threshold_px, image_size=size)
        return (hom.H, hom.num_inliers) if hom.ok else (None, 0)


def evaluate_sift(queries: list[EvalQuery], gallery: list[GalleryMap]) -> list[QueryOutcome]:
    """SIFT + MAGSAC on the same queries and gallery."""
    sift = SiftMatcher()
    feats = {m.map_id: sift.features(m.image, m.valid) for m in gallery}
    outcomes = []
    for q in tqdm(queries, desc="sift", leave=False):
        t0 = time.perf_counter()
        h, w = q.image.shape[:2]
        fq = sift.features(q.image)
        results = {mid: sift.match(fq, f, (w, h)) for mid, f in feats.items()}
        ranking = sorted((k for k in results if results[k][1] > 0), key=lambda k: -results[k][1])
        best = ranking[0] if ranking else None
        H, inliers = results[best] if best is not None else (None, 0)
        quad = None if H is None else footprint(H, w, h)
        reason = None if H is not None else "no homography"
        outcomes.append(_score(q, ranking, best, quad, inliers, reason, time.perf_counter() - t0, len(gallery)))
    return outcomes


def summarize(outcomes: list[QueryOutcome], recall_ks: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """R@k (percent), mean IoU (percent, failures 0) and timing.

    R@k for k > 1 counts a query whose true map is among the best k ranked maps. Against a one-map gallery that only
    says the map scored above zero, so there R@k is R@1 (the footprint contains the true centre). The gallery size
    is each outcome's ``gallery_size``; where it is not recorded (0), a gallery is taken to be one map when every
    outcome names the same single map.
    """
    n = len(outcomes)
    if n == 0:
        raise ValueError("no queries to summarise")
    seen = {o.true_map for o in outcomes} | {m for o in outcomes for m in o.ranking}

    def one_map(o: QueryOutcome) -> bool:
        return o.gallery_size == 1 or (o.gallery_size == 0 and len(seen) == 1)

    out: dict[str, Any] = {"queries": n}
    for k in recall_ks:
        if k == 1:
            hits = sum(o.correct for o in outcomes)
        else:
            hits = sum((o.correct or (not one_map(o) and o.true_map in o.ranking[:k])) for o in outcomes)
        out[f"R@{k}"] = round(100.0 * hits / n, 1)
    out["mIoU"] = round(100.0 * float(np.mean([o.iou for o in outcomes])), 1)
    out["median_seconds"] = round(float(np.median([o.seconds for o in outcomes])), 3)
    return out
