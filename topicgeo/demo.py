"""``python -m topicgeo demo``: the reference checkpoint locates cross-season queries on bundled real SJER plots.

Queries are cut from the 2017 plots with the evaluation protocol (evaluation.md §1), the 2018 plots form the
gallery; TopicGeo (retrieval + fine matching + MAGSAC) and SIFT + MAGSAC run on the same queries. Writes a JSON
report and one match picture per query (query left, retrieved map right, green = inlier matches, green quad = truth,
magenta quad = estimate).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from edge_runtime.viz import draw_matches, write_rgb_png
from topicgeo.checkpoint import load_model
from topicgeo.data.raster import GeoRaster
from topicgeo.data.synthesis import SJER_PROTOCOL, evaluation_queries
from topicgeo.eval.evaluate import (
    EvalConfig,
    GalleryMap,
    encode_gallery,
    evaluate_sift,
    evaluate_topicgeo,
    locate_on_map,
    summarize,
    to_tensor,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "topicgeo" / "assets" / "topicgeo_cpu.pt"
DEFAULT_DATA = REPO / "tests" / "data" / "sjer"


def load_gallery(folder: Path) -> list[GalleryMap]:
    """Every GeoTIFF of ``folder`` as a gallery map (id = file stem)."""
    maps = []
    for path in sorted(folder.glob("*.tif")):
        with GeoRaster(path) as raster:
            image, valid = raster.read_rgb()
        maps.append(GalleryMap(path.stem, image, valid))
    if not maps:
        raise FileNotFoundError(f"no GeoTIFF maps in {folder}")
    return maps


def run_demo(checkpoint: Path, data: Path, out: Path, seed: int = 0) -> dict:
    """Evaluate on ``data/2017`` -> ``data/2018`` and write ``report.json`` and pictures into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint)
    gallery = load_gallery(data / "2018")
    pairs = [(data / "2017" / f"{m.map_id}.tif", data / "2018" / f"{m.map_id}.tif") for m in gallery]
    queries = evaluation_queries(pairs, SJER_PROTOCOL, seed=seed)
    config = EvalConfig()
    ours = evaluate_topicgeo(model, queries, gallery, config)
    sift = evaluate_sift(queries, gallery)
    encoded = encode_gallery(model, gallery)
    by_id = {m.map_id: m for m in gallery}
    for q, o in zip(queries, ours, strict=True):
        if o.predicted_map is None:  # not located: show the query beside its true map and the true footprint
            title = f"{q.query_id}: not located ({o.reason})"
            picture = draw_matches(q.image, by_id[q.map_id].image, np.zeros((0, 2)), np.zeros((0, 2)), None,
                                   q.footprint_in_map(), None, title=title)
        else:
            with torch.no_grad():
                enc_q = model.encode(to_tensor(q.image))
                quad, _, _, (pq, pr) = locate_on_map(model, enc_q, encoded[o.predicted_map], q.image.shape[1::-1],
                                                     config)
            truth = q.footprint_in_map() if o.predicted_map == q.map_id else None
            title = f"{q.query_id}: map {o.predicted_map} IoU {100 * o.iou:.0f}%"
            picture = draw_matches(q.image, by_id[o.predicted_map].image, pq, pr, None, truth, quad, title=title)
        write_rgb_png(str(out / f"{q.query_id.replace('->', '_to_').replace('#', '_')}.png"), picture)
    report = {
        "checkpoint": str(checkpoint),
        "queries": len(queries),
        "gallery": [m.map_id for m in gallery],
        "topicgeo": summarize(ours),
        "sift_magsac": summarize(sift),
        "per_query": [
            {"query": o.query_id, "predicted_map": o.predicted_map, "correct": o.correct, "iou": round(o.iou, 3),
             "sift_iou": round(s.iou, 3), "reason": o.reason}
            for o, s in zip(ours, sift, strict=True)
        ],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m topicgeo demo`` / ``edge-demo``."""
    parser = argparse.ArgumentParser(prog="topicgeo demo", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with 2017/ and 2018/ plots")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = run_demo(args.checkpoint, args.data, args.out, args.seed)
    print(f"{'query':<34} {'map':<10} {'TopicGeo IoU':>12} {'SIFT IoU':>9}")
    for row in report["per_query"]:
        name = row["predicted_map"] or "-"
        print(f"{row['query']:<34} {name:<10} {100 * row['iou']:>11.0f}% {100 * row['sift_iou']:>8.0f}%")
    t, s = report["topicgeo"], report["sift_magsac"]
    print(f"TopicGeo: R@1 {t['R@1']}%  mIoU {t['mIoU']}%   |   SIFT+MAGSAC: R@1 {s['R@1']}%  mIoU {s['mIoU']}%")
    print(f"pictures and report.json in {args.out}")
    return 0 if np.isfinite(t["mIoU"]) else 1
