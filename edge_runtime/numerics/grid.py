"""Pixel and cell conventions shared by every stage (numpy; the torch side mirrors these).

Convention (OpenCV's): pixel ``(x, y)`` has its centre at the integer coordinates ``(x, y)`` and covers
``[x - 0.5, x + 0.5)``. A feature cell ``(u, v)`` at stride ``s`` covers pixels ``s*u .. s*u + s - 1``; its centre is
``s*u + (s - 1) / 2``. A point ``p`` belongs to cell ``floor((p + 0.5) / s)``. Cells are flattened row-major:
``index = v * grid_w + u``.
"""

from __future__ import annotations

import numpy as np


def cell_centers(grid_h: int, grid_w: int, stride: int) -> np.ndarray:
    """Centres of all cells of a ``grid_h x grid_w`` grid, row-major.

    Returns:
        ``(grid_h * grid_w, 2)`` float64 array of ``(x, y)`` pixel coordinates.
    """
    if grid_h <= 0 or grid_w <= 0 or stride <= 0:
        raise ValueError(f"grid {grid_h}x{grid_w} with stride {stride} is empty")
    v, u = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    offset = (stride - 1) / 2.0
    return np.stack([u.ravel() * stride + offset, v.ravel() * stride + offset], axis=1).astype(np.float64)


def point_to_cell(points: np.ndarray, stride: int) -> np.ndarray:
    """Integer cell coordinates ``(u, v)`` of pixel points ``(N, 2)`` at ``stride`` (no bounds check)."""
    return np.floor((np.asarray(points, dtype=np.float64) + 0.5) / stride).astype(np.int64)


def cell_index_to_uv(index: np.ndarray, grid_w: int) -> np.ndarray:
    """Row-major flat cell indices ``(N,)`` -> ``(N, 2)`` integer ``(u, v)``."""
    index = np.asarray(index, dtype=np.int64)
    return np.stack([index % grid_w, index // grid_w], axis=-1)


def cell_validity(valid: np.ndarray, cell: int, min_fraction: float) -> np.ndarray:
    """Which coarse cells of an image (a map tile, a query canvas) have enough valid pixels.

    Args:
        valid: ``(H, W)`` bool pixel validity (H and W multiples of ``cell``).
        cell: coarse stride in pixels.
        min_fraction: a cell is valid when at least this fraction of its pixels is valid (0.5 in the cache and the
            locator, as in the network's ``cell_validity``).

    Returns:
        ``(N,)`` bool, ``N = (H / cell) * (W / cell)``, row-major.
    """
    h, w = valid.shape
    if h % cell or w % cell:
        raise ValueError(f"tile {h}x{w} is not a multiple of the cell {cell}")
    counts = valid.reshape(h // cell, cell, w // cell, cell).sum(axis=(1, 3), dtype=np.int64)
    return (counts >= min_fraction * cell * cell).ravel()
