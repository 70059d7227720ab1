"""Coarse matching as the vehicle runs it (numpy): dual-softmax over topic features, MKNN, fixed-size top-M.

Mirrors ``TopicGeo.coarse_confidence`` + ``TopicGeo.match_coarse`` (pinned by tests/test_export_parity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.numerics.grid import cell_centers, cell_index_to_uv, point_to_cell
from edge_runtime.numerics.matching import dual_softmax, mknn_mask, topk_fixed


@dataclass(frozen=True)
class CoarseMatchConfig:
    """Coarse matching parameters (defaults = the network's ``MatchingConfig``)."""

    temperature: float = 0.1
    threshold: float = 0.2
    border: int = 1
    k: int = 1
    max_matches: int = 64

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 <= self.threshold < 1 or self.border < 0 or self.k < 0:
            raise ValueError(f"invalid coarse matching config {self}")
        if self.max_matches < 1:
            raise ValueError("max_matches must be >= 1")

    @classmethod
    def from_model_config(cls, model_config: dict, k: int | None = None) -> CoarseMatchConfig:
        """From a bundle manifest's ``model_config`` (``matching`` section); ``k`` overrides ``mknn_k``."""
        m = model_config["matching"]
        return cls(m["temperature"], m["threshold"], m["border"], m["mknn_k"] if k is None else k,
                   m["max_coarse_matches"])


def coarse_confidence(
    coarse_q: np.ndarray, coarse_r: np.ndarray, temperature: float,
    valid_q: np.ndarray | None = None, valid_r: np.ndarray | None = None,
) -> np.ndarray:
    """Dual-softmax confidences ``(Nq, Nr)`` of topic features ``(Nq, C)`` and ``(Nr, C)`` (each scaled by 1/sqrt(C)).

    Invalid (padded) cells get confidence 0, as in the network.
    """
    q = np.asarray(coarse_q, dtype=np.float32)
    r = np.asarray(coarse_r, dtype=np.float32)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"coarse features must be (Nq, C) and (Nr, C), got {q.shape} and {r.shape}")
    sim = (q @ r.T) / q.shape[1]
    if valid_q is not None or valid_r is not None:
        vq = np.ones(len(q), bool) if valid_q is None else np.asarray(valid_q, bool)
        vr = np.ones(len(r), bool) if valid_r is None else np.asarray(valid_r, bool)
        pair = vq[:, None] & vr[None, :]
        sim = np.where(pair, sim, np.float32(-1e9 * temperature))
        return dual_softmax(sim, temperature) * pair
    return dual_softmax(sim, temperature)


def coarse_matches(
    coarse_q: np.ndarray,
    coarse_r: np.ndarray,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    config: CoarseMatchConfig,
    valid_q: np.ndarray | None = None,
    valid_r: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-size coarse matches.

    ``allowed`` (optional ``(Nq, Nr)`` bool) restricts the pairs after the dual softmax, before MKNN: with a known
    approximate alignment (the locator's refinement pass, :func:`alignment_gate`) a query cell may only match reference
    cells near its predicted position. The confidences keep their whole-grid normalisation, so the threshold means
    what it means without the gate.

    Returns:
        ``idx_q (M,)``, ``idx_r (M,)`` int64, ``score (M,)`` float32, ``valid (M,)`` bool and the confidence matrix.
    """
    conf = coarse_confidence(coarse_q, coarse_r, config.temperature, valid_q, valid_r)
    if allowed is not None:
        allowed = np.asarray(allowed, bool)
        if allowed.shape != conf.shape:
            raise ValueError(f"allowed must be {conf.shape}, got {allowed.shape}")
        conf = conf * allowed
    mask = mknn_mask(conf, grid_q, grid_r, config.k, config.threshold, config.border, valid_q, valid_r)
    iq, ir, score, valid = topk_fixed(mask, conf, config.max_matches)
    return iq, ir, score, valid, conf


def alignment_gate(query_to_ref: np.ndarray, grid_q: tuple[int, int], grid_r: tuple[int, int], stride: int,
                   radius: int) -> np.ndarray:
    """``(Nq, Nr)`` bool: reference cells within ``radius`` cells (Chebyshev) of where the homography
    ``query_to_ref (3, 3)`` (query px -> reference px) puts each query cell's centre; query cells that land off the
    reference grid allow nothing.
    """
    if radius < 0 or stride < 1:
        raise ValueError(f"radius must be >= 0 and stride >= 1, got {radius}, {stride}")
    H = np.asarray(query_to_ref, np.float64)
    if H.shape != (3, 3) or not np.all(np.isfinite(H)):
        raise ValueError("query_to_ref must be a finite (3, 3) homography")
    hq, wq = grid_q
    hr, wr = grid_r
    centres = cell_centers(hq, wq, stride)
    p = np.c_[centres, np.ones(len(centres))] @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        pred = p[:, :2] / p[:, 2:3]
    on_grid = (p[:, 2] > 0) & np.all(np.isfinite(pred), axis=1)
    pred_uv = point_to_cell(np.where(on_grid[:, None], pred, -1e9), stride)
    on_grid &= (pred_uv[:, 0] >= 0) & (pred_uv[:, 0] < wr) & (pred_uv[:, 1] >= 0) & (pred_uv[:, 1] < hr)
    uv_r = cell_index_to_uv(np.arange(hr * wr), wr)
    near = np.max(np.abs(uv_r[None, :, :] - pred_uv[:, None, :]), axis=2) <= radius
    return near & on_grid[:, None]
