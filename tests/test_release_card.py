"""The release tool: a run is released with its loss summary inside the checkpoint, and a released checkpoint can be
re-released with new test-time values (a re-calibrated acceptance rule) without its run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from topicgeo.checkpoint import read_checkpoint
from topicgeo.train.card import release, rerelease

LOG_HEADER = "step,lr,total,coarse,topic,fine1,fine2,subpixel,n_coarse_gt,seconds\n"


def _run_dir(tmp_path: Path, checkpoint: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "last.pt")
    rows = [f"{s},0.001,{5.0 - 0.1 * s},{2.0 - 0.05 * s},1.0,{1.5 - 0.02 * s},{1.2 - 0.01 * s},0.3,60,{s}"
            for s in range(1, 13)]
    (run / "log.csv").write_text(LOG_HEADER + "\n".join(rows) + "\n")
    return run


def test_rerelease_replaces_the_rule_and_keeps_weights_and_training_record(tiny_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "assets"
    release(_run_dir(tmp_path, tiny_checkpoint), [], out, min_inliers=63, min_first_pass_inliers=79)
    first = read_checkpoint(out / "topicgeo_cpu.pt")
    # first logged values and the mean of the last 10 logs (steps 3-12)
    assert first["loss_summary"]["first"]["total"] == pytest.approx(4.9)
    assert first["loss_summary"]["last10"]["coarse"] == pytest.approx(2.0 - 0.05 * 7.5)
    curve = (out / "loss_curve.png").read_bytes()

    rerelease(out / "topicgeo_cpu.pt", [], out, min_inliers=83, min_first_pass_inliers=81)
    again = read_checkpoint(out / "topicgeo_cpu.pt")
    assert again["config"]["matching"]["min_inliers"] == 83
    assert again["config"]["matching"]["min_first_pass_inliers"] == 81
    assert first["config"]["matching"]["min_inliers"] == 63
    for key in ("step", "topics", "prompt_sha256", "loss_summary"):
        assert again[key] == first[key]
    assert again["model"].keys() == first["model"].keys()
    for name, tensor in first["model"].items():
        assert torch.equal(again["model"][name], tensor), name  # fp16 -> fp32 -> fp16 is exact
    assert (out / "loss_curve.png").read_bytes() == curve
    card = (out / "MODEL_CARD.md").read_text()
    assert "total 4.900 ->" in card and "at least 83 geometry inliers" in card


def test_rerelease_refuses_a_checkpoint_without_a_loss_summary(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no loss_summary"):
        rerelease(tiny_checkpoint, [], tmp_path / "assets", min_inliers=80)
    assert not (tmp_path / "assets" / "topicgeo_cpu.pt").exists()


def _acceptance_report(path: Path, min_inliers: int, first: int | None) -> Path:
    path.write_text(json.dumps({"chosen": {"min_inliers": min_inliers, "min_first_pass_inliers": first,
                                           "accepted": 10, "correct": 9, "precision": 0.9},
                                "queries": 20, "seed": [1, 2], "verify_candidates": 3, "refine": True,
                                "target_precision": 0.9, "correct_total": 12,
                                "split": "topicgeo/splits/sjer_dev.txt", "chosen_by_suite": {}}))
    return path


def test_a_report_without_a_first_pass_rule_clears_the_stored_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A re-calibration whose report chose no second chance must not leave the old, uncalibrated first-pass rule
    beside the new refined one; a given value that contradicts the report is refused."""
    out = tmp_path / "assets"
    release(_run_dir(tmp_path, tiny_checkpoint), [], out, min_inliers=63, min_first_pass_inliers=79)
    report = _acceptance_report(tmp_path / "acceptance.json", 90, None)
    rerelease(out / "topicgeo_cpu.pt", [], out, acceptance=report)
    matching = read_checkpoint(out / "topicgeo_cpu.pt")["config"]["matching"]
    assert matching["min_inliers"] == 90 and matching["min_first_pass_inliers"] is None
    with pytest.raises(ValueError, match="disagree with the acceptance report"):
        rerelease(out / "topicgeo_cpu.pt", [], out, min_inliers=85, acceptance=report)


def test_a_bad_input_changes_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "assets"
    release(_run_dir(tmp_path, tiny_checkpoint), [], out, min_inliers=63, min_first_pass_inliers=79)
    before = {name: (out / name).read_bytes() for name in ("topicgeo_cpu.pt", "MODEL_CARD.md")}
    with pytest.raises(FileNotFoundError):
        rerelease(out / "topicgeo_cpu.pt", [tmp_path / "no_such_eval.json"], out, min_inliers=83)
    assert {name: (out / name).read_bytes() for name in before} == before
