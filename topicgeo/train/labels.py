"""Center-based adaptive label assignment (ACA) from a query-to-reference homography (method.md §4, decision 10).

Conventions (:mod:`edge_runtime.numerics.grid`): pixel centres at integers; cell ``(u, v)`` at stride ``s`` has its
centre at ``s*u + (s-1)/2`` and a point ``p`` belongs to cell ``floor((p + 0.5) / s)``; flat indices are row-major.

Coarse labels: a query cell centre projected by ``H`` into the reference window marks the reference cell it lands in
(forward); a reference cell centre projected by ``H^-1`` marks the query cell it lands in (backward); the union of
both is the default. Many-to-one assignments are kept (scale differences up to ~3x). Under 90/180/270-degree
rotations a cell centre lands exactly on a cell centre, so center-based labels are exact; the AdaMatcher-style
top-left-corner variant (:func:`topleft_coarse_labels`) is off by one cell there.

Fine labels: for a matched parent pair, each of the query parent's 4x4 children (row-major) is projected into the
reference parent's 4x4 child window; the target is the index of the reference child it lands in (or -1 when it
falls outside the window), and ``subpixel`` is its position in normalised window coordinates where the outer child
centres are at -1 and +1: ``(p - window_centre) / ((W - 1) / 2 * child_stride)``.

All computations run in float64; functions are pure and accept single pairs or batches.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

WINDOW = 4
Direction = Literal["forward", "backward", "union"]
_EPS_W = 1e-9  # projective depth below which a projected point is discarded (behind the horizon)


def _as_h(H: torch.Tensor | np.ndarray, device: torch.device | None = None) -> tuple[torch.Tensor, bool]:
    """``(3, 3)`` or ``(B, 3, 3)`` -> ``(B, 3, 3)`` float64 tensor and whether the input was batched."""
    t = torch.as_tensor(H)
    if device is not None:
        t = t.to(device)
    t = t.to(torch.float64)
    if t.ndim == 2:
        t, batched = t[None], False
    else:
        batched = True
    if t.ndim != 3 or t.shape[-2:] != (3, 3):
        raise ValueError(f"homography must have shape (3, 3) or (B, 3, 3), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("homography contains non-finite values")
    return t, batched


def cell_centers(grid_h: int, grid_w: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """``(grid_h * grid_w, 2)`` float64 pixel centres ``(x, y)`` of a grid, row-major."""
    if grid_h <= 0 or grid_w <= 0 or stride <= 0:
        raise ValueError(f"grid {grid_h}x{grid_w} with stride {stride} is empty")
    v, u = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
    off = (stride - 1) / 2.0
    return torch.stack([u.reshape(-1) * stride + off, v.reshape(-1) * stride + off], dim=1).to(torch.float64)


def project(H: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``(B, 3, 3)`` homographies to points ``(N, 2)`` (shared) or ``(B, N, 2)``.

    Returns:
        ``(B, N, 2)`` float64 projected points and ``(B, N)`` bool, False where the projective depth is <= 0.
    """
    pts = points.to(torch.float64)
    if pts.ndim == 2:
        pts = pts[None].expand(H.shape[0], -1, -1)
    hom = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1) @ H.transpose(1, 2)
    w = hom[..., 2]
    ok = w > _EPS_W
    safe_w = torch.where(ok, w, torch.ones_like(w))
    return hom[..., :2] / safe_w[..., None], ok


