"""Encoded map regions kept across frames: a small LRU keyed by map and region origin.

Encoding the region of interest (reading the raster window and running the tile encoder) is a fixed cost of every
verified hypothesis. A vehicle moving at survey speed sees the same ground in consecutive frames, so the locator keeps
the last few encoded regions and reuses one when the region it wants lies within ``reuse_px`` of a cached region's
origin on the same map (the footprint then still sits well inside the cached window). An independent frame far from
every cached region behaves exactly as without the cache.

Not thread-safe: one locator, one processing thread (the service's loop).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EncodedRegion:
    """A region of interest of one map level, read and encoded.

    Attributes:
        map_id: the cache entry (map or overview level) the region is read from.
        origin: ``(x0, y0)`` of the region in that entry's pixels.
        cell_valid: ``(Nt,)`` bool, coarse cells of the region with enough valid map pixels.
        encoded: the tile encoder's outputs (``coarse (1, Nt, C)``, ``fine1``, ``fine2``).
    """

    map_id: str
    origin: tuple[int, int]
    cell_valid: np.ndarray
    encoded: dict[str, np.ndarray]


def nearest_origin(origins: list[tuple[int, int]], wanted: tuple[int, int], reuse_px: int) -> int | None:
    """Index of the origin closest to ``wanted`` (Chebyshev distance) when it is within ``reuse_px``, else None.

    Ties go to the earlier origin.
    """
    best, best_d = None, reuse_px + 1
    for i, (x, y) in enumerate(origins):
        d = max(abs(x - wanted[0]), abs(y - wanted[1]))
        if d < best_d:
            best, best_d = i, d
    return best


class RegionCache:
    """Least-recently-used store of :class:`EncodedRegion` (``capacity`` 0 keeps nothing between lookups)."""

    def __init__(self, capacity: int, reuse_px: int) -> None:
        if capacity < 0 or reuse_px < 0:
            raise ValueError(f"capacity and reuse_px must be >= 0, got {capacity}, {reuse_px}")
        self.capacity = capacity
        self.reuse_px = reuse_px
        self._regions: OrderedDict[tuple[str, int, int], EncodedRegion] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._regions)

    def find(self, map_id: str, wanted: tuple[int, int], reuse_px: int | None = None) -> EncodedRegion | None:
        """The cached region of ``map_id`` nearest to ``wanted`` within ``reuse_px`` (default: the cache's; a caller
        that knows how much of the window the footprint leaves free may ask for less); marked recently used."""
        keys = [k for k in self._regions if k[0] == map_id]
        limit = self.reuse_px if reuse_px is None else min(self.reuse_px, reuse_px)
        i = nearest_origin([(k[1], k[2]) for k in keys], wanted, limit)
        if i is None:
            self.misses += 1
            return None
        self.hits += 1
        self._regions.move_to_end(keys[i])
        return self._regions[keys[i]]

    def put(self, region: EncodedRegion) -> None:
        """Store ``region``, evicting the least recently used beyond ``capacity``."""
        if self.capacity == 0:
            return
        key = (region.map_id, *region.origin)
        self._regions[key] = region
        self._regions.move_to_end(key)
        while len(self._regions) > self.capacity:
            self._regions.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses`` and ``regions`` held."""
        return {"hits": self.hits, "misses": self.misses, "regions": len(self._regions)}
