"""Choose the coarse confidence threshold of a checkpoint on queries apart from those it is reported on.

``python -m topicgeo.eval.tune --checkpoint runs/cpu_stage5/last.pt --split topicgeo/splits/sjer_dev.txt --seed 1,2,3``

The threshold ``theta_c`` (``MatchingConfig.threshold``, 0.2 in the paper) gates which MKNN pairs enter the
geometric-consistency retrieval score and the fine stage. A small network trained briefly on a CPU gives sharp but
low dual-softmax peaks (its coarse confidences rarely pass 0.2), so the paper's value leaves it no coarse matches at
all. This script measures retrieval R@1 for a list of thresholds on queries drawn with the evaluation protocol from
the given plots, and prints a JSON report with the best one (ties go to the larger threshold). The release tunes on the
dev plots with the queries of seeds 1, 2 and 3 pooled (evaluation.md: tune on dev data only; the dev reports draw
seed 0; one seed's 24 queries proved too few: stage 5 tuned on seed 1 alone picked 0.2, its R@1 there 54 % against
38 % at 0.1, a single draw's luck): a network that has
memorised its training plots is confident there, and training queries then favour thresholds too strict for unseen
ground (stage 4: 0.2 on training plots, where the dev plots lose a third of their fixes). It is a test-time
parameter: the weights do not change; ``python -m topicgeo.train.card --coarse-threshold`` stores the choice in the
released checkpoint's config, from where ``edge-export`` copies it into the bundle.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from topicgeo.checkpoint import load_model
from topicgeo.data.synthesis import NAIP_PROTOCOL, SJER_PROTOCOL, evaluation_queries, seed_list
from topicgeo.eval.cli import DEFAULT_DATA, emit_report, load_gallery, suite_from_split
from topicgeo.eval.evaluate import (
    EvalConfig,
    coarse_candidate_score,
    encode_gallery,
    evaluate_topicgeo,
    quarter_turn,
    summarize,
    to_tensor,
)
from topicgeo.model.topicgeo import TopicGeo

logger = logging.getLogger(__name__)


def with_threshold(model: TopicGeo, threshold: float, fine_threshold: float | None = None) -> TopicGeo:
    """``model`` with its coarse (and optionally in-window) threshold replaced (same weights, validated config)."""
    fine = model.config.matching.fine_threshold if fine_threshold is None else fine_threshold
    model.config = model.config.with_matching(threshold=threshold, fine_threshold=fine)
    return model


def miou_by_fine_threshold(
    model: TopicGeo, queries: list[Any], gallery: list[Any], fine_thresholds: list[float],
    quarter_turns: tuple[int, ...] = (0, 1, 2, 3),
) -> dict[float, dict[str, Any]]:
    """The full evaluation (retrieval, fine matching, MAGSAC, footprint IoU) for each in-window threshold."""
    coarse, original = model.config.matching.threshold, model.config.matching.fine_threshold
    out = {}
    try:
        for t in fine_thresholds:
            outcomes = evaluate_topicgeo(with_threshold(model, coarse, t), queries, gallery,
                                         EvalConfig(quarter_turns=quarter_turns))
            out[t] = summarize(outcomes)
    finally:
        with_threshold(model, coarse, original)
    return out


def retrieval_recall_by_threshold(
    model: TopicGeo, queries: list[Any], gallery: list[Any], thresholds: list[float],
    quarter_turns: tuple[int, ...] = (0, 1, 2, 3),
) -> dict[float, float]:
    """Retrieval R@1 (right map, or on one-map galleries a positive score) for each threshold."""
    model.eval()
    encoded = encode_gallery(model, gallery)
    original = model.config.matching.threshold
    hits = dict.fromkeys(thresholds, 0)
    try:
        with torch.no_grad():
            for q in tqdm(queries, desc="tune", leave=False):
                best = dict.fromkeys(thresholds, (0.0, None))
                for turns in quarter_turns:
                    enc_q = model.encode(to_tensor(quarter_turn(q.image, turns)[0]))
                    for mid, enc in encoded.items():
                        for t in thresholds:
                            score = coarse_candidate_score(with_threshold(model, t), enc_q, enc, EvalConfig())[0]
                            if score > best[t][0]:
                                best[t] = (score, mid)
                for t in thresholds:
                    hits[t] += int(best[t][1] == q.map_id)
    finally:
        with_threshold(model, original)
    return {t: hits[t] / max(1, len(queries)) for t in thresholds}


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, default=Path("topicgeo/splits/sjer_train.txt"))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--thresholds", default="0.2,0.1,0.05,0.02,0.01,0.005,0.002")
    parser.add_argument("--fine-thresholds", default="0.05,0.02,0.01,0.0",
                        help="in-window thresholds tried (by mean IoU) at the chosen coarse threshold")
    parser.add_argument("--limit", type=int, default=24, help="queries used per seed (the first N of each draw)")
    parser.add_argument("--seed", type=seed_list, default=[1],
                        help="protocol seed(s), comma-separated; their queries are pooled (dev reports use seed 0)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        thresholds = sorted({float(t) for t in args.thresholds.split(",")}, reverse=True)
        fine_thresholds = sorted({float(t) for t in args.fine_thresholds.split(",")}, reverse=True)
    except ValueError:
        parser.error(f"--thresholds must be numbers, got {args.thresholds!r}")
    suite, pairs = suite_from_split(args.split, args.data_root)
    protocol = NAIP_PROTOCOL if suite == "naip" else SJER_PROTOCOL
    seeds = args.seed
    queries = [q for seed in seeds for q in evaluation_queries(pairs, protocol, seed=seed)[: args.limit]]
    gallery = load_gallery([m for _, m in pairs])
    model = load_model(args.checkpoint)
    recall = retrieval_recall_by_threshold(model, queries, gallery, thresholds)
    best = max(thresholds, key=lambda t: (recall[t], t))
    full = miou_by_fine_threshold(with_threshold(model, best), queries, gallery, fine_thresholds)
    best_fine = max(fine_thresholds, key=lambda t: (full[t]["mIoU"], t))
    report = {"checkpoint": str(args.checkpoint), "split": str(args.split), "seed": seeds,
              "queries": len(queries), "gallery": len(gallery), "quarter_turns": [0, 1, 2, 3],
              "retrieval_R@1": {str(t): round(r, 4) for t, r in recall.items()}, "best_threshold": best,
              "full_by_fine_threshold": {str(t): v for t, v in full.items()}, "best_fine_threshold": best_fine}
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
