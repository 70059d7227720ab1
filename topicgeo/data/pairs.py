"""Cross-date training pairs: a synthesized query from one date, a reference window from another (decision 15).

A :class:`MapSource` is one piece of ground imaged at one or more dates (one raster per date). A training sample
draws a (query date, reference date) pair, synthesizes a query from the query-date raster, maps its ground truth
into the reference-date raster through world coordinates (:func:`~topicgeo.data.raster.pixel_map_between`; grid
origins differ by metres between NAIP dates), and cuts a ``ref_size`` reference window that contains the true query
centre at a random offset. Maps smaller than ``ref_size`` are used whole and padded (invalid) to a multiple of 64.
Optionally an unrelated window (another source, or a part of the same map away from the query) is added as a
retrieval negative.

Everything here is numpy (no torch); :class:`PairDataset` is indexable and deterministic per ``(seed, epoch, index)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from edge_runtime.map_cache import zoom_expand, zoom_matrix
from topicgeo.data.raster import GeoRaster, RasterConfig, apply_homography, pixel_map_between
from topicgeo.data.synthesis import (
    QuerySynthesisConfig,
    WindowReader,
    array_reader,
    query_corners,
    synthesize_from_reader,
)

logger = logging.getLogger(__name__)

ALIGN = 64  # reference windows are multiples of the coarse stride


@dataclass(frozen=True)
class MapSource:
    """One area imaged at one or more dates.

    Attributes:
        map_id: identifier of the area (plot id, NAIP tile id, MTGL location).
        rasters: one raster path per date, same ground.
        dates: labels of the dates (same length as ``rasters``).
        date_pairs: allowed ``(query date, reference date)`` pairs; None = every ordered pair of different dates
            (or the single date with itself when there is only one).
        shared_grid: the rasters share one pixel grid and need no georeference (MTGL40-5 phases, plain images);
            otherwise ground truth goes through each raster's georeference.
        raster_config: how the rasters are read (bands, stretch, nodata).
        synthesis: per-source query synthesis (e.g. a crop-side range in map pixels for a large map); None = the
            dataset's :attr:`PairConfig.synthesis`. Its ``query_size`` must equal the dataset's.
    """

    map_id: str
    rasters: tuple[Path, ...]
    dates: tuple[str, ...]
    date_pairs: tuple[tuple[str, str], ...] | None = None
    shared_grid: bool = False
    raster_config: RasterConfig = field(default_factory=RasterConfig)
    synthesis: QuerySynthesisConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rasters", tuple(Path(p) for p in self.rasters))
        object.__setattr__(self, "dates", tuple(str(d) for d in self.dates))
        if not self.rasters:
            raise ValueError(f"map source {self.map_id!r} has no raster")
        if len(self.rasters) != len(self.dates):
            raise ValueError(f"map source {self.map_id!r}: {len(self.rasters)} rasters but {len(self.dates)} dates")
        if len(set(self.dates)) != len(self.dates):
            raise ValueError(f"map source {self.map_id!r}: duplicate dates {self.dates}")
        if self.date_pairs is not None:
            pairs = tuple((str(q), str(r)) for q, r in self.date_pairs)
            unknown = sorted({d for p in pairs for d in p} - set(self.dates))
            if unknown or not pairs:
                raise ValueError(f"map source {self.map_id!r}: date_pairs {pairs} use unknown dates {unknown}")
            object.__setattr__(self, "date_pairs", pairs)

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The allowed ``(query date, reference date)`` pairs."""
        if self.date_pairs is not None:
            return self.date_pairs
        if len(self.dates) == 1:
            return ((self.dates[0], self.dates[0]),)
        return tuple((q, r) for q in self.dates for r in self.dates if q != r)

    def raster_path(self, date: str) -> Path:
        """Path of the raster of ``date``."""
        try:
            return self.rasters[self.dates.index(date)]
        except ValueError:
            raise KeyError(f"map source {self.map_id!r} has no date {date!r} (dates: {self.dates})") from None


