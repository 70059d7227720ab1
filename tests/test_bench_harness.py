"""Harness logic of ``benchmarks/edge_bench.py``: tiling, metrics, the JSON contract, peer geometry and suites."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon

from benchmarks.harness.contract import ContractError, parse_json_lines, parse_record, run_json_command
from benchmarks.harness.metrics import (
    EARTH_RADIUS_M,
    FrameTruth,
    QueryTruth,
    haversine_m,
    recall_at_k,
    score_query,
    summarize_frames,
    summarize_queries,
)
from benchmarks.harness.report import goal_check
from benchmarks.harness.suites import layouts_for_areas, raster_area_km2, read_shots, safe_name, write_mosaic
from benchmarks.peers.locator import frame_to_map_homography, rot90_matrix, scale_matrix
from benchmarks.peers.tiling import Tile, TilingConfig, axis_origins, count_tiles, tile_map
from edge_runtime.locate_cli import result_json
from edge_runtime.numerics.geometry import project_points
from edge_runtime.types import LocateResult

DATA = Path(__file__).parent / "data"


# -- tiling ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height", "tile"), [(934, 723, 512), (2802, 1446, 512), (400, 400, 512),
                                                       (1064, 977, 300), (513, 100, 512)])
def test_tiles_cover_the_map_with_25_percent_area_overlap(width: int, height: int, tile: int) -> None:
    config = TilingConfig(tile_size=tile, overlap_area=0.25)
    tiles = tile_map(width, height, config)
    assert len(tiles) == count_tiles(width, height, config)
    cover = np.zeros((height, width), np.int32)
    for t in tiles:
        assert t.x0 >= 0 and t.x0 + t.width <= width and t.y0 >= 0 and t.y0 + t.height <= height
        assert t.width == min(tile, width) and t.height == min(tile, height)
        cover[t.y0 : t.y0 + t.height, t.x0 : t.x0 + t.width] += 1
    assert cover.min() >= 1, "a map pixel is in no tile"
    side = tile * tile
    for axis in ("x", "y"):
        extent = width if axis == "x" else height
        origins = axis_origins(extent, tile, config.stride)
        for a, b in itertools.pairwise(origins):
            overlap = (tile - (b - a)) * tile / side  # shared area of two neighbours / tile area
            if b < origins[-1]:
                assert overlap == pytest.approx(0.25, abs=1.0 / tile)  # interior neighbours: exactly 25 %
            else:
                assert 0.25 - 1.0 / tile <= overlap < 1.0  # the last tile is pulled back to the edge


def test_tiling_small_map_is_one_tile_and_bad_config_raises() -> None:
    assert tile_map(400, 300, TilingConfig(512)) == [Tile(0, 0, 400, 300)]
    assert TilingConfig(512).stride == 384
    with pytest.raises(ValueError, match="overlap_area"):
        TilingConfig(512, overlap_area=0.95)
    with pytest.raises(ValueError, match="tile_size"):
        TilingConfig(8)


# -- metrics ------------------------------------------------------------------------------------------------------
def _square(x0: float, y0: float, side: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], np.float64)


def _truth(i: int, map_id: str = "A") -> QueryTruth:
    fp = _square(100, 100, 100)
    return QueryTruth(f"q{i}", f"/q/{i}.png", map_id, fp, fp.mean(axis=0))


def _rec(i: int, ok: bool, map_id: str | None = "A", quad: np.ndarray | None = None, total: float = 10.0,
         candidates: list[str] | None = None) -> dict:
    obj: dict = {"image": f"/q/{i}.png", "ok": ok, "latency_ms": {"total": total}}
    if ok:
        obj.update({"map_id": map_id, "footprint_px": quad.tolist(), "lat": 1.0, "lon": 2.0})
    else:
        obj["reason"] = "not found"
    if candidates is not None:
        obj["candidates"] = candidates
    return obj


def test_iou_and_recall_on_known_footprints() -> None:
    shifted = _square(110, 100, 100)  # 90 x 100 overlap, union 110 x 100
    far = _square(400, 400, 100)
    bowtie = np.array([[100, 100], [200, 200], [200, 100], [100, 200]], np.float64)
    records = [parse_record(_rec(0, True, quad=shifted)), parse_record(_rec(1, True, quad=far)),
               parse_record(_rec(2, True, map_id="B", quad=_square(100, 100, 100))),
               parse_record(_rec(3, True, quad=bowtie)), parse_record(_rec(4, False))]
    truths = [_truth(i) for i in range(5)]
    by_map = [score_query(r, t, "map") for r, t in zip(records, truths, strict=True)]
    by_centre = [score_query(r, t, "centre") for r, t in zip(records, truths, strict=True)]
    assert by_map[0].iou == pytest.approx(90.0 / 110.0, abs=1e-12)
    assert [s.correct for s in by_map] == [True, True, False, True, False]  # map criterion ignores the footprint
    assert [s.iou for s in by_map[1:]] == [0.0, 0.0, 0.0, 0.0]  # far: no overlap; bow-tie: invalid -> 0
    assert [s.correct for s in by_centre] == [True, False, False, False, False]
    stages = [{"encode": 1.0, "total": 3.0}, {"encode": 3.0, "total": 5.0}, {"total": 7.0}, {}, {"total": 1.0}]
    summary = summarize_queries(by_map, ranked=False, stages=stages)
    assert summary["stages_median_ms"] == {"encode": 2.0, "total": 4.0}
    assert summary["R@1"] == pytest.approx(60.0)
    assert summary["R@3"] is None  # no ranking reported
    assert summary["mIoU"] == pytest.approx(round(100 * (90 / 110) / 5, 1))
    assert summary["located_pct"] == pytest.approx(80.0)
    curve = dict(zip(summary["recall_vs_iou"]["thresholds"], summary["recall_vs_iou"]["recall_pct"], strict=True))
    assert curve[0.0] == pytest.approx(60.0) and curve[0.8] == pytest.approx(20.0) and curve[0.85] == 0.0


def test_iou_matches_shapely_on_a_rotated_footprint() -> None:
    fp = np.array([[120.0, 80.0], [230.0, 130.0], [180.0, 240.0], [70.0, 190.0]])
    truth = QueryTruth("q", "/q/0.png", "A", fp, fp.mean(axis=0))
    pred = fp + np.array([7.5, -3.0])
    score = score_query(parse_record(_rec(0, True, quad=pred)), truth, "centre")
    a, b = Polygon(fp), Polygon(pred)
    assert score.correct
    assert score.iou == pytest.approx(a.intersection(b).area / a.union(b).area, rel=1e-9)


def test_recall_at_3_uses_the_reported_ranking() -> None:
    sq = _square(100, 100, 100)
    records = [parse_record(_rec(0, True, "B", sq, candidates=["B", "C", "A"])),
               parse_record(_rec(1, True, "B", sq, candidates=["B", "C", "D", "A"])),
               parse_record(_rec(2, False, candidates=[]))]
    scores = [score_query(r, _truth(i), "map") for i, r in enumerate(records)]
    assert [s.rank for s in scores] == [3, 4, None]
    assert recall_at_k(scores, 1, ranked=True) == 0.0
    assert recall_at_k(scores, 3, ranked=True) == pytest.approx(100.0 / 3)
    assert recall_at_k(scores, 3, ranked=False) is None


def test_haversine_and_frame_summary() -> None:
    one_degree = math.pi / 180.0 * EARTH_RADIUS_M
    assert haversine_m(46.0, -92.0, 47.0, -92.0) == pytest.approx(one_degree, abs=1e-6)
    assert haversine_m(0.0, 10.0, 0.0, 11.0) == pytest.approx(one_degree, abs=1e-6)
    dlat = 0.5 / EARTH_RADIUS_M * 180.0 / math.pi  # 0.5 m north
    truths = [FrameTruth(f"/f/{i}.jpg", 46.84, -91.99) for i in range(3)]
    recs = [{"image": "/f/0.jpg", "ok": True, "map_id": "m", "footprint_px": _square(0, 0, 9).tolist(),
             "lat": 46.84 + dlat, "lon": -91.99, "latency_ms": {"total": 5.0}},
            {"image": "/f/1.jpg", "ok": True, "map_id": "m", "footprint_px": _square(0, 0, 9).tolist(),
             "lat": 46.84 + 4 * dlat, "lon": -91.99, "latency_ms": {"total": 7.0}},
            {"image": "/f/2.jpg", "ok": False, "reason": "bad input: cannot decode", "latency_ms": {}}]
    s = summarize_frames([parse_record(r) for r in recs], truths)
    assert s["located_pct"] == pytest.approx(200 / 3, abs=0.05)
    assert s["median_error_m"] == pytest.approx(1.25, abs=1e-3)
    assert s["max_error_m"] == pytest.approx(2.0, abs=1e-3)
    assert s["within_1m_pct"] == pytest.approx(100 / 3, abs=0.05)
    assert s["median_ms"] == pytest.approx(6.0)  # the record without a total is left out
    with pytest.raises(ValueError, match="scored against"):
        summarize_frames([parse_record(recs[1])], truths[:1])


# -- contract -----------------------------------------------------------------------------------------------------
def test_contract_accepts_edge_locate_records() -> None:
    quad = _square(3, 4, 50)
    ok = LocateResult(ok=True, map_id="SJER_003", lat=37.1, lon=-119.7, footprint_px=quad, heading_deg=12.0,
                      confidence=0.5, inliers=40, latency_ms={"encode_query": 3.0, "total": 9.5})
    bad = LocateResult.failure("no map region matches", latency_ms={"total": 4.0}, map_id="SJER_008")
    broken = LocateResult.failure("bad input: cannot decode")
    text = "\n".join(json.dumps(result_json(Path(f"/x/{i}.png"), r)) for i, r in enumerate([ok, bad, broken]))
    recs = parse_json_lines(text + "\n\n", "edge-locate")
    assert [r.ok for r in recs] == [True, False, False]
    np.testing.assert_allclose(recs[0].footprint_px, quad)
    assert recs[0].map_id == "SJER_003" and recs[0].inliers == 40 and recs[0].total_ms == 9.5
    assert recs[1].reason == "no map region matches" and recs[1].map_id == "SJER_008"
    assert recs[2].total_ms is None and recs[2].footprint_px is None


@pytest.mark.parametrize(("change", "message"), [
    ({"ok": "yes"}, "'ok' must be true or false"),
    ({"footprint_px": [[0, 0], [1, 0], [1, 1]]}, "footprint_px"),
    ({"footprint_px": [[0, 0], [1, 0], [1, 1], [0, float("nan")]]}, "footprint_px"),
    ({"lat": 123.0}, "outside"),
    ({"latency_ms": {"encode": 1.0}}, "total"),
    ({"map_id": None}, "map_id"),
    ({"inliers": -3}, "inliers"),
    ({"candidates": "A"}, "candidates"),
])
def test_contract_rejects_malformed_ok_records(change: dict, message: str) -> None:
    obj = _rec(0, True, quad=_square(0, 0, 10))
    obj.update(change)
    with pytest.raises(ContractError, match=message):
        parse_record(obj, "tool line 1")


def test_contract_errors_name_the_line() -> None:
    good = json.dumps(_rec(0, False))
    with pytest.raises(ContractError, match="tool line 2: not JSON"):
        parse_json_lines(good + "\n{oops", "tool")
    with pytest.raises(ContractError, match="tool line 1: a record with ok=false needs a non-empty 'reason'"):
        parse_json_lines(json.dumps({"image": "a", "ok": False, "latency_ms": {"total": 1}}), "tool")
    with pytest.raises(ContractError, match="missing key 'image'"):
        parse_json_lines(json.dumps({"ok": True}), "tool")


def test_run_json_command_measures_the_process_and_checks_answers(tmp_path: Path) -> None:
    script = tmp_path / "fake_locate.py"
    script.write_text(
        "import json, sys\n"
        "buf = bytearray(60 * 1024 * 1024)\n"  # 60 MiB: must show in the child's peak RSS
        "for i, a in enumerate(sys.argv[1:]):\n"
        "    if a == 'skip':\n        continue\n"
        "    print(json.dumps({'image': a, 'ok': False, 'reason': 'nothing', 'latency_ms': {'total': i}}))\n"
        "sys.exit(1)\n", encoding="utf-8")
    run = run_json_command([sys.executable, str(script)], [Path("a.png"), Path("b.png")], "fake")
    assert [r.image for r in run.records] == ["a.png", "b.png"]
    assert run.returncode == 1 and run.wall_s > 0
    assert run.peak_rss_mb > 60.0
    with pytest.raises(RuntimeError, match="answered 1 images, expected 2"):
        run_json_command([sys.executable, str(script)], [Path("a.png"), Path("skip")], "fake")
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"exit status 3.*boom"):
        run_json_command([sys.executable, str(crash)], [Path("a.png")], "crash")


# -- peer geometry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_matrix_follows_numpy(k: int) -> None:
    rng = np.random.default_rng(k)
    img = rng.integers(0, 255, (7, 11), dtype=np.uint8)
    turned = np.rot90(img, k)
    M = rot90_matrix(11, 7, k)
    ys, xs = np.mgrid[0:7, 0:11]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    moved = np.rint(project_points(M, pts)).astype(int)
    assert np.array_equal(turned[moved[:, 1], moved[:, 0]], img[ys.ravel(), xs.ravel()])


def test_frame_to_map_composition_matches_resize_and_tile_offset() -> None:
    # A frame 1000 x 600 px downscaled to 500 x 300, turned once, matched on a tile at (384, 768) by a pure shift.
    frame_to_query = scale_matrix(0.5)
    R = rot90_matrix(500, 300, 1)
    H_tile = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 7.0], [0.0, 0.0, 1.0]])
    H = frame_to_map_homography(H_tile, frame_to_query, Tile(384, 768, 512, 512), R)
    # the frame pixel (x, y) -> query (x/2 - 0.25, y/2 - 0.25) -> turned (y', W - 1 - x') -> +shift -> +tile
    x, y = 100.0, 50.0
    qx, qy = (x + 0.5) * 0.5 - 0.5, (y + 0.5) * 0.5 - 0.5
    expected = np.array([qy + 5.0 + 384, (500 - 1 - qx) + 7.0 + 768])
    np.testing.assert_allclose(project_points(H, np.array([[x, y]]))[0], expected, atol=1e-9)
    # and the resize convention agrees with cv2.resize on a linear ramp
    ramp = np.tile(np.arange(1000, dtype=np.float32), (600, 1))
    small = cv2.resize(ramp, (500, 300), interpolation=cv2.INTER_LINEAR)
    src_x = project_points(np.linalg.inv(frame_to_query), np.array([[123.0, 0.0]]))[0, 0]
    assert small[0, 123] == pytest.approx(src_x, abs=1e-3)


# -- suites -------------------------------------------------------------------------------------------------------
def test_mosaic_layouts_and_tiled_raster(tmp_path: Path) -> None:
    assert layouts_for_areas(16.88, (17, 34, 68, 100)) == [(1, 1), (2, 1), (2, 2), (3, 2)]
    src = DATA / "naip" / "naip_nd_20150926_x340_y330.tif"
    out = write_mosaic(src, 3, 2, tmp_path / "mosaic.tif")
    import rasterio

    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert (b.width, b.height, b.count) == (3 * a.width, 2 * a.height, a.count)
        assert b.transform == a.transform and b.crs == a.crs
        data_a, data_b = a.read(), b.read()
    assert np.array_equal(data_b[:, 256:512, 512:768], data_a)
    assert raster_area_km2(out) == pytest.approx(6 * 256 * 256 * 25.0 / 1e6)


def test_read_shots_and_safe_names(tmp_path: Path) -> None:
    path = tmp_path / "shots.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-91.99, 46.84, 198.4]},
         "properties": {"filename": "DJI_0034.JPG"}}]}), encoding="utf-8")
    assert read_shots(path) == {"DJI_0034.JPG": (46.84, -91.99)}
    path.write_text(json.dumps({"features": [{"geometry": {}, "properties": {}}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="feature 0"):
        read_shots(path)
    assert safe_name("SJER_003->SJER_003#2") == "SJER_003-SJER_003_2"


def test_goal_check_reads_the_issue_goals() -> None:
    def synth(r1: float, miou: float) -> dict:
        return {"summary": {"R@1": r1, "mIoU": miou}}

    suites = {"sjer": {"methods": {"topicgeo-fp32": synth(90, 80), "sift": synth(30, 25), "xfeat": synth(95, 10),
                                   "loftr": {"error": "speed only"}}}}
    latency = {"areas": [{"km2": 17, "methods": {}}, {"km2": 101.3, "methods": {
        "topicgeo-fp32": {"median_ms": 400.0}, "sift": {"median_ms": 1300.0}, "xfeat-lg": {"median_ms": 1000.0}}}]}
    goals = goal_check(suites, latency)
    assert goals["accuracy"] == {"sjer: topicgeo-fp32 > sift": True, "sjer: topicgeo-fp32 > xfeat": False}
    assert goals["speed"] == {"101 km2: topicgeo-fp32 >= 3x faster than sift": True,
                              "101 km2: topicgeo-fp32 >= 3x faster than xfeat-lg": False}


def test_target_check_reads_evaluation_md_targets_not_the_peer_comparison() -> None:
    """Beating every peer (the issue's goals) is not the target: evaluation.md's bar is absolute."""
    from benchmarks.harness.report import target_check

    suites = {
        "sjer": {"methods": {"topicgeo-fp32": {"summary": {"R@1": 91.7, "mIoU": 79.9}},
                             "sift": {"summary": {"R@1": 25.0, "mIoU": 17.2}}}},
        "naip": {"methods": {"topicgeo-fp32": {"summary": {"R@1": 90.0, "mIoU": 80.0, "median_ms": 501.0}}}},
        "brighton": {"methods": {"topicgeo-fp32": {"summary": {"located_pct": 100.0, "median_error_m": None}}}},
    }
    checks = target_check(suites)
    assert list(checks) == ["topicgeo-fp32"]  # peers are not judged against the targets
    assert checks["topicgeo-fp32"] == {
        "sjer: R@1 >= 90 %": True, "sjer: mIoU >= 80 %": False, "naip: R@1 >= 90 %": True,
        "naip: mIoU >= 80 %": True, "brighton: every frame located": True,
        "brighton: median error <= 1 m": None, "naip: median latency <= 500 ms": False}


def test_acceptance_rule_is_the_smallest_inlier_threshold_reaching_the_precision() -> None:
    from benchmarks.acceptance import choose_min_inliers

    inliers = np.array([100, 80, 60, 45, 40, 30, 25, 20, 15, 0])
    correct = np.array([True, True, True, False, True, False, True, False, False, False])
    full = choose_min_inliers(inliers, correct, 1.0)
    assert full == {"min_inliers": 60, "accepted": 3, "correct": 3, "precision": 1.0}
    loose = choose_min_inliers(inliers, correct, 0.6)  # >= 25: 5 correct of 7 = 0.71; >= 20: 5 of 8 = 0.625
    assert loose["min_inliers"] == 20 and loose["accepted"] == 8 and loose["correct"] == 5
    nothing = choose_min_inliers(np.array([30, 20]), np.array([False, False]), 0.9)
    assert nothing["min_inliers"] == 31 and nothing["accepted"] == 0
    with pytest.raises(ValueError):
        choose_min_inliers(inliers, correct[:3], 0.9)
    with pytest.raises(ValueError):
        choose_min_inliers(inliers, correct, 0.0)


def test_acceptance_rules_pair_a_refined_rule_with_a_first_pass_second_chance() -> None:
    """Two fits per hypothesis: the refined one is accepted at ``min_inliers``, else the first at
    ``min_first_pass_inliers``; the chosen pair keeps the most right fixes at the precision."""
    from benchmarks.acceptance import accepted_at, choose_rules

    refined = [[70], [30], [20], [66], [10]]
    refined_ok = [[True], [False], [False], [False], [False]]
    first = [[40], [150], [200], [30], [90]]
    first_ok = [[True], [True], [True], [False], [False]]
    # refined rule only: 70 (right) and 66 (wrong) at 60
    assert accepted_at(refined, refined_ok, 60) == {"accepted": 2, "correct": 1, "precision": 0.5}
    # with the second chance at 100: queries 2 and 3 join on their first fits (right); the 90 stays out
    assert accepted_at(refined, refined_ok, 67, first, first_ok, 100) == {"accepted": 3, "correct": 3,
                                                                        "precision": 1.0}
    # a first fit is judged by its own correctness: query 1's first fit would be right, its refined fit not
    assert accepted_at([[70]], [[False]], 60, [[200]], [[True]], 100) == {"accepted": 1, "correct": 0,
                                                                        "precision": 0.0}
    chosen = choose_rules(refined, refined_ok, first, first_ok, 1.0)
    assert (chosen["correct"], chosen["accepted"]) == (3, 3)
    # the refined rule: the smallest count above the wrong 66; the first-pass rule: the strictest that keeps 3
    assert chosen["min_inliers"] == 70 and chosen["min_first_pass_inliers"] == 150
    # when the first fits add nothing right, no second chance is kept
    assert choose_rules(refined, refined_ok, first, [[False]] * 5, 1.0)["min_first_pass_inliers"] is None
    with pytest.raises(ValueError, match="first_inliers"):
        accepted_at(refined, refined_ok, 60, first[:2], first_ok[:2], 100)


def test_acceptance_replays_the_locators_stop_at_first_accepted_hypothesis() -> None:
    """With several verified hypotheses per frame the threshold also picks which one gives the fix: the first in
    verification order that reaches it (the locator stops there), so a higher threshold can skip a wrong hypothesis
    and land on a right one further down."""
    from benchmarks.acceptance import accepted_at, choose_min_inliers

    inliers = [[30, 60], [50], [10, 8], []]  # query 3: retrieval found nothing to verify
    correct = [[False, True], [True], [True, False], []]
    assert accepted_at(inliers, correct, 4) == {"accepted": 3, "correct": 2, "precision": 2 / 3}
    assert accepted_at(inliers, correct, 31) == {"accepted": 2, "correct": 2, "precision": 1.0}  # skips the 30
    assert accepted_at(inliers, correct, 61) == {"accepted": 0, "correct": 0, "precision": 1.0}
    assert choose_min_inliers(inliers, correct, 1.0) == {"min_inliers": 50, "accepted": 2, "correct": 2,
                                                         "precision": 1.0}
    # one hypothesis per query: the ragged form agrees with the 1-D form
    flat = np.array([40, 20, 12]), np.array([True, False, True])
    assert accepted_at(*flat, 15) == accepted_at([[40], [20], [12]], [[True], [False], [True]], 15)
    with pytest.raises(ValueError, match="same number"):
        accepted_at([[1, 2]], [[True]], 4)
