"""Pictures people look at: match overlays and footprints (OpenCV drawing, RGB uint8 in and out)."""

from __future__ import annotations

import cv2
import numpy as np


def draw_matches(
    query: np.ndarray,
    reference: np.ndarray,
    pts_q: np.ndarray,
    pts_r: np.ndarray,
    inliers: np.ndarray | None = None,
    footprint_true: np.ndarray | None = None,
    footprint_pred: np.ndarray | None = None,
    max_lines: int = 300,
    title: str = "",
) -> np.ndarray:
    """Side-by-side picture: query left, reference right, match lines (green inlier, red outlier), footprints.

    Args:
        query: ``(Hq, Wq, 3)`` uint8 RGB. reference: ``(Hr, Wr, 3)`` uint8 RGB.
        pts_q, pts_r: ``(N, 2)`` matched pixel positions. inliers: ``(N,)`` bool or None (all drawn green).
        footprint_true, footprint_pred: ``(4, 2)`` quadrilaterals in reference pixels (green / magenta).
        max_lines: at most this many lines are drawn (evenly subsampled).
        title: text written on the top-left.

    Returns:
        ``(max(Hq, Hr), Wq + Wr, 3)`` uint8 RGB picture.
    """
    hq, wq = query.shape[:2]
    hr, wr = reference.shape[:2]
    canvas = np.zeros((max(hq, hr), wq + wr, 3), dtype=np.uint8)
    canvas[:hq, :wq] = query
    canvas[:hr, wq:] = reference
    n = len(pts_q)
    inliers = np.ones(n, dtype=bool) if inliers is None else np.asarray(inliers, dtype=bool)
    order = np.arange(n)
    if n > max_lines:
        order = order[np.linspace(0, n - 1, max_lines).astype(int)]
    for i in order:
        colour = (0, 220, 0) if inliers[i] else (230, 30, 30)
        a = tuple(np.rint(pts_q[i]).astype(int).tolist())
        b = tuple(np.rint(pts_r[i] + (wq, 0)).astype(int).tolist())
        cv2.line(canvas, a, b, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 2, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, b, 2, colour, -1, cv2.LINE_AA)
    for quad, colour in ((footprint_true, (0, 255, 0)), (footprint_pred, (255, 0, 255))):
        if quad is not None:
            poly = (np.asarray(quad) + np.array([wq, 0])).round().astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [poly], True, colour, 2, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
    return canvas


def write_rgb_png(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (raises with the path on failure)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
