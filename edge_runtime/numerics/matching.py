"""Coarse/fine matching primitives on a similarity matrix (numpy, torch-free).

Implements method.md §3:

- :func:`dual_softmax`: ``P = softmax_rows(S / T) * softmax_cols(S / T)`` (LoFTR's dual-softmax).
- :func:`mknn_mask`: TopicGeo's mutual-k-nearest-neighbour rule on cell grids. With ``r(i) = argmax_j P(i, j)`` and
  ``q(j) = argmax_i P(i, j)``, keep ``(i, j)`` iff ``P(i, j) > threshold`` and the Chebyshev grid distance of ``j``
  to ``r(i)`` is ``<= k`` and that of ``i`` to ``q(j)`` is ``<= k``. ``k = 0`` is exactly the mutual nearest
  neighbour rule (:func:`mutual_nearest_mask`).
- :func:`matches_from_mask` / :func:`topk_fixed`: mask -> match lists, variable length or fixed size (static shapes
  for export).

Conventions: query cells index the rows, reference cells the columns; cells are flattened row-major
(``index = v * grid_w + u``, see :mod:`edge_runtime.numerics.grid`). Argmax ties resolve to the lowest index (as
``numpy.argmax``, ``torch.argmax`` and ONNX ``ArgMax`` with ``select_last_index=0`` do), so every query cell has
exactly one best reference cell and vice versa.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_runtime.numerics.grid import cell_index_to_uv

logger = logging.getLogger(__name__)

__all__ = [
    "dual_softmax",
    "matches_from_mask",
    "mknn_mask",
    "mutual_nearest_mask",
    "topk_fixed",
]


def _as_float_matrix(array: np.ndarray, name: str) -> np.ndarray:
    """Checks a finite 2-D matrix; keeps float32/float64, converts anything else to float64."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (Nq, Nr) matrix, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (max subtracted first)."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.sum(shifted, axis=axis, keepdims=True)
    return shifted


def dual_softmax(sim: np.ndarray, temperature: float) -> np.ndarray:
    """Dual-softmax matching probabilities.

    ``P(i, j) = softmax_j(S / T)(i, j) * softmax_i(S / T)(i, j)``, computed with the row/column maximum subtracted so
    that large similarities (or tiny temperatures) cannot overflow.

    Args:
        sim: ``(Nq, Nr)`` similarity matrix (float32 or float64 is preserved; other dtypes become float64). Must be
            finite and non-empty.
        temperature: Softmax temperature ``T > 0`` (LoFTR: similarities are ``<f_q, f_r> / C`` and ``T = 0.1``).

    Returns:
        ``(Nq, Nr)`` probabilities in ``[0, 1]``, same float dtype as ``sim``.

    Raises:
        ValueError: on a non-2-D, empty or non-finite ``sim`` or a non-positive / non-finite temperature.
    """
    s = _as_float_matrix(sim, "sim")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"sim must be non-empty, got shape {s.shape}")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    scaled = s / s.dtype.type(temperature)
    return (_softmax(scaled.copy(), axis=1) * _softmax(scaled, axis=0)).astype(s.dtype, copy=False)


