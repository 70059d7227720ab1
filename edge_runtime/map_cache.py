"""Reader of the base-map feature cache that ``edge-maps build`` writes (torch-free; the vehicle imports this).

Layout::

    CACHE/
      manifest.json                  schema, bundle id + bundle-manifest sha256, tiling, per-map records, file hashes
      maps/<map_id>/coarse.npy       (n_tiles, N, C) float16   coarse (1/64) topic features of every tile
      maps/<map_id>/cell_valid.npy   (n_tiles, N) bool         cell has >= min_valid_fraction valid pixels
      maps/<map_id>/origins.npy      (n_tiles, 2) int64        tile origin (x0, y0) in map pixels, row-major grid

``N = (tile_size / coarse_stride) ** 2`` cells per tile, flattened row-major; a tile covers map pixels
``x0 .. x0 + tile_size - 1`` (likewise in y) and may extend past the map's right / bottom edge (those cells are
invalid). Tiles without any valid cell are not encoded: their features are zero and every cell is invalid.

Each map record holds what the vehicle needs besides the features: the source raster (path, size, sha256), its
georeference (CRS, geotransform, GSD) with pixel <-> world <-> WGS84 conversions in the project's pixel-centre
convention (pixel ``(x, y)`` has its centre at integer ``(x, y)``; rasterio's affine maps pixel CORNERS, so
``world(x) = transform * (x + 0.5)``), and the exact radiometric recipe (bands, nodata, mask, stretch limits) so that
:meth:`CachedMap.read_roi` returns the same uint8 RGB pixels the encoder saw when the cache was built. The fine stage
reads its regions of interest from the original raster through it, which keeps the cache small.

Overview levels: a map may also be cached decimated by integer factors (``<stem>@2x``, ...; records with
``base_id`` and ``read.overview``): a frame whose footprint covers more than a tile of the map at the network's scale
ratio is matched on the level where it fits (:meth:`edge_runtime.locator.Locator.query_plans`), and results are
reported on the base map's pixel grid (:attr:`CachedMap.to_base_px`). Zoom-in levels (``<stem>@zoom2``, records
with ``base_id`` and ``read.zoom``) show a map magnified by an integer factor (:func:`zoom_expand`), for queries cut
from so few map pixels that at the map's own pixels they cover only a cell or two of the coarse grid (a 5 m NAIP map,
queries of 100 map px at 512 px); without a scale prior they are searched beside the maps.

Radiometry (identical to ``topicgeo.data.raster.GeoRaster`` for rasters without an alpha band / per-dataset mask):
bands ``(1, 2, 3)`` (a 1- or 2-band raster repeats band 1); uint8 passes through, other dtypes go through a per-band
percentile stretch computed once per raster on a decimated read. A pixel is invalid where every read band equals
the nodata value, where the raster's alpha band / per-dataset mask is 0 (GDAL's mask), or outside the raster.
Invalid pixels are returned as 0 with a boolean mask.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_runtime.atomic import sha256_file, verify_listed_files
from edge_runtime.numerics.grid import cell_centers

logger = logging.getLogger(__name__)

CACHE_SCHEMA = "topicgeo-edge-map-cache/1"
FEATURE_DTYPE = "float16"
ORIGIN_DTYPE = "int64"
ARRAY_NAMES = ("coarse", "cell_valid", "origins")
MANIFEST = "manifest.json"

GeorefSource = Literal["file", "bounds", "gsd"]


class MapCacheError(ValueError):
    """A cache (or one of its source rasters) that is missing, corrupt, or does not fit the caller's bundle."""


# -- affine geometry ---------------------------------------------------------------------------------------------
def pixel_to_world_affine(transform: Sequence[float]) -> np.ndarray:
    """3x3 matrix mapping pixel-centre coordinates ``(x, y, 1)`` to world ``(X, Y, 1)``.

    Args:
        transform: the six rasterio/GDAL affine coefficients ``(a, b, c, d, e, f)`` (corner convention:
            ``X = a * col + b * row + c``).

    Returns:
        ``(3, 3)`` float64 ``A`` with ``A @ (x, y, 1) = transform * (x + 0.5, y + 0.5)``.
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    corner = np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]], dtype=np.float64)
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]], dtype=np.float64)
    return corner @ half


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine (or homography) to ``(N, 2)`` points; returns ``(N, 2)`` float64."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(matrix, dtype=np.float64).T
    return hom[:, :2] / hom[:, 2:3]


def ground_sample_distance(transform: Sequence[float], crs_wkt: str | None, width: int, height: int) -> float:
    """Ground sample distance in metres of a georeferenced raster at its centre: ``sqrt(|det J|)`` of
    :func:`metres_per_pixel` (geodesic on WGS84 for every CRS, so a Web Mercator map at 50 degrees latitude gets
    its true 0.64x pixel size on the ground, not its grid size).

    Raises:
        MapCacheError: the raster has no CRS, the CRS cannot be converted to latitude/longitude, or the GSD is not
            positive and finite.
    """
    if crs_wkt is None:
        raise MapCacheError("a raster without a CRS has no metric GSD; pass it explicitly")
    jac = metres_per_pixel(transform, crs_wkt, ((width - 1) / 2.0, (height - 1) / 2.0))
    gsd = math.sqrt(abs(float(np.linalg.det(jac))))
    if not (math.isfinite(gsd) and gsd > 0):
        raise MapCacheError(f"GSD {gsd} m from transform {tuple(transform)[:6]} is not positive")
    return gsd


def metres_per_pixel(transform: Sequence[float], crs_wkt: str, at_px: Sequence[float]) -> np.ndarray:
    """Local ground metric of a georeferenced raster at pixel ``at_px = (x, y)``.

    Returns:
        ``(2, 2)`` float64 ``J`` whose columns are the ground displacement (east, north) in metres of one pixel step
        in x and one in y, from geodesics on the WGS84 ellipsoid (so ``J @ (dx, dy)`` is metres east / north of a
        small pixel offset, in any CRS: projected, Web Mercator or geographic).

    Raises:
        MapCacheError: the CRS cannot be converted to latitude/longitude, or the step is not finite.
    """
    from pyproj import CRS
    from pyproj.exceptions import CRSError, ProjError

    steps = _pixel_steps(at_px)
    try:
        lonlat = _to_lonlat(CRS.from_wkt(crs_wkt), apply_affine(pixel_to_world_affine(transform), steps))
    except (CRSError, ProjError) as exc:
        raise MapCacheError(f"CRS cannot be converted to latitude/longitude: {exc}") from exc
    return _ground_metric(lonlat, at_px)


def _pixel_steps(at_px: Sequence[float]) -> np.ndarray:
    """``(3, 2)``: pixel ``at_px`` and one step from it in x and in y."""
    x, y = (float(v) for v in at_px)
    return np.array([[x, y], [x + 1.0, y], [x, y + 1.0]])


def _ground_metric(lonlat: np.ndarray, at_px: Sequence[float]) -> np.ndarray:
    """:func:`metres_per_pixel` from the ``(3, 2)`` lon/lat of :func:`_pixel_steps`: WGS84 geodesics from the first
    point to the two others, as (east, north) columns."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    cols = []
    for k in (1, 2):
        azimuth, _, dist = geod.inv(lonlat[0, 0], lonlat[0, 1], lonlat[k, 0], lonlat[k, 1])
        a = math.radians(azimuth)
        cols.append((dist * math.sin(a), dist * math.cos(a)))
    jac = np.array(cols, dtype=np.float64).T
    if not np.all(np.isfinite(jac)):
        raise MapCacheError(f"no ground metric at pixel {tuple(at_px)}: the CRS gives non-finite coordinates there")
    return jac


