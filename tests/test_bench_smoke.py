"""Smoke run of ``edge-bench`` on two real SJER queries (the project's locator and SIFT), so the script cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon

from benchmarks import edge_bench
from benchmarks.harness.suites import file_sha256

DATA = Path(__file__).parent / "data"


@pytest.mark.slow
def test_edge_bench_runs_two_queries_end_to_end(tiny_bundle: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    code = edge_bench.main(["--out", str(out), "--data", str(DATA), "--suites", "sjer", "--sjer-plots", "SJER_009",
                            "--max-sjer-queries", "2", "--methods", "topicgeo-fp32,sift", "--bundle-fp32",
                            str(tiny_bundle), "--work", str(work)])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["subset"] and "SJER plots ['SJER_009']" in results["subset"]
    assert results["command"].startswith("edge-bench --out")
    suite = results["suites"]["sjer"]
    queries = suite["queries"]
    assert len(queries) == 2
    for q in queries:  # the files every method read are the recorded ones
        assert file_sha256(work / "queries" / "sjer" / q["file"]) == q["sha256"]
    methods = suite["methods"]
    assert set(methods) == {"topicgeo-fp32", "sift"}
    for name, res in methods.items():
        per_query = res["per_query"]
        assert [p["query_id"] for p in per_query] == [q["query_id"] for q in queries], name
        assert [Path(p["image"]).name for p in per_query] == [q["file"] for q in queries], name
        assert res["summary"]["R@1"] == pytest.approx(100.0 * np.mean([p["correct"] for p in per_query]))
        assert res["process"]["peak_rss_mb"] > 50.0 and res["process"]["wall_s"] > 0
        for p, q in zip(per_query, queries, strict=True):  # IoU recomputed independently (shapely)
            if p["correct"]:
                a, b = Polygon(p["footprint_px"]), Polygon(q["footprint_px"])
                assert p["iou"] == pytest.approx(a.intersection(b).area / a.union(b).area, abs=1e-3)
            else:
                assert p["iou"] == 0.0
    assert "sjer: topicgeo-fp32 > sift" in results["goals"]["accuracy"]
    text = (out / "results.md").read_text(encoding="utf-8")
    assert "SUBSET RUN" in text and "| topicgeo-fp32 |" in text and "| sift |" in text
    picture = cv2.imread(str(out / "recall_vs_iou.png"))
    assert picture is not None and picture.shape[0] > 100


def test_a_sequence_run_is_marked_as_not_the_evaluations_setting(tmp_path: Path) -> None:
    """``--sequence`` (edge-locate's temporal prior between images) is not how the evaluation runs: a subset."""
    args = ["--out", str(tmp_path), "--bundle-fp32", str(tmp_path), "--methods", "topicgeo-fp32"]
    (tmp_path / "manifest.json").write_text("{}")
    plain = edge_bench.config_from_args(edge_bench._parser().parse_args(args))
    sequence = edge_bench.config_from_args(edge_bench._parser().parse_args([*args, "--sequence"]))
    assert not plain.sequence and sequence.sequence
    assert "--sequence" in (sequence.subset_note() or "") and "--sequence" not in (plain.subset_note() or "")
