"""``topicgeo-eval --checkpoint CKPT --split FILE``: R@1, R@k and mean IoU on a dev split, SIFT + MAGSAC alongside.

Split files: ``topicgeo/splits/sjer_dev.txt`` (SJER plots; queries from 2017 against a gallery of every 2018 plot of
the split, evaluation.md §1) or ``topicgeo/splits/naip.json`` (its ``dev_pairs``: queries from one date against the
whole map of another, evaluation.md §2).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from edge_runtime.atomic import atomic_write_bytes
from edge_runtime.numerics.geometry import GEOMETRY_MODELS
from topicgeo.checkpoint import load_model
from topicgeo.data.pairs import naip_eval_pairs, sjer_eval_pairs
from topicgeo.data.raster import GeoRaster
from topicgeo.data.synthesis import NAIP_PROTOCOL, SJER_PROTOCOL, evaluation_queries
from topicgeo.eval.evaluate import EvalConfig, GalleryMap, evaluate_sift, evaluate_topicgeo, summarize

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def suite_from_split(split: Path, data_root: Path) -> tuple[str, list[tuple[Path, Path]]]:
    """``(suite name, [(query raster, map raster)])`` of a split file."""
    if split.suffix == ".json":
        return "naip", naip_eval_pairs(data_root / "naip_nd", split)
    return "sjer", sjer_eval_pairs(data_root / "sjer", split)


def load_gallery(paths: list[Path]) -> list[GalleryMap]:
    """The distinct map rasters as gallery maps (id = file stem)."""
    gallery = []
    for path in dict.fromkeys(paths):
        with GeoRaster(path) as raster:
            image, valid = raster.read_rgb()
        gallery.append(GalleryMap(path.stem, image, valid))
    return gallery


def run_eval(checkpoint: Path, split: Path, data_root: Path, seed: int = 0, sift: bool = True,
             limit: int | None = None, quarter_turns: tuple[int, ...] = (0,),
             geometry: str = "auto") -> dict[str, Any]:
    """Evaluate a checkpoint (and SIFT) on a split; returns the report.

    ``quarter_turns`` other than ``(0,)`` searches turned copies of every query (no yaw prior on the vehicle);
    ``geometry`` is the query -> map model of TopicGeo's footprint (the vehicle's ``auto`` by default)."""
    suite, pairs = suite_from_split(split, data_root)
    protocol = NAIP_PROTOCOL if suite == "naip" else SJER_PROTOCOL
    queries = evaluation_queries(pairs, protocol, seed=seed)[:limit]
    gallery = load_gallery([m for _, m in pairs])
    model = load_model(checkpoint)
    t0 = time.perf_counter()
    ours = evaluate_topicgeo(model, queries, gallery, EvalConfig(quarter_turns=quarter_turns, geometry=geometry))
    report: dict[str, Any] = {
        "suite": suite, "split": str(split), "checkpoint": str(checkpoint), "seed": seed, "queries": len(queries),
        "quarter_turns": list(quarter_turns), "geometry": geometry,
        "gallery": [g.map_id for g in gallery], "topicgeo": summarize(ours),
        "topicgeo_seconds": round(time.perf_counter() - t0, 1),
    }
    if sift:
        report["sift_magsac"] = summarize(evaluate_sift(queries, gallery))
    report["failures"] = {o.query_id: o.reason for o in ours if o.reason}
    return report


def emit_report(report: dict[str, Any], out: Path | None) -> None:
    """Print a JSON report and, when ``out`` is given, write it there atomically."""
    text = json.dumps(report, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, text.encode())
    print(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``topicgeo-eval``."""
    parser = argparse.ArgumentParser(prog="topicgeo-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding sjer/ and naip_nd/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="evaluate only the first N queries")
    parser.add_argument("--no-sift", action="store_true")
    parser.add_argument("--quarter-turns", default="0",
                        help="comma-separated clockwise quarter turns of each query to search (0 = the protocol; "
                             "0,1,2,3 = the vehicle without a yaw prior)")
    parser.add_argument("--geometry", default="auto", choices=GEOMETRY_MODELS,
                        help="TopicGeo's query -> map model (default auto, as the vehicle's locator)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        turns = tuple(int(t) for t in args.quarter_turns.split(","))
    except ValueError:
        parser.error(f"--quarter-turns must be integers 0..3, got {args.quarter_turns!r}")
    report = run_eval(args.checkpoint, args.split, args.data_root, args.seed, not args.no_sift, args.limit, turns,
                      args.geometry)
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
