"""Pure torch matching primitives: dual-softmax, MKNN, fixed-size top-k and 4x4-window gathering.

These mirror :mod:`edge_runtime.numerics.matching` (numpy) one-for-one; a parity test pins the two together.
Cells follow :mod:`edge_runtime.numerics.grid` (row-major flat indices, centres at ``s*u + (s-1)/2``).
"""

from __future__ import annotations

import torch

MASK_VALUE = -1e9  # used on fp32 logits only


def dual_softmax(
    sim: torch.Tensor,
    temperature: float,
    valid_q: torch.Tensor | None = None,
    valid_r: torch.Tensor | None = None,
) -> torch.Tensor:
    """``P = softmax_rows(S / T) * softmax_cols(S / T)`` in fp32.

    Args:
        sim: ``(B, Nq, Nr)`` similarities.
        temperature: softmax temperature.
        valid_q, valid_r: optional ``(B, Nq)`` / ``(B, Nr)`` bool masks; invalid rows/columns get probability 0.

    Returns:
        ``(B, Nq, Nr)`` float32 confidences in [0, 1].
    """
    logits = sim.float() / temperature
    if valid_q is not None or valid_r is not None:
        mask = _pair_mask(logits, valid_q, valid_r)
        logits = logits.masked_fill(~mask, MASK_VALUE)
    conf = torch.softmax(logits, dim=1) * torch.softmax(logits, dim=2)
    if valid_q is not None or valid_r is not None:
        conf = conf * mask
    return conf


def _pair_mask(x: torch.Tensor, valid_q: torch.Tensor | None, valid_r: torch.Tensor | None) -> torch.Tensor:
    b, nq, nr = x.shape
    mq = torch.ones(b, nq, dtype=torch.bool, device=x.device) if valid_q is None else valid_q.bool()
    mr = torch.ones(b, nr, dtype=torch.bool, device=x.device) if valid_r is None else valid_r.bool()
    return mq[:, :, None] & mr[:, None, :]


