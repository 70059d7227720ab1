"""Peer baseline tiling (SUPP's treatment of other methods): base maps cut into tiles with 25 % area overlap.

"25 % area overlap" is read as: two neighbouring tiles (left/right or up/down) share 25 % of a tile's area, i.e. the
stride is 75 % of the tile side. Tiles start at pixel 0; the last tile of a row / column is pulled back so that it
ends at the map edge (no padding, so its overlap with the previous tile is >= 25 %). A map side shorter than the tile
gives one tile spanning that whole side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TilingConfig:
    """Peer tiling parameters.

    Attributes:
        tile_size: tile side in map pixels.
        overlap_area: fraction of a tile's area shared with each horizontal / vertical neighbour, in ``[0, 0.9]``.
    """

    tile_size: int = 512
    overlap_area: float = 0.25

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be >= 16 map pixels, got {self.tile_size}")
        if not 0.0 <= self.overlap_area <= 0.9:
            raise ValueError(f"overlap_area must be in [0, 0.9], got {self.overlap_area}")

    @property
    def stride(self) -> int:
        """Distance between neighbouring tile origins in pixels (``round((1 - overlap) * tile_size)``, >= 1)."""
        return max(1, round((1.0 - self.overlap_area) * self.tile_size))


@dataclass(frozen=True)
class Tile:
    """One tile: pixels ``x0 .. x0 + width - 1`` by ``y0 .. y0 + height - 1`` of its map."""

    x0: int
    y0: int
    width: int
    height: int


def axis_origins(extent: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis of ``extent`` pixels.

    Args:
        extent: map side in pixels (>= 1).
        tile: tile side in pixels.
        stride: distance between origins (1 <= stride <= tile).

    Returns:
        Increasing origins; ``[0]`` when ``extent <= tile``; otherwise ``0, stride, ...`` with the last one equal to
        ``extent - tile``.
    """
    if extent < 1 or tile < 1 or not 1 <= stride <= tile:
        raise ValueError(f"need extent >= 1, tile >= 1 and 1 <= stride <= tile; got {extent}, {tile}, {stride}")
    if extent <= tile:
        return [0]
    n = math.ceil((extent - tile) / stride) + 1
    origins = [i * stride for i in range(n - 1)] + [extent - tile]
    return sorted(set(origins))


def tile_map(width: int, height: int, config: TilingConfig) -> list[Tile]:
    """Tiles of a ``width x height`` map, row-major, covering every pixel exactly as documented in the module."""
    if width < 1 or height < 1:
        raise ValueError(f"map size must be positive, got {width}x{height}")
    tw, th = min(config.tile_size, width), min(config.tile_size, height)
    xs = axis_origins(width, config.tile_size, config.stride)
    ys = axis_origins(height, config.tile_size, config.stride)
    return [Tile(x, y, tw, th) for y in ys for x in xs]


def count_tiles(width: int, height: int, config: TilingConfig) -> int:
    """Number of tiles :func:`tile_map` makes (for cost extrapolation)."""
    return len(axis_origins(width, config.tile_size, config.stride)) * len(
        axis_origins(height, config.tile_size, config.stride)
    )