def point_to_cell(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Integer cell coordinates ``floor((p + 0.5) / stride)`` of pixel points ``(..., 2)`` (int64)."""
    return torch.floor((points + 0.5) / stride).to(torch.int64)


def _validity(
    valid: torch.Tensor | np.ndarray | None, batch: int, n: int, name: str, device: torch.device
) -> torch.Tensor:
    if valid is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    v = torch.as_tensor(valid).to(device=device, dtype=torch.bool)
    if v.ndim == 1:
        v = v[None].expand(batch, -1)
    if v.shape != (batch, n):
        raise ValueError(f"{name} must have shape ({n},) or ({batch}, {n}), got {tuple(v.shape)}")
    return v


def cell_valid_from_pixels(valid: torch.Tensor | np.ndarray, stride: int, min_fraction: float = 0.5) -> torch.Tensor:
    """Cell validity from a pixel mask: a cell is valid when at least ``min_fraction`` of its pixels are.

    Args:
        valid: ``(H, W)`` or ``(B, H, W)`` bool pixel mask (H, W multiples of ``stride``).
        stride: cell size.
        min_fraction: required valid fraction.

    Returns:
        ``(N,)`` or ``(B, N)`` bool, row-major cells.
    """
    v = torch.as_tensor(valid)
    single = v.ndim == 2
    if single:
        v = v[None]
    if v.ndim != 3 or v.shape[1] % stride or v.shape[2] % stride:
        raise ValueError(f"valid mask must be (H, W) or (B, H, W), H and W multiples of {stride}; got {tuple(v.shape)}")
    frac = F.avg_pool2d(v[:, None].to(torch.float32), stride)[:, 0]
    out = (frac >= min_fraction - 1e-6).reshape(v.shape[0], -1)
    return out[0] if single else out


def _scatter_labels(
    labels: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor, keep: torch.Tensor
) -> None:
    labels[b[keep], i[keep], j[keep]] = True


def _check_direction(direction: str) -> None:
    if direction not in ("forward", "backward", "union"):
        raise ValueError(f"direction must be 'forward', 'backward' or 'union', got {direction!r}")


def _coarse_common(
    H_q2r: torch.Tensor | np.ndarray,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    ref_valid_cells: torch.Tensor | np.ndarray | None,
    query_valid_cells: torch.Tensor | np.ndarray | None,
) -> tuple[torch.Tensor, bool, torch.Tensor, torch.Tensor, torch.Tensor]:
    H, batched = _as_h(H_q2r)
    bsz = H.shape[0]
    nq, nr = grid_q[0] * grid_q[1], grid_r[0] * grid_r[1]
    if nq <= 0 or nr <= 0:
        raise ValueError(f"empty grids {grid_q}, {grid_r}")
    vq = _validity(query_valid_cells, bsz, nq, "query_valid_cells", H.device)
    vr = _validity(ref_valid_cells, bsz, nr, "ref_valid_cells", H.device)
    labels = torch.zeros(bsz, nq, nr, dtype=torch.bool, device=H.device)
    return H, batched, vq, vr, labels


def _assign(
    H: torch.Tensor,
    src_pts: torch.Tensor,
    dst_grid: tuple[int, int],
    stride: int,
    rounding: Literal["center", "topleft"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project source points and return their flat destination cell ``(B, N)`` and in-bounds mask ``(B, N)``."""
    p, ok = project(H, src_pts)
    if rounding == "center":
        cell = point_to_cell(p, stride)
    else:
        cell = torch.round(p / stride).to(torch.int64)
    hd, wd = dst_grid
    inside = ok & (cell[..., 0] >= 0) & (cell[..., 0] < wd) & (cell[..., 1] >= 0) & (cell[..., 1] < hd)
    flat = torch.where(inside, cell[..., 1] * wd + cell[..., 0], torch.zeros_like(cell[..., 0]))
    return flat, inside


def _directional_labels(
    H_q2r: torch.Tensor | np.ndarray,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    stride: int,
    ref_valid_cells: torch.Tensor | np.ndarray | None,
    query_valid_cells: torch.Tensor | np.ndarray | None,
    direction: str,
    rounding: Literal["center", "topleft"],
) -> torch.Tensor:
    _check_direction(direction)
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    H, batched, vq, vr, labels = _coarse_common(H_q2r, grid_q, grid_r, ref_valid_cells, query_valid_cells)
    bsz = H.shape[0]
    nq, nr = vq.shape[1], vr.shape[1]
    if rounding == "center":
        pts_q = cell_centers(*grid_q, stride, H.device)
        pts_r = cell_centers(*grid_r, stride, H.device)
    else:
        pts_q = cell_centers(*grid_q, 1, H.device) * stride
        pts_r = cell_centers(*grid_r, 1, H.device) * stride
    if direction in ("forward", "union"):
        j, inside = _assign(H, pts_q, grid_r, stride, rounding)
        b = torch.arange(bsz, device=H.device)[:, None].expand(-1, nq)
        i = torch.arange(nq, device=H.device)[None].expand(bsz, -1)
        keep = inside & vq & torch.gather(vr, 1, j)
        _scatter_labels(labels, b, i, j, keep)
    if direction in ("backward", "union"):
        i, inside = _assign(torch.linalg.inv(H), pts_r, grid_q, stride, rounding)
        b = torch.arange(bsz, device=H.device)[:, None].expand(-1, nr)
        j = torch.arange(nr, device=H.device)[None].expand(bsz, -1)
        keep = inside & vr & torch.gather(vq, 1, i)
        _scatter_labels(labels, b, i, j, keep)
    return labels if batched else labels[0]


def aca_coarse_labels(
    H_q2r: torch.Tensor | np.ndarray,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    stride: int,
    ref_valid_cells: torch.Tensor | np.ndarray | None = None,
    query_valid_cells: torch.Tensor | np.ndarray | None = None,
    direction: Direction = "union",
) -> torch.Tensor:
    """Center-based coarse match labels.

    Args:
        H_q2r: ``(3, 3)`` or ``(B, 3, 3)`` homography from query pixels to reference-window pixels.
        grid_q: query grid ``(hq, wq)`` in cells.
        grid_r: reference grid ``(hr, wr)`` in cells.
        stride: cell size in pixels (64 at the coarse level).
        ref_valid_cells: optional ``(Nr,)`` or ``(B, Nr)`` bool; invalid (padding / nodata) cells get no positive.
        query_valid_cells: optional ``(Nq,)`` or ``(B, Nq)`` bool, same for the query.
        direction: ``forward`` (query centres -> reference cells), ``backward`` (reference centres -> query cells)
            or ``union`` (decision 10).

    Returns:
        ``(Nq, Nr)`` or ``(B, Nq, Nr)`` bool, True for positive pairs (row-major flat cell indices).
    """
    return _directional_labels(H_q2r, grid_q, grid_r, stride, ref_valid_cells, query_valid_cells, direction, "center")


def topleft_coarse_labels(
    H_q2r: torch.Tensor | np.ndarray,
    grid_q: tuple[int, int],
    grid_r: tuple[int, int],
    stride: int,
    ref_valid_cells: torch.Tensor | np.ndarray | None = None,
    query_valid_cells: torch.Tensor | np.ndarray | None = None,
    direction: Direction = "forward",
) -> torch.Tensor:
    """AdaMatcher-style top-left-corner labels (for comparison only): grid points ``s*(u, v)`` are projected and
    rounded to the nearest grid index ``round(p / s)``. Same arguments and output as :func:`aca_coarse_labels`."""
    return _directional_labels(H_q2r, grid_q, grid_r, stride, ref_valid_cells, query_valid_cells, direction, "topleft")


def child_offsets(window: int = WINDOW) -> torch.Tensor:
    """``(window * window, 2)`` int64 ``(du, dv)`` of the children of a parent cell, row-major."""
    dv, du = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    return torch.stack([du.reshape(-1), dv.reshape(-1)], dim=1)


def aca_fine_labels(
    H_q2r: torch.Tensor | np.ndarray,
    parent_q: torch.Tensor | np.ndarray,
    parent_r: torch.Tensor | np.ndarray,
    grid_q_parent: tuple[int, int],
    grid_r_parent: tuple[int, int],
    parent_stride: int,
    child_stride: int,
    ref_child_valid: torch.Tensor | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Center-based fine labels inside the 4x4 child windows of matched parent cells.

    Args:
        H_q2r: ``(3, 3)`` homography (shared by all matches) or ``(M, 3, 3)`` (one per match, e.g. ``H[batch_idx]``).
        parent_q: ``(M,)`` flat query parent-cell indices.
        parent_r: ``(M,)`` flat reference parent-cell indices.
        grid_q_parent: query parent grid ``(hq, wq)``.
        grid_r_parent: reference parent grid ``(hr, wr)``.
        parent_stride: parent cell size (64 for level 1, 16 for level 2).
        child_stride: child cell size (16 for level 1, 4 for level 2); ``parent_stride / child_stride`` must be 4.
        ref_child_valid: optional ``(M, 16)`` bool validity of the reference children (see
            :func:`gather_child_valid`); a query child landing on an invalid child gets -1.

    Returns:
        ``target`` ``(M, 16)`` int64 in ``[0, 16)`` (row-major reference child) or -1, and ``subpixel`` ``(M, 16, 2)``
        float32: the projected child centre in normalised window coordinates (outer child centres at +-1; values
        beyond +-(1 + 1/3) lie outside the window).
    """
    if parent_stride != WINDOW * child_stride:
        raise ValueError(f"parent_stride ({parent_stride}) must be {WINDOW} x child_stride ({child_stride})")
    pq = torch.as_tensor(parent_q).to(torch.int64)
    pr = torch.as_tensor(parent_r).to(torch.int64)
    if pq.ndim != 1 or pq.shape != pr.shape:
        raise ValueError(f"parent_q, parent_r must be (M,) of equal length; got {tuple(pq.shape)}, {tuple(pr.shape)}")
    m = pq.shape[0]
    H, batched = _as_h(H_q2r, pq.device)
    if batched and H.shape[0] != m:
        raise ValueError(f"batched H_q2r must have one homography per match: {H.shape[0]} vs {m}")
    for grid, idx, name in ((grid_q_parent, pq, "parent_q"), (grid_r_parent, pr, "parent_r")):
        if m and (idx.min() < 0 or idx.max() >= grid[0] * grid[1]):
            raise ValueError(f"{name} indices out of range for a {grid[0]}x{grid[1]} grid")
    offs = child_offsets().to(pq.device)  # (16, 2)
    uq = torch.stack([pq % grid_q_parent[1], pq // grid_q_parent[1]], dim=1)  # (M, 2)
    ur = torch.stack([pr % grid_r_parent[1], pr // grid_r_parent[1]], dim=1)
    child_uv = uq[:, None, :] * WINDOW + offs[None]  # (M, 16, 2)
    centres = child_uv.to(torch.float64) * child_stride + (child_stride - 1) / 2.0
    if batched:
        p, ok = project(H, centres)
    else:
        p, ok = project(H, centres.reshape(-1, 2))
        p, ok = p.reshape(m, WINDOW * WINDOW, 2), ok.reshape(m, WINDOW * WINDOW)
    window_centre = ur.to(torch.float64) * parent_stride + (parent_stride - 1) / 2.0  # (M, 2)
    subpixel = (p - window_centre[:, None, :]) / ((WINDOW - 1) / 2.0 * child_stride)
    local = point_to_cell(p, child_stride) - ur[:, None, :] * WINDOW  # (M, 16, 2)
    inside = ok & (local >= 0).all(dim=-1) & (local < WINDOW).all(dim=-1)
    target = torch.where(inside, local[..., 1] * WINDOW + local[..., 0], torch.full_like(local[..., 0], -1))
    if ref_child_valid is not None:
        rv = torch.as_tensor(ref_child_valid)
        rv = rv.to(device=pq.device, dtype=torch.bool)
        if rv.shape != (m, WINDOW * WINDOW):
            raise ValueError(f"ref_child_valid must have shape ({m}, 16), got {tuple(rv.shape)}")
        hit = torch.gather(rv, 1, target.clamp_min(0))
        target = torch.where(hit, target, torch.full_like(target, -1))
    subpixel = torch.where(ok[..., None], subpixel, torch.full_like(subpixel, float("nan")))
    return target, subpixel.to(torch.float32)


def gather_child_valid(
    child_valid: torch.Tensor, parent: torch.Tensor, grid_parent: tuple[int, int], batch_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Validity of the 4x4 children of parent cells.

    Args:
        child_valid: ``(Nc,)`` or ``(B, Nc)`` bool validity of the child grid (row-major, ``4*hp x 4*wp`` cells).
        parent: ``(M,)`` flat parent indices.
        grid_parent: parent grid ``(hp, wp)``.
        batch_idx: ``(M,)`` batch index of each parent when ``child_valid`` is batched.

    Returns:
        ``(M, 16)`` bool, children row-major inside each window.
    """
    hp, wp = grid_parent
    cv = child_valid if child_valid.ndim == 2 else child_valid[None]
    if cv.shape[1] != hp * wp * WINDOW * WINDOW:
        raise ValueError(f"child_valid has {cv.shape[1]} cells; a {hp}x{wp} parent grid has {hp * wp * 16} children")
    b = torch.zeros_like(parent) if batch_idx is None else batch_idx
    offs = child_offsets().to(parent.device)
    cu = (parent % wp)[:, None] * WINDOW + offs[None, :, 0]
    cv_ = (parent // wp)[:, None] * WINDOW + offs[None, :, 1]
    flat = cv_ * (wp * WINDOW) + cu
    return cv[b[:, None].expand_as(flat), flat]