@dataclass(frozen=True)
class PairConfig:
    """Training-pair sampling.

    Attributes:
        synthesis: query synthesis parameters.
        ref_size: reference window side in map pixels (multiple of 64; 512 for the CPU preset, 1024 in decision 15).
        pad_mode: for maps smaller than ``ref_size``: ``multiple`` pads the whole map to a multiple of 64 per axis,
            ``ref_size`` pads it to ``ref_size`` (equal shapes for batching).
        negative_prob: probability of adding an unrelated reference window (retrieval negative).
        negative_tries: attempts to find a window that does not overlap the query's ground.
        ref_zoom_prob: probability that a pair whose query footprint fits a ``ref_size / ref_zoom`` window shows its
            reference (and negative) window magnified ``ref_zoom`` times (:func:`edge_runtime.map_cache.zoom_expand`),
            as a map cache's zoom-in level does (``edge-maps build --zooms``): a query cut from few map pixels and
            brought to the query size (NAIP's 100-px crops at 512 px: 5x) covers less than two 64-px cells of the map
            at its own pixels, and matching it on the magnified level needs the network to know blurred, upsampled
            map texture. 0 (default) draws nothing, so earlier configs keep their samples.
        ref_zoom: the magnification (integer >= 2).
        cache_max_pixels: rasters up to this many pixels are decoded once and kept in memory; larger ones are read
            window by window.
        cache_size: rasters kept in memory (LRU).
    """

    synthesis: QuerySynthesisConfig = field(default_factory=QuerySynthesisConfig)
    ref_size: int = 512
    pad_mode: Literal["multiple", "ref_size"] = "multiple"
    negative_prob: float = 0.5
    negative_tries: int = 20
    ref_zoom_prob: float = 0.0
    ref_zoom: int = 2
    cache_max_pixels: int = 16_000_000
    cache_size: int = 64

    def __post_init__(self) -> None:
        if self.ref_size < ALIGN or self.ref_size % ALIGN:
            raise ValueError(f"ref_size must be a positive multiple of {ALIGN}, got {self.ref_size}")
        if self.pad_mode not in ("multiple", "ref_size"):
            raise ValueError(f"pad_mode must be 'multiple' or 'ref_size', got {self.pad_mode!r}")
        if not 0.0 <= self.negative_prob <= 1.0:
            raise ValueError(f"negative_prob must be in [0, 1], got {self.negative_prob}")
        if not 0.0 <= self.ref_zoom_prob <= 1.0:
            raise ValueError(f"ref_zoom_prob must be in [0, 1], got {self.ref_zoom_prob}")
        zoom_misfit = self.ref_zoom_prob > 0 and self.ref_size % self.ref_zoom != 0
        if int(self.ref_zoom) != self.ref_zoom or self.ref_zoom < 2 or zoom_misfit:
            raise ValueError(f"ref_zoom must be an integer >= 2 dividing ref_size, got {self.ref_zoom}")
        if self.negative_tries < 1 or self.cache_size < 1 or self.cache_max_pixels < 0:
            raise ValueError("negative_tries and cache_size must be >= 1, cache_max_pixels >= 0")


@dataclass(frozen=True)
class ReferenceWindow:
    """A window of a reference raster.

    Attributes:
        image: ``(Hr, Wr, 3)`` uint8 RGB (Hr, Wr multiples of 64; 0 where invalid).
        valid: ``(Hr, Wr)`` bool, False for padding, nodata and outside the raster.
        map_id: the source's id.
        date: the raster's date label.
        origin: ``(x0, y0)`` pixel of the raster at the window's pixel (0, 0).
    """

    image: np.ndarray
    valid: np.ndarray
    map_id: str
    date: str
    origin: tuple[int, int]