def transform_points(transformer: Any, points: np.ndarray) -> np.ndarray:
    """Apply a pyproj ``Transformer`` to ``(N, 2)`` points; returns ``(N, 2)`` float64 for any ``N`` (also 1)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if len(pts) == 1:  # pyproj treats a 1-element array as a scalar point (deprecated numpy conversion)
        return np.array(list(transformer.itransform(pts.tolist())), dtype=np.float64).reshape(1, 2)
    x, y = transformer.transform(pts[:, 0], pts[:, 1])
    return np.stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)], axis=1)


def _to_lonlat(crs: Any, points: np.ndarray) -> np.ndarray:
    from pyproj import Transformer

    return transform_points(Transformer.from_crs(crs, "EPSG:4326", always_xy=True), points)


@dataclass(frozen=True)
class MapGeoref:
    """Where a map's pixels are on the ground.

    Attributes:
        width, height: raster size in pixels.
        transform: rasterio affine coefficients ``(a, b, c, d, e, f)`` (pixel-corner convention).
        crs_wkt: WKT of the CRS; ``None`` for an image placed with ``--gsd`` only (a local metric frame, no lat/lon).
        epsg: EPSG code of the CRS when it has one.
        gsd_m: ground sample distance in metres (on the ground at the map centre, not the CRS grid's unit).
        source: ``file`` (the raster's own georeference), ``bounds`` (``--bounds``) or ``gsd`` (``--gsd`` only).
    """

    width: int
    height: int
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None
    epsg: int | None
    gsd_m: float
    source: GeorefSource = "file"

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise MapCacheError(f"map size must be positive, got {self.width}x{self.height}")
        if len(self.transform) != 6 or not all(math.isfinite(v) for v in self.transform):
            raise MapCacheError(f"transform must be six finite numbers, got {self.transform}")
        a, b, _, d, e, _ = self.transform
        if abs(a * e - b * d) == 0.0:
            raise MapCacheError(f"transform {self.transform} is singular")
        if not (math.isfinite(self.gsd_m) and self.gsd_m > 0):
            raise MapCacheError(f"gsd_m must be positive, got {self.gsd_m}")
        if self.source not in ("file", "bounds", "gsd"):
            raise MapCacheError(f"georef source must be file, bounds or gsd, got {self.source!r}")

    # matrices -------------------------------------------------------------------------------------------------
    @cached_property
    def pixel_to_world(self) -> np.ndarray:
        """``(3, 3)`` float64 affine from pixel-centre coordinates to world (CRS) coordinates."""
        return pixel_to_world_affine(self.transform)

    @cached_property
    def world_to_pixel(self) -> np.ndarray:
        """``(3, 3)`` float64 inverse of :attr:`pixel_to_world`."""
        return np.linalg.inv(self.pixel_to_world)

    @property
    def area_km2(self) -> float:
        """Ground area of the whole raster extent in km2 (``width * height * gsd^2``)."""
        return self.width * self.height * self.gsd_m**2 / 1e6

    # conversions ----------------------------------------------------------------------------------------------
    def pixels_to_world(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel coordinates -> ``(N, 2)`` float64 world (CRS) coordinates."""
        return apply_affine(self.pixel_to_world, points)

    def world_to_pixels(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` world (CRS) coordinates -> ``(N, 2)`` float64 pixel coordinates."""
        return apply_affine(self.world_to_pixel, points)

    def metres_per_pixel(self, at_px: Sequence[float]) -> np.ndarray:
        """``(2, 2)`` ground metric at pixel ``at_px``: columns = metres (east, north) of one pixel step in x and in y
        (:func:`metres_per_pixel`; a map placed with ``--gsd`` only is its own local metric east/north frame)."""
        if self.crs_wkt is None:
            return self.pixel_to_world[:2, :2].copy()
        return _ground_metric(self.pixels_to_lonlat(_pixel_steps(at_px)), at_px)  # this map's cached transformer

    @cached_property
    def _transformers(self) -> tuple[Any, Any]:
        if self.crs_wkt is None:
            raise MapCacheError("this map has no CRS (it was placed with --gsd only): it has no latitude/longitude")
        from pyproj import CRS, Transformer

        crs = CRS.from_wkt(self.crs_wkt)
        return (Transformer.from_crs(crs, "EPSG:4326", always_xy=True),
                Transformer.from_crs("EPSG:4326", crs, always_xy=True))

    def pixels_to_lonlat(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel coordinates -> ``(N, 2)`` float64 WGS84 ``(lon, lat)`` in degrees.

        Raises:
            MapCacheError: the map has no CRS.
        """
        return transform_points(self._transformers[0], self.pixels_to_world(points))

    def lonlat_to_pixels(self, lonlat: np.ndarray) -> np.ndarray:
        """``(N, 2)`` WGS84 ``(lon, lat)`` degrees -> ``(N, 2)`` float64 pixel coordinates.

        Raises:
            MapCacheError: the map has no CRS.
        """
        return self.world_to_pixels(transform_points(self._transformers[1], lonlat))

    def overview(self, factor: int) -> MapGeoref:
        """The georeference of the raster decimated by ``factor`` (see :class:`RasterReadSpec` ``overview``)."""
        a, b, c, d, e, f = self.transform
        return MapGeoref(-(-self.width // factor), -(-self.height // factor),
                         (a * factor, b * factor, c, d * factor, e * factor, f), self.crs_wkt, self.epsg,
                         self.gsd_m * factor, self.source)

    def zoom(self, factor: int) -> MapGeoref:
        """The georeference of the raster magnified by ``factor`` (see :class:`RasterReadSpec` ``zoom``)."""
        a, b, c, d, e, f = self.transform
        return MapGeoref(self.width * factor, self.height * factor,
                         (a / factor, b / factor, c, d / factor, e / factor, f), self.crs_wkt, self.epsg,
                         self.gsd_m / factor, self.source)

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry."""
        return {"width": self.width, "height": self.height, "transform": list(self.transform),
                "crs_wkt": self.crs_wkt, "epsg": self.epsg, "gsd_m": self.gsd_m, "source": self.source}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MapGeoref:
        """Parse a manifest entry."""
        return cls(width=int(raw["width"]), height=int(raw["height"]),
                   transform=tuple(float(v) for v in raw["transform"]),  # type: ignore[arg-type]
                   crs_wkt=raw["crs_wkt"], epsg=None if raw["epsg"] is None else int(raw["epsg"]),
                   gsd_m=float(raw["gsd_m"]), source=raw["source"])


# -- radiometry and windowed reads -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterReadSpec:
    """How a raster's values become uint8 RGB and a validity mask (fixed at build time, stored in the manifest).

    Attributes:
        bands: three 1-based band indices read as R, G, B.
        nodata: a pixel whose read bands all equal this value is invalid (``None``: no nodata test).
        use_mask: also honour the raster's alpha band / per-dataset mask (GDAL mask value 0 = invalid).
        alpha_band: a band whose value 0 marks invalid pixels although the file does not declare it as alpha (GDAL
            then reports every pixel valid); see :func:`undeclared_alpha_band`.
        stretch: per-band ``(low, high)`` limits of the linear stretch to 0..255, or ``None`` (uint8 unchanged,
            other dtypes clipped to 0..255).
        overview: reads address the raster decimated by this integer factor (1 = native pixels): pixel ``(u, v)``
            is the mean of the valid native pixels of block ``[u f, u f + f) x [v f, v f + f)``, valid when any of
            them is (:func:`overview_reduce`). A map cache's overview levels (``edge-maps build
            --overviews``) read their source this way.
        zoom: reads address the raster magnified by this integer factor (1 = native pixels; exclusive with
            ``overview``), bilinearly on pixel centres (:func:`zoom_expand`): a map cache's zoom-in levels
            (``edge-maps build --zooms``).
    """

    bands: tuple[int, int, int]
    nodata: float | None = None
    use_mask: bool = False
    stretch: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None = None
    overview: int = 1
    alpha_band: int | None = None
    zoom: int = 1

    def __post_init__(self) -> None:
        if len(self.bands) != 3 or any(int(b) < 1 for b in self.bands):
            raise MapCacheError(f"bands must be three 1-based indices, got {self.bands}")
        if self.alpha_band is not None and int(self.alpha_band) < 1:
            raise MapCacheError(f"alpha_band must be a 1-based index, got {self.alpha_band}")
        if int(self.overview) != self.overview or self.overview < 1:
            raise MapCacheError(f"overview must be an integer factor >= 1, got {self.overview}")
        if int(self.zoom) != self.zoom or self.zoom < 1 or (self.zoom > 1 and self.overview > 1):
            raise MapCacheError(f"zoom must be an integer factor >= 1 (and overview 1), got zoom {self.zoom}, "
                                f"overview {self.overview}")
        if self.stretch is not None:
            if len(self.stretch) != 3:
                raise MapCacheError(f"stretch must hold three (low, high) pairs, got {self.stretch}")
            for lo, hi in self.stretch:
                if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                    raise MapCacheError(f"stretch limits must be finite with high > low, got {self.stretch}")

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry."""
        return {"bands": list(self.bands), "nodata": self.nodata, "use_mask": self.use_mask,
                "stretch": None if self.stretch is None else [list(p) for p in self.stretch],
                "overview": self.overview, "alpha_band": self.alpha_band,
                **({"zoom": self.zoom} if self.zoom > 1 else {})}  # older caches' records stay as they were

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RasterReadSpec:
        """Parse a manifest entry."""
        stretch = raw.get("stretch")
        return cls(bands=tuple(int(b) for b in raw["bands"]),  # type: ignore[arg-type]
                   nodata=None if raw.get("nodata") is None else float(raw["nodata"]),
                   use_mask=bool(raw.get("use_mask", False)),
                   stretch=None if stretch is None else tuple((float(lo), float(hi)) for lo, hi in stretch),  # type: ignore[arg-type]
                   overview=int(raw.get("overview", 1)),
                   alpha_band=None if raw.get("alpha_band") is None else int(raw["alpha_band"]),
                   zoom=int(raw.get("zoom", 1)))


def open_raster(path: str | os.PathLike[str]) -> Any:
    """Open a raster with rasterio, as a clear :class:`MapCacheError` naming the file when it cannot be read."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = Path(path)
    if not path.is_file():
        raise MapCacheError(f"raster {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise MapCacheError(f"cannot read raster {path}: {exc}") from exc


def dataset_has_mask(ds: Any) -> bool:
    """True when the raster has an alpha band or a per-dataset mask (not merely a nodata value)."""
    from rasterio.enums import MaskFlags

    flags = ds.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags or MaskFlags.alpha in flags


def undeclared_alpha_band(ds: Any, bands: Sequence[int], max_side: int = 1024) -> int | None:
    """A band that is an alpha band in all but name, or None.

    Some orthophoto writers (a point cloud rasterised to RGBA, for one) store a 0/255 coverage band without tagging
    it as alpha: GDAL then reports every pixel valid and the map's holes read as black ground. Such a band is taken as
    the mask when the file declares no mask of its own, the band is not one of the colour ``bands``, its colour
    interpretation is undefined or alpha, and a decimated read of it (at most ``max_side`` px per side) holds only
    0 and the dtype's maximum, both present. A near-infrared band (NAIP's fourth) has many values and never qualifies.
    """
    from rasterio.enums import ColorInterp

    if dataset_has_mask(ds) or not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
        return None
    top = np.iinfo(np.dtype(ds.dtypes[0])).max
    scale = min(1.0, max_side / max(ds.width, ds.height))
    shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
    for b in range(1, ds.count + 1):
        if b in bands or ds.colorinterp[b - 1] not in (ColorInterp.undefined, ColorInterp.alpha):
            continue
        values = np.unique(ds.read(b, out_shape=shape))
        if values.tolist() == [0, top]:
            return b
    return None


def _valid_from_raw(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.ones(raw.shape[1:], dtype=bool)
    if math.isnan(nodata):
        return ~np.all(np.isnan(raw), axis=0)
    return ~np.all(raw == nodata, axis=0)


def stretch_to_uint8(raw: np.ndarray, spec: RasterReadSpec) -> np.ndarray:
    """Raw band values ``(3, H, W)`` (any dtype) -> ``(3, H, W)`` uint8 following ``spec.stretch``."""
    if spec.stretch is not None:
        lim = np.asarray(spec.stretch, dtype=np.float64)
        scaled = (raw.astype(np.float64) - lim[:, :1, None]) / (lim[:, 1:, None] - lim[:, :1, None]) * 255.0
        return np.clip(np.nan_to_num(scaled, nan=0.0) + 0.5, 0, 255).astype(np.uint8)
    if raw.dtype == np.uint8:
        return raw
    return np.clip(np.nan_to_num(raw.astype(np.float64), nan=0.0) + 0.5, 0, 255).astype(np.uint8)


def compute_read_spec(
    path: str | os.PathLike[str],
    bands: tuple[int, int, int] | None = None,
    nodata: float | None = None,
    stretch: Literal["auto", "none", "percentile"] = "auto",
    percentiles: tuple[float, float] = (1.0, 99.0),
    stats_max_side: int = 1024,
    alpha_band: int | Literal["auto"] | None = "auto",
) -> RasterReadSpec:
    """Decide a raster's read recipe once (at build time), including its percentile-stretch limits.

    Args:
        path: the raster.
        bands: R, G, B band indices; ``None`` = ``(1, 2, 3)`` with >= 3 bands, else band 1 three times.
        nodata: overrides the file's nodata value (``None`` = the file's).
        stretch: ``auto`` (uint8 unchanged, other dtypes stretched), ``none`` or ``percentile``.
        percentiles: low/high percentiles of the stretch over valid pixels.
        stats_max_side: the statistics use a read decimated to at most this many pixels per side.
        alpha_band: a band whose 0 marks invalid pixels although the file does not declare it, ``auto`` (detect it:
            :func:`undeclared_alpha_band`) or None.

    Returns:
        The recipe; its stretch limits equal ``topicgeo.data.raster.GeoRaster.stretch_limits`` for rasters without
        an alpha band / per-dataset mask.

    Raises:
        MapCacheError: unreadable raster, bad band indices, or no valid pixel to compute a stretch from.
    """
    if stretch not in ("auto", "none", "percentile"):
        raise MapCacheError(f"stretch must be auto, none or percentile, got {stretch!r}")
    lo_p, hi_p = percentiles
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise MapCacheError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    with open_raster(path) as ds:
        if bands is None:
            bands = (1, 2, 3) if ds.count >= 3 else (1, 1, 1)
        bad = [b for b in bands if not 1 <= int(b) <= ds.count]
        if len(bands) != 3 or bad:
            raise MapCacheError(f"raster {path} has {ds.count} bands; cannot read bands {tuple(bands)}")
        file_nodata = ds.nodata if nodata is None else nodata
        file_nodata = None if file_nodata is None else float(file_nodata)
        use_mask = dataset_has_mask(ds)
        alpha = undeclared_alpha_band(ds, bands) if alpha_band == "auto" else alpha_band
        if alpha is not None and not 1 <= int(alpha) <= ds.count:
            raise MapCacheError(f"raster {path} has {ds.count} bands; cannot read alpha band {alpha}")
        dtype = str(ds.dtypes[0])
        limits = None
        if stretch == "percentile" or (stretch == "auto" and dtype != "uint8"):
            scale = min(1.0, stats_max_side / max(ds.width, ds.height))
            out_h, out_w = max(1, round(ds.height * scale)), max(1, round(ds.width * scale))
            raw = ds.read(list(bands), out_shape=(3, out_h, out_w)).astype(np.float64)
            valid = _valid_from_raw(raw, file_nodata)
            if use_mask:
                valid &= ds.read_masks(int(bands[0]), out_shape=(out_h, out_w)) > 0
            if alpha is not None:
                valid &= ds.read(int(alpha), out_shape=(out_h, out_w)) > 0
            if not valid.any():
                raise MapCacheError(f"raster {path} has no valid pixel (nodata={file_nodata})")
            pairs = []
            for i in range(3):
                lo, hi = np.percentile(raw[i][valid], [lo_p, hi_p])
                lo, hi = float(lo), float(hi)
                if not hi > lo:
                    hi = lo + 1.0
                pairs.append((lo, hi))
            limits = tuple(pairs)
    return RasterReadSpec(bands=tuple(int(b) for b in bands), nodata=file_nodata, use_mask=use_mask,  # type: ignore[arg-type]
                          stretch=limits, alpha_band=alpha)  # type: ignore[arg-type]


def overview_reduce(image: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimate by an integer factor: each output pixel is the rounded mean of the valid pixels of its
    ``factor x factor`` block, valid when any of them is (0 otherwise), as GDAL's averaging overviews: a sparse
    raster (a point-cloud orthophoto with pixel-sized holes) gets denser on its overviews.

    Args:
        image: ``(H, W, 3)`` uint8 with ``H`` and ``W`` multiples of ``factor``. valid: ``(H, W)`` bool.

    Returns:
        ``(H / factor, W / factor, 3)`` uint8 and ``(H / factor, W / factor)`` bool.
    """
    if factor == 1:
        return image, valid
    h, w = valid.shape
    if h % factor or w % factor or image.shape != (h, w, 3):
        raise ValueError(f"overview_reduce needs (H, W, 3) / (H, W) with sides divisible by {factor}, got "
                         f"{image.shape} / {valid.shape}")
    import cv2  # block means in C: ~5 ms for a 1024 px window, where numpy's strided sums took ~160 ms

    size = (w // factor, h // factor)
    v = valid.astype(np.float64)
    total = cv2.resize(image.astype(np.float64) * v[..., None], size, interpolation=cv2.INTER_AREA)  # sum / f^2
    count = cv2.resize(v, size, interpolation=cv2.INTER_AREA)  # valid count / f^2
    out_valid = count > 0
    mean = np.floor(total / np.where(out_valid, count, 1.0)[..., None] + 0.5 + 1e-9)  # rounded, half up
    return np.where(out_valid[..., None], mean, 0).astype(np.uint8), out_valid


def zoom_expand(image: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Magnify by an integer factor (a map's zoom-in level): bilinear, pixel centres aligned (output pixel ``u`` is
    centred on input coordinate ``(u + 0.5) / factor - 0.5``); an output pixel is valid only when every input pixel
    it interpolates is. The training pairs' zoomed reference windows are made by this same function.

    Args:
        image: ``(H, W, 3)`` uint8. valid: ``(H, W)`` bool.

    Returns:
        ``(H * factor, W * factor, 3)`` uint8 and ``(H * factor, W * factor)`` bool.
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"zoom factor must be an integer >= 1, got {factor}")
    if factor == 1:
        return image, valid
    h, w = valid.shape
    if image.shape != (h, w, 3):
        raise ValueError(f"zoom_expand needs (H, W, 3) / (H, W), got {image.shape} / {valid.shape}")
    import cv2

    size = (w * int(factor), h * int(factor))
    out = cv2.resize(np.where(valid[..., None], image, 0).astype(np.uint8), size, interpolation=cv2.INTER_LINEAR)
    out_valid = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 1.0 - 1e-4
    return np.where(out_valid[..., None], out, 0).astype(np.uint8), out_valid


def zoom_matrix(factor: float) -> np.ndarray:
    """``(3, 3)`` map from pixels of a raster to pixels of its ``factor`` x magnification (:func:`zoom_expand`;
    pixel ``u`` goes to ``f u + (f - 1) / 2``, pixel centres aligned, for any factor > 0)."""
    f = float(factor)
    return np.array([[f, 0.0, (f - 1.0) / 2.0], [0.0, f, (f - 1.0) / 2.0], [0.0, 0.0, 1.0]])


class RasterSource:
    """Windowed uint8 RGB reads of one raster following a :class:`RasterReadSpec` (lazy, thread-safe handle).

    With ``spec.overview`` > 1 the reads address the decimated raster, with ``spec.zoom`` > 1 the magnified one
    (``width`` / ``height`` are its size).
    The file handle is re-opened after pickling (Ray workers get their own).
    """

    def __init__(self, path: str | os.PathLike[str], spec: RasterReadSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self._ds: Any = None
        self._lock = threading.Lock()
        ds = self._dataset()
        self.native_width = int(ds.width)
        self.native_height = int(ds.height)
        self.width = -(-self.native_width // spec.overview) * spec.zoom  # ceil: a partial last block is a pixel
        self.height = -(-self.native_height // spec.overview) * spec.zoom
        bad = [b for b in (*spec.bands, spec.alpha_band or 1) if b > ds.count]
        if bad:
            self.close()
            raise MapCacheError(f"raster {self.path} has {ds.count} bands; the read spec wants {spec.bands}")

    def _dataset(self) -> Any:
        if self._ds is None or self._ds.closed:
            self._ds = open_raster(self.path)
        return self._ds

    def close(self) -> None:
        """Close the file handle (re-opened on the next read)."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ds"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``x0 .. x0+width-1`` x ``y0 .. y0+height-1``; parts outside the raster are invalid zeros.

        Args:
            x0, y0: integer pixel coordinates of the window's first column / row (may be negative).
            width, height: window size in pixels (>= 1).

        Returns:
            ``image`` ``(height, width, 3)`` uint8 RGB (0 where invalid) and ``valid`` ``(height, width)`` bool.
        """
        x0, y0, width, height = int(x0), int(y0), int(width), int(height)
        if width < 1 or height < 1:
            raise MapCacheError(f"window size must be positive, got {width}x{height}")
        z = self.spec.zoom
        if z > 1:  # the native pixels the window interpolates, one more on each side, magnified and cut to the window
            nx0, ny0 = x0 // z - 1, y0 // z - 1
            nx1, ny1 = -(-(x0 + width) // z) + 1, -(-(y0 + height) // z) + 1
            image, valid = zoom_expand(*self._read_native(nx0, ny0, nx1 - nx0, ny1 - ny0), z)
            ox, oy = x0 - nx0 * z, y0 - ny0 * z
            return image[oy:oy + height, ox:ox + width], valid[oy:oy + height, ox:ox + width]
        f = self.spec.overview
        image, valid = self._read_native(x0 * f, y0 * f, width * f, height * f)
        return overview_reduce(image, valid, f)

    def _read_native(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        image = np.zeros((height, width, 3), dtype=np.uint8)
        valid = np.zeros((height, width), dtype=bool)
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(self.native_width, x0 + width), min(self.native_height, y0 + height)
        if cx1 <= cx0 or cy1 <= cy0:
            return image, valid
        window = Window(cx0, cy0, cx1 - cx0, cy1 - cy0)
        with self._lock:
            ds = self._dataset()
            extra = [] if self.spec.alpha_band is None else [self.spec.alpha_band]
            raw = ds.read([*self.spec.bands, *extra], window=window)  # one decode of each block
            mask = ds.read_masks(self.spec.bands[0], window=window) > 0 if self.spec.use_mask else None
        if extra:
            alpha, raw = raw[3] > 0, raw[:3]
            mask = alpha if mask is None else mask & alpha
        inside = _valid_from_raw(raw, self.spec.nodata)
        if mask is not None:
            inside &= mask
        rgb = stretch_to_uint8(raw, self.spec).transpose(1, 2, 0)
        rgb = np.where(inside[..., None], rgb, 0).astype(np.uint8)
        image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = rgb
        valid[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = inside
        return image, valid


# -- tiling --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileGrid:
    """A map's regular tile grid.

    Attributes:
        tile_size: square tile side in pixels (the bundle's encoder tile).
        stride: distance between neighbouring tile origins in pixels (``tile_size - overlap``).
        cell: coarse feature stride in pixels (64).
        nx, ny: tiles per row / column; tile ``k`` has origin ``(x0 + (k % nx) * stride, y0 + (k // nx) * stride)``.
        x0, y0: origin of the first tile, ``<= 0`` multiples of ``cell`` (a map narrower than a tile is centred in
            it; caches written before this field have 0).
    """

    tile_size: int
    stride: int
    cell: int
    nx: int
    ny: int
    x0: int = 0
    y0: int = 0

    def __post_init__(self) -> None:
        if self.cell < 1 or self.tile_size < self.cell or self.tile_size % self.cell:
            raise MapCacheError(f"tile_size {self.tile_size} must be a positive multiple of the cell {self.cell}")
        if not 0 < self.stride <= self.tile_size:
            raise MapCacheError(f"stride {self.stride} must be in 1..tile_size ({self.tile_size})")
        if self.nx < 1 or self.ny < 1:
            raise MapCacheError(f"tile grid {self.nx}x{self.ny} is empty")
        if any(o > 0 or o <= -self.tile_size or o % self.cell for o in (self.x0, self.y0)):
            raise MapCacheError(f"first tile origin ({self.x0}, {self.y0}) must be non-positive multiples of the cell "
                                f"{self.cell} within one tile")

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return self.nx * self.ny

    @property
    def cells_per_side(self) -> int:
        """Coarse cells per tile side (``tile_size / cell``)."""
        return self.tile_size // self.cell

    @property
    def cells_per_tile(self) -> int:
        """Coarse cells per tile ``N``."""
        return self.cells_per_side**2

    def origins(self) -> np.ndarray:
        """``(n_tiles, 2)`` int64 tile origins ``(x0, y0)``, row-major (x fastest)."""
        ys, xs = np.meshgrid(self.y0 + np.arange(self.ny) * self.stride, self.x0 + np.arange(self.nx) * self.stride,
                             indexing="ij")
        return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)

    def to_dict(self) -> dict[str, int]:
        """Manifest entry."""
        return {"tile_size": self.tile_size, "stride": self.stride, "cell": self.cell, "nx": self.nx, "ny": self.ny,
                "x0": self.x0, "y0": self.y0}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TileGrid:
        """Parse a manifest entry."""
        return cls(int(raw["tile_size"]), int(raw["stride"]), int(raw["cell"]), int(raw["nx"]), int(raw["ny"]),
                   int(raw.get("x0", 0)), int(raw.get("y0", 0)))


# -- the cache ---------------------------------------------------------------------------------------------------
@dataclass
class CachedMap:
    """One map of a cache: its record, memory-mapped features and a lazily opened source raster.

    An overview level of a map (``read_spec.overview`` > 1) is an entry of its own, on the decimated pixel grid
    (:meth:`MapGeoref.overview`), with ``base_id`` naming the map it decimates; :attr:`to_base_px` takes its pixel
    coordinates to the map's.

    Attributes:
        map_id: the source file's stem (``<stem>@<factor>x`` for an overview level).
        source: manifest record of the source raster (``path``, ``name``, ``size``, ``sha256``).
        georef: pixel <-> world <-> WGS84 geometry.
        read_spec: radiometric recipe of the source (used by :meth:`read_roi`).
        grid: the tile grid.
        coarse: ``(n_tiles, N, C)`` float16 memory-mapped coarse features.
        cell_valid: ``(n_tiles, N)`` bool memory-mapped cell validity.
        origins: ``(n_tiles, 2)`` int64 tile origins ``(x0, y0)`` in map pixels.
        record: the full manifest record.
    """

    map_id: str
    source: dict[str, Any]
    georef: MapGeoref
    read_spec: RasterReadSpec
    grid: TileGrid
    coarse: np.ndarray
    cell_valid: np.ndarray
    origins: np.ndarray
    record: dict[str, Any]
    search_dirs: tuple[Path, ...] = ()
    _raster: RasterSource | None = field(default=None, repr=False)

    @property
    def n_tiles(self) -> int:
        """Number of tiles (including tiles without any valid cell)."""
        return int(self.origins.shape[0])

    @property
    def overview(self) -> int:
        """Decimation factor of this entry's pixel grid (1: the map's own pixels or a zoom-in level)."""
        return self.read_spec.overview

    @property
    def scale(self) -> float:
        """Base-map pixels per pixel of this entry: the overview factor, or ``1 / zoom`` for a zoom-in level."""
        return self.read_spec.overview / self.read_spec.zoom

    @property
    def base_id(self) -> str:
        """Id of the map this entry shows (its own id unless it is an overview level)."""
        return str(self.record.get("base_id", self.map_id))

    @property
    def to_base_px(self) -> np.ndarray:
        """``(3, 3)`` float64 affine from this entry's pixel-centre coordinates to the base map's (identity for a
        native entry): pixel ``u`` of a level of scale ``f`` (:attr:`scale`) is centred on base pixel
        ``f u + (f - 1) / 2``."""
        return zoom_matrix(self.scale)  # the same pixel-centre scaling, by base px per entry px

    def encoded_tiles(self) -> np.ndarray:
        """``(K,)`` int64 indices of the tiles with at least one valid cell."""
        return np.flatnonzero(self.cell_valid.any(axis=1)).astype(np.int64)

    def cell_centers_px(self, tile_index: int) -> np.ndarray:
        """``(N, 2)`` float64 map-pixel coordinates of the coarse cell centres of one tile (row-major cells)."""
        if not 0 <= tile_index < self.n_tiles:
            raise IndexError(f"map {self.map_id!r} has tiles 0..{self.n_tiles - 1}, not {tile_index}")
        g = self.grid.cells_per_side
        return cell_centers(g, g, self.grid.cell) + self.origins[tile_index].astype(np.float64)

    def source_path(self) -> Path:
        """The source raster on this machine: the recorded path, else the same file name in a search folder."""
        recorded = Path(self.source["path"])
        candidates = [recorded, *(Path(d) / self.source["name"] for d in self.search_dirs)]
        for cand in candidates:
            if cand.is_file():
                size = cand.stat().st_size
                if size != int(self.source["size"]):
                    raise MapCacheError(f"source raster {cand} of map {self.map_id!r} has {size} bytes, the cache "
                                        f"was built from {self.source['size']} bytes (sha256 {self.source['sha256']})")
                return cand
        raise MapCacheError(f"source raster of map {self.map_id!r} not found (looked at "
                            f"{[str(c) for c in candidates]}); pass its folder as source_dirs")

    def raster(self) -> RasterSource:
        """The opened source raster (opened and size-checked on first use)."""
        if self._raster is None:  # kept only once it fits: a raster that failed the check fails every read
            source = RasterSource(self.source_path(), self.read_spec)
            if (source.width, source.height) != (self.georef.width, self.georef.height):
                source.close()
                raise MapCacheError(f"source raster {source.path} is {source.width}x{source.height}, the cache "
                                    f"says {self.georef.width}x{self.georef.height}")
            self._raster = source
        return self._raster

    def read_roi(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Windowed read of the ORIGINAL raster with the build's radiometry (for the fine stage).

        Args:
            x0, y0: integer map-pixel coordinates of the window's first column / row (may be negative).
            width, height: window size in pixels.

        Returns:
            ``(height, width, 3)`` uint8 RGB (0 where invalid) and ``(height, width)`` bool validity; pixels outside
            the map are invalid.
        """
        return self.raster().read(x0, y0, width, height)

    def verify_source(self) -> None:
        """Recompute the source raster's sha256; :class:`MapCacheError` naming the file when it differs."""
        path = self.source_path()
        actual = sha256_file(path)
        if actual != self.source["sha256"]:
            raise MapCacheError(f"source raster {path} of map {self.map_id!r} changed: sha256 {actual[:12]}..., "
                                f"the cache was built from {self.source['sha256'][:12]}...")

    def close(self) -> None:
        """Close the source raster handle."""
        if self._raster is not None:
            self._raster.close()


@dataclass
class MapCache:
    """An opened cache: the manifest, every map by id (in build order) and the maps' overview levels by entry id
    (``<stem>@<factor>x``; used by the locator when a scale prior says a frame covers more than a tile)."""

    root: Path
    manifest: dict[str, Any]
    maps: dict[str, CachedMap]
    overviews: dict[str, CachedMap] = field(default_factory=dict)

    @property
    def bundle_id(self) -> str:
        """Id of the bundle whose encoder produced the features."""
        return str(self.manifest["bundle"]["bundle_id"])

    @property
    def coarse_dim(self) -> int:
        """Feature channels ``C``."""
        return int(self.manifest["bundle"]["coarse_dim"])

    @property
    def map_ids(self) -> list[str]:
        """Map ids in build order."""
        return list(self.maps)

    @property
    def n_tiles(self) -> int:
        """Tiles over all maps and overview levels."""
        return sum(m.n_tiles for m in self.entries())

    def map(self, map_id: str) -> CachedMap:
        """The map (or overview level) ``map_id``; :class:`MapCacheError` listing the known ids otherwise."""
        entry = self.maps.get(map_id) or self.overviews.get(map_id)
        if entry is None:
            raise MapCacheError(f"cache {self.root} has no map {map_id!r} (has {self.map_ids})")
        return entry

    def entries(self) -> list[CachedMap]:
        """Every map and overview level, maps first."""
        return [*self.maps.values(), *self.overviews.values()]

    def read_roi(self, map_id: str, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`CachedMap.read_roi` of map ``map_id``."""
        return self.map(map_id).read_roi(x0, y0, width, height)

    def iter_tiles(self) -> Iterator[tuple[str, int]]:
        """``(map_id, tile_index)`` of every tile with at least one valid cell, in build order."""
        for entry in self.entries():
            for k in entry.encoded_tiles():
                yield entry.map_id, int(k)

    def close(self) -> None:
        """Close source raster handles (the memory maps close with the arrays)."""
        for entry in self.entries():
            entry.close()


def read_cache_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and schema-check ``manifest.json`` of a cache (no hash checks)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise MapCacheError(f"not a map cache: {path} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapCacheError(f"corrupt cache manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != CACHE_SCHEMA:
        got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise MapCacheError(f"{path}: schema {got!r}, expected {CACHE_SCHEMA!r}")
    for key in ("bundle", "tiling", "maps", "files"):
        if key not in manifest:
            raise MapCacheError(f"{path}: missing key {key!r}")
    return manifest


def verify_cache_files(root: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Recompute the sha256 of every file the manifest lists.

    Raises:
        MapCacheError: naming the first missing or modified file.
    """
    verify_listed_files(root, manifest.get("files"), "cache", MapCacheError)


def encoder_sha256(bundle: Any, precision: str | None = None) -> str | None:
    """sha256 of the bundle's map-tile encoder graph (ONNX at ``precision``, default the bundle's: the graph a cache's
    features were computed with) as its manifest lists it (None when the manifest lists no hash for it or the
    bundle has no graph at that precision). The bundle id names the checkpoint and export settings; this names the
    graph's bytes, which a re-export with another exporter may change under the same id."""
    entry = bundle.graphs.get("encoder_tile")
    if entry is None or (precision is not None and precision not in entry.onnx):
        return None
    onnx = bundle.onnx_path("encoder_tile", precision)
    files = bundle.manifest.get("files") or {}
    return files.get(onnx.relative_to(bundle.root).as_posix())


def check_bundle(manifest: dict[str, Any], bundle: Any, where: str | os.PathLike[str] = "cache") -> None:
    """Raise :class:`MapCacheError` unless the cache was built by ``bundle`` (same id, tile size, feature width).

    Args:
        manifest: a cache manifest.
        bundle: an :class:`edge_runtime.bundle.Bundle`.
        where: the cache path, for the message.
    """
    rec = manifest["bundle"]
    if str(rec["bundle_id"]) != bundle.bundle_id:
        raise MapCacheError(f"map cache {where} was built with bundle {rec['bundle_id']}, but the bundle in use "
                            f"({bundle.root}) is {bundle.bundle_id}; rebuild the cache with edge-maps build")
    if int(rec["tile_size"]) != bundle.tile_size:
        raise MapCacheError(f"map cache {where} has tile size {rec['tile_size']}, bundle {bundle.root} "
                            f"has {bundle.tile_size}")
    coarse = [s for s in bundle.graphs["encoder_tile"].outputs if s.name == "coarse"]
    if coarse and int(coarse[0].shape[-1]) != int(rec["coarse_dim"]):
        raise MapCacheError(f"map cache {where} has {rec['coarse_dim']}-d features, bundle {bundle.root} "
                            f"produces {coarse[0].shape[-1]}-d")
    if rec.get("encoder_sha256") is not None:  # caches since 2026-12-06: the encoder graph's own hash
        # of the graph at the precision the features were computed in (older caches: the bundle's precision)
        if rec["encoder_sha256"] != encoder_sha256(bundle, rec.get("precision") or bundle.precision):
            raise MapCacheError(f"map cache {where} was built with another encoder_tile graph than bundle "
                                f"{bundle.root} holds (same id {bundle.bundle_id}: re-exported?); rebuild the cache "
                                "with edge-maps build")
        return
    manifest_sha = rec.get("manifest_sha256")
    bundle_manifest = Path(bundle.root) / "manifest.json"
    if manifest_sha and bundle_manifest.is_file() and sha256_file(bundle_manifest) != manifest_sha:
        logger.warning("map cache %s: bundle %s has the same id %s but a different manifest.json than the one the "
                       "cache was built with (re-exported?)", where, bundle.root, bundle.bundle_id)


def _load_array(root: Path, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    path = root / name
    if not path.is_file():
        raise MapCacheError(f"cache file missing: {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MapCacheError(f"cache file {path} is not a readable .npy array: {exc}") from exc
    if str(arr.dtype) != dtype or tuple(arr.shape) != shape:
        raise MapCacheError(f"cache file {path} holds {arr.dtype} {tuple(arr.shape)}, expected {dtype} {shape}")
    return arr


def open_map_cache(
    path: str | os.PathLike[str],
    bundle: Any = None,
    verify: bool = True,
    source_dirs: Iterable[str | os.PathLike[str]] = (),
) -> MapCache:
    """Open a cache with memory-mapped features.

    Args:
        path: the cache folder.
        bundle: the :class:`edge_runtime.bundle.Bundle` in use; a cache built by another bundle is an error.
        verify: recompute the sha256 of every cache file (the source rasters are checked by size when first read;
            :meth:`CachedMap.verify_source` hashes them).
        source_dirs: folders searched (by file name) for source rasters that are not at their recorded path.

    Returns:
        The :class:`MapCache`.

    Raises:
        MapCacheError: a missing / corrupt file (named), a schema mismatch, or a cache built by another bundle.
    """
    root = Path(path)
    manifest = read_cache_manifest(root)
    try:
        return _open_map_cache(root, manifest, bundle, verify, source_dirs)
    except MapCacheError as exc:
        if str(root) in str(exc):
            raise
        raise MapCacheError(f"{root / MANIFEST}: {exc}") from exc  # a record's own check: name the manifest
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged manifest (a key or value changed)
        raise MapCacheError(f"{root / MANIFEST} is malformed: {type(exc).__name__}: {exc}") from exc


def _open_map_cache(
    root: Path, manifest: dict[str, Any], bundle: Any, verify: bool, source_dirs: Iterable[str | os.PathLike[str]]
) -> MapCache:
    if bundle is not None:
        check_bundle(manifest, bundle, root)
    if verify:
        verify_cache_files(root, manifest)
    dirs = tuple(Path(d) for d in source_dirs)
    coarse_dim = int(manifest["bundle"]["coarse_dim"])
    maps: dict[str, CachedMap] = {}
    overviews: dict[str, CachedMap] = {}
    for rec in manifest["maps"]:
        map_id = str(rec["id"])
        grid = TileGrid.from_dict(rec["grid"])
        n, cells = grid.n_tiles, grid.cells_per_tile
        files = rec["files"]
        base_id = str(rec.get("base_id", map_id))
        level = int(rec["read"].get("overview", 1)) > 1 or int(rec["read"].get("zoom", 1)) > 1
        if (base_id != map_id) != level or (level and base_id not in maps):
            raise MapCacheError(f"entry {map_id!r}: a level of map {base_id!r}, which must be a map listed before it "
                                f"(and only overview and zoom levels name another map)")
        (overviews if level else maps)[map_id] = CachedMap(
            map_id=map_id,
            source=dict(rec["source"]),
            georef=MapGeoref.from_dict(rec["georef"]),
            read_spec=RasterReadSpec.from_dict(rec["read"]),
            grid=grid,
            coarse=_load_array(root, files["coarse"], FEATURE_DTYPE, (n, cells, coarse_dim)),
            cell_valid=_load_array(root, files["cell_valid"], "bool", (n, cells)),
            origins=_load_array(root, files["origins"], ORIGIN_DTYPE, (n, 2)),
            record=rec,
            search_dirs=(*dirs, root),
        )
    cache = MapCache(root=root, manifest=manifest, maps=maps, overviews=overviews)
    logger.info("map cache %s: %d maps (+%d overview levels), %d tiles, bundle %s", root, len(maps), len(overviews),
                cache.n_tiles, cache.bundle_id)
    return cache
