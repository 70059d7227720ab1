"""``edge-maps``: build, inspect and verify base-map feature caches.

Commands::

    edge-maps build --bundle BUNDLE --map ORTHO.tif [--map ...] --out CACHE [--overlap 0.125] [--executor local|ray]
                    [--gsd M] [--bounds W S E N [--bounds-crs EPSG:4326]] [--overwrite] [--fresh] [--json]
    edge-maps info CACHE [--json]
    edge-maps verify CACHE [--sources] [--bundle BUNDLE]

Exit codes: 0 success; 1 a failed verification or a build / input error (the message names the file); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends import BackendError
from edge_runtime.bundle import BundleError, open_bundle
from edge_runtime.map_cache import (
    MANIFEST,
    MapCacheError,
    check_bundle,
    open_map_cache,
    read_cache_manifest,
    verify_cache_files,
)
from maps.build import BuildConfig, MapsError, build_cache

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-maps", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="tile maps, run the bundle's tile encoder, write the feature cache")
    b.add_argument("--bundle", required=True, type=Path, help="edge-export bundle folder")
    b.add_argument("--map", dest="maps", action="append", required=True, type=Path,
                   help="a base map (GeoTIFF in any CRS); repeat for several maps; its id is the file stem")
    b.add_argument("--out", required=True, type=Path, help="cache folder to create")
    b.add_argument("--tile-size", type=int, default=None, help="tile side in px (default and only valid value: "
                   "the bundle's)")
    b.add_argument("--overlap", type=float, default=0.125, help="tile overlap as a fraction of the tile side, "
                   "rounded to whole 64-px cells (default 0.125, method decision 14)")
    b.add_argument("--min-valid", type=float, default=0.5, help="a cell is valid with at least this fraction of "
                   "valid pixels (default 0.5)")
    b.add_argument("--executor", choices=("local", "ray"), default="local")
    b.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local instance)")
    b.add_argument("--tiles-per-task", type=int, default=4, help="tiles per Ray task (default 4)")
    b.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto",
                   help="ONNX graphs the encoder runs (auto: FP32 on the CPU, the bundle's precision on CUDA)")
    b.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    b.add_argument("--gsd", type=float, default=None, help="metres per pixel of an image without a CRS "
                   "(alone: a local metric frame without lat/lon)")
    b.add_argument("--bounds", type=float, nargs=4, metavar=("WEST", "SOUTH", "EAST", "NORTH"), default=None,
                   help="extent of an image without a CRS (outer pixel edges), in --bounds-crs")
    b.add_argument("--bounds-crs", default="EPSG:4326", help="CRS of --bounds (default EPSG:4326, lon/lat)")
    b.add_argument("--nodata", type=float, default=None, help="override the maps' nodata value")
    b.add_argument("--bands", type=int, nargs=3, metavar=("R", "G", "B"), default=None,
                   help="1-based band indices read as RGB (default 1 2 3)")
    b.add_argument("--alpha-band", type=_alpha, default="auto",
                   help="band whose 0 marks no-data pixels though the file does not declare it: auto (detect a 0/255 "
                   "coverage band), none, or a 1-based index (default auto)")
    b.add_argument("--overviews", type=parse_factors, default=BuildConfig.overviews,
                   help="decimation factors of the overview levels cached besides each map, comma-separated, or "
                   "'none' (default 2,4,8; a level is built while it still spans a tile)")
    b.add_argument("--zooms", type=parse_factors, default=BuildConfig.zooms,
                   help="magnification factors of zoom-in levels cached besides each map, comma-separated, or 'none' "
                   "(default none; a level is built while it holds at most 64 Mpx)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    b.add_argument("--fresh", action="store_true", help="discard an unfinished build of a different plan")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")

    i = sub.add_parser("info", help="describe a cache")
    i.add_argument("cache", type=Path)
    i.add_argument("--json", action="store_true", help="print the manifest summary as JSON")

    v = sub.add_parser("verify", help="recompute every cache file's sha256 (exit 1 naming the broken file)")
    v.add_argument("cache", type=Path)
    v.add_argument("--sources", action="store_true", help="also hash the source rasters")
    v.add_argument("--bundle", type=Path, default=None, help="also check that this bundle built the cache")
    return parser


def _alpha(text: str) -> int | str | None:
    """``--alpha-band``: ``auto``, ``none`` or a 1-based band index."""
    if text.strip().lower() in ("auto", "none"):
        return None if text.strip().lower() == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a band index, got {text!r}") from None


def parse_factors(text: str) -> tuple[int, ...]:
    """``--overviews`` / ``--zooms``: ``2,4,8`` -> ``(2, 4, 8)``; ``none`` or empty -> ``()``."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers or 'none', got {text!r}") from None


