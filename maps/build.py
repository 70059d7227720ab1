"""``edge-maps build``: tile base maps, run the bundle's tile encoder, write the memory-mappable feature cache.

The cache format (and its reader) is :mod:`edge_runtime.map_cache`; this module is its only writer.

Build flow:

1. Plan (no writes): open the bundle (hash-verified) and every map, decide each map's georeference, radiometric
   recipe and tile grid, hash the source rasters. Any bad input (unreadable file, an image without georeference and
   without ``--gsd`` / ``--bounds``, a tile size the bundle cannot run, duplicate map ids, an existing output) raises
   :class:`MapsError` here, before anything is written.
2. Work folder ``.<out>.partial`` next to the output: ``plan.json``, per-map progress bitmaps and the cache arrays,
   pre-allocated as ``.npy`` memory maps. Each finished tile is flushed to its array, then marked done in the
   progress bitmap (atomic rename), so a build killed at any point resumes where it stopped; tile features are a
   deterministic function of the inputs, so a resumed build's files are byte-identical to an uninterrupted one.
   A work folder from a different plan (other bundle, maps or settings) is an error unless ``fresh`` discards it.
3. Finish: hash the arrays, write ``manifest.json`` (no timestamps: identical inputs give identical bytes), rename
   the finished cache folder into place, remove the work folder.

Tiles are encoded locally (one ONNX Runtime / TensorRT session) or spread over a Ray cluster (``executor="ray"``,
optional dependency; see :mod:`maps.ray_executor`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_runtime.atomic import atomic_write_bytes, replace_directory, sha256_file
from edge_runtime.backends import BackendChoice, InferenceBackend, onnx_precision, open_graph
from edge_runtime.bundle import Bundle, BundleError, open_bundle
from edge_runtime.map_cache import (
    ARRAY_NAMES,
    CACHE_SCHEMA,
    FEATURE_DTYPE,
    MANIFEST,
    ORIGIN_DTYPE,
    MapCacheError,
    MapGeoref,
    RasterReadSpec,
    RasterSource,
    TileGrid,
    compute_read_spec,
    encoder_sha256,
    ground_sample_distance,
    open_raster,
)
from maps.tiling import cell_validity, image_tensor, make_grid, overlap_pixels

logger = logging.getLogger(__name__)

ExecutorName = Literal["local", "ray"]
TileCallback = Callable[[str, int], None]
_MAP_ID = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]*$")
_GSD_AGREEMENT = 0.02
_FILE_MODE = 0o644


class MapsError(ValueError):
    """A map-cache build that cannot start or cannot finish (the message names the input at fault)."""


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one ``edge-maps build``.

    Attributes:
        overlap: overlap of neighbouring tiles as a fraction of the tile side (decision 14: 0.125), rounded to whole
            coarse cells.
        tile_size: tile side in pixels; ``None`` = the bundle's (the encoder graph has static shapes, so any other
            value is an error).
        min_valid_fraction: a coarse cell is valid when at least this fraction of its pixels is valid.
        executor: ``local`` or ``ray``.
        ray_address: Ray cluster address (``None`` = start a local Ray instance).
        tiles_per_task: tiles per Ray task.
        backend: ``onnxruntime`` or ``tensorrt``.
        device: ``cpu`` or ``cuda`` (ONNX Runtime).
        threads: ONNX Runtime intra-op threads (0 = library default).
        precision: the encoder graph ONNX Runtime runs (:attr:`edge_runtime.backends.BackendChoice.precision`;
            ``auto``: FP32 on the CPU, the bundle's precision on CUDA). The cache records the one used.
        gsd: ground sample distance in metres for images without a CRS (alone: a local metric frame, no lat/lon).
        bounds: ``(west, south, east, north)`` of images without a CRS, in ``bounds_crs``.
        bounds_crs: CRS of ``bounds`` (any pyproj input, default WGS84 lon/lat).
        nodata: overrides the rasters' nodata value.
        bands: R, G, B band indices (``None`` = 1, 2, 3, or band 1 for 1-2 band rasters).
        alpha_band: a band whose 0 marks invalid pixels although the file does not declare it as alpha: ``auto``
            detects a 0/255 coverage band (:func:`edge_runtime.map_cache.undeclared_alpha_band`), an index names
            one, None reads none.
        overviews: decimation factors of the overview levels cached besides each map (``<stem>@<f>x``). A level is
            built only while its longer side still spans a tile (coarser ones would hold the whole map in less than
            a tile). The locator matches a frame on the level where its footprint, brought to the network's scale
            ratio, fits a tile (a drone frame at 40 m over a 0.1 m orthophoto covers ~680 map px: 0.2 m suits it);
            without a scale prior only the maps themselves are searched. Cost: at most a third more tiles.
        zooms: magnification factors of the zoom-in levels cached besides each map (``<stem>@zoom<f>``, bilinear:
            :func:`edge_runtime.map_cache.zoom_expand`). For maps coarse against the frames' footprints (a 5 m
            NAIP map and queries cut from 100-360 of its pixels): at the map's own pixels a 100-px query covers
            less than two coarse cells. Without a scale prior the locator searches them beside the maps; with one,
            a frame whose footprint is small on the map is matched there (:func:`~edge_runtime.locator.
            overview_for_frame`). Cost: f^2 times the map's tiles each.
        zoom_max_pixels: a zoom-in level is built only while it holds at most this many pixels (a large orthophoto,
            whose frames cover many of its pixels anyway, gets none; a 4000 x 4000 px map still gets a 2x level).
        overwrite: replace an existing cache at the output path.
        fresh: discard an unfinished build of a different plan instead of failing.
        progress: show a tqdm progress bar.
    """

    overlap: float = 0.125
    tile_size: int | None = None
    min_valid_fraction: float = 0.5
    executor: ExecutorName = "local"
    ray_address: str | None = None
    tiles_per_task: int = 4
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = 0
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    gsd: float | None = None
    bounds: tuple[float, float, float, float] | None = None
    bounds_crs: str = "EPSG:4326"
    nodata: float | None = None
    bands: tuple[int, int, int] | None = None
    alpha_band: int | Literal["auto"] | None = "auto"
    overviews: tuple[int, ...] = (2, 4, 8)
    zooms: tuple[int, ...] = ()
    zoom_max_pixels: int = 64_000_000
    overwrite: bool = False
    fresh: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= 0.5:
            raise ValueError(f"overlap must be a fraction in [0, 0.5], got {self.overlap}")
        if self.tile_size is not None and self.tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")
        if not 0.0 < self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must be in (0, 1], got {self.min_valid_fraction}")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if self.tiles_per_task < 1:
            raise ValueError(f"tiles_per_task must be >= 1, got {self.tiles_per_task}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.gsd is not None and not (math.isfinite(self.gsd) and self.gsd > 0):
            raise ValueError(f"gsd must be a positive number of metres, got {self.gsd}")
        if self.bounds is not None:
            if len(self.bounds) != 4 or not all(math.isfinite(v) for v in self.bounds):
                raise ValueError(f"bounds must be four finite numbers west south east north, got {self.bounds}")
            west, south, east, north = self.bounds
            if not (east > west and north > south):
                raise ValueError(f"bounds need east > west and north > south, got {self.bounds}")
        if self.bands is not None and (len(self.bands) != 3 or any(b < 1 for b in self.bands)):
            raise ValueError(f"bands must be three 1-based band indices, got {self.bands}")
        if self.alpha_band is not None and self.alpha_band != "auto" and (
                not isinstance(self.alpha_band, int) or self.alpha_band < 1):
            raise ValueError(f"alpha_band must be 'auto', None or a 1-based band index, got {self.alpha_band!r}")
        for name, factors in (("overviews", self.overviews), ("zooms", self.zooms)):
            if any(int(f) != f or f < 2 for f in factors) or list(factors) != sorted(set(factors)):
                raise ValueError(f"{name} must be increasing integer factors >= 2, got {factors}")
        if self.zoom_max_pixels < 1:
            raise ValueError(f"zoom_max_pixels must be >= 1, got {self.zoom_max_pixels}")

    def backend_choice(self) -> BackendChoice:
        """The backend the encoder runs on."""
        return BackendChoice(backend=self.backend, device=self.device, allow_fallback=False, threads=self.threads,
                             precision=self.precision)


@dataclass(frozen=True)
class MapPlan:
    """Everything decided about one map before encoding (its manifest record, without files and statistics)."""

    map_id: str
    path: Path
    size: int
    sha256: str
    georef: MapGeoref
    read_spec: RasterReadSpec
    grid: TileGrid
    base_id: str | None = None

    def record(self) -> dict[str, Any]:
        """The map's manifest record (ids, source, georeference, radiometry, grid; ``base_id`` of an overview)."""
        rec = {
            "id": self.map_id,
            "source": {"path": str(self.path), "name": self.path.name, "size": self.size, "sha256": self.sha256},
            "georef": self.georef.to_dict(),
            "read": self.read_spec.to_dict(),
            "grid": self.grid.to_dict(),
        }
        if self.base_id is not None:
            rec["base_id"] = self.base_id
        return rec

    def overview(self, factor: int, encoder: EncoderSpec, overlap: float) -> MapPlan:
        """The plan of this map's overview level decimated by ``factor``."""
        return self._level(f"@{factor}x", self.georef.overview(factor), replace(self.read_spec, overview=factor),
                           encoder, overlap)

    def zoom(self, factor: int, encoder: EncoderSpec, overlap: float) -> MapPlan:
        """The plan of this map's zoom-in level magnified by ``factor``."""
        return self._level(f"@zoom{factor}", self.georef.zoom(factor), replace(self.read_spec, zoom=factor),
                           encoder, overlap)

    def _level(self, suffix: str, georef: MapGeoref, read_spec: RasterReadSpec, encoder: EncoderSpec,
               overlap: float) -> MapPlan:
        return replace(self, map_id=f"{self.map_id}{suffix}", georef=georef, base_id=self.map_id, read_spec=read_spec,
                       grid=make_grid(georef.width, georef.height, encoder.tile_size, overlap, encoder.cell))

    def files(self) -> dict[str, str]:
        """Array name -> path relative to the cache root."""
        return {name: f"maps/{self.map_id}/{name}.npy" for name in ARRAY_NAMES}


@dataclass(frozen=True)
class BuildSummary:
    """What a build did (printed by the CLI; the benchmark reads it)."""

    out: Path
    maps: tuple[str, ...]
    km2: float
    pixels: int
    tiles: int
    tiles_encoded: int
    tiles_empty: int
    tiles_resumed: int
    seconds: float
    megabytes: float
    tile_size: int
    executor: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def km2_per_min(self) -> float:
        """Throughput in km2 per minute at the maps' own GSD (over the tiles processed in this run)."""
        done = self.tiles - self.tiles_resumed
        share = done / self.tiles if self.tiles else 0.0
        return self.km2 * share / (self.seconds / 60.0) if self.seconds > 0 else float("inf")

    @property
    def km2_per_min_at_0p5m(self) -> float:
        """Throughput normalised to 0.5 m GSD: megapixels per minute / 4 (1 km2 = 4 Mpx at 0.5 m)."""
        done = self.tiles - self.tiles_resumed
        share = done / self.tiles if self.tiles else 0.0
        return self.pixels * share / 4e6 / (self.seconds / 60.0) if self.seconds > 0 else float("inf")

    @property
    def mb_per_km2_at_0p5m(self) -> float:
        """Cache size per km2 if the maps had 0.5 m pixels (MB per 4 Mpx)."""
        return self.megabytes / (self.pixels / 4e6) if self.pixels else 0.0

    def text(self) -> str:
        """Human-readable one-paragraph summary."""
        resumed = f", {self.tiles_resumed} resumed from an earlier run" if self.tiles_resumed else ""
        return (f"cache {self.out}: {len(self.maps)} map(s), {self.km2:.3f} km2, {self.pixels / 1e6:.2f} Mpx, "
                f"{self.tiles} tiles of {self.tile_size} px ({self.tiles_encoded} encoded, {self.tiles_empty} "
                f"without valid cells{resumed}), {self.seconds:.1f} s ({self.executor}), {self.megabytes:.3f} MB; "
                f"{self.km2_per_min:.3f} km2/min at the maps' GSD, {self.km2_per_min_at_0p5m:.3f} km2/min at 0.5 m, "
                f"{self.mb_per_km2_at_0p5m:.3f} MB/km2 at 0.5 m")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"out": str(self.out), "maps": list(self.maps), "km2": self.km2, "pixels": self.pixels,
                "tiles": self.tiles, "tiles_encoded": self.tiles_encoded, "tiles_empty": self.tiles_empty,
                "tiles_resumed": self.tiles_resumed, "seconds": self.seconds, "megabytes": self.megabytes,
                "tile_size": self.tile_size, "executor": self.executor, "km2_per_min": self.km2_per_min,
                "km2_per_min_at_0p5m": self.km2_per_min_at_0p5m, "mb_per_km2_at_0p5m": self.mb_per_km2_at_0p5m,
                **self.extra}


