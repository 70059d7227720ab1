"""``python -m benchmarks.acceptance``: calibrate the vehicle's acceptance rule on held-apart queries.

The locator verifies a retrieval hypothesis in two passes (``LocatorConfig.refine``): a first fit, then a refined fit
of the frame re-rendered on the map's grid around it. It accepts the refined fit when it has at least ``min_inliers``
inliers, else the first fit when that has at least ``min_first_pass_inliers``; it verifies up to
``verify_candidates`` hypotheses per frame, best first, and stops at the first accepted one, so the rule decides both
whether a frame gets a fix and which hypothesis (and which fit) gives it. How many inliers a wrong place collects
depends on the checkpoint, so the rule is chosen per checkpoint, here: dev queries (evaluation.md §1 SJER 2017 ->
2018 plots and §2 NAIP 2016 -> 2015, seeded) are located through the exported bundle and map caches (the vehicle
path, ONNX Runtime) with every hypothesis verified and both fits recorded with their inlier counts and correctness;
for every pair of thresholds the locator's rule is replayed, and the pair keeping the most right fixes at the target
precision is chosen (ties: fewer fixes, then the stricter first-pass rule, then the looser refined rule). A fix is
correct when it is on the right map and its footprint contains the query's true centre. The chosen values go into the
released checkpoint (``python -m topicgeo.train.card --min-inliers N --min-first-pass-inliers M``) and from there
into every bundle. With ``--no-refine`` there is one fit and one rule (the smallest ``min_inliers`` reaching the
precision).

Which queries: a network that has memorised its training plots places nearly every training query right with a
handful of inliers, so calibrating there picks the loosest rule. The release therefore calibrates on the dev splits
with the queries of seeds 1 to 6 pooled (264 queries; evaluation.md: tune on dev data only), disjoint draws from the
seed-0 queries its dev reports use; seed 0 on a dev split is refused. Six seeds, not three: the rule chosen on seeds
1-3 (132 queries, 63 refined / 79 first-pass inliers, 91 % precision there) kept only 53 right fixes of 66 (80 %) on
the 132 queries of seeds 4-6 with the stage-4 weights; pooled, the rule (83 / 81) holds 90 % over all 264.

    python -m benchmarks.acceptance --bundle B --data ../shared/data --out topicgeo/assets/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_runtime.atomic import atomic_write_bytes
from edge_runtime.backends import BackendChoice
from edge_runtime.locator import Locator, LocatorConfig
from edge_runtime.numerics.geometry import footprint, is_convex_quad, project_points, quad_contains, quad_iou
from maps.build import BuildConfig, build_cache
from maps.cli import parse_factors

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SJER_DEV_SPLIT = REPO / "topicgeo" / "splits" / "sjer_dev.txt"
NAIP_SPLIT = REPO / "topicgeo" / "splits" / "naip.json"
FLOOR = 4  # a homography needs 4 matches: the smallest rule there is
NEVER_ACCEPT = 10**9
CALIBRATION_SEEDS = (1, 2, 3, 4, 5, 6)  # pooled dev queries of these protocol seeds (the reports draw seed 0)


def _per_query(values: Sequence[Any], dtype: type) -> list[np.ndarray]:
    """A 1-D array (one hypothesis per query) or a sequence of 1-D arrays (hypotheses per query, in verification
    order) as a list of 1-D arrays."""
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return [np.asarray([v], dtype=dtype) for v in values]
    return [np.asarray(v, dtype=dtype).reshape(-1) for v in values]


def accepted_at(inliers: Sequence[Any], correct: Sequence[Any], min_inliers: int,
                first_inliers: Sequence[Any] | None = None, first_correct: Sequence[Any] | None = None,
                min_first_pass_inliers: int | None = None) -> dict[str, Any]:
    """Fixes ``accepted`` by the locator's rule, how many are ``correct`` and their ``precision`` (1.0 when nothing
    is accepted).

    Args:
        inliers: per query, the inlier counts of its verified hypotheses' final fits in verification order: ``(N,)``
            ints (one hypothesis each) or N 1-D arrays (0 = no fit).
        correct: the same shape(s), bool: that fit would be right.
        min_inliers: the rule for the final fit.
        first_inliers, first_correct: the same for the hypotheses' first fits (the refinement's second chance).
        min_first_pass_inliers: the rule for a first fit (None: first fits are never accepted on their own).

    A query's fix is its first hypothesis whose final fit reaches ``min_inliers`` (that fit) or whose first fit reaches
    ``min_first_pass_inliers`` (that one); none when no hypothesis does.
    """
    inl, ok = _per_query(inliers, np.int64), _per_query(correct, bool)
    if len(inl) != len(ok) or any(a.shape != b.shape for a, b in zip(inl, ok, strict=True)):
        raise ValueError("inliers and correct must hold the same number of hypotheses per query")
    if min_first_pass_inliers is None or first_inliers is None or first_correct is None:
        inl1, ok1 = [np.zeros_like(a) for a in inl], [np.zeros_like(b) for b in ok]
        rule1 = NEVER_ACCEPT
    else:
        inl1, ok1 = _per_query(first_inliers, np.int64), _per_query(first_correct, bool)
        if len(inl1) != len(inl) or any(a.shape != b.shape for a, b in zip(inl1, inl, strict=True)) or \
                any(a.shape != b.shape for a, b in zip(ok1, inl, strict=True)):
            raise ValueError("first_inliers and first_correct must match inliers hypothesis for hypothesis")
        rule1 = min_first_pass_inliers
    accepted = right = 0
    for counts, good, counts1, good1 in zip(inl, ok, inl1, ok1, strict=True):
        final_ok, first_ok = counts >= min_inliers, counts1 >= rule1
        hit = np.flatnonzero(final_ok | first_ok)
        if len(hit):
            i = hit[0]
            accepted += 1
            right += int(good[i] if final_ok[i] else good1[i])
    return {"accepted": accepted, "correct": right, "precision": right / accepted if accepted else 1.0}


def _check_target(target_precision: float) -> None:
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must lie in (0, 1], got {target_precision}")


def _counts(values: Sequence[Any]) -> np.ndarray:
    return np.concatenate(_per_query(values, np.int64) or [np.zeros(0, np.int64)])


def _candidates(values: Sequence[Any]) -> list[int]:
    """Every threshold worth trying: ``FLOOR`` and each count at or above it."""
    return sorted({FLOOR, *(int(v) for v in _counts(values) if v >= FLOOR)})


def _beyond(values: Sequence[Any]) -> int:
    """A threshold above every count (the rule that accepts nothing), never below ``FLOOR``."""
    return max(int(_counts(values).max(initial=FLOOR - 1)) + 1, FLOOR)


def choose_min_inliers(inliers: Sequence[Any], correct: Sequence[Any], target_precision: float) -> dict[str, Any]:
    """Smallest inlier threshold whose accepted fixes reach ``target_precision`` (one fit per hypothesis).

    Args:
        inliers: per query, the inlier counts of its verified hypotheses (0 when no geometry was found): ``(N,)`` int
            with one hypothesis per query, or N 1-D arrays in verification order (see :func:`accepted_at`).
        correct: bool, the same shape(s): that hypothesis' fix would be right.
        target_precision: wanted fraction of correct fixes among the accepted ones, in (0, 1].

    Returns:
        ``min_inliers`` and, at that threshold, ``accepted``, ``correct`` and ``precision`` (1.0 with nothing
        accepted); when no threshold reaches the target, one above every count (nothing is accepted).
    """
    if isinstance(inliers, np.ndarray) and (inliers.ndim != 1 or np.shape(correct) != inliers.shape):
        raise ValueError(f"inliers {inliers.shape} and correct {np.shape(correct)} must be matching 1-D arrays")
    _check_target(target_precision)
    for t in _candidates(inliers):
        outcome = accepted_at(inliers, correct, t)
        if outcome["precision"] >= target_precision:
            return {"min_inliers": t, **outcome}
    return {"min_inliers": _beyond(inliers), "accepted": 0, "correct": 0, "precision": 1.0}


def choose_rules(inliers: Sequence[Any], correct: Sequence[Any], first_inliers: Sequence[Any],
                 first_correct: Sequence[Any], target_precision: float) -> dict[str, Any]:
    """The pair (``min_inliers`` for the refined fit, ``min_first_pass_inliers`` for the first fit) that keeps the
    most correct fixes at ``target_precision`` (ties: fewer fixes accepted, then the larger first-pass rule, then
    the smaller refined rule). ``min_first_pass_inliers`` is None when no first fit needs accepting on its own.

    Args: as :func:`accepted_at` (refined fits in ``inliers`` / ``correct``, first fits in ``first_*``).
    """
    _check_target(target_precision)
    best: tuple | None = None
    for t1 in [*_candidates(first_inliers), None]:
        for t2 in _candidates(inliers):
            out = accepted_at(inliers, correct, t2, first_inliers, first_correct, t1)
            if out["precision"] < target_precision:
                continue
            key = (out["correct"], -out["accepted"], NEVER_ACCEPT if t1 is None else t1, -t2)
            if best is None or key > best[0]:
                best = (key, {"min_inliers": t2, "min_first_pass_inliers": t1, **out})
    if best is None:  # nothing reaches the target: accept nothing
        return {"min_inliers": _beyond(inliers), "min_first_pass_inliers": None, "accepted": 0, "correct": 0,
                "precision": 1.0}
    return best[1]


def _hypotheses(result: Any, truth: np.ndarray, centre: np.ndarray, true_map: str) -> list[dict[str, Any]]:
    """Per verified hypothesis of a locate result: both fits' inliers, correctness and IoU."""
    out = []
    for v in result.extra.get("verified", []):
        rec = {"map_id": v["map_id"], "map_entry": v.get("map_entry", v["map_id"]), "rotation_deg": v["rotation_deg"],
               "retrieval_score": round(float(v["score"]), 5), "fine_matches": v["fine_matches"], "reason": v["reason"]}
        for name in ("first_pass", "refined"):
            quad = None if v.get(f"{name}_footprint_px") is None else np.asarray(v[f"{name}_footprint_px"])
            usable = quad is not None and is_convex_quad(quad)  # the locator rejects a degenerate footprint
            good = bool(usable and v["map_id"] == true_map and quad_contains(quad, centre))
            rec[f"{name}_inliers"] = int(v[f"{name}_inliers"]) if usable else 0
            rec[f"{name}_correct"] = good
            rec[f"{name}_iou"] = float(quad_iou(quad, truth)) if good else 0.0
        out.append(rec)
    return out


