"""The benchmark's suites on real imagery: query files, maps and ground truth (docs/evaluation.md).

- ``sjer``: queries from the 2017 plots (evaluation.md §1 protocol, fixed seed), gallery = the 2018 plots.
- ``naip``: queries from the dev pair's query date against the map date (§2 protocol, texture filter).
- ``brighton``: the real DJI frames as captured; maps = the Brighton orthophotos; truth = SfM camera positions.
- ``latency``: the NAIP queries against the NAIP map and mosaics of it tiled side by side (repeated content: only
  the cost is measured there, not the accuracy).

Query images are written once as PNG files and the same files go to every method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness.metrics import FrameTruth, QueryTruth
from topicgeo.data.raster import apply_homography
from topicgeo.data.synthesis import NAIP_PROTOCOL, SJER_PROTOCOL, EvalQuery, evaluation_queries

logger = logging.getLogger(__name__)

SJER_DEV_SPLIT = Path(__file__).resolve().parents[2] / "topicgeo" / "splits" / "sjer_dev.txt"
BRIGHTON_MAPS = ("odm/odm_orthophoto_0p5m_epsg32615.tif", "derived/ortho_from_laz_0p10m_epsg32615.tif")


@dataclass(frozen=True)
class SyntheticSuite:
    """Queries with exact footprints on a set of maps.

    Attributes:
        name: ``sjer`` or ``naip``.
        criterion: ``map`` (R@1 = right map) or ``centre`` (R@1 = footprint contains the true centre).
        maps: map rasters (ids = stems).
        queries: ground truth, one per query file.
    """

    name: str
    criterion: str
    maps: tuple[Path, ...]
    queries: tuple[QueryTruth, ...]

    @property
    def images(self) -> list[Path]:
        """The query files, in order."""
        return [Path(q.image) for q in self.queries]


@dataclass(frozen=True)
class FrameSuite:
    """Real frames with SfM camera positions, and the maps to locate them on."""

    name: str
    maps: tuple[Path, ...]
    frames: tuple[FrameTruth, ...]

    @property
    def images(self) -> list[Path]:
        """The frame files, in order."""
        return [Path(f.image) for f in self.frames]


def safe_name(query_id: str) -> str:
    """A file-name-safe version of a query id (``SJER_003->SJER_003#2`` -> ``SJER_003-SJER_003_2``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", query_id.replace("->", "-")).strip("_")


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB image as PNG through a temporary file and ``os.replace``."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def truth_of(query: EvalQuery, image_path: Path) -> QueryTruth:
    """Ground truth of an :class:`EvalQuery` written at ``image_path``."""
    h, w = query.image.shape[:2]
    centre = apply_homography(query.H_query_to_map, np.array([[(w - 1) / 2.0, (h - 1) / 2.0]]))[0]
    return QueryTruth(query.query_id, str(image_path), query.map_id, query.footprint_in_map(), centre)


def write_queries(queries: Sequence[EvalQuery], folder: Path) -> list[QueryTruth]:
    """Write every query as ``folder/<safe id>.png``; returns their ground truth."""
    out = []
    for q in queries:
        path = folder / f"{safe_name(q.query_id)}.png"
        write_png_atomic(path, q.image)
        out.append(truth_of(q, path))
    names = [t.image for t in out]
    if len(set(names)) != len(names):
        raise ValueError("two queries map to the same file name")
    return out


def sjer_suite(data_root: Path, plots: Sequence[str], seed: int, folder: Path,
               max_queries: int | None = None) -> SyntheticSuite:
    """Suite 1: 3 queries per 2017 plot (seeded), gallery = the 2018 plots of ``plots``."""
    from topicgeo.data.pairs import sjer_eval_pairs

    pairs = sjer_eval_pairs(data_root, list(plots))
    queries = evaluation_queries(pairs, SJER_PROTOCOL, seed)
    if max_queries is not None:
        queries = queries[:max_queries]
    return SyntheticSuite("sjer", "map", tuple(m for _, m in pairs), tuple(write_queries(queries, folder)))


def naip_suite(data_root: Path, seed: int, folder: Path, queries_per_pair: int = NAIP_PROTOCOL.queries_per_source,
               split: Path | None = None) -> SyntheticSuite:
    """Suite 2: the NAIP dev pair(s) (queries from one date, the other date's map), ``queries_per_pair`` each."""
    from topicgeo.data.pairs import SPLITS_DIR, naip_eval_pairs

    pairs = naip_eval_pairs(data_root, split or SPLITS_DIR / "naip.json")
    protocol = dataclasses.replace(NAIP_PROTOCOL, queries_per_source=queries_per_pair,
                                   max_attempts=max(NAIP_PROTOCOL.max_attempts, 5 * queries_per_pair))
    queries = evaluation_queries(pairs, protocol, seed)
    maps = tuple(dict.fromkeys(m for _, m in pairs))
    return SyntheticSuite("naip", "centre", maps, tuple(write_queries(queries, folder)))


def read_shots(path: Path) -> dict[str, tuple[float, float]]:
    """``filename -> (lat, lon)`` of the SfM camera centres in an OpenSfM/ODM ``shots.geojson``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"SfM shots file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    out = {}
    for i, feat in enumerate(data.get("features", [])):
        try:
            name = feat["properties"]["filename"]
            lon, lat = feat["geometry"]["coordinates"][:2]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: feature {i} lacks properties.filename or point coordinates") from exc
        out[str(name)] = (float(lat), float(lon))
    if not out:
        raise ValueError(f"{path} has no camera shots")
    return out


def brighton_suite(brighton_root: Path, max_frames: int | None = None) -> FrameSuite:
    """Suite 3: the frames of ``brighton_root/images`` that have an SfM pose, on the Brighton orthophotos."""
    shots = read_shots(brighton_root / "odm" / "shots.geojson")
    images = sorted(p for p in (brighton_root / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    frames = [FrameTruth(str(p), *shots[p.name]) for p in images if p.name in shots]
    missing = [p.name for p in images if p.name not in shots]
    if missing:
        logger.warning("frames without an SfM pose are skipped: %s", missing)
    if max_frames is not None:
        frames = frames[:max_frames]
    if not frames:
        raise ValueError(f"no frame of {brighton_root / 'images'} has an SfM pose")
    maps = tuple(brighton_root / m for m in BRIGHTON_MAPS)
    for m in maps:
        if not m.is_file():
            raise FileNotFoundError(f"Brighton map {m} does not exist")
    return FrameSuite("brighton", maps, tuple(frames))


def raster_area_km2(path: Path) -> float:
    """Ground area of a georeferenced raster in km2 (pixel count x pixel area)."""
    import rasterio

    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise ValueError(f"{path} has no CRS: its area is unknown")
        return ds.width * ds.height * abs(ds.transform.a * ds.transform.e - ds.transform.b * ds.transform.d) / 1e6


def write_mosaic(src: Path, nx: int, ny: int, out: Path) -> Path:
    """Tile ``src`` ``nx`` x ``ny`` times side by side into a larger GeoTIFF (same CRS, origin and pixel size).

    The content repeats: a mosaic serves cost measurements (latency against map area), never accuracy.
    """
    import rasterio

    if nx < 1 or ny < 1:
        raise ValueError(f"mosaic layout must be >= 1 x 1, got {nx} x {ny}")
    with rasterio.open(src) as ds:
        data = ds.read()
        profile = ds.profile.copy()
    mosaic = np.tile(data, (1, ny, nx))
    profile.update(width=mosaic.shape[2], height=mosaic.shape[1], tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(mosaic)
    os.replace(tmp, out)
    return out


def layouts_for_areas(base_km2: float, targets_km2: Sequence[float]) -> list[tuple[int, int]]:
    """Mosaic layouts ``(nx, ny)`` whose area is closest to each target (nx >= ny, nx - ny <= 1 when possible).

    Layouts are taken from 1x1, 2x1, 2x2, 3x2, 3x3, 4x3, ... (growing by one column, then one row).
    """
    if base_km2 <= 0:
        raise ValueError(f"base area must be positive, got {base_km2}")
    ladder = [(1, 1)]
    while ladder[-1][0] * ladder[-1][1] * base_km2 < 4 * max(targets_km2):
        nx, ny = ladder[-1]
        ladder.append((nx + 1, ny) if nx == ny else (nx, ny + 1))
    out: list[tuple[int, int]] = []
    for t in targets_km2:
        best = min(ladder, key=lambda lay: abs(lay[0] * lay[1] * base_km2 - t))
        if best not in out:
            out.append(best)
    return out


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