@dataclass(frozen=True)
class TrainingPair:
    """One training sample.

    Attributes:
        query: ``(S, S, 3)`` uint8 RGB query.
        query_valid: ``(S, S)`` bool (False where the query left the map).
        reference: ``(Hr, Wr, 3)`` uint8 RGB reference window (multiples of 64).
        ref_valid: ``(Hr, Wr)`` bool (False for padding / nodata).
        H_query_to_ref: ``(3, 3)`` float64, query pixels -> reference-window pixels.
        map_id: the source's id.
        query_date: date label of the raster the query was cut from.
        ref_date: date label of the reference raster.
        ref_origin: ``(x0, y0)`` of the window in the reference raster.
        ref_zoom: magnification of the reference (and negative) window (1: the raster's own pixels; else the window
            covers ``Hr / ref_zoom x Wr / ref_zoom`` raster pixels from ``ref_origin``).
        negative: optional ``(Hr, Wr, 3)`` uint8 unrelated window (retrieval negative: every cell is a non-match).
        negative_valid: ``(Hr, Wr)`` bool validity of ``negative`` (None without a negative).
        negative_id: ``"map_id/date@x0,y0"`` of the negative window (None without one).
        index: dataset index that produced the pair.
    """

    query: np.ndarray
    query_valid: np.ndarray
    reference: np.ndarray
    ref_valid: np.ndarray
    H_query_to_ref: np.ndarray
    map_id: str
    query_date: str
    ref_date: str
    ref_origin: tuple[int, int]
    ref_zoom: int = 1
    negative: np.ndarray | None = None
    negative_valid: np.ndarray | None = None
    negative_id: str | None = None
    index: int = -1

    def padded(self, height: int, width: int) -> TrainingPair:
        """A copy whose reference (and negative) windows are zero-padded, invalid, to ``height x width``."""
        neg = self.negative is not None and self.negative_valid is not None
        return dataclasses.replace(
            self,
            reference=_pad(self.reference, height, width),
            ref_valid=_pad(self.ref_valid, height, width),
            negative=_pad(self.negative, height, width) if neg else None,
            negative_valid=_pad(self.negative_valid, height, width) if neg else None,
        )


def _pad(a: np.ndarray, height: int, width: int) -> np.ndarray:
    if a.shape[0] > height or a.shape[1] > width:
        raise ValueError(f"cannot pad an array of shape {a.shape} to {height}x{width}")
    pad = [(0, height - a.shape[0]), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad)


def window_span(size: int, ref_size: int, pad_mode: str) -> int:
    """Window length along an axis of ``size`` map pixels (``ref_size``, or the padded map when smaller)."""
    if size >= ref_size:
        return ref_size
    return ref_size if pad_mode == "ref_size" else int(math.ceil(size / ALIGN) * ALIGN)


def sample_window_origin(rng: np.random.Generator, center: float, size: int, ref_size: int) -> int:
    """Random integer origin of a ``ref_size`` window inside ``[0, size)`` containing pixel coordinate ``center``.

    The window covers pixels ``x0 .. x0 + ref_size - 1``, i.e. ``[x0 - 0.5, x0 + ref_size - 0.5)``. For maps smaller
    than ``ref_size`` the origin is 0 (whole map, padded).
    """
    if size <= ref_size:
        return 0
    lo = max(0, math.floor(center + 0.5) - ref_size + 1)
    hi = min(size - ref_size, math.floor(center + 0.5))
    if lo > hi:
        raise ValueError(f"centre {center:.2f} is outside a map axis of {size} px")
    return int(rng.integers(lo, hi + 1))


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


