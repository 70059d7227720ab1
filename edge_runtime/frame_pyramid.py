"""A camera frame and its area-filtered halvings, shared by every canvas rendered from it.

The locator renders one frame several times (a query canvas per scale plan and rotation, a refinement canvas per
verified hypothesis), each time shrunk with the area filter first so the warp does not alias. Shrinking a 9 Mpx drone
frame by an arbitrary factor costs ~20 ms on a 2-core CPU; halving it costs ~3 ms. :class:`FramePyramid` keeps the
halvings it has made and shrinks each request from the smallest level that is still at least the requested size, so
the area filter sees at most a 2x reduction. Area averaging composes: the result differs from a direct shrink by about
one to three grey levels on average.
"""

from __future__ import annotations

import cv2
import numpy as np


class FramePyramid:
    """``frame (H, W, C)`` uint8 and its halvings, made on demand. ``shape`` is the frame's."""

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame
        self._levels: list[np.ndarray] = [frame]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.frame.shape

    @property
    def levels(self) -> int:
        """Levels made so far (the frame is level 0)."""
        return len(self._levels)

    def resized(self, width: int, height: int) -> np.ndarray:
        """The frame resized to ``width x height``: area filter when shrinking (from the smallest level that still
        covers the size), bilinear when enlarging (from the frame)."""
        h, w = self.frame.shape[:2]
        if width >= w or height >= h:
            interpolation = cv2.INTER_AREA if width <= w and height <= h else cv2.INTER_LINEAR
            return self.frame if (width, height) == (w, h) else cv2.resize(self.frame, (width, height),
                                                                           interpolation=interpolation)
        level = 0
        while True:
            lh, lw = self._levels[level].shape[:2]
            if lw // 2 < width or lh // 2 < height:
                break
            if level + 1 == len(self._levels):
                self._levels.append(cv2.resize(self._levels[level], (lw // 2, lh // 2), interpolation=cv2.INTER_AREA))
            level += 1
        src = self._levels[level]
        if src.shape[1] == width and src.shape[0] == height:
            return src
        return cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA)


def as_pyramid(frame: np.ndarray | FramePyramid) -> FramePyramid:
    """``frame`` itself when it is a pyramid, else a new one over it."""
    return frame if isinstance(frame, FramePyramid) else FramePyramid(frame)
