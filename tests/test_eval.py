"""Evaluation helpers: quarter turns of the query are exact pixel permutations with the right homography."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.numerics.geometry import footprint, project_points, quad_iou
from topicgeo.eval.evaluate import EvalConfig, quarter_turn


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 5])
def test_quarter_turn_homography_maps_every_pixel_onto_its_turned_copy(turns: int) -> None:
    rng = np.random.default_rng(turns)
    image = rng.integers(0, 255, (7, 11, 3), dtype=np.uint8)
    turned, H = quarter_turn(image, turns)
    assert turned.shape == ((7, 11, 3) if turns % 2 == 0 else (11, 7, 3))
    ys, xs = np.mgrid[0:7, 0:11]
    pts = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    moved = project_points(H, pts)
    assert np.allclose(moved, np.round(moved), atol=1e-12)
    moved = np.round(moved).astype(int)
    assert np.array_equal(turned[moved[:, 1], moved[:, 0]], image[ys.ravel(), xs.ravel()])
    # clockwise: the top-left pixel goes to the top-right corner after one turn
    if turns % 4 == 1:
        assert moved[0].tolist() == [6, 0]


def test_the_outline_through_a_turned_query_is_the_original_outline() -> None:
    """A homography found for the turned copy, composed with the turn, gives the original's footprint exactly; the
    turned copy's own outline is one pixel off (outline corners vs pixel centres), which is why evaluate composes."""
    H_map = np.array([[0.9, 0.2, 30.0], [-0.1, 1.1, 12.0], [1e-4, 0.0, 1.0]])
    for turns in range(4):
        _, to_turned = quarter_turn(np.zeros((512, 512, 3), np.uint8), turns)
        turned_to_map = H_map @ np.linalg.inv(to_turned)  # what matching the turned copy estimates
        assert np.allclose(footprint(turned_to_map @ to_turned, 512, 512), footprint(H_map, 512, 512), atol=1e-9)
        naive = quad_iou(footprint(turned_to_map, 512, 512), footprint(H_map, 512, 512))
        assert naive == pytest.approx(1.0, abs=1e-9) if turns == 0 else naive < 0.999


def test_eval_config_rejects_bad_turns() -> None:
    with pytest.raises(ValueError, match="quarter_turns"):
        EvalConfig(quarter_turns=(0, 4))
    with pytest.raises(ValueError, match="quarter_turns"):
        EvalConfig(quarter_turns=())
    with pytest.raises(ValueError, match="geometry"):
        EvalConfig(geometry="affine")


def test_eval_fits_the_footprint_as_the_vehicle_does() -> None:
    from edge_runtime.locator import LocatorConfig

    assert EvalConfig().geometry == LocatorConfig().geometry == "auto"


def test_recall_at_k_against_one_map_is_recall_at_one() -> None:
    """With a one-map gallery the map is always "in the top 3"; R@3 must not count queries whose footprint missed."""
    from topicgeo.eval.evaluate import QueryOutcome, summarize

    def outcome(i: int, correct: bool, ranking: list[str], true_map: str = "a", size: int = 1) -> QueryOutcome:
        fields = (f"q{i}", true_map, ranking, ranking[0] if ranking else None, None, correct,
                  0.5 if correct else 0.0, 10, 0.1, None)
        return QueryOutcome(*fields, size) if size else QueryOutcome(*fields)  # 0: size not recorded

    unrecorded = [outcome(0, True, ["a"], size=0), outcome(1, False, ["a"], size=0),
                  outcome(2, False, ["a"], size=0), outcome(3, False, [], size=0)]
    assert summarize(unrecorded)["R@1"] == summarize(unrecorded)["R@3"] == 25.0
    one = [outcome(0, True, ["a"]), outcome(1, False, ["a"]), outcome(2, False, ["a"]), outcome(3, False, [])]
    assert summarize(one)["R@1"] == summarize(one)["R@3"] == 25.0
    several = [outcome(0, True, ["a", "b"], size=3), outcome(1, False, ["b", "c", "a"], size=3),
               outcome(2, False, ["b", "c", "d", "a"], size=5), outcome(3, False, [], size=3)]
    assert (summarize(several)["R@1"], summarize(several)["R@3"]) == (25.0, 50.0)  # ranking matters there