class PairDataset:
    """Indexable, torch-free dataset of :class:`TrainingPair` (deterministic per ``(seed, epoch, index)``).

    Sample ``index`` uses source ``index % len(sources)`` and ``np.random.default_rng([seed, epoch, index])``.

    Args:
        sources: the map sources.
        config: sampling parameters.
        seed: base seed.
        length: number of samples per epoch (default: one per source).
    """

    def __init__(
        self, sources: Sequence[MapSource], config: PairConfig | None = None, seed: int = 0, length: int | None = None
    ) -> None:
        if not sources:
            raise ValueError("PairDataset needs at least one map source")
        ids = [s.map_id for s in sources]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate map ids among the sources: {sorted({i for i in ids if ids.count(i) > 1})}")
        self.sources = list(sources)
        self.config = config or PairConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.length = len(self.sources) if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        self._rasters: dict[Path, GeoRaster] = {}
        self._images: OrderedDict[Path, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        for source in self.sources:
            self._check_source(source)
            if source.synthesis is not None and source.synthesis.query_size != self.config.synthesis.query_size:
                raise ValueError(
                    f"map source {source.map_id!r} synthesizes {source.synthesis.query_size}-px queries; the dataset "
                    f"uses {self.config.synthesis.query_size}"
                )
        for raster in self._rasters.values():
            raster.close()  # workers (re)open their own handles

    def __len__(self) -> int:
        return self.length

    def describe(self) -> dict:
        """JSON-able manifest of what the dataset draws from (sources, files, date pairs, configs, seed)."""
        sources = []
        for src in self.sources:
            rasters = []
            for path in src.rasters:
                r = self._raster(src, path)
                rasters.append(
                    {
                        "file": f"{path.parent.name}/{path.name}",
                        "size": [r.width, r.height],
                        "bytes": path.stat().st_size,
                    }
                )
            sources.append(
                {
                    "map_id": src.map_id,
                    "dates": list(src.dates),
                    "pairs": [list(p) for p in src.pairs()],
                    "rasters": rasters,
                    "synthesis": None if src.synthesis is None else dataclasses.asdict(src.synthesis),
                }
            )
        return {
            "sources": sources,
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "length": self.length,
        }

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch (part of every sample's seed)."""
        self.epoch = int(epoch)

    # -- rasters -------------------------------------------------------------------------------------------------
    def _raster(self, source: MapSource, path: Path) -> GeoRaster:
        r = self._rasters.get(path)
        if r is None:
            r = GeoRaster(path, source.raster_config)
            self._rasters[path] = r
        return r

    def _reader(self, raster: GeoRaster) -> WindowReader:
        if raster.width * raster.height > self.config.cache_max_pixels:
            return raster.read_window
        cached = self._images.get(raster.path)
        if cached is None:
            cached = raster.read_rgb()
            self._images[raster.path] = cached
            if len(self._images) > self.config.cache_size:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(raster.path)
        return array_reader(*cached)

    def _check_source(self, source: MapSource) -> None:
        rasters = [self._raster(source, p) for p in source.rasters]
        if source.shared_grid:
            shapes = {(r.height, r.width) for r in rasters}
            if len(shapes) != 1:
                raise ValueError(
                    f"map source {source.map_id!r} declares a shared grid; its raster sizes differ: {shapes}"
                )
        else:
            for r in rasters:
                if not r.georeferenced:
                    raise ValueError(
                        f"raster {r.path} of map source {source.map_id!r} has no CRS; georeference it or declare "
                        "the source's rasters as sharing one pixel grid (shared_grid=True)"
                    )

    def pixel_map(self, source: MapSource, src: GeoRaster, dst: GeoRaster) -> np.ndarray:
        """``(3, 3)`` map from ``src`` pixels to ``dst`` pixels (identity on a shared grid)."""
        if source.shared_grid or src.path == dst.path:
            return np.eye(3)
        return pixel_map_between(src, dst)

    # -- sampling ------------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> TrainingPair:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        index %= self.length
        rng = np.random.default_rng([self.seed, self.epoch, index])
        source = self.sources[index % len(self.sources)]
        pairs = source.pairs()
        q_date, r_date = pairs[int(rng.integers(len(pairs)))]
        q_r = self._raster(source, source.raster_path(q_date))
        r_r = self._raster(source, source.raster_path(r_date))
        synthesis = source.synthesis or self.config.synthesis
        synth = synthesize_from_reader(self._reader(q_r), q_r.height, q_r.width, rng, synthesis)
        H_to_raster = self.pixel_map(source, q_r, r_r) @ synth.H_query_to_map
        size = self.config.synthesis.query_size
        center = apply_homography(H_to_raster, np.array([[(size - 1) / 2.0, (size - 1) / 2.0]]))[0]
        zoom = self._zoom(rng, H_to_raster, r_r)
        ref_size = self.config.ref_size // zoom
        x0 = sample_window_origin(rng, float(center[0]), r_r.width, ref_size)
        y0 = sample_window_origin(rng, float(center[1]), r_r.height, ref_size)
        wr = window_span(r_r.width, ref_size, self.config.pad_mode)
        hr = window_span(r_r.height, ref_size, self.config.pad_mode)
        ref, ref_valid = zoom_expand(*self._reader(r_r)(x0, y0, wr, hr), zoom)
        H = zoom_matrix(zoom) @ _translation(-x0, -y0) @ H_to_raster
        negative = None
        if rng.random() < self.config.negative_prob:
            negative = self._negative(rng, source, q_r, synth.quad_in_map, (hr, wr), zoom)
        return TrainingPair(
            query=synth.image,
            query_valid=synth.valid,
            reference=ref,
            ref_valid=ref_valid,
            H_query_to_ref=H / H[2, 2],
            map_id=source.map_id,
            query_date=q_date,
            ref_date=r_date,
            ref_origin=(x0, y0),
            ref_zoom=zoom,
            negative=None if negative is None else negative.image,
            negative_valid=None if negative is None else negative.valid,
            negative_id=None
            if negative is None
            else f"{negative.map_id}/{negative.date}@{negative.origin[0]},{negative.origin[1]}",
            index=index,
        )

    def _zoom(self, rng: np.random.Generator, H_to_raster: np.ndarray, raster: GeoRaster) -> int:
        """The reference window's magnification: ``ref_zoom`` with probability ``ref_zoom_prob`` when the query's
        footprint (bounding box in reference-raster pixels) and the raster both fit a ``ref_size / ref_zoom`` window."""
        cfg = self.config
        if cfg.ref_zoom_prob <= 0 or rng.random() >= cfg.ref_zoom_prob:
            return 1
        side = cfg.ref_size // cfg.ref_zoom
        quad = apply_homography(H_to_raster, query_corners(cfg.synthesis.query_size))
        extent = quad.max(axis=0) - quad.min(axis=0)
        return cfg.ref_zoom if extent.max() <= side and min(raster.width, raster.height) >= side else 1

    def _negative(
        self,
        rng: np.random.Generator,
        source: MapSource,
        q_raster: GeoRaster,
        quad: np.ndarray,
        shape: tuple[int, int],
        zoom: int = 1,
    ) -> ReferenceWindow | None:
        """A window of ``shape`` raster pixels whose ground does not overlap the query's footprint ``quad``, magnified
        ``zoom`` times as the pair's reference is."""
        hr, wr = shape
        for _ in range(self.config.negative_tries):
            other = self.sources[int(rng.integers(len(self.sources)))]
            if len(self.sources) > 1 and other.map_id == source.map_id:
                continue
            date = other.dates[int(rng.integers(len(other.dates)))]
            raster = self._raster(other, other.raster_path(date))
            x0 = int(rng.integers(0, max(0, raster.width - wr) + 1))
            y0 = int(rng.integers(0, max(0, raster.height - hr) + 1))
            if self._overlaps(source, q_raster, quad, other, raster, (x0, y0, wr, hr)):
                continue
            image, valid = self._reader(raster)(x0, y0, wr, hr)
            if not valid.any():
                continue
            return ReferenceWindow(*zoom_expand(image, valid, zoom), other.map_id, date, (x0, y0))
        logger.debug("no disjoint negative window for %s in %d tries", source.map_id, self.config.negative_tries)
        return None

    def _overlaps(
        self,
        source: MapSource,
        q_raster: GeoRaster,
        quad: np.ndarray,
        other: MapSource,
        raster: GeoRaster,
        window: tuple[int, int, int, int],
    ) -> bool:
        """Whether the query footprint's bounding box intersects ``window`` (same ground only)."""
        if other.map_id == source.map_id and (source.shared_grid or not raster.georeferenced):
            pts = quad
        elif q_raster.georeferenced and raster.georeferenced and q_raster.crs == raster.crs:
            pts = apply_homography(pixel_map_between(q_raster, raster), quad)
        elif other.map_id == source.map_id:
            pts = apply_homography(self.pixel_map(source, q_raster, raster), quad)
        else:
            return False  # different sources in different CRSs: different ground by construction
        x0, y0, w, h = window
        (qx0, qy0), (qx1, qy1) = pts.min(axis=0), pts.max(axis=0)
        return not (qx1 < x0 - 0.5 or qx0 > x0 + w - 0.5 or qy1 < y0 - 0.5 or qy0 > y0 + h - 0.5)


def query_center_in_ref(pair: TrainingPair) -> np.ndarray:
    """``(2,)`` reference-window position of the query centre (inside the window by construction)."""
    s = pair.query.shape[0]
    return apply_homography(pair.H_query_to_ref, np.array([[(s - 1) / 2.0, (s - 1) / 2.0]]))[0]


def query_footprint_in_ref(pair: TrainingPair) -> np.ndarray:
    """``(4, 2)`` reference-window positions of the query's outer corners."""
    return apply_homography(pair.H_query_to_ref, query_corners(pair.query.shape[0]))


# ---------------------------------------------------------------------------------------------------------------
# Split files and loaders for on-disk layouts
# ---------------------------------------------------------------------------------------------------------------
SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"


def load_split_ids(path: str | os.PathLike[str]) -> list[str]:
    """Ids listed in a split text file: one per line, ``#`` starts a comment, blank lines ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file {p} does not exist")
    ids = []
    for line in p.read_text(encoding="utf-8").splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            ids.append(item)
    if not ids:
        raise ValueError(f"split file {p} lists no id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"split file {p} lists duplicate ids")
    return ids


def sjer_sources(
    root: str | os.PathLike[str],
    ids: Sequence[str] | str | os.PathLike[str],
    years: Sequence[str] = ("2017", "2018"),
    date_pairs: Sequence[tuple[str, str]] | None = None,
) -> list[MapSource]:
    """SJER plots ``root/<year>/<id>.tif`` as map sources.

    Args:
        root: folder holding one sub-folder per year.
        ids: plot ids, or a split file (``topicgeo/splits/sjer_train.txt``).
        years: year sub-folders (dates).
        date_pairs: allowed (query year, reference year) pairs; None = both directions.
    """
    root = Path(root)
    plot_ids = load_split_ids(ids) if isinstance(ids, (str, os.PathLike)) else list(ids)
    sources = []
    for pid in plot_ids:
        paths = [root / y / f"{pid}.tif" for y in years]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"SJER plot {pid}: missing {missing}")
        pairs = None if date_pairs is None else tuple((str(q), str(r)) for q, r in date_pairs)
        sources.append(MapSource(pid, tuple(paths), tuple(years), date_pairs=pairs))
    return sources


def sjer_eval_pairs(
    root: str | os.PathLike[str],
    ids: Sequence[str] | str | os.PathLike[str],
    query_year: str = "2017",
    map_year: str = "2018",
) -> list[tuple[Path, Path]]:
    """``(query raster, gallery map raster)`` pairs of evaluation.md §1 for the listed plots."""
    root = Path(root)
    plot_ids = load_split_ids(ids) if isinstance(ids, (str, os.PathLike)) else list(ids)
    pairs = [(root / query_year / f"{p}.tif", root / map_year / f"{p}.tif") for p in plot_ids]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"SJER evaluation rasters missing: {missing}")
    return pairs


def _load_naip_split(split: str | os.PathLike[str]) -> dict:
    import json

    p = Path(split)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"NAIP split file {p} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"NAIP split file {p} is not valid JSON: {exc}") from exc
    for key in ("map_id", "files", "train_pairs", "dev_pairs"):
        if key not in data:
            raise ValueError(f"NAIP split file {p} lacks the key {key!r}")
    dev = {(str(q), str(r)) for q, r in data["dev_pairs"]}
    held = {str(d) for d in data.get("held_out_dates", [])}
    for q, r in data["train_pairs"]:
        if (str(q), str(r)) in dev or str(q) in held or str(r) in held:
            raise ValueError(f"NAIP split file {p}: training pair {(q, r)} uses held-apart dev data")
    used = {str(d) for key in ("train_pairs", "dev_pairs") for pair in data[key] for d in pair}
    unknown = sorted(used - set(data["files"]))
    if unknown:
        raise ValueError(f"NAIP split file {p}: dates {unknown} have no file entry")
    return data


def naip_sources(
    root: str | os.PathLike[str], split: str | os.PathLike[str] = SPLITS_DIR / "naip.json", which: str = "train"
) -> list[MapSource]:
    """The NAIP time series as one :class:`MapSource` restricted to the ``train`` or ``dev`` date pairs."""
    if which not in ("train", "dev"):
        raise ValueError(f"which must be 'train' or 'dev', got {which!r}")
    data = _load_naip_split(split)
    pairs = tuple((str(q), str(r)) for q, r in data[f"{which}_pairs"])
    dates = sorted({d for pair in pairs for d in pair})
    paths = tuple(Path(root) / data["files"][d] for d in dates)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"NAIP rasters missing: {missing}")
    return [MapSource(data["map_id"], paths, tuple(dates), date_pairs=pairs)]


def naip_eval_pairs(
    root: str | os.PathLike[str], split: str | os.PathLike[str] = SPLITS_DIR / "naip.json"
) -> list[tuple[Path, Path]]:
    """``(query raster, map raster)`` pairs of the NAIP dev split (evaluation.md §2)."""
    data = _load_naip_split(split)
    pairs = [(Path(root) / data["files"][q], Path(root) / data["files"][r]) for q, r in data["dev_pairs"]]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"NAIP rasters missing: {missing}")
    return pairs


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def folder_date_labels(rels: Sequence[str]) -> tuple[str, ...]:
    """Date labels of the rasters of one split-file line (``rels``: paths relative to the root).

    The file stems when they are unique (``a/x_2019.tif a/x_2020.tif`` -> ``x_2019, x_2020``), else the parent
    folder names when those are unique (``2019/area.tif 2020/area.tif`` -> ``2019, 2020``), else the relative paths
    without suffix (``s1/2019/area.tif s2/2019/area.tif`` -> ``s1/2019/area, s2/2019/area``). Repeating one file is
    an error.
    """
    paths = [PurePosixPath(str(r).replace("\\", "/")) for r in rels]
    for labels in ([p.stem for p in paths], [p.parent.name for p in paths]):
        if all(labels) and len(set(labels)) == len(labels):
            return tuple(labels)
    labels = [str(p.with_suffix("")) for p in paths]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the same raster is listed twice among {list(rels)}")
    return tuple(labels)


def folder_sources(
    root: str | os.PathLike[str], split_file: str | os.PathLike[str], raster_config: RasterConfig | None = None
) -> list[MapSource]:
    """Map sources from a folder of GeoTIFF base maps and a split file.

    Split file format (text): one map source per line, ``#`` comments. A line is either ``path`` (a single-date map)
    or ``map_id: path_date1 path_date2 ...`` (the same ground at several dates, georeferenced). Paths are relative to
    ``root``. The date labels are the file stems (``area_2019.tif area_2020.tif``); where the stems of one line
    collide (``2019/area.tif 2020/area.tif``), the parent folder names, and where those collide too, the relative
    paths without suffix (see :func:`folder_date_labels`).
    """
    root = Path(root)
    cfg = raster_config or RasterConfig()
    sources = []
    for line in load_split_ids(split_file):
        if ":" in line:
            map_id, rest = (s.strip() for s in line.split(":", 1))
            rels = rest.split()
        else:
            rels = line.split()
            map_id = Path(rels[0]).stem
        if not rels or not map_id:
            raise ValueError(f"split file {split_file}: malformed line {line!r}")
        paths = tuple(root / r for r in rels)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"split file {split_file}: map {map_id!r} lists missing files {missing}")
        dates = folder_date_labels(rels)
        sources.append(MapSource(map_id, paths, dates, raster_config=cfg))
    return sources


def mtgl_sources(
    root: str | os.PathLike[str],
    phases: Sequence[int | str] = (0, 1, 2),
    locations: Sequence[str] | None = None,
    subfolder: str = "support",
) -> list[MapSource]:
    """MTGL40-5 base maps as map sources (method.md §9; train phases 0, 1, 2; test 3 = gallery, 4 = queries).

    Expected layout: ``root/<location>/<subfolder>/<phase>/<one image>`` (GeoTIFF, PNG or JPEG). The phases of a
    location are co-registered images of the same ground, so they are treated as one shared pixel grid (their
    sizes must agree). A phase folder with more than one image is an error (name the base map explicitly by
    keeping one image per phase folder).

    Args:
        root: dataset root.
        phases: time phases to include (dates).
        locations: location folder names (None = every sub-folder of ``root``).
        subfolder: the per-location folder holding the base maps.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MTGL40-5 root {root} does not exist")
    locs = sorted(p.name for p in root.iterdir() if p.is_dir()) if locations is None else list(locations)
    if not locs:
        raise ValueError(f"MTGL40-5 root {root} has no location folder")
    sources = []
    for loc in locs:
        paths = []
        for phase in phases:
            folder = root / loc / subfolder / str(phase)
            if not folder.is_dir():
                raise FileNotFoundError(f"MTGL40-5: missing folder {folder}")
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(images) != 1:
                raise ValueError(f"MTGL40-5: expected exactly one base-map image in {folder}, found {len(images)}")
            paths.append(images[0])
        sources.append(MapSource(loc, tuple(paths), tuple(str(p) for p in phases), shared_grid=True))
    return sources