# -- planning (no writes) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSpec:
    """The bundle's tile encoder as the cache needs it."""

    tile_size: int
    cell: int
    cells: int
    coarse_dim: int


def encoder_spec(bundle: Bundle, tile_size: int | None = None) -> EncoderSpec:
    """Check the bundle's ``encoder_tile`` graph and return its tile size, cell size and feature width.

    Raises:
        MapsError: a requested tile size the static graph cannot run, or I/O specs the cache cannot use.
    """
    tile = bundle.tile_size
    cell = int(bundle.manifest.get("coarse_stride", 64))
    if tile_size is not None and tile_size != tile:
        raise MapsError(f"--tile-size {tile_size} does not match bundle {bundle.root} (bundle_id "
                        f"{bundle.bundle_id}): its encoder_tile graph has a static {tile} px input; export a bundle "
                        f"with --tile-size {tile_size} instead")
    graph = bundle.graphs["encoder_tile"]
    inputs = {s.name: s for s in graph.inputs}
    outputs = {s.name: s for s in graph.outputs}
    cells = (tile // cell) ** 2
    image, valid, coarse = inputs.get("image"), inputs.get("cell_valid"), outputs.get("coarse")
    if image is None or image.shape != (1, 3, tile, tile):
        raise MapsError(f"bundle {bundle.root}: encoder_tile input 'image' is {image}, expected (1, 3, {tile}, {tile})")
    if valid is None or valid.shape != (1, cells):
        raise MapsError(f"bundle {bundle.root}: encoder_tile input 'cell_valid' is {valid}, expected (1, {cells})")
    if coarse is None or len(coarse.shape) != 3 or coarse.shape[:2] != (1, cells):
        raise MapsError(f"bundle {bundle.root}: encoder_tile output 'coarse' is {coarse}, expected (1, {cells}, C)")
    return EncoderSpec(tile_size=tile, cell=cell, cells=cells, coarse_dim=int(coarse.shape[2]))


#: largest departure from square ground pixels (aspect or skew) a map may have: the locator brings a frame to the
#: map's GSD with one scale in every direction
MAX_PIXEL_DISTORTION = 0.03


def check_square_ground_pixels(path: Path, georef: MapGeoref) -> None:
    """Refuse a map whose pixels are far from square on the ground (e.g. a lon/lat GeoTIFF away from the equator:
    a degree of longitude is cos(latitude) of a degree of latitude), naming the reprojection that fixes it."""
    jac = georef.metres_per_pixel(((georef.width - 1) / 2.0, (georef.height - 1) / 2.0))
    sx, sy = (float(np.linalg.norm(jac[:, k])) for k in (0, 1))
    skew = abs(float(jac[:, 0] @ jac[:, 1])) / (sx * sy)
    if abs(sx / sy - 1.0) <= MAX_PIXEL_DISTORTION and skew <= MAX_PIXEL_DISTORTION:
        return
    lon, lat = georef.pixels_to_lonlat(np.array([[(georef.width - 1) / 2.0, (georef.height - 1) / 2.0]]))[0]
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    utm = f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"
    raise MapsError(f"map {path}: its pixels are {sx:.3f} x {sy:.3f} m on the ground (skew {skew:.2f}), not square; "
                    f"the locator matches frames at one scale in every direction. Reproject it to a conformal "
                    f"projected CRS first, e.g. gdalwarp -t_srs {utm} -r bilinear {path.name} {path.stem}_utm.tif "
                    f"(UTM zone {zone} {'north' if lat >= 0 else 'south'})")


def _georef(path: Path, ds: Any, config: BuildConfig) -> MapGeoref:
    """The map's georeference: the file's own, or ``--bounds`` / ``--gsd`` for an image without a CRS; maps with a CRS
    must have square ground pixels (:func:`check_square_ground_pixels`)."""
    georef = _georef_as_given(path, ds, config)
    if georef.crs_wkt is not None:
        check_square_ground_pixels(path, georef)
    return georef


def _georef_as_given(path: Path, ds: Any, config: BuildConfig) -> MapGeoref:
    width, height = int(ds.width), int(ds.height)
    if ds.crs is not None:
        wkt = ds.crs.to_wkt()
        transform = tuple(float(v) for v in tuple(ds.transform)[:6])
        return MapGeoref(width, height, transform, wkt, ds.crs.to_epsg(),  # type: ignore[arg-type]
                         ground_sample_distance(transform, wkt, width, height), "file")
    if config.bounds is not None:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            crs = CRS.from_user_input(config.bounds_crs)
        except CRSError as exc:
            raise MapsError(f"--bounds-crs {config.bounds_crs!r} is not a CRS: {exc}") from exc
        west, south, east, north = config.bounds
        transform = ((east - west) / width, 0.0, west, 0.0, -(north - south) / height, north)
        wkt = crs.to_wkt()
        gsd = ground_sample_distance(transform, wkt, width, height)
        if config.gsd is not None and abs(gsd - config.gsd) > _GSD_AGREEMENT * config.gsd:
            raise MapsError(f"map {path}: --bounds give a GSD of {gsd:.4f} m, --gsd says {config.gsd} m "
                            f"(more than {_GSD_AGREEMENT:.0%} apart)")
        return MapGeoref(width, height, transform, wkt, crs.to_epsg(), gsd, "bounds")
    if config.gsd is not None:
        g = float(config.gsd)
        return MapGeoref(width, height, (g, 0.0, 0.0, 0.0, -g, 0.0), None, None, g, "gsd")
    raise MapsError(f"map {path} has no georeference (no CRS); pass --bounds WEST SOUTH EAST NORTH [--bounds-crs] "
                    f"to place it, or --gsd METRES for a local metric frame without latitude/longitude")


def plan_map(path: str | os.PathLike[str], config: BuildConfig, encoder: EncoderSpec) -> MapPlan:
    """Open, check and plan one map (reads it; writes nothing).

    Raises:
        MapsError: unreadable file, no georeference without ``--gsd`` / ``--bounds``, bad bands, bad map id.
    """
    path = Path(path)
    map_id = path.stem
    if not _MAP_ID.match(map_id):
        raise MapsError(f"map {path}: its id {map_id!r} (the file stem) cannot name a cache folder; rename the file")
    try:
        with open_raster(path) as ds:
            georef = _georef(path, ds, config)
        spec = compute_read_spec(path, bands=config.bands, nodata=config.nodata, alpha_band=config.alpha_band)
        if spec.alpha_band is not None and config.alpha_band == "auto":
            logger.warning("map %s: band %d holds only 0 and the maximum value and the file declares no mask: read as "
                           "the alpha band (0 = no data; --alpha-band none reads every pixel)", path, spec.alpha_band)
    except MapCacheError as exc:
        raise MapsError(f"map {path}: {exc}") from exc
    grid = make_grid(georef.width, georef.height, encoder.tile_size, config.overlap, encoder.cell)
    resolved = path.resolve()
    plan = MapPlan(map_id=map_id, path=resolved, size=resolved.stat().st_size, sha256=sha256_file(resolved),
                   georef=georef, read_spec=spec, grid=grid)
    logger.info("map %s: %dx%d px, %s, GSD %.3f m, %dx%d tiles", map_id, georef.width, georef.height,
                f"EPSG:{georef.epsg}" if georef.epsg else (georef.crs_wkt or "no CRS")[:40], georef.gsd_m,
                grid.nx, grid.ny)
    return plan


def plan_maps(paths: Sequence[str | os.PathLike[str]], config: BuildConfig, encoder: EncoderSpec) -> list[MapPlan]:
    """Plan every map; ids must be unique and ``--bounds`` can place only one image.

    Raises:
        MapsError: no maps, duplicate ids, an id with the levels' "@", or any map that :func:`plan_map` rejects.
    """
    if not paths:
        raise MapsError("no maps given (--map PATH, repeatable)")
    ids: dict[str, Path] = {}
    for p in paths:
        stem = Path(p).stem
        if "@" in stem:  # reserved: overview and zoom-in levels are "<id>@2x", "<id>@zoom2"
            raise MapsError(f"map {p}: '@' in a map id (the file stem {stem!r}) is reserved for its levels; rename it")
        if stem in ids:
            raise MapsError(f"maps {ids[stem]} and {p} have the same id {stem!r} (the file stem); rename one")
        ids[stem] = Path(p)
    plans = [plan_map(p, config, encoder) for p in paths]
    levels = [lv for lv in (p.overview(f, encoder, config.overlap) for p in plans for f in config.overviews)
              if max(lv.georef.width, lv.georef.height) >= encoder.tile_size]
    for lv in (p.zoom(f, encoder, config.overlap) for p in plans for f in config.zooms):
        if lv.georef.width * lv.georef.height <= config.zoom_max_pixels:
            levels.append(lv)
        else:
            logger.info("no zoom-in level %s: %dx%d px exceed zoom_max_pixels %d", lv.map_id, lv.georef.width,
                        lv.georef.height, config.zoom_max_pixels)
    placed = [p.map_id for p in plans if p.georef.source == "bounds"]
    if len(placed) > 1:
        raise MapsError(f"--bounds places one image, but {len(placed)} maps lack a CRS: {placed}")
    if (config.bounds is not None or config.gsd is not None) and not any(p.georef.source != "file" for p in plans):
        logger.warning("--gsd/--bounds given but every map has its own georeference; they are not used")
    for level in levels:
        logger.info("level %s: %dx%d px, GSD %.3f m, %dx%d tiles", level.map_id, level.georef.width,
                    level.georef.height, level.georef.gsd_m, level.grid.nx, level.grid.ny)
    return plans + levels


def plan_document(bundle: Bundle, encoder: EncoderSpec, config: BuildConfig, plans: Sequence[MapPlan]) -> dict:
    """The manifest without files and statistics: what a resumed build must match exactly."""
    overlap_px = overlap_pixels(encoder.tile_size, config.overlap, encoder.cell)
    precision = encoder_precision(bundle, config.backend_choice())  # of the features, as computed
    doc = {
        "schema": CACHE_SCHEMA,
        "bundle": {
            "bundle_id": bundle.bundle_id,
            "manifest_sha256": sha256_file(Path(bundle.root) / "manifest.json"),
            "encoder_sha256": encoder_sha256(bundle, precision),
            "encoder_backend": f"{config.backend}:{config.device}",  # a resumed build keeps one engine's features
            "precision": precision,
            "tile_size": encoder.tile_size,
            "coarse_stride": encoder.cell,
            "coarse_dim": encoder.coarse_dim,
        },
        "tiling": {
            "tile_size": encoder.tile_size,
            "overlap": config.overlap,
            "overlap_px": overlap_px,
            "stride": encoder.tile_size - overlap_px,
            "min_valid_fraction": config.min_valid_fraction,
        },
        "feature_dtype": FEATURE_DTYPE,
        "maps": [p.record() for p in plans],
    }
    return json.loads(json.dumps(doc))


def encoder_precision(bundle: Bundle, choice: BackendChoice) -> str:
    """The precision the tile encoder computes in: TensorRT's engines are the bundle's, ONNX Runtime's graph is
    :func:`~edge_runtime.backends.onnx_precision`'s."""
    return bundle.precision if choice.backend == "tensorrt" else onnx_precision(bundle, choice)


def check_encoder_precision(bundle: Bundle, choice: BackendChoice) -> None:
    """Raise :class:`MapsError` unless the bundle holds the tile-encoder graph ``choice`` would run."""
    if choice.backend != "onnxruntime":
        return  # TensorRT runs its engines (checked when the backend opens)
    precision = onnx_precision(bundle, choice)
    try:
        bundle.onnx_path("encoder_tile", precision)
    except BundleError as exc:
        raise MapsError(f"bundle {bundle.root} has no {precision} encoder_tile graph (has "
                        f"{sorted(bundle.graphs['encoder_tile'].onnx)}): build with --precision auto or fp32, or "
                        "export it with edge-export --precision fp16") from exc


# -- encoding ------------------------------------------------------------------------------------------------------
def encode_tile(
    backend: InferenceBackend,
    raster: RasterSource,
    origin: tuple[int, int],
    encoder: EncoderSpec,
    min_valid_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one tile (windowed, padded with invalid pixels past the map edge) and encode it.

    Args:
        backend: the ``encoder_tile`` backend.
        raster: the map's source.
        origin: ``(x0, y0)`` of the tile in map pixels.
        encoder: tile / cell sizes and feature width.
        min_valid_fraction: cell validity threshold.

    Returns:
        ``coarse`` ``(N, C)`` float16 (zeros when no cell is valid; the encoder is not run) and ``cell_valid``
        ``(N,)`` bool.

    Raises:
        MapsError: the encoder returned a wrong shape or non-finite features (also after the float16 cast).
    """
    x0, y0 = int(origin[0]), int(origin[1])
    rgb, valid = raster.read(x0, y0, encoder.tile_size, encoder.tile_size)
    cells = cell_validity(valid, encoder.cell, min_valid_fraction)
    if not cells.any():
        return np.zeros((encoder.cells, encoder.coarse_dim), dtype=np.float16), cells
    out = backend.run({"image": image_tensor(rgb), "cell_valid": cells[None]})
    coarse = np.asarray(out["coarse"])
    if coarse.shape != (1, encoder.cells, encoder.coarse_dim):
        raise MapsError(f"encoder returned coarse {coarse.shape}, expected (1, {encoder.cells}, {encoder.coarse_dim})")
    half = coarse[0].astype(np.float16)
    if not np.isfinite(half).all():
        raise MapsError(f"{raster.path}: tile at ({x0}, {y0}) has non-finite coarse features (float16 overflow?)")
    return half, cells


def local_results(
    backend: InferenceBackend, plan: MapPlan, todo: np.ndarray, encoder: EncoderSpec, min_valid_fraction: float
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Encode the tiles ``todo`` of one map in this process, yielding ``(tile_index, coarse, cell_valid)``."""
    raster = RasterSource(plan.path, plan.read_spec)
    origins = plan.grid.origins()
    try:
        for idx in todo:
            coarse, cells = encode_tile(backend, raster, tuple(origins[idx]), encoder, min_valid_fraction)
            yield int(idx), coarse, cells
    finally:
        raster.close()


# -- work folder ---------------------------------------------------------------------------------------------------
def work_dir_for(out: str | os.PathLike[str]) -> Path:
    """The resumable work folder of a build into ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _save_npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _create_work_dir(work: Path, doc: dict, plans: Sequence[MapPlan], encoder: EncoderSpec) -> None:
    """Lay out a fresh work folder (built under a temporary name, renamed into place)."""
    work.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{work.name}.", suffix=".new", dir=work.parent))
    try:
        for plan in plans:
            folder = tmp / "cache" / "maps" / plan.map_id
            folder.mkdir(parents=True)
            n = plan.grid.n_tiles
            coarse = np.lib.format.open_memmap(folder / "coarse.npy", mode="w+", dtype=FEATURE_DTYPE,
                                               shape=(n, encoder.cells, encoder.coarse_dim))
            del coarse
            valid = np.lib.format.open_memmap(folder / "cell_valid.npy", mode="w+", dtype=bool,
                                              shape=(n, encoder.cells))
            del valid
            atomic_write_bytes(folder / "origins.npy", _save_npy_bytes(plan.grid.origins().astype(ORIGIN_DTYPE)))
            atomic_write_bytes(tmp / "progress" / f"{plan.map_id}.npy", _save_npy_bytes(np.zeros(n, dtype=bool)))
        atomic_write_bytes(tmp / "plan.json", json.dumps(doc, indent=2).encode())
        os.replace(tmp, work)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plan_difference(old: dict, new: dict) -> str:
    parts = [key for key in ("schema", "tiling", "feature_dtype") if old.get(key) != new.get(key)]
    old_bundle, new_bundle = old.get("bundle") or {}, new.get("bundle") or {}
    parts += [f"bundle.{key}" for key in sorted({*old_bundle, *new_bundle})
              if old_bundle.get(key) != new_bundle.get(key)]
    old_maps = {m.get("id"): m for m in old.get("maps", [])}
    new_maps = {m["id"]: m for m in new["maps"]}
    if list(old_maps) != list(new_maps):
        parts.append(f"maps {list(old_maps)} vs {list(new_maps)}")
    else:
        parts += [f"map {k}" for k in new_maps if old_maps[k] != new_maps[k]]
    return ", ".join(parts) or "unknown"


def _prepare_work_dir(work: Path, doc: dict, plans: Sequence[MapPlan], encoder: EncoderSpec, fresh: bool) -> bool:
    """Reuse a matching unfinished build (returns True) or lay out a new one."""
    if work.exists():
        plan_file = work / "plan.json"
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old == doc:
            logger.info("resuming the unfinished build in %s", work)
            return True
        if not fresh:
            why = "its plan.json is unreadable" if old is None else f"it differs in: {_plan_difference(old, doc)}"
            raise MapsError(f"an unfinished build of another plan is in {work} ({why}); pass --fresh to discard it")
        logger.warning("discarding the unfinished build in %s (--fresh)", work)
        shutil.rmtree(work)
    _create_work_dir(work, doc, plans, encoder)
    return False


def _map_stats(valid: np.ndarray) -> dict[str, Any]:
    encoded = valid.any(axis=1)
    return {"tiles": int(valid.shape[0]), "tiles_encoded": int(encoded.sum()), "valid_cells": int(valid.sum()),
            "cells": int(valid.size)}


def _finish(work: Path, out: Path, doc: dict, plans: Sequence[MapPlan], overwrite: bool) -> dict:
    cache = work / "cache"
    files: dict[str, str] = {}
    records = []
    for plan, rec in zip(plans, doc["maps"], strict=True):
        rel = plan.files()
        for name in ARRAY_NAMES:
            path = cache / rel[name]
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
            files[rel[name]] = sha256_file(path)
        valid = np.load(cache / rel["cell_valid"], mmap_mode="r", allow_pickle=False)
        records.append({**rec, "files": rel, "stats": _map_stats(np.asarray(valid))})
        del valid
    manifest = {**doc, "maps": records, "files": files}
    atomic_write_bytes(cache / MANIFEST, json.dumps(manifest, indent=2).encode())
    for path in [cache / MANIFEST, *(cache / rel for rel in files)]:
        path.chmod(_FILE_MODE)  # temp files are created 0600; the vehicle's service user must read the cache
    if out.exists() and not overwrite:
        raise MapsError(f"{out} appeared during the build; the finished cache stays in {cache}")
    replace_directory(cache, out)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


# -- the build -----------------------------------------------------------------------------------------------------
def build_cache(
    bundle_path: str | os.PathLike[str],
    map_paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    config: BuildConfig | None = None,
    on_tile: TileCallback | None = None,
) -> BuildSummary:
    """Build (or resume building) the feature cache of ``map_paths`` with the bundle at ``bundle_path``.

    Args:
        bundle_path: an ``edge-export`` bundle folder (hash-verified on open).
        map_paths: GeoTIFFs (any CRS) or other GDAL-readable images (then ``config.gsd`` / ``config.bounds``).
        out: the cache folder to create.
        config: build settings.
        on_tile: called as ``on_tile(map_id, tile_index)`` after each tile is durably stored (progress hooks,
            tests that interrupt a build).

    Returns:
        The :class:`BuildSummary`.

    Raises:
        MapsError: bad inputs (raised before anything is written) or an unfinished build of another plan.
    """
    config = config or BuildConfig()
    out = Path(out)
    work = work_dir_for(out)
    if out.exists() and work.exists() and not (work / "cache").exists():
        logger.info("removing the leftover work folder %s of a finished build", work)
        shutil.rmtree(work)
    if out.exists() and not config.overwrite:
        raise MapsError(f"output {out} exists; choose another --out or pass --overwrite")
    bundle = open_bundle(bundle_path)
    encoder = encoder_spec(bundle, config.tile_size)
    check_encoder_precision(bundle, config.backend_choice())  # before anything is written
    plans = plan_maps(map_paths, config, encoder)
    doc = plan_document(bundle, encoder, config, plans)
    if config.executor == "ray":
        from maps.ray_executor import require_ray

        require_ray()
    start = time.perf_counter()
    _prepare_work_dir(work, doc, plans, encoder, config.fresh)
    progress_dir = work / "progress"
    todo_per_map = []
    for plan in plans:
        done = np.load(progress_dir / f"{plan.map_id}.npy", allow_pickle=False)
        todo_per_map.append(np.flatnonzero(~done))
    total = sum(p.grid.n_tiles for p in plans)
    todo_total = int(sum(len(t) for t in todo_per_map))
    resumed = total - todo_total
    if resumed:
        logger.info("%d of %d tiles were done by an earlier run", resumed, total)

    from tqdm import tqdm

    bar = tqdm(total=todo_total, desc="edge-maps encoding", unit="tile", disable=not config.progress)
    runner: Any = None
    try:
        if config.executor == "ray":
            from maps.ray_executor import RayRunner

            runner = RayRunner(bundle.root, bundle.bundle_id, config)
        else:
            backend = open_graph(bundle, "encoder_tile", config.backend_choice()).backend
        for plan, todo in zip(plans, todo_per_map, strict=True):
            if not len(todo):
                continue
            folder = work / "cache" / "maps" / plan.map_id
            coarse = np.load(folder / "coarse.npy", mmap_mode="r+", allow_pickle=False)
            valid = np.load(folder / "cell_valid.npy", mmap_mode="r+", allow_pickle=False)
            done = np.load(progress_dir / f"{plan.map_id}.npy", allow_pickle=False).copy()
            if runner is not None:
                results = runner.results(plan, todo, encoder, config.min_valid_fraction)
            else:
                results = local_results(backend, plan, todo, encoder, config.min_valid_fraction)
            for idx, feats, cells in results:
                coarse[idx] = feats
                valid[idx] = cells
                coarse.flush()
                valid.flush()
                done[idx] = True
                atomic_write_bytes(progress_dir / f"{plan.map_id}.npy", _save_npy_bytes(done))
                bar.update(1)
                if on_tile is not None:
                    on_tile(plan.map_id, idx)
            del coarse, valid
    finally:
        bar.close()
        if runner is not None:
            runner.close()
    manifest = _finish(work, out, doc, plans, config.overwrite)
    seconds = time.perf_counter() - start
    size = sum((out / name).stat().st_size for name in manifest["files"]) + (out / MANIFEST).stat().st_size
    encoded = sum(m["stats"]["tiles_encoded"] for m in manifest["maps"])
    native = [p for p in plans if p.base_id is None]  # area and pixels of the maps, not counting their overviews
    summary = BuildSummary(
        out=out, maps=tuple(p.map_id for p in native), km2=sum(p.georef.area_km2 for p in native),
        pixels=sum(p.georef.width * p.georef.height for p in native), tiles=total, tiles_encoded=encoded,
        tiles_empty=total - encoded, tiles_resumed=resumed, seconds=seconds, megabytes=size / 1e6,
        tile_size=encoder.tile_size, executor=config.executor,
    )
    logger.info("%s", summary.text())
    return summary