def _locate_all(locator: Locator, queries: list[Any], suite: str) -> list[dict[str, Any]]:
    rows = []
    for q in tqdm(queries, desc=f"locate {suite} calibration queries"):
        locator.last_fix = None  # every query on its own
        result = locator.locate(q.image)
        h, w = q.image.shape[:2]
        truth = footprint(q.H_query_to_map, w, h)
        centre = project_points(q.H_query_to_map, np.array([[(w - 1) / 2.0, (h - 1) / 2.0]]))[0]
        rows.append({"suite": suite, "query": q.query_id, "true_map": Path(q.map_id).stem, "reason": result.reason,
                     "hypotheses": _hypotheses(result, truth, centre, Path(q.map_id).stem)})
    return rows


def _outcomes(bundle: Path, data: Path, sjer_split: Path | None, naip_split: Path | None, seeds: list[int],
              verify_candidates: int, work: Path, refine: bool = True, zooms: tuple[int, ...] = BuildConfig.zooms,
              precision: str = "auto") -> list[dict[str, Any]]:
    from topicgeo.data.pairs import naip_eval_pairs, sjer_eval_pairs
    from topicgeo.data.synthesis import NAIP_PROTOCOL, SJER_PROTOCOL, evaluation_queries

    suites = []
    if sjer_split is not None:
        ids = [line.strip() for line in sjer_split.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
        suites.append(("sjer", sjer_eval_pairs(data / "sjer", ids), SJER_PROTOCOL))
    if naip_split is not None:
        suites.append(("naip", naip_eval_pairs(data / "naip_nd", naip_split), NAIP_PROTOCOL))
    # Rules no geometry reaches: every hypothesis is verified and recorded; accepted_at replays the real rules.
    config = LocatorConfig(min_inliers=NEVER_ACCEPT, min_first_pass_inliers=NEVER_ACCEPT,
                           verify_candidates=verify_candidates, refine=refine,
                           backend=BackendChoice(precision=precision))  # type: ignore[arg-type]
    rows = []
    for name, pairs, protocol in suites:
        cache = work / f"cache_{name}"
        build_cache(bundle, list(dict.fromkeys(m for _, m in pairs)), cache,
                    BuildConfig(progress=False, zooms=zooms, precision=precision))  # type: ignore[arg-type]
        queries = [q for seed in seeds for q in evaluation_queries(pairs, protocol, seed)]
        rows += _locate_all(Locator.open(bundle, cache, config), queries, name)
    return rows


def _arrays(rows: list[dict[str, Any]], name: str) -> tuple[list[list[int]], list[list[bool]]]:
    return ([[h[f"{name}_inliers"] for h in r["hypotheses"]] for r in rows],
            [[h[f"{name}_correct"] for h in r["hypotheses"]] for r in rows])


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from topicgeo.data.synthesis import seed_list

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="exported bundle of the checkpoint")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="holds sjer/ and naip_nd/")
    parser.add_argument("--split", type=Path, default=SJER_DEV_SPLIT, help="SJER plots to calibrate on")
    parser.add_argument("--naip-split", type=Path, default=NAIP_SPLIT,
                        help="NAIP split whose dev pair(s) to calibrate on too")
    parser.add_argument("--suites", default="sjer,naip", help="comma-separated: sjer, naip")
    parser.add_argument("--seed", type=seed_list, default=list(CALIBRATION_SEEDS),
                        help="protocol seed(s), comma-separated; their queries are pooled")
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--verify-candidates", type=int, default=LocatorConfig.verify_candidates,
                        help="hypotheses the locator verifies per frame (the vehicle's setting)")
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="verify in one pass (LocatorConfig.refine off): one fit, one rule")
    parser.add_argument("--zooms", type=parse_factors, default=BuildConfig.zooms,
                        help="zoom-in levels of the calibration caches, as edge-maps build --zooms (default: its "
                        "default, the caches the vehicle gets)")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto",
                        help="ONNX graphs for the caches and the locator (auto: FP32 on the CPU; fp16: an FP16 "
                        "bundle's FP16 graphs, the numerics of a GPU vehicle)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    suites = {s.strip() for s in args.suites.split(",") if s.strip()}
    if not suites or suites - {"sjer", "naip"}:
        parser.error(f"--suites takes sjer and/or naip, got {args.suites!r}")
    if 0 in args.seed:
        parser.error("seed 0 draws the dev reports' own queries: calibrate with other --seed values")
    with tempfile.TemporaryDirectory(prefix="acceptance_") as work:
        rows = _outcomes(args.bundle, args.data, args.split if "sjer" in suites else None,
                         args.naip_split if "naip" in suites else None, args.seed, args.verify_candidates,
                         Path(work), args.refine, args.zooms, args.precision)
    first = _arrays(rows, "first_pass")
    per_suite = {s: [r for r in rows if r["suite"] == s] for s in sorted(suites)}
    if args.refine:
        refined = _arrays(rows, "refined")
        chosen = choose_rules(*refined, *first, args.target_precision)
        by_suite = {s: accepted_at(*_arrays(part, "refined"), chosen["min_inliers"], *_arrays(part, "first_pass"),
                                   chosen["min_first_pass_inliers"]) for s, part in per_suite.items()}
        correct_total = sum(any(a or b for a, b in zip(c1, c2, strict=True))
                            for c1, c2 in zip(first[1], refined[1], strict=True))
    else:
        chosen = {**choose_min_inliers(*first, args.target_precision), "min_first_pass_inliers": None}
        by_suite = {s: accepted_at(*_arrays(part, "first_pass"), chosen["min_inliers"])
                    for s, part in per_suite.items()}
        correct_total = sum(any(c) for c in first[1])
    report = {"suites": sorted(suites), "split": _rel(args.split) if "sjer" in suites else None,
              "naip_split": _rel(args.naip_split) if "naip" in suites else None,
              "seed": args.seed, "queries": len(rows), "target_precision": args.target_precision,
              "verify_candidates": args.verify_candidates, "refine": args.refine, "zooms": list(args.zooms),
              "precision": args.precision,
              "correct_total": correct_total, "chosen": chosen, "chosen_by_suite": by_suite,
              "outcomes": rows}
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps({k: report[k] for k in ("queries", "correct_total", "chosen", "chosen_by_suite")}))
    return 0


def _rel(path: Path) -> str:
    return str(path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path)


if __name__ == "__main__":
    raise SystemExit(main())
