"""Benchmark ``edge-maps build``: throughput (km2/min) and cache size (MB/km2), normalised to 0.5 m GSD.

Usage (from the repository root)::

    python benchmarks/maps_build.py [--bundle BUNDLE | --tile-size 512] [--map ORTHO.tif ...] [--repeats 3]

Without ``--bundle`` it exports a bundle from a randomly initialised ``cpu``-preset network (the same network as the
tests' ``tiny_bundle``; weights do not change the cost) with the given tile size. Without ``--map`` it picks the
largest georeferenced RGB map (by pixel count) under ``../shared/data``. Each map is built ``--repeats`` times into a
fresh folder (planning, hashing, encoding and finishing included); the median run is reported.

Normalisation: at 0.5 m one km2 is 4 Mpx, so km2/min at 0.5 m = Mpx/min / 4 and MB/km2 at 0.5 m = MB per 4 Mpx.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maps.build import BuildConfig, build_cache  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def largest_map(root: Path) -> Path:
    """The georeferenced raster with >= 3 bands and the most pixels under ``root``."""
    import rasterio

    best, best_px = None, -1
    for path in sorted(root.rglob("*.tif")):
        with rasterio.open(path) as ds:
            if ds.crs is None or ds.count < 3:
                continue
            px = ds.width * ds.height
        if px > best_px:
            best, best_px = path, px
    if best is None:
        raise SystemExit(f"no georeferenced RGB GeoTIFF under {root}")
    return best


def export_tiny_bundle(folder: Path, tile_size: int) -> Path:
    """Export a randomly initialised cpu-preset network as an fp32 bundle (query 256 px, tiles ``tile_size``)."""
    import torch

    from export.bundle_writer import ExportConfig, export_bundle
    from topicgeo.checkpoint import save_checkpoint
    from topicgeo.config import get_preset
    from topicgeo.model import TopicGeo
    from topicgeo.train.trainer import load_prompts_matrix, topics_metadata

    topics = ROOT / "topicgeo" / "assets" / "topics_minilm.npz"
    prompts = load_prompts_matrix(topics)
    torch.manual_seed(0)
    model = TopicGeo(get_preset("cpu").with_prompts(*prompts.shape), prompts=prompts)
    ckpt = folder / "tiny.pt"
    save_checkpoint(ckpt, model, {"topics": topics_metadata(topics), "step": 0})
    return export_bundle(ckpt, folder / "bundle", ExportConfig("fp32", 256, tile_size, build_engines=False))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object per map plus a readable line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--tile-size", type=int, default=512, help="tile size of the exported bundle (no --bundle)")
    parser.add_argument("--map", dest="maps", action="append", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    maps = args.maps or [largest_map(DATA)]
    with tempfile.TemporaryDirectory(prefix="maps_bench_") as tmp:
        bundle = args.bundle or export_tiny_bundle(Path(tmp), args.tile_size)
        for path in maps:
            runs = []
            for k in range(args.repeats):
                summary = build_cache(bundle, [path], Path(tmp) / f"cache_{path.stem}_{k}",
                                      BuildConfig(threads=args.threads, progress=False))
                runs.append(summary)
            med = sorted(runs, key=lambda s: s.seconds)[len(runs) // 2]
            result = {
                "map": str(path), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "tile_size": med.tile_size, "pixels": med.pixels, "km2": med.km2, "tiles": med.tiles,
                "tiles_encoded": med.tiles_encoded, "seconds_median": med.seconds,
                "seconds_all": [round(s.seconds, 3) for s in runs],
                "km2_per_min": med.km2_per_min, "km2_per_min_at_0p5m": med.km2_per_min_at_0p5m,
                "megabytes": med.megabytes, "mb_per_km2_at_0p5m": med.mb_per_km2_at_0p5m,
                "mb_per_km2_at_map_gsd": med.megabytes / med.km2 if med.km2 else None,
                "seconds_per_tile": med.seconds / max(1, med.tiles_encoded),
                "spread_pct": 100 * (max(s.seconds for s in runs) - min(s.seconds for s in runs))
                / statistics.median(s.seconds for s in runs),
            }
            print(json.dumps(result, indent=2))
            print(f"{path.name}: {med.pixels / 1e6:.2f} Mpx, {med.km2:.4f} km2, {med.tiles} tiles of "
                  f"{med.tile_size} px, {med.seconds:.2f} s -> {med.km2_per_min:.3f} km2/min at the map's GSD, "
                  f"{med.km2_per_min_at_0p5m:.2f} km2/min at 0.5 m; cache {med.megabytes:.3f} MB = "
                  f"{med.mb_per_km2_at_0p5m:.3f} MB/km2 at 0.5 m")
    return 0


if __name__ == "__main__":
    sys.exit(main())