def _build(args: argparse.Namespace) -> int:
    config = BuildConfig(
        overlap=args.overlap, tile_size=args.tile_size, min_valid_fraction=args.min_valid, executor=args.executor,
        ray_address=args.ray_address, tiles_per_task=args.tiles_per_task, backend=args.backend, device=args.device,
        precision=args.precision,
        threads=args.threads, gsd=args.gsd, bounds=tuple(args.bounds) if args.bounds else None,
        bounds_crs=args.bounds_crs, nodata=args.nodata, bands=tuple(args.bands) if args.bands else None,
        alpha_band=args.alpha_band, overviews=args.overviews, zooms=args.zooms, overwrite=args.overwrite,
        fresh=args.fresh,
        progress=not args.no_progress,
    )
    summary = build_cache(args.bundle, args.maps, args.out, config)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.text())
    return 0


def cache_info(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of a cache (no hash verification).

    Returns:
        ``schema``, ``bundle``, ``tiling``, ``megabytes`` and per map: ``id``, ``source``, ``epsg``, ``size_px``,
        ``gsd_m``, ``km2``, ``tiles``, ``tiles_encoded``, ``valid_cells_pct``, ``center_lonlat`` (``None`` without a
        CRS) and ``megabytes``.
    """
    cache = open_map_cache(path, verify=False)
    root = Path(path)
    maps = []
    for entry in cache.entries():
        map_id, geo = entry.map_id, entry.georef
        center = np.array([[(geo.width - 1) / 2.0, (geo.height - 1) / 2.0]])
        lonlat = geo.pixels_to_lonlat(center)[0].tolist() if geo.crs_wkt is not None else None
        size = sum((root / rel).stat().st_size for rel in entry.record["files"].values())
        stats = entry.record["stats"]
        maps.append({
            "id": map_id, "overview": entry.overview, "zoom": entry.read_spec.zoom, "source": entry.source["path"],
            "epsg": geo.epsg,
            "georef": geo.source,
            "size_px": [geo.width, geo.height], "gsd_m": geo.gsd_m, "km2": geo.area_km2,
            "tiles": entry.n_tiles, "grid": [entry.grid.nx, entry.grid.ny], "tiles_encoded": stats["tiles_encoded"],
            "valid_cells_pct": 100.0 * stats["valid_cells"] / max(1, stats["cells"]),
            "center_lonlat": lonlat, "megabytes": size / 1e6,
        })
    total = sum((root / rel).stat().st_size for rel in cache.manifest["files"]) + (root / MANIFEST).stat().st_size
    return {"cache": str(root), "schema": cache.manifest["schema"], "bundle": cache.manifest["bundle"],
            "tiling": cache.manifest["tiling"], "megabytes": total / 1e6, "maps": maps}


def _info_text(info: dict[str, Any]) -> str:
    b, t = info["bundle"], info["tiling"]
    lines = [
        f"cache      {info['cache']}  ({info['schema']}, {info['megabytes']:.3f} MB)",
        f"bundle     {b['bundle_id']}  ({b['precision']}, {b['coarse_dim']}-d coarse features at "
        f"1/{b['coarse_stride']})",
        f"tiling     {t['tile_size']} px tiles, overlap {t['overlap_px']} px (stride {t['stride']}), cell valid at "
        f">= {t['min_valid_fraction']:.0%} valid pixels",
        f"maps       {len(info['maps'])}",
    ]
    for m in info["maps"]:
        crs = f"EPSG:{m['epsg']}" if m["epsg"] else ("no CRS" if m["center_lonlat"] is None else "custom CRS")
        where = ("" if m["center_lonlat"] is None
                 else f", centre lat {m['center_lonlat'][1]:.6f} lon {m['center_lonlat'][0]:.6f}")
        lines.append(f"  {m['id']}: {m['size_px'][0]}x{m['size_px'][1]} px, {crs}, GSD {m['gsd_m']:.3f} m, "
                     f"{m['km2']:.4f} km2, {m['tiles']} tiles ({m['grid'][0]}x{m['grid'][1]}, "
                     f"{m['tiles_encoded']} encoded), {m['valid_cells_pct']:.1f} % valid cells, "
                     f"{m['megabytes']:.3f} MB{where}")
        lines.append(f"    source {m['source']}")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    manifest = read_cache_manifest(args.cache)
    verify_cache_files(args.cache, manifest)
    if args.bundle is not None:
        check_bundle(manifest, open_bundle(args.bundle), args.cache)
    if args.sources:
        cache = open_map_cache(args.cache, verify=False)
        for entry in cache.maps.values():
            entry.verify_source()
    print(f"OK: {args.cache}: {len(manifest['files'])} files verified"
          + (", source rasters unchanged" if args.sources else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-maps``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "info":
            info = cache_info(args.cache)
            print(json.dumps(info, indent=2) if args.json else _info_text(info))
            return 0
        return _verify(args)
    except (MapsError, MapCacheError, BundleError, BackendError, ValueError, OSError) as exc:
        print(f"edge-maps {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