def grid_uv(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Integer ``(u, v)`` of every cell of a grid, row-major: ``(height*width, 2)`` int64."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def border_mask(height: int, width: int, border: int, device: torch.device | None = None) -> torch.Tensor:
    """``(height*width,)`` bool: True for cells at least ``border`` cells away from the grid edge."""
    uv = grid_uv(height, width, device)
    u, v = uv[:, 0], uv[:, 1]
    return (u >= border) & (u < width - border) & (v >= border) & (v < height - border)


def mknn_mask(
    conf: torch.Tensor,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    k: int,
    threshold: float,
    border: int = 0,
) -> torch.Tensor:
    """Mutual k-nearest-neighbour filter on a grid (method.md §3).

    Keep ``(i, j)`` iff ``P(i, j) > threshold``, ``||g(j) - g(r(i))||_inf <= k`` and ``||g(i) - g(q(j))||_inf <= k``
    where ``r(i) = argmax_j P(i, j)`` and ``q(j) = argmax_i P(i, j)``. ``k = 0`` is exactly mutual nearest neighbour.

    Args:
        conf: ``(B, Nq, Nr)`` confidences.
        grid_q, grid_r: ``(h, w)`` of the query and reference grids (``Nq = h*w``).
        k: Chebyshev window tolerance in cells.
        threshold: confidence threshold.
        border: cells within ``border`` of either grid's edge are removed.

    Returns:
        ``(B, Nq, Nr)`` bool mask.
    """
    uv_q = grid_uv(*grid_q, device=conf.device)
    uv_r = grid_uv(*grid_r, device=conf.device)
    best_r = conf.argmax(dim=2)  # (B, Nq)
    best_q = conf.argmax(dim=1)  # (B, Nr)
    # Chebyshev distance between every reference cell j and the best reference cell of query i.
    d_r = (uv_r[None, None, :, :] - uv_r[best_r][:, :, None, :]).abs().amax(dim=-1)  # (B, Nq, Nr)
    d_q = (uv_q[None, :, None, :] - uv_q[best_q][:, None, :, :]).abs().amax(dim=-1)  # (B, Nq, Nr)
    mask = (conf > threshold) & (d_r <= k) & (d_q <= k)
    if border > 0:
        bq = border_mask(*grid_q, border, conf.device)
        br = border_mask(*grid_r, border, conf.device)
        mask = mask & bq[None, :, None] & br[None, None, :]
    return mask


def topk_matches(
    conf: torch.Tensor, mask: torch.Tensor, max_matches: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed-size list of the most confident masked matches (export-friendly).

    Args:
        conf: ``(B, Nq, Nr)``. mask: ``(B, Nq, Nr)`` bool. max_matches: M.

    Returns:
        ``idx_q (B, M)``, ``idx_r (B, M)`` int64, ``score (B, M)`` float32 and ``valid (B, M)`` bool, sorted by score;
        rows beyond the number of masked matches have ``valid = False``.
    """
    b, nq, nr = conf.shape
    m = min(max_matches, nq * nr)
    flat = torch.where(mask, conf.float(), torch.full_like(conf, -1.0, dtype=torch.float32)).reshape(b, -1)
    score, idx = flat.topk(m, dim=1)
    valid = score >= 0.0
    if m < max_matches:  # pad to the fixed size
        pad = max_matches - m
        idx = torch.cat([idx, idx.new_zeros(b, pad)], dim=1)
        score = torch.cat([score, score.new_full((b, pad), -1.0)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(b, pad)], dim=1)
    return idx // nr, idx % nr, score.clamp_min(0.0), valid


def windows(features: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Group a child-level map into the ``window x window`` children of every parent cell.

    Args:
        features: ``(B, C, H, W)`` with ``H, W`` multiples of ``window``.

    Returns:
        ``(B, (H/window) * (W/window), window*window, C)``: parent cells row-major, children row-major inside.
    """
    b, c, h, w = features.shape
    x = features.reshape(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // window) * (w // window), window * window, c)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, N, ...)`` gathered along dim 1 with ``index (B, M)`` -> ``(B, M, ...)``."""
    extra = x.shape[2:]
    idx = index.reshape(*index.shape, *([1] * len(extra))).expand(*index.shape, *extra)
    return torch.gather(x, 1, idx)


def gather_windows(features: torch.Tensor, parent: torch.Tensor, parent_grid_w: int, window: int = 4) -> torch.Tensor:
    """The ``window x window`` children of the parent cells ``parent (B, M)`` (flat indices on a grid ``parent_grid_w``
    wide): ``(B, M, window*window, C)``, children row-major; equal to ``gather_rows(windows(features), parent)``.

    Only the ``M * window**2`` needed feature columns are gathered from ``features (B, C, H, W)``: regrouping the
    whole map first (:func:`windows`) costs a 6-D transpose of every pixel, which dominated the exported fine
    matcher on a CPU (two ~40 ms transposes of the 1/4 map per call).
    """
    b, c = features.shape[:2]
    m = parent.shape[1]
    children = torch.arange(window * window, device=parent.device)[None, None].expand(b, m, window * window)
    flat = child_index(parent[:, :, None], parent_grid_w, children, window).reshape(b, 1, m * window * window)
    cols = torch.gather(features.reshape(b, c, -1), 2, flat.expand(b, c, m * window * window))
    return cols.permute(0, 2, 1).reshape(b, m, window * window, c)


def child_index(parent: torch.Tensor, parent_grid_w: int, child: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Flat child-grid index of child ``child`` (row-major in the window) of flat parent cell ``parent``."""
    # ``//`` exports as integer Div/Mod; ``torch.div(..., rounding_mode=...)`` would go through float + Floor.
    pu, pv = parent % parent_grid_w, parent // parent_grid_w
    cu, cv = child % window, child // window
    return (pv * window + cv) * (parent_grid_w * window) + pu * window + cu


def cell_center(index: torch.Tensor, grid_w: int, stride: int) -> torch.Tensor:
    """Pixel centre ``(..., 2)`` of flat cell indices at ``stride`` (centre ``s*u + (s-1)/2``)."""
    u = (index % grid_w).float()
    v = (index // grid_w).float()
    off = (stride - 1) / 2.0
    return torch.stack([u * stride + off, v * stride + off], dim=-1)


def window_grid(window: int = 4, device: torch.device | None = None) -> torch.Tensor:
    """Normalised child-centre coordinates of a window, row-major: ``(window*window, 2)`` in [-1, 1].

    For W = 4 the values are {-1, -1/3, 1/3, 1}; one unit is ``(W - 1) / 2`` child cells (the even-window scaling).
    """
    lin = torch.linspace(-1.0, 1.0, window, device=device)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
