"""Query synthesis from a map image with an exact query-to-map homography (SUPP §2, method.md §10, decisions 16-17).

A square crop of side ``L`` (map pixels) is placed where it fits in the map, each corner is jittered by
``U(-j, j) * L``, the quadrilateral is rotated about its centroid by ``U(0, 360)`` degrees and warped to an
``S x S`` query (black outside the map). Pixel convention: pixel centres at integers, so the query's outer corners
``(-0.5, -0.5) .. (S - 0.5, S - 0.5)`` map onto the quadrilateral's corners. The homography is computed from the
float32-rounded quadrilateral that OpenCV sees, and ``quad_in_map`` stores exactly those values, so
``H_query_to_map @ corners == quad_in_map`` to solver precision (~1e-9 px).

:func:`evaluation_queries` reproduces the query protocol of ``docs/evaluation.md`` §1 (SJER) and §2 (NAIP) for a seed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from topicgeo.data.raster import GeoRaster, apply_homography, as_raster, pixel_map_between

logger = logging.getLogger(__name__)

WindowReader = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]
"""``reader(x0, y0, width, height) -> (image (h, w, 3) uint8, valid (h, w) bool)``, boundless."""


@dataclass(frozen=True)
class QuerySynthesisConfig:
    """Random query synthesis (training) parameters.

    Attributes:
        query_size: side ``S`` of the square query in pixels (512 for the CPU preset, 1024 in the paper).
        side_range: crop side ``L`` range in map pixels; exclusive with ``side_fraction_range``.
        side_fraction_range: crop side range as a fraction of ``min(map height, width)``; used when ``side_range`` is
            None. Ranges are clipped to ``min(map height, width)`` (the unrotated square must fit).
        side_sampling: ``log_uniform`` (decision 16) or ``uniform``.
        corner_jitter: each corner moves by ``U(-j, j) * L`` in x and y (perspective; 0.08-0.1).
        rotation_deg: rotation range about the quadrilateral's centroid, degrees.
        max_invalid_fraction: reject crops whose query has more invalid (outside the map / nodata) pixels than this
            fraction (0 = decision 16's strict "never leave the map"; evaluation queries have black corners).
        color_prob: probability of colour augmentation.
        brightness, contrast, saturation: multiplicative factors drawn from ``U(1 - a, 1 + a)``.
        hue: hue shift drawn from ``U(-a, a)`` turns (fraction of the hue circle).
        noise_prob: probability of additive Gaussian noise.
        noise_sigma_range: noise sigma ``~ U(lo, hi)`` on [0, 1] images (SUPP: U(0, 0.1)).
        min_texture: textureless filter: reject when :func:`texture_score` (mean |Sobel x| + |Sobel y| on grey
            0..255 over valid pixels) is below this (evaluation.md uses 6 for NAIP; 0 disables).
        flat_threshold: per-pixel |Sobel x| + |Sobel y| below which a pixel counts as flat.
        max_flat_fraction: reject when the fraction of flat valid pixels exceeds this (1 disables).
        max_tries: crop attempts before giving up with a ``RuntimeError``.
    """

    query_size: int = 512
    side_range: tuple[float, float] | None = None
    side_fraction_range: tuple[float, float] | None = (0.4, 0.95)
    side_sampling: Literal["log_uniform", "uniform"] = "log_uniform"
    corner_jitter: float = 0.08
    rotation_deg: tuple[float, float] = (0.0, 360.0)
    max_invalid_fraction: float = 0.5
    color_prob: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    hue: float = 0.03
    noise_prob: float = 0.5
    noise_sigma_range: tuple[float, float] = (0.0, 0.1)
    min_texture: float = 6.0
    flat_threshold: float = 8.0
    max_flat_fraction: float = 0.85
    max_tries: int = 50

    def __post_init__(self) -> None:
        if self.query_size < 8:
            raise ValueError(f"query_size must be >= 8, got {self.query_size}")
        if (self.side_range is None) == (self.side_fraction_range is None):
            raise ValueError("set exactly one of side_range (map pixels) and side_fraction_range (fraction of map)")
        if self.side_range is not None:
            lo, hi = self.side_range
            if not 1.0 <= lo <= hi:
                raise ValueError(f"side_range must satisfy 1 <= low <= high, got {self.side_range}")
        if self.side_fraction_range is not None:
            lo, hi = self.side_fraction_range
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"side_fraction_range must be 0 < low <= high <= 1, got {self.side_fraction_range}")
        if self.side_sampling not in ("log_uniform", "uniform"):
            raise ValueError(f"side_sampling must be 'log_uniform' or 'uniform', got {self.side_sampling!r}")
        if not 0.0 <= self.corner_jitter < 0.5:
            raise ValueError(f"corner_jitter must be in [0, 0.5), got {self.corner_jitter}")
        if self.rotation_deg[0] > self.rotation_deg[1]:
            raise ValueError(f"rotation_deg must be (low, high) with low <= high, got {self.rotation_deg}")
        for name in ("max_invalid_fraction", "color_prob", "noise_prob", "max_flat_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        lo, hi = self.noise_sigma_range
        if not 0.0 <= lo <= hi:
            raise ValueError(f"noise_sigma_range must satisfy 0 <= low <= high, got {self.noise_sigma_range}")
        if self.min_texture < 0 or self.flat_threshold < 0:
            raise ValueError("min_texture and flat_threshold must be >= 0")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")

    def side_limits(self, map_h: int, map_w: int) -> tuple[float, float]:
        """Crop side range ``(lo, hi)`` in map pixels for a ``map_h x map_w`` map (hi clipped to the map)."""
        short = float(min(map_h, map_w))
        if self.side_range is not None:
            lo, hi = self.side_range
        else:
            lo, hi = (f * short for f in self.side_fraction_range)  # type: ignore[union-attr]
        if lo > short:
            raise ValueError(f"crop side >= {lo:.1f} px does not fit a {map_w}x{map_h} map")
        return lo, min(hi, short)


@dataclass(frozen=True)
class SynthesizedQuery:
    """A synthesized query and its ground truth.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB query (black outside the map).
        valid: ``(S, S)`` bool, True where the query sampled only valid map pixels.
        H_query_to_map: ``(3, 3)`` float64 homography from query pixels to map pixels.
        quad_in_map: ``(4, 2)`` float64 map positions of the query's outer corners (TL, TR, BR, BL), i.e. of
            ``(-0.5, -0.5), (S - 0.5, -0.5), (S - 0.5, S - 0.5), (-0.5, S - 0.5)``.
        side: crop side ``L`` in map pixels (before jitter).
        rotation_deg: rotation applied about the centroid.
        texture: :func:`texture_score` of the clean (un-augmented) query.
        tries: attempts needed (1 = first crop accepted).
    """

    image: np.ndarray
    valid: np.ndarray
    H_query_to_map: np.ndarray
    quad_in_map: np.ndarray
    side: float
    rotation_deg: float
    texture: float
    tries: int = 1


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------
def query_corners(size: int) -> np.ndarray:
    """Outer corners of an ``size x size`` image (TL, TR, BR, BL) in the pixel-centre convention, ``(4, 2)``."""
    e = size - 0.5
    return np.array([[-0.5, -0.5], [e, -0.5], [e, e], [-0.5, e]], dtype=np.float64)


def quad_from_params(center: np.ndarray, side: float, jitter: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Square of side ``side`` at ``center``, corners moved by ``jitter`` (4, 2) px, rotated about its centroid.

    Rotation is counter-clockwise on screen for positive angles in image coordinates (y down): the standard
    ``[[cos, sin], [-sin, cos]]`` applied to ``(x, y)``.

    Returns:
        ``(4, 2)`` float64 corners TL, TR, BR, BL (before rotation) in map pixels.
    """
    half = side / 2.0
    square = np.array([[-half, -half], [half, -half], [half, half], [-half, half]], dtype=np.float64)
    quad = square + np.asarray(center, dtype=np.float64)[None] + np.asarray(jitter, dtype=np.float64)
    centroid = quad.mean(axis=0)
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]], dtype=np.float64)
    return (quad - centroid) @ rot.T + centroid