def _check_grid(grid: tuple[int, int], n: int, name: str) -> tuple[int, int]:
    if len(grid) != 2:
        raise ValueError(f"{name} must be (grid_h, grid_w), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h <= 0 or w <= 0 or h * w != n:
        raise ValueError(f"{name}={grid!r} does not describe the {n} cells of the confidence matrix")
    return h, w


def _check_valid(valid: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if valid is None:
        return np.ones(n, dtype=bool)
    v = np.asarray(valid)
    if v.dtype != bool or v.shape != (n,):
        raise ValueError(f"{name} must be a bool array of shape ({n},), got dtype {v.dtype} shape {v.shape}")
    return v


def _border_keep(h: int, w: int, border: int) -> np.ndarray:
    """``(h * w,)`` bool: True for cells at least ``border`` cells away from every grid edge."""
    uv = cell_index_to_uv(np.arange(h * w), w)
    u, v = uv[:, 0], uv[:, 1]
    return (u >= border) & (u < w - border) & (v >= border) & (v < h - border)


def _best_indices(conf: np.ndarray, valid_q: np.ndarray, valid_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise and column-wise argmax over valid cells only (invalid cells can never be the best)."""
    if valid_q.all() and valid_r.all():
        masked = conf
    else:
        masked = np.where(valid_q[:, None] & valid_r[None, :], conf, -np.inf)
    return np.argmax(masked, axis=1), np.argmax(masked, axis=0)


def mknn_mask(
    conf: np.ndarray,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    k: int,
    threshold: float,
    border: int = 0,
    valid_q: np.ndarray | None = None,
    valid_r: np.ndarray | None = None,
) -> np.ndarray:
    """Mutual-k-nearest-neighbour match mask (method.md §3 "MKNN definition").

    With ``r(i) = argmax_j conf(i, j)``, ``q(j) = argmax_i conf(i, j)`` and integer cell coordinates ``g``, keep
    ``(i, j)`` iff ``conf(i, j) > threshold`` and ``||g_r(j) - g_r(r(i))||_inf <= k`` and
    ``||g_q(i) - g_q(q(j))||_inf <= k``.

    Invalid (padded) cells are excluded from the argmaxes and from the output. Border removal follows LoFTR: the
    argmaxes run over every valid cell, then pairs involving a cell within ``border`` cells of its grid edge are
    dropped (a border cell can therefore still "win" a row and suppress the matches of that row at ``k = 0``).

    Args:
        conf: ``(Nq, Nr)`` float confidence (e.g. :func:`dual_softmax`), ``Nq = hq * wq``, ``Nr = hr * wr``.
        grid_q: Query grid ``(hq, wq)``.
        grid_r: Reference grid ``(hr, wr)``.
        k: Grid tolerance ``>= 0`` (0 = mutual nearest neighbour; TopicGeo uses 1 at coarse matching).
        threshold: Strict lower bound on ``conf`` for a kept pair.
        border: Number of border cells removed on each side of both grids (``>= 0``).
        valid_q: Optional ``(Nq,)`` bool, False for padded query cells.
        valid_r: Optional ``(Nr,)`` bool, False for padded reference cells.

    Returns:
        ``(Nq, Nr)`` bool mask.

    Raises:
        ValueError: on shape/grid mismatches, non-finite ``conf``, negative ``k`` or ``border``.
    """
    c = _as_float_matrix(conf, "conf")
    n_q, n_r = c.shape
    hq, wq = _check_grid(grid_q, n_q, "grid_q")
    hr, wr = _check_grid(grid_r, n_r, "grid_r")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k}")
    if int(border) != border or border < 0:
        raise ValueError(f"border must be a non-negative integer, got {border}")
    vq = _check_valid(valid_q, n_q, "valid_q")
    vr = _check_valid(valid_r, n_r, "valid_r")

    best_r, best_q = _best_indices(c, vq, vr)
    keep_q = vq & _border_keep(hq, wq, int(border))
    keep_r = vr & _border_keep(hr, wr, int(border))

    # Only candidate pairs above the threshold need the window tests (dual-softmax rows hold few of them).
    cand = (c > threshold) & keep_q[:, None] & keep_r[None, :]
    ii, jj = np.nonzero(cand)
    uv_q = cell_index_to_uv(np.arange(n_q), wq)
    uv_r = cell_index_to_uv(np.arange(n_r), wr)
    near_r = np.max(np.abs(uv_r[jj] - uv_r[best_r[ii]]), axis=1) <= k
    near_q = np.max(np.abs(uv_q[ii] - uv_q[best_q[jj]]), axis=1) <= k
    ok = near_r & near_q
    mask = np.zeros((n_q, n_r), dtype=bool)
    mask[ii[ok], jj[ok]] = True
    return mask


def mutual_nearest_mask(
    conf: np.ndarray,
    threshold: float,
    valid_q: np.ndarray | None = None,
    valid_r: np.ndarray | None = None,
) -> np.ndarray:
    """Mutual-nearest-neighbour mask (LoFTR's coarse rule without border removal).

    Keeps ``(i, j)`` iff ``j = argmax_j' conf(i, j')``, ``i = argmax_i' conf(i', j)`` and ``conf(i, j) > threshold``.
    Ties resolve to the lowest index, so this equals :func:`mknn_mask` with ``k = 0`` and ``border = 0`` exactly.

    Args:
        conf: ``(Nq, Nr)`` float confidence.
        threshold: Strict lower bound on ``conf``.
        valid_q: Optional ``(Nq,)`` bool, False for padded query cells.
        valid_r: Optional ``(Nr,)`` bool, False for padded reference cells.

    Returns:
        ``(Nq, Nr)`` bool mask with at most one True per row and per column.
    """
    c = _as_float_matrix(conf, "conf")
    n_q, n_r = c.shape
    vq = _check_valid(valid_q, n_q, "valid_q")
    vr = _check_valid(valid_r, n_r, "valid_r")
    mask = np.zeros((n_q, n_r), dtype=bool)
    if n_q == 0 or n_r == 0:
        return mask
    best_r, best_q = _best_indices(c, vq, vr)
    rows = np.arange(n_q)
    mutual = (best_q[best_r] == rows) & vq & vr[best_r] & (c[rows, best_r] > threshold)
    mask[rows[mutual], best_r[mutual]] = True
    return mask


def matches_from_mask(mask: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists the pairs of a match mask, by descending confidence.

    Args:
        mask: ``(Nq, Nr)`` bool.
        conf: ``(Nq, Nr)`` float confidence.

    Returns:
        ``idx_q (M,) int64``, ``idx_r (M,) int64``, ``conf (M,)`` (dtype of ``conf``), sorted by descending
        confidence; equal confidences keep row-major order.
    """
    m = np.asarray(mask)
    c = np.asarray(conf)
    if m.dtype != bool or m.ndim != 2:
        raise ValueError(f"mask must be a 2-D bool array, got dtype {m.dtype} shape {m.shape}")
    if c.shape != m.shape:
        raise ValueError(f"conf shape {c.shape} does not match mask shape {m.shape}")
    idx_q, idx_r = np.nonzero(m)
    values = c[idx_q, idx_r]
    order = np.argsort(-values, kind="stable")
    return idx_q[order].astype(np.int64), idx_r[order].astype(np.int64), values[order]


def topk_fixed(
    mask: np.ndarray, conf: np.ndarray, max_matches: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-size match list (static shapes for export): the ``max_matches`` most confident pairs, padded.

    Args:
        mask: ``(Nq, Nr)`` bool.
        conf: ``(Nq, Nr)`` float confidence.
        max_matches: Output length ``K >= 1``.

    Returns:
        ``idx_q (K,) int64``, ``idx_r (K,) int64``, ``conf (K,)`` (dtype of ``conf``), ``valid (K,) bool``. The first
        ``min(K, M)`` entries equal :func:`matches_from_mask`'s first entries; padding has ``valid = False``,
        index 0 and confidence 0.
    """
    if int(max_matches) != max_matches or max_matches < 1:
        raise ValueError(f"max_matches must be a positive integer, got {max_matches}")
    k = int(max_matches)
    iq, ir, cv = matches_from_mask(mask, conf)
    n = min(k, iq.shape[0])
    if iq.shape[0] > k:
        logger.debug("topk_fixed: keeping %d of %d matches", k, iq.shape[0])
    out_q = np.zeros(k, dtype=np.int64)
    out_r = np.zeros(k, dtype=np.int64)
    out_c = np.zeros(k, dtype=cv.dtype)
    valid = np.zeros(k, dtype=bool)
    out_q[:n], out_r[:n], out_c[:n], valid[:n] = iq[:n], ir[:n], cv[:n], True
    return out_q, out_r, out_c, valid
