"""Georeferenced rasters as uint8 RGB images with a pixel-centre geometry (rasterio + pyproj; no torch).

Pixel convention (the project's, OpenCV's): pixel ``(x, y)`` has its centre at the integer coordinates ``(x, y)``.
rasterio's affine ``transform`` maps ``(col, row)`` of a pixel's top-left CORNER to world coordinates, so in our
convention ``world(x_pix) = transform * (x_pix + 0.5)``.

Radiometry: the selected bands (RGB; the first three bands of a 4-band R, G, B, NIR raster; a single band is
repeated to grey RGB) are converted to uint8. ``stretch="auto"`` keeps uint8 rasters as they are and maps any other
dtype (uint16, float) through a per-band robust percentile stretch whose limits are computed ONCE per raster (on a
decimated read of the whole raster), so every window of a raster is scaled identically.

Validity: a pixel is invalid where it lies outside the raster (boundless window reads) or inside a nodata REGION:
pixels whose every read band equals the nodata value, kept only where they form blobs that contain a
``nodata_min_size`` square (a morphological opening). Isolated pixels that merely carry the nodata value are real
data: e.g. the SJER orthophotos declare nodata = 255 while hundreds of their pixels are saturated white. Invalid
pixels are returned as 0 (black) together with a boolean mask; the result does not depend on the window.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

# One implementation of the pixel-centre geometry, shared with the vehicle's cache reader.
from edge_runtime.map_cache import apply_affine as apply_homography
from edge_runtime.map_cache import pixel_to_world_affine

logger = logging.getLogger(__name__)

StretchMode = Literal["auto", "none", "percentile"]


@dataclass(frozen=True)
class RasterConfig:
    """How a raster becomes a uint8 RGB image.

    Attributes:
        bands: 1-based band indices read as R, G, B; ``None`` = bands (1, 2, 3) when the raster has >= 3 bands, band 1
            repeated three times when it has one or two.
        stretch: ``auto`` (uint8 unchanged, other dtypes percentile-stretched), ``none`` (values clipped to 0..255)
            or ``percentile`` (always stretch).
        percentiles: low/high percentiles of the stretch (per band, over valid pixels).
        stats_max_side: the stretch statistics are computed on a read decimated to at most this many pixels per side.
        nodata: overrides the nodata value stored in the file (``None`` = use the file's).
        nodata_min_size: side of the smallest square a nodata region must contain to count as missing data
            (1 = every nodata-valued pixel is invalid, GDAL's per-pixel rule).
    """

    bands: tuple[int, ...] | None = None
    stretch: StretchMode = "auto"
    percentiles: tuple[float, float] = (1.0, 99.0)
    stats_max_side: int = 1024
    nodata: float | None = None
    nodata_min_size: int = 3

    def __post_init__(self) -> None:
        if self.bands is not None and (len(self.bands) != 3 or any(b < 1 for b in self.bands)):
            raise ValueError(f"bands must be three 1-based band indices, got {self.bands}")
        if self.stretch not in ("auto", "none", "percentile"):
            raise ValueError(f"stretch must be 'auto', 'none' or 'percentile', got {self.stretch!r}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.nodata_min_size < 1:
            raise ValueError(f"nodata_min_size must be >= 1, got {self.nodata_min_size}")
        if self.stats_max_side < 16:
            raise ValueError(f"stats_max_side must be >= 16, got {self.stats_max_side}")


class GeoRaster:
    """A GeoTIFF (or any GDAL raster) read as uint8 RGB with a validity mask and pixel-centre geometry.

    The file is opened lazily, and re-opened after pickling or in a forked process (each data-loader worker gets its
    own GDAL handle; a handle shared across ``fork`` would share its file offset).

    Args:
        path: raster file.
        config: band selection, stretch and nodata handling.
    """

    def __init__(self, path: str | os.PathLike[str], config: RasterConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or RasterConfig()
        if not self.path.is_file():
            raise FileNotFoundError(f"raster {self.path} does not exist")
        self._ds = None
        self._pid = os.getpid()
        self._stretch: np.ndarray | None = None
        ds = self._dataset()
        self.width: int = int(ds.width)
        self.height: int = int(ds.height)
        self.count: int = int(ds.count)
        self.dtype: str = str(ds.dtypes[0])
        self.crs = ds.crs
        self.transform = ds.transform
        nodata = self.config.nodata if self.config.nodata is not None else ds.nodata
        self.nodata: float | None = None if nodata is None else float(nodata)
        self.bands: tuple[int, ...] = self._resolve_bands()
        if self.width < 1 or self.height < 1:
            raise ValueError(f"raster {self.path} is empty ({self.width}x{self.height})")

    # -- file handle ---------------------------------------------------------------------------------------------
    def _dataset(self):
        if self._ds is None or self._ds.closed:
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    self._ds = rasterio.open(self.path)
            except RasterioIOError as exc:
                raise ValueError(f"cannot open raster {self.path}: {exc}") from exc
        return self._ds

    def close(self) -> None:
        """Close the file handle (it is re-opened on the next read)."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def __enter__(self) -> GeoRaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ds"] = None
        return state

    def __repr__(self) -> str:
        return f"GeoRaster({str(self.path)!r}, {self.width}x{self.height}x{self.count} {self.dtype}, crs={self.crs})"

    def _resolve_bands(self) -> tuple[int, ...]:
        if self.config.bands is not None:
            bad = [b for b in self.config.bands if b > self.count]
            if bad:
                raise ValueError(f"raster {self.path} has {self.count} bands; requested bands {self.config.bands}")
            return tuple(self.config.bands)
        return (1, 2, 3) if self.count >= 3 else (1, 1, 1)

    # -- geometry ------------------------------------------------------------------------------------------------
    @property
    def georeferenced(self) -> bool:
        """True when the raster has a CRS (files without one get rasterio's identity transform)."""
        return self.crs is not None

    @property
    def pixel_to_world(self) -> np.ndarray:
        """``(3, 3)`` float64 affine from pixel-centre coordinates to world (CRS) coordinates."""
        return pixel_to_world_affine(self.transform)

    @property
    def world_to_pixel(self) -> np.ndarray:
        """``(3, 3)`` float64 inverse of :attr:`pixel_to_world`."""
        return np.linalg.inv(self.pixel_to_world)

    def pixels_to_world(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel coordinates -> ``(N, 2)`` world coordinates (float64)."""
        return apply_homography(self.pixel_to_world, points)

    def world_to_pixels(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` world coordinates -> ``(N, 2)`` pixel coordinates (float64)."""
        return apply_homography(self.world_to_pixel, points)

    # -- radiometry ----------------------------------------------------------------------------------------------
    @property
    def needs_stretch(self) -> bool:
        """Whether values go through the percentile stretch (see :class:`RasterConfig`)."""
        mode = self.config.stretch
        return mode == "percentile" or (mode == "auto" and self.dtype != "uint8")

    def stretch_limits(self) -> np.ndarray:
        """Per-band ``(3, 2)`` float64 ``(low, high)`` stretch limits, computed once from a decimated full read."""
        if self._stretch is None:
            scale = min(1.0, self.config.stats_max_side / max(self.width, self.height))
            out_h, out_w = max(1, round(self.height * scale)), max(1, round(self.width * scale))
            raw = self._dataset().read(list(self.bands), out_shape=(3, out_h, out_w)).astype(np.float64)
            valid = self._valid_from_raw(raw)
            if not valid.any():
                raise ValueError(f"raster {self.path} has no valid pixel (nodata={self.nodata})")
            lo_p, hi_p = self.config.percentiles
            limits = np.empty((3, 2), dtype=np.float64)
            for i in range(3):
                vals = raw[i][valid]
                lo, hi = np.percentile(vals, [lo_p, hi_p])
                if not hi > lo:
                    hi = lo + 1.0
                limits[i] = (lo, hi)
            self._stretch = limits
            logger.debug("stretch limits of %s: %s", self.path, limits.tolist())
        return self._stretch

    def _valid_from_raw(self, raw: np.ndarray) -> np.ndarray:
        if self.nodata is None:
            return np.ones(raw.shape[1:], dtype=bool)
        if math.isnan(self.nodata):
            return ~np.all(np.isnan(raw), axis=0)
        return ~np.all(raw == self.nodata, axis=0)

    def _to_uint8(self, raw: np.ndarray) -> np.ndarray:
        if self.needs_stretch:
            lim = self.stretch_limits()
            scaled = (raw.astype(np.float64) - lim[:, :1, None]) / (lim[:, 1:, None] - lim[:, :1, None]) * 255.0
            return np.clip(np.nan_to_num(scaled, nan=0.0) + 0.5, 0, 255).astype(np.uint8)
        if raw.dtype == np.uint8:
            return raw
        return np.clip(np.nan_to_num(raw.astype(np.float64), nan=0.0) + 0.5, 0, 255).astype(np.uint8)

    # -- reads ---------------------------------------------------------------------------------------------------
    def read_window(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Read pixels ``x0 .. x0+width-1`` x ``y0 .. y0+height-1``; parts outside the raster are invalid zeros.

        Args:
            x0, y0: integer pixel coordinates of the window's first column / row (may be negative).
            width, height: window size in pixels (>= 1).

        Returns:
            ``image`` ``(height, width, 3)`` uint8 RGB (0 where invalid) and ``valid`` ``(height, width)`` bool.
        """
        from rasterio.windows import Window

        if width < 1 or height < 1:
            raise ValueError(f"window size must be positive, got {width}x{height}")
        image = np.zeros((height, width, 3), dtype=np.uint8)
        valid = np.zeros((height, width), dtype=bool)
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(self.width, x0 + width), min(self.height, y0 + height)
        if cx1 <= cx0 or cy1 <= cy0:
            return image, valid
        k = self.config.nodata_min_size
        m = k if (self.nodata is not None and k > 1) else 0  # margin so that the opening is window-independent
        ex0, ey0 = max(0, cx0 - m), max(0, cy0 - m)
        ex1, ey1 = min(self.width, cx1 + m), min(self.height, cy1 + m)
        raw = self._dataset().read(list(self.bands), window=Window(ex0, ey0, ex1 - ex0, ey1 - ey0))
        nodata = ~self._valid_from_raw(raw)
        if m:
            # Outside the raster counts as nodata, so regions touching the raster edge keep their full extent.
            ext = np.ones((cy1 - cy0 + 2 * m, cx1 - cx0 + 2 * m), dtype=np.uint8)
            oy, ox = ey0 - (cy0 - m), ex0 - (cx0 - m)
            ext[oy : oy + raw.shape[1], ox : ox + raw.shape[2]] = nodata
            opened = cv2.morphologyEx(ext, cv2.MORPH_OPEN, np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE)
            nodata = opened[m:-m, m:-m].astype(bool)
        raw = raw[:, cy0 - ey0 : cy1 - ey0, cx0 - ex0 : cx1 - ex0]
        inside = ~nodata
        rgb = self._to_uint8(raw).transpose(1, 2, 0)
        rgb = np.where(inside[..., None], rgb, 0).astype(np.uint8)
        image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = rgb
        valid[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = inside
        return image, valid

    def read_rgb(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole raster: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` bool validity."""
        return self.read_window(0, 0, self.width, self.height)


def as_raster(raster: GeoRaster | str | os.PathLike[str]) -> GeoRaster:
    """Return ``raster`` itself, or open a path as a :class:`GeoRaster` with the default config."""
    return raster if isinstance(raster, GeoRaster) else GeoRaster(raster)


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2-D affine from ``(N, 2)`` ``src`` to ``(N, 2)`` ``dst`` points, as a ``(3, 3)`` float64."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    out = np.eye(3)
    out[:2] = coef.T
    return out


def pixel_map_between(
    src: GeoRaster | str | os.PathLike[str],
    dst: GeoRaster | str | os.PathLike[str],
    max_residual_px: float = 0.05,
) -> np.ndarray:
    """Affine homography from ``src`` pixel coordinates to ``dst`` pixel coordinates through world coordinates.

    With the same CRS this is exact: ``inv(A_dst) @ A_src`` (pixel-centre affines). With different CRSs the points
    of a 7x7 grid over ``src`` are reprojected with pyproj and an affine is fitted; if the reprojection is not affine
    to within ``max_residual_px`` dst pixels anywhere on that grid, a ``ValueError`` is raised (warp the raster to a
    common CRS first).

    Args:
        src, dst: rasters (or paths) with a georeference.
        max_residual_px: tolerance of the affine fit across CRSs.

    Returns:
        ``(3, 3)`` float64 mapping ``src`` pixel ``(x, y, 1)`` to ``dst`` pixel coordinates.
    """
    src_r, dst_r = as_raster(src), as_raster(dst)
    for r in (src_r, dst_r):
        if not r.georeferenced:
            raise ValueError(f"raster {r.path} has no CRS; cannot map pixels through world coordinates")
    if src_r.crs == dst_r.crs:
        return dst_r.world_to_pixel @ src_r.pixel_to_world
    from pyproj import Transformer

    xs = np.linspace(-0.5, src_r.width - 0.5, 7)
    ys = np.linspace(-0.5, src_r.height - 0.5, 7)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    world_src = src_r.pixels_to_world(grid)
    transformer = Transformer.from_crs(src_r.crs, dst_r.crs, always_xy=True)
    wx, wy = transformer.transform(world_src[:, 0], world_src[:, 1])
    dst_pix = dst_r.world_to_pixels(np.stack([wx, wy], axis=1))
    H = fit_affine(grid, dst_pix)
    residual = float(np.max(np.linalg.norm(apply_homography(H, grid) - dst_pix, axis=1)))
    if not np.isfinite(residual) or residual > max_residual_px:
        raise ValueError(
            f"the map from {src_r.path} ({src_r.crs}) to {dst_r.path} ({dst_r.crs}) is not affine within "
            f"{max_residual_px} px (max residual {residual:.3f} px); reproject the rasters to one CRS first"
        )
    logger.debug("cross-CRS pixel map %s -> %s, residual %.2e px", src_r.path, dst_r.path, residual)
    return H