def homography_from_quad(quad: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Homography from the query's outer corners to ``quad`` (cv2.getPerspectiveTransform).

    OpenCV consumes float32 points and solves to ~1e-6 px; the returned quad is recomputed from the returned ``H``
    (it differs from the input by at most that), so ``H`` and ``quad`` are consistent to float64 precision.

    Returns:
        ``H`` ``(3, 3)`` float64 (``H[2, 2] = 1``) and the corners ``quad`` ``(4, 2)`` float64 = ``H(corners)``.
    """
    corners = query_corners(size)
    H = cv2.getPerspectiveTransform(corners.astype(np.float32), np.asarray(quad, dtype=np.float32))
    H = H.astype(np.float64) / H[2, 2]
    return H, apply_homography(H, corners)


def sample_quad(
    rng: np.random.Generator,
    map_h: int,
    map_w: int,
    side_limits: tuple[float, float],
    corner_jitter: float,
    rotation_deg: tuple[float, float],
    side_sampling: str = "uniform",
) -> tuple[np.ndarray, float, float]:
    """Draw a crop quadrilateral; the draw order is fixed (part of the evaluation protocol).

    Order: side ``L`` (uniform, or log-uniform), centre x, centre y (uniform where the unrotated square fits:
    ``[L/2 - 0.5, W - 0.5 - L/2]``), the (4, 2) corner jitter ``U(-j, j) * L`` (row-major), then the rotation.

    Returns:
        ``quad`` ``(4, 2)`` float64, ``side``, ``rotation`` in degrees.
    """
    lo, hi = side_limits
    if side_sampling == "log_uniform":
        side = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    else:
        side = float(rng.uniform(lo, hi))
    half = side / 2.0
    cx = float(rng.uniform(half - 0.5, map_w - 0.5 - half))
    cy = float(rng.uniform(half - 0.5, map_h - 0.5 - half))
    jitter = rng.uniform(-corner_jitter, corner_jitter, size=(4, 2)) * side
    rotation = float(rng.uniform(rotation_deg[0], rotation_deg[1]))
    return quad_from_params(np.array([cx, cy]), side, jitter, rotation), side, rotation


# ---------------------------------------------------------------------------------------------------------------
# Rendering, texture and colour
# ---------------------------------------------------------------------------------------------------------------
def texture_score(
    image: np.ndarray, valid: np.ndarray | None = None, flat_threshold: float = 8.0
) -> tuple[float, float]:
    """Texture of an RGB image: mean ``|Sobel x| + |Sobel y|`` on grey levels (0..255) and the flat-pixel fraction.

    Grey = ``cv2.cvtColor(RGB2GRAY)``; Sobel 3x3 (``cv2.Sobel``, float32). Only pixels whose 3x3 neighbourhood is
    entirely valid count, so the black border of a query that leaves the map does not add texture.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        valid: optional ``(H, W)`` bool; None = all valid.
        flat_threshold: per-pixel gradient below which a pixel is flat.

    Returns:
        ``(mean_gradient, flat_fraction)``; ``(0.0, 1.0)`` when no pixel counts.
    """
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    if valid is None:
        inner = np.ones(grey.shape, dtype=bool)
    else:
        inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
    if not inner.any():
        return 0.0, 1.0
    vals = mag[inner]
    return float(vals.mean()), float((vals < flat_threshold).mean())


def render_query(reader: WindowReader, H_query_to_map: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warp the map region under ``H_query_to_map`` into an ``size x size`` query (bilinear, black outside).

    Only the bounding box of the footprint is read from the map (``reader``), so large rasters stay on disk.

    Returns:
        ``image`` ``(size, size, 3)`` uint8 and ``valid`` ``(size, size)`` bool (all four bilinear taps valid).
    """
    quad = apply_homography(H_query_to_map, query_corners(size))
    x0, y0 = (math.floor(v) - 2 for v in quad.min(axis=0))
    x1, y1 = (math.ceil(v) + 2 for v in quad.max(axis=0))
    img, valid = reader(x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    M = shift @ H_query_to_map
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpPerspective(img, M, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    vmask = cv2.warpPerspective(
        valid.astype(np.uint8) * 255, M, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    ok = vmask == 255
    out[~ok] = 0
    return out, ok


def augment_colors(
    image: np.ndarray, valid: np.ndarray, rng: np.random.Generator, config: QuerySynthesisConfig
) -> np.ndarray:
    """Colour jitter then Gaussian noise on a [0, 1] version of ``image``; invalid pixels stay black.

    Draw order: one ``rng.random()`` for colour, then (if applied) brightness, contrast, saturation and hue factors;
    one ``rng.random()`` for noise, then (if applied) sigma and the noise field.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        valid: ``(H, W)`` bool.
        rng: random generator.
        config: augmentation parameters.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    img = image.astype(np.float32) / 255.0
    if rng.random() < config.color_prob:
        b = rng.uniform(1 - config.brightness, 1 + config.brightness)
        c = rng.uniform(1 - config.contrast, 1 + config.contrast)
        s = rng.uniform(1 - config.saturation, 1 + config.saturation)
        h = rng.uniform(-config.hue, config.hue)
        img = np.clip(img * b, 0.0, 1.0)
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        mean = float(grey[valid].mean()) if valid.any() else 0.0
        img = np.clip((img - mean) * c + mean, 0.0, 1.0)
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        img = np.clip(grey + (img - grey) * s, 0.0, 1.0)
        if h != 0.0:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = np.mod(hsv[..., 0] + h * 360.0, 360.0)
            img = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)
    if rng.random() < config.noise_prob:
        sigma = rng.uniform(*config.noise_sigma_range)
        img = np.clip(img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32), 0.0, 1.0)
    out = np.round(img * 255.0).astype(np.uint8)
    out[~valid] = 0
    return out


def array_reader(image: np.ndarray, valid: np.ndarray | None = None) -> WindowReader:
    """A boundless :data:`WindowReader` over an in-memory ``(H, W, 3)`` uint8 image (``valid`` optional)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"map image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    vmask = np.ones((h, w), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if vmask.shape != (h, w):
        raise ValueError(f"map valid mask shape {vmask.shape} does not match the image {(h, w)}")

    def read(x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((height, width, 3), dtype=np.uint8)
        ok = np.zeros((height, width), dtype=bool)
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x0 + width), min(h, y0 + height)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = image[cy0:cy1, cx0:cx1]
            ok[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = vmask[cy0:cy1, cx0:cx1]
        return out, ok

    return read


def raster_reader(raster: GeoRaster) -> WindowReader:
    """A :data:`WindowReader` over a :class:`GeoRaster` (windowed, boundless reads)."""
    return raster.read_window


# ---------------------------------------------------------------------------------------------------------------
# Training synthesis
# ---------------------------------------------------------------------------------------------------------------
def synthesize_from_reader(
    reader: WindowReader, map_h: int, map_w: int, rng: np.random.Generator, config: QuerySynthesisConfig
) -> SynthesizedQuery:
    """Synthesize one training query from a map of size ``map_h x map_w`` accessed through ``reader``.

    Raises:
        RuntimeError: no acceptable crop in ``config.max_tries`` attempts (textureless or outside the map).
    """
    limits = config.side_limits(map_h, map_w)
    size = config.query_size
    reasons: dict[str, int] = {"invalid": 0, "textureless": 0}
    for attempt in range(1, config.max_tries + 1):
        quad, side, rotation = sample_quad(
            rng, map_h, map_w, limits, config.corner_jitter, config.rotation_deg, config.side_sampling
        )
        H, quad = homography_from_quad(quad, size)
        image, valid = render_query(reader, H, size)
        if 1.0 - valid.mean() > config.max_invalid_fraction:
            reasons["invalid"] += 1
            continue
        texture, flat = texture_score(image, valid, config.flat_threshold)
        if texture < config.min_texture or flat > config.max_flat_fraction:
            reasons["textureless"] += 1
            continue
        image = augment_colors(image, valid, rng, config)
        return SynthesizedQuery(image, valid, H, quad, side, rotation, texture, attempt)
    raise RuntimeError(
        f"no acceptable query in {config.max_tries} tries on a {map_w}x{map_h} map "
        f"(rejected: {reasons['invalid']} mostly outside the map/nodata, {reasons['textureless']} textureless)"
    )


def synthesize_query(
    map_image: np.ndarray,
    rng: np.random.Generator,
    config: QuerySynthesisConfig | None = None,
    map_valid: np.ndarray | None = None,
) -> SynthesizedQuery:
    """Synthesize one training query from an in-memory map image.

    Args:
        map_image: ``(H, W, 3)`` uint8 RGB map.
        rng: random generator (all randomness comes from it).
        config: synthesis parameters (defaults: :class:`QuerySynthesisConfig`).
        map_valid: optional ``(H, W)`` bool validity of the map (nodata = False).

    Returns:
        A :class:`SynthesizedQuery` whose ``H_query_to_map`` maps query pixels to ``map_image`` pixels.
    """
    config = config or QuerySynthesisConfig()
    reader = array_reader(map_image, map_valid)
    return synthesize_from_reader(reader, map_image.shape[0], map_image.shape[1], rng, config)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation protocol (docs/evaluation.md §1 and §2)
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalProtocol:
    """Query protocol of one evaluation suite.

    Attributes:
        name: suite name.
        side_mode: ``fraction`` (L ~ U(lo, hi) * min(h, w) of the query raster) or ``pixels`` (L ~ U(lo, hi) px).
        side_range: the ``(lo, hi)`` of that law.
        corner_jitter: corner jitter ``U(-j, j) * L``.
        queries_per_source: queries kept per (query raster, map raster) pair.
        query_size: query side in pixels.
        min_texture: skip a drawn query whose :func:`texture_score` is below this (0 = never skip).
        max_attempts: draws per pair before giving up (a pair may then yield fewer queries; logged).
    """

    name: str
    side_mode: Literal["fraction", "pixels"]
    side_range: tuple[float, float]
    corner_jitter: float = 0.08
    queries_per_source: int = 3
    query_size: int = 512
    min_texture: float = 0.0
    max_attempts: int = 100

    def __post_init__(self) -> None:
        if self.side_mode not in ("fraction", "pixels"):
            raise ValueError(f"side_mode must be 'fraction' or 'pixels', got {self.side_mode!r}")
        lo, hi = self.side_range
        if not 0 < lo <= hi:
            raise ValueError(f"side_range must satisfy 0 < low <= high, got {self.side_range}")
        if self.queries_per_source < 1 or self.max_attempts < self.queries_per_source:
            raise ValueError("need queries_per_source >= 1 and max_attempts >= queries_per_source")
        if self.query_size < 8:
            raise ValueError(f"query_size must be >= 8, got {self.query_size}")


SJER_PROTOCOL = EvalProtocol(name="sjer", side_mode="fraction", side_range=(0.55, 0.95), queries_per_source=3)
"""evaluation.md §1: 3 queries per 2017 plot, L ~ U(0.55, 0.95) * min(h, w), no texture filter."""

NAIP_PROTOCOL = EvalProtocol(
    name="naip", side_mode="pixels", side_range=(100.0, 360.0), queries_per_source=20, min_texture=6.0
)
"""evaluation.md §2: L ~ U(100, 360) px, skip queries with mean |Sobel x| + |Sobel y| < 6 (20 per date by default)."""


@dataclass(frozen=True)
class EvalQuery:
    """One evaluation query with its ground truth on the gallery map.

    Attributes:
        query_id: ``"{query stem}->{map stem}#{k}"`` (k = draw index, skipped draws included).
        image: ``(S, S, 3)`` uint8 RGB query.
        valid: ``(S, S)`` bool.
        map_id: the gallery map's file stem (what ``edge-locate --json`` returns as ``map_id``).
        H_query_to_map: ``(3, 3)`` float64, query pixels -> gallery map pixels (through world coordinates).
        H_query_to_source: ``(3, 3)`` float64, query pixels -> pixels of the raster the query was cut from.
        source: path of the raster the query was cut from.
        side: crop side L in source pixels.
        rotation_deg: rotation about the centroid.
        texture: mean |Sobel x| + |Sobel y| of the query (see :func:`texture_score`).
    """

    query_id: str
    image: np.ndarray
    valid: np.ndarray
    map_id: str
    H_query_to_map: np.ndarray
    H_query_to_source: np.ndarray
    source: str
    side: float
    rotation_deg: float
    texture: float

    def footprint_in_map(self) -> np.ndarray:
        """``(4, 2)`` map pixel positions of the query points (0, 0), (w, 0), (w, h), (0, h) (evaluation.md)."""
        s = float(self.image.shape[1])
        t = float(self.image.shape[0])
        return apply_homography(self.H_query_to_map, np.array([[0.0, 0.0], [s, 0.0], [s, t], [0.0, t]]))


def _stable_id(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def seed_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``: protocol seeds whose queries a tuning run pools (an ``argparse`` type)."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def evaluation_queries(
    pairs: Sequence[tuple[GeoRaster | str | os.PathLike[str], GeoRaster | str | os.PathLike[str]]],
    protocol: EvalProtocol,
    seed: int = 0,
) -> list[EvalQuery]:
    """Reproduce an evaluation.md query protocol, deterministically for ``seed``.

    For each ``(query raster, map raster)`` pair, draw ``k = 0, 1, ...`` uses its own generator
    ``np.random.default_rng([seed, crc32(query stem), crc32(map stem), k])``, so a pair's queries do not depend on
    which other pairs are evaluated. A draw is :func:`sample_quad` with uniform ``L``; skipped draws (texture below
    ``protocol.min_texture``) are not replaced by the same k. Queries are warped from the query raster's RGB bands
    (uint8 kept as is; other dtypes stretched per raster) and the ground truth goes through world coordinates.

    Examples: SJER §1 = ``[(2017/SJER_x.tif, 2018/SJER_x.tif) ...]`` with :data:`SJER_PROTOCOL`; NAIP §2 =
    ``[(date_a.tif, map.tif), (date_b.tif, map.tif) ...]`` with :data:`NAIP_PROTOCOL`.

    Args:
        pairs: ``(query raster, gallery map raster)`` pairs (rasters or paths).
        protocol: :data:`SJER_PROTOCOL`, :data:`NAIP_PROTOCOL` or a custom :class:`EvalProtocol`.
        seed: protocol seed.

    Returns:
        The queries, pair by pair, in draw order.
    """
    out: list[EvalQuery] = []
    for q_src, m_src in pairs:
        q_r, m_r = as_raster(q_src), as_raster(m_src)
        to_map = pixel_map_between(q_r, m_r)
        short = min(q_r.height, q_r.width)
        if protocol.side_mode == "fraction":
            limits = (protocol.side_range[0] * short, protocol.side_range[1] * short)
        else:
            limits = protocol.side_range
        if limits[1] > short:
            raise ValueError(f"{protocol.name}: crop side {limits[1]:.0f} px does not fit {q_r.path} ({short} px)")
        base = [seed, _stable_id(q_r.path.stem), _stable_id(m_r.path.stem)]
        kept = 0
        for k in range(protocol.max_attempts):
            if kept == protocol.queries_per_source:
                break
            rng = np.random.default_rng([*base, k])
            quad, side, rotation = sample_quad(
                rng, q_r.height, q_r.width, limits, protocol.corner_jitter, (0.0, 360.0), "uniform"
            )
            H, _ = homography_from_quad(quad, protocol.query_size)
            image, valid = render_query(q_r.read_window, H, protocol.query_size)
            texture, _ = texture_score(image, valid)
            if texture < protocol.min_texture:
                logger.debug("%s: skipping textureless draw %d of %s (%.2f)", protocol.name, k, q_r.path, texture)
                continue
            out.append(
                EvalQuery(
                    query_id=f"{q_r.path.stem}->{m_r.path.stem}#{k}",
                    image=image,
                    valid=valid,
                    map_id=m_r.path.stem,
                    H_query_to_map=to_map @ H,
                    H_query_to_source=H,
                    source=str(q_r.path),
                    side=side,
                    rotation_deg=rotation,
                    texture=texture,
                )
            )
            kept += 1
        if kept < protocol.queries_per_source:
            logger.warning(
                "%s: only %d of %d queries from %s after %d draws",
                protocol.name,
                kept,
                protocol.queries_per_source,
                q_r.path,
                protocol.max_attempts,
            )
    return out
