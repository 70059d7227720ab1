"""The release tool: a run is released with its loss summary inside the checkpoint, and a released checkpoint can be
re-released with new test-time values (a re-calibrated acceptance rule) without its run directory."""

from __future__ import annotations

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
