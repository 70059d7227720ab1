"""Scoring of located frames against ground truth (docs/evaluation.md).

- ``map`` criterion (SJER, many small maps): R@1 = the returned ``map_id`` is the query's map; R@k (k > 1) uses the
  method's ranked ``candidates`` when it reports them (else not available).
- ``centre`` criterion (NAIP, one large map): R@1 = the returned footprint contains the true query centre.
- IoU: quadrilateral IoU of the returned and the true footprints on the true map when R@1 holds, else 0
  (a non-convex returned footprint counts as a failure).
- Drone frames: located share and great-circle horizontal error (m) of the returned lat/lon against the SfM camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from benchmarks.harness.contract import LocateRecord
from edge_runtime.numerics.geometry import is_convex_quad, quad_contains, quad_iou

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean Earth radius
IOU_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass(frozen=True)
class QueryTruth:
    """Ground truth of one synthetic query.

    Attributes:
        query_id: stable id (``"{query stem}->{map stem}#{k}"``).
        image: path of the query image file given to every method.
        map_id: the true map's file stem.
        footprint: ``(4, 2)`` float64 true positions of the image corners (0,0), (w,0), (w,h), (0,h) in that map.
        centre: ``(2,)`` float64 true position of the image centre ((w - 1) / 2, (h - 1) / 2) in that map.
    """

    query_id: str
    image: str
    map_id: str
    footprint: np.ndarray
    centre: np.ndarray

    def __post_init__(self) -> None:
        fp = np.asarray(self.footprint, np.float64)
        c = np.asarray(self.centre, np.float64)
        if fp.shape != (4, 2) or c.shape != (2,) or not (np.all(np.isfinite(fp)) and np.all(np.isfinite(c))):
            raise ValueError(f"query {self.query_id}: footprint must be finite (4, 2) and centre finite (2,)")
        if not is_convex_quad(fp):
            raise ValueError(f"query {self.query_id}: true footprint is not a convex quadrilateral")
        object.__setattr__(self, "footprint", fp)
        object.__setattr__(self, "centre", c)


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth of one real frame: the SfM camera position (WGS84 degrees)."""

    image: str
    lat: float
    lon: float


@dataclass(frozen=True)
class QueryScore:
    """Per-query outcome: ``correct`` (R@1), ``iou`` in [0, 1], ``rank`` of the true map in the candidates
    (1-based; None when unknown or absent), and the latency (None when the record has no total)."""

    query_id: str
    ok: bool
    correct: bool
    iou: float
    rank: int | None
    latency_ms: float | None


def score_query(record: LocateRecord, truth: QueryTruth, criterion: Literal["map", "centre"]) -> QueryScore:
    """Score one record against its truth (see the module docstring)."""
    if criterion not in ("map", "centre"):
        raise ValueError(f"criterion must be 'map' or 'centre', got {criterion!r}")
    if record.image != truth.image:
        raise ValueError(f"record for {record.image} scored against the truth of {truth.image}")
    quad = record.footprint_px
    convex = record.ok and quad is not None and is_convex_quad(quad)
    same_map = record.ok and record.map_id == truth.map_id
    if criterion == "map":
        correct = bool(same_map)
    else:
        correct = bool(same_map and convex and quad_contains(quad, truth.centre))
    iou = quad_iou(quad, truth.footprint) if (correct and convex) else 0.0
    rank = None
    if record.candidates is not None and truth.map_id in record.candidates:
        rank = record.candidates.index(truth.map_id) + 1
    if record.ok and record.map_id == truth.map_id and record.candidates is None:
        rank = 1
    return QueryScore(truth.query_id, record.ok, correct, float(iou), rank, record.total_ms)


def recall_at_k(scores: list[QueryScore], k: int, ranked: bool) -> float | None:
    """R@k in percent: R@1 from ``correct``; k > 1 from ranks (None when the method reports no ranking)."""
    if not scores:
        raise ValueError("no scores")
    if k == 1:
        return 100.0 * sum(s.correct for s in scores) / len(scores)
    if not ranked:
        return None
    return 100.0 * sum((s.correct or (s.rank is not None and s.rank <= k)) for s in scores) / len(scores)


def recall_vs_iou(scores: list[QueryScore], thresholds: tuple[float, ...] = IOU_THRESHOLDS) -> list[float]:
    """Percent of queries with R@1 and IoU >= t, for each threshold t (t = 0 gives R@1)."""
    if not scores:
        raise ValueError("no scores")
    return [100.0 * sum(s.correct and s.iou >= t for s in scores) / len(scores) for t in thresholds]


def latency_stats(values_ms: list[float | None]) -> dict[str, float | None]:
    """Median and p95 (linear interpolation) of per-frame latencies in milliseconds (None values left out)."""
    vals = [v for v in values_ms if v is not None]
    if not vals:
        return {"median_ms": None, "p95_ms": None}
    a = np.asarray(vals, np.float64)
    return {"median_ms": round(float(np.median(a)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1)}


def stage_medians(latencies: list[dict[str, float]]) -> dict[str, float]:
    """Median milliseconds of each latency stage over the records that report it."""
    keys = list(dict.fromkeys(k for lat in latencies for k in lat))
    return {k: round(float(np.median([lat[k] for lat in latencies if k in lat])), 1) for k in keys}


def summarize_queries(scores: list[QueryScore], ranked: bool, ks: tuple[int, ...] = (1, 3),
                      stages: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """R@k, mean IoU (percent, failures 0), located share, latency (with per-stage medians of ``stages``, the
    records' ``latency_ms``) and the recall-vs-IoU curve."""
    out: dict[str, Any] = {"queries": len(scores)}
    for k in ks:
        r = recall_at_k(scores, k, ranked)
        out[f"R@{k}"] = None if r is None else round(r, 1)
    out["mIoU"] = round(100.0 * float(np.mean([s.iou for s in scores])), 1)
    out["located_pct"] = round(100.0 * sum(s.ok for s in scores) / len(scores), 1)
    out.update(latency_stats([s.latency_ms for s in scores]))
    out["stages_median_ms"] = stage_medians(stages) if stages else None
    out["recall_vs_iou"] = {"thresholds": list(IOU_THRESHOLDS), "recall_pct": [round(v, 1) for v in
                                                                               recall_vs_iou(scores)]}
    return out


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS84 points (spherical Earth, mean radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def summarize_frames(records: list[LocateRecord], truths: list[FrameTruth]) -> dict[str, Any]:
    """Located share (percent) and horizontal error (m: median, max, per frame) of real drone frames.

    A located frame without lat/lon counts as not located.
    """
    if len(records) != len(truths) or not records:
        raise ValueError(f"{len(records)} records for {len(truths)} frames")
    errors: list[float | None] = []
    for r, t in zip(records, truths, strict=True):
        if r.image != t.image:
            raise ValueError(f"record for {r.image} scored against the truth of {t.image}")
        ok = r.ok and r.lat is not None and r.lon is not None
        errors.append(haversine_m(r.lat, r.lon, t.lat, t.lon) if ok else None)  # type: ignore[arg-type]
    located = [e for e in errors if e is not None]
    return {
        "frames": len(records),
        "located_pct": round(100.0 * len(located) / len(records), 1),
        "median_error_m": None if not located else round(float(np.median(located)), 3),
        "max_error_m": None if not located else round(float(np.max(located)), 3),
        "within_1m_pct": round(100.0 * sum(e <= 1.0 for e in located) / len(records), 1),
        "errors_m": [None if e is None else round(e, 3) for e in errors],
        **latency_stats([r.total_ms for r in records]),
        "stages_median_ms": stage_medians([r.latency_ms for r in records]),
    }
