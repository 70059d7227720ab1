"""Training on real imagery: the loss falls on a micro-run, checkpoints resume, the reference beats no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from topicgeo.checkpoint import load_model
from topicgeo.config import COARSE_STRIDE, get_preset
from topicgeo.data.pairs import PairConfig, PairDataset, TrainingPair, sjer_sources
from topicgeo.data.synthesis import QuerySynthesisConfig
from topicgeo.model import TopicGeo
from topicgeo.train.labels import aca_coarse_labels
from topicgeo.train.losses import LossConfig
from topicgeo.train.step import collate_pairs, training_step
from topicgeo.train.trainer import load_prompts_matrix

REFERENCE = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topicgeo_cpu.pt"
TOPICS = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topics_minilm.npz"


def _dataset(root: Path, ids: list[str], seed: int, rotation_deg: tuple[float, float] = (0.0, 360.0)) -> PairDataset:
    synth = QuerySynthesisConfig(query_size=256, side_fraction_range=(0.5, 0.9), rotation_deg=rotation_deg)
    return PairDataset(sjer_sources(root, ids), PairConfig(synthesis=synth, ref_size=448, pad_mode="ref_size",
                                                           negative_prob=0.0), seed=seed, length=64)


def test_loss_falls_on_a_real_micro_run(data_dir: Path) -> None:
    torch.manual_seed(0)
    prompts = load_prompts_matrix(TOPICS)
    model = TopicGeo(get_preset("cpu").with_prompts(*prompts.shape), prompts=prompts)
    data = _dataset(data_dir / "sjer", ["SJER_002", "SJER_009"], seed=3)
    batch = collate_pairs([data[0], data[1]])
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    totals = []
    for _ in range(30):
        losses = training_step(model, batch, LossConfig(), torch.Generator().manual_seed(0), 16, 32)
        optimiser.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimiser.step()
        totals.append(float(losses["total"].detach()))
    assert np.mean(totals[-5:]) < 0.85 * np.mean(totals[:3]), totals
    assert losses["coarse"] < totals[0]  # every term is finite and the coarse term moved


def _gt_confidence(model: TopicGeo, data: PairDataset, n: int) -> float:
    """Mean dual-softmax confidence the model gives the ground-truth coarse matches of ``n`` held-apart pairs."""
    values = []
    with torch.no_grad():
        for i in range(n):
            pair = data[i]
            batch = collate_pairs([pair])
            q = model.encode(batch["query"])
            r = model.encode(batch["reference"], batch["ref_valid"])
            conf = model.coarse_confidence(q, r)[0]
            gt = aca_coarse_labels(pair.H_query_to_ref, q.grid, r.grid, COARSE_STRIDE, r.valid[0])
            if gt.any():
                values.append(float(conf[torch.as_tensor(gt).bool()].mean()))
    return float(np.mean(values))


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference checkpoint not committed")
def test_reference_checkpoint_beats_the_untrained_network_on_held_apart_plots(data_dir: Path) -> None:
    trained = load_model(REFERENCE)
    torch.manual_seed(0)
    untrained = TopicGeo(trained.config, prompts=trained.prompts).eval()
    # a dev plot (never trained on), queries north-up +-45 degrees as in the last curriculum stage
    data = _dataset(data_dir / "sjer_dev", ["SJER_003"], seed=11, rotation_deg=(-45.0, 45.0))
    assert _gt_confidence(trained, data, 6) > 1.5 * _gt_confidence(untrained, data, 6)


def test_warm_start_keeps_the_weights_of_a_released_checkpoint_and_the_presets_thresholds(tmp_path: Path) -> None:
    from topicgeo.checkpoint import CheckpointError, prompt_hash, save_checkpoint
    from topicgeo.train.trainer import warm_start_model

    prompts = load_prompts_matrix(TOPICS)
    preset = get_preset("cpu").with_prompts(*prompts.shape)
    torch.manual_seed(1)
    released = TopicGeo(preset.with_matching(threshold=0.1, fine_threshold=0.0, min_inliers=37), prompts=prompts)
    path = tmp_path / "released.pt"
    torch.manual_seed(2)
    fresh = TopicGeo(preset, prompts=prompts)
    save_checkpoint(path, released, {"step": 10000}, half=True)  # as released: fp16 weights and prompts
    warm = warm_start_model(path, fresh)
    assert warm.config == preset  # the run keeps the preset's test-time parameters, so its last.pt resumes
    for key, value in released.state_dict().items():
        if key == "prompts":  # the exact float32 matrix of the topics file, not its fp16 copy in the checkpoint
            assert torch.equal(warm.prompts, prompts) and prompt_hash(warm.prompts) == prompt_hash(prompts)
        else:
            assert torch.equal(warm.state_dict()[key], value.half().float()), key
    # A release re-saved from the loaded fp16 checkpoint (the card tool re-writing a card) hashed the fp16 copy of the
    # prompts; the topics file still warm-starts it, other embeddings still do not.
    resaved = tmp_path / "resaved.pt"
    save_checkpoint(resaved, load_model(path), {"step": 10000}, half=True)
    assert torch.equal(warm_start_model(resaved, fresh).prompts, prompts)
    with pytest.raises(CheckpointError, match="prompt embeddings differ"):
        warm_start_model(resaved, TopicGeo(preset, prompts=prompts + 0.01))
    other = get_preset("cpu").with_prompts(*prompts.shape)
    other = type(other).from_dict({**other.to_dict(), "backbone": {**other.to_dict()["backbone"], "gn_groups": 4}})
    with pytest.raises(CheckpointError, match="gn_groups"):
        warm_start_model(path, TopicGeo(other, prompts=prompts))


def test_extra_single_date_maps_join_the_training_mixture_with_exact_ground_truth(data_dir: Path,
                                                                                     tmp_path: Path) -> None:
    import cv2

    from topicgeo.train.datasets import build_training_dataset

    split = tmp_path / "extra.txt"
    split.write_text("# one single-date map\nsjer/2018/SJER_009.tif\n")
    data = build_training_dataset(extra_root=str(data_dir), extra_split=str(split), query_size=256, ref_size=448,
                                  rotation_deg=(-45.0, 45.0))
    assert data.schedule == ["extra"]
    assert data.describe()["extra"]["sources"][0]["pairs"] == [["SJER_009", "SJER_009"]]
    scores = []
    for i in range(4):
        pair = data[i]
        assert pair.query_date == pair.ref_date == "SJER_009"
        # The reference warped into the query frame by the stored homography must show the same ground.
        back = cv2.warpPerspective(pair.reference, np.linalg.inv(pair.H_query_to_ref), (256, 256))
        inside = cv2.warpPerspective(pair.ref_valid.astype(np.uint8), np.linalg.inv(pair.H_query_to_ref),
                                     (256, 256)).astype(bool) & pair.query_valid
        a = cv2.cvtColor(pair.query, cv2.COLOR_RGB2GRAY)[inside].astype(float)
        b = cv2.cvtColor(back, cv2.COLOR_RGB2GRAY)[inside].astype(float)
        scores.append(np.corrcoef(a, b)[0, 1])
        shifted = np.roll(back, 24, axis=1)  # the same ground 24 px off correlates far less
        c = cv2.cvtColor(shifted, cv2.COLOR_RGB2GRAY)[inside].astype(float)
        assert np.corrcoef(a, c)[0, 1] < scores[-1] - 0.2
    assert min(scores) > 0.6, scores


def test_the_mixture_s_colour_jitter_widens_the_hue_of_its_queries(data_dir: Path, tmp_path: Path) -> None:
    """``hue`` / ``saturation`` reach every part's synthesis: a wider hue jitter spreads the queries' mean hue."""
    import cv2

    from topicgeo.train.datasets import build_training_dataset

    split = tmp_path / "extra.txt"
    split.write_text("sjer/2018/SJER_009.tif\n")

    def hue_spread(**colour: float) -> tuple[float, dict]:
        data = build_training_dataset(extra_root=str(data_dir), extra_split=str(split), query_size=128, ref_size=256,
                                      seed=3, **colour)
        means = []
        for i in range(24):
            pair = data[i]
            hsv = cv2.cvtColor(pair.query, cv2.COLOR_RGB2HSV_FULL)[pair.query_valid].astype(float)
            angle = hsv[:, 0] / 256.0 * 2 * np.pi  # circular mean hue of the valid pixels
            means.append(np.angle(np.exp(1j * angle).mean()))
        spread = float(np.abs(np.angle(np.exp(1j * (np.array(means) - np.angle(np.exp(1j * np.array(means)).mean()))))
                              ).mean())
        return spread, data.describe()["extra"]["config"]["synthesis"]

    narrow, synth_narrow = hue_spread()
    wide, synth_wide = hue_spread(hue=0.15, saturation=0.5)
    assert (synth_narrow["hue"], synth_narrow["saturation"]) == (0.03, 0.3)
    assert (synth_wide["hue"], synth_wide["saturation"]) == (0.15, 0.5)
    assert wide > 2 * narrow, (narrow, wide)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("train_*.yaml")),
                         ids=lambda p: p.name)
def test_committed_training_configs_parse_and_name_only_known_data_options(path: Path) -> None:
    import inspect

    from topicgeo.train.datasets import build_training_dataset
    from topicgeo.train.trainer import TrainConfig

    config = TrainConfig.from_yaml(path)
    known = set(inspect.signature(build_training_dataset).parameters)
    assert set(config.data) <= known, sorted(set(config.data) - known)
    assert config.steps > max(config.milestones, default=0) and config.lr > 0


def test_a_resumed_run_may_change_only_the_schedule_ahead(tmp_path: Path) -> None:
    """Between sittings: more or fewer steps and milestones not yet reached may change; the past may not."""
    import dataclasses
    import json

    from topicgeo.train.trainer import TrainConfig, check_resumable

    config = TrainConfig.from_yaml(Path(__file__).resolve().parent.parent / "configs" / "train_cpu_stage5.yaml")
    stored = json.loads(json.dumps(config.to_dict()))
    last = tmp_path / "last.pt"
    later = dataclasses.replace(config, steps=32000, milestones=(29000, 31000))
    check_resumable(stored, later, 23800, last)  # nothing passed yet: the schedule ahead is free
    with pytest.raises(ValueError, match="milestones already passed"):
        check_resumable(stored, later, 30500, last)  # 30000 was passed under the old schedule
    with pytest.raises(ValueError, match="different training config"):
        check_resumable(stored, dataclasses.replace(config, lr=1e-3), 23800, last)
    # snapshots (for weight averaging) do not change the training: a run written before the option resumes with it
    older = {k: v for k, v in stored.items() if k != "snapshot_every"}
    check_resumable(older, dataclasses.replace(config, snapshot_every=config.checkpoint_every * 3), 23800, last)
    with pytest.raises(ValueError, match="snapshot_every must be 0 or a multiple of checkpoint_every"):
        dataclasses.replace(config, snapshot_every=config.checkpoint_every + 1)


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference checkpoint not committed")
def test_the_committed_reference_warm_starts_a_run_from_the_topics_file() -> None:
    """Training resumes from the last committed checkpoint (issue 10): its prompt hash must accept the topics file."""
    from topicgeo.train.trainer import warm_start_model

    prompts = load_prompts_matrix(TOPICS)
    fresh = TopicGeo(get_preset("cpu").with_prompts(*prompts.shape), prompts=prompts)
    warm = warm_start_model(REFERENCE, fresh)
    released = load_model(REFERENCE)
    for key, value in released.state_dict().items():
        if key != "prompts":
            assert torch.equal(warm.state_dict()[key], value), key


def test_weight_averaging_takes_the_mean_of_one_runs_snapshots(tmp_path: Path) -> None:
    from topicgeo.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
    from topicgeo.train.average import average_payloads, main

    prompts = load_prompts_matrix(TOPICS)
    preset = get_preset("cpu").with_prompts(*prompts.shape)
    paths = []
    for step, seed in ((300, 1), (600, 2)):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"snap_{step}.pt")
        save_checkpoint(paths[-1], TopicGeo(preset, prompts=prompts), {"step": step, "train_config": {"seed": seed}})
    (tmp_path / "log.csv").write_text("step,total\n1,2.0\n")
    out = tmp_path / "swa" / "last.pt"
    assert main([*map(str, paths), "--out", str(out), "--log", str(tmp_path / "log.csv")]) == 0
    a, b = (read_checkpoint(p) for p in paths)
    avg = read_checkpoint(out)
    assert avg["step"] == 600 and avg["averaged_steps"] == [300, 600] and avg["train_config"] == {"seed": 2}
    assert (out.parent / "log.csv").is_file()
    for key, value in avg["model"].items():
        if key == "prompts" or not value.is_floating_point():
            assert torch.equal(value, b["model"][key]), key
        else:
            assert torch.allclose(value, (a["model"][key] + b["model"][key]) / 2, atol=1e-6), key
    averaged = load_model(out)  # a loadable network
    assert averaged.config == preset
    other = type(preset).from_dict({**preset.to_dict(), "backbone": {**preset.to_dict()["backbone"], "gn_groups": 4}})
    save_checkpoint(tmp_path / "other.pt", TopicGeo(other, prompts=prompts), {"step": 900})
    with pytest.raises(CheckpointError, match="only snapshots of one run"):
        average_payloads([a, read_checkpoint(tmp_path / "other.pt")])


# --------------------------------------------------------------------------- review fixes (training / checkpoints)


def test_subpixel_targets_beyond_the_window_centres_are_not_regressed() -> None:
    """The prediction is a softmax mean of child centres in [-1, 1]: a target beyond +-1 cannot be reached."""
    from topicgeo.train.step import subpixel_valid

    target = torch.tensor([3, 3, 3, -1, 5, 7])
    sub = torch.tensor([[0.2, -0.9], [1.0, -1.0], [1.2, 0.0], [0.0, 0.0], [0.0, -1.3], [float("nan"), 0.0]])
    assert subpixel_valid(target, sub).tolist() == [True, True, False, False, False, False]


def test_training_step_regresses_only_subpixel_targets_within_the_child_centres(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import topicgeo.train.step as step_module

    seen: dict[str, torch.Tensor] = {}
    original = step_module.subpixel_loss

    def spy(mu: torch.Tensor, std: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        seen["target"], seen["valid"] = target.detach().clone(), valid.clone()
        return original(mu, std, target, valid)

    monkeypatch.setattr(step_module, "subpixel_loss", spy)
    torch.manual_seed(0)
    prompts = load_prompts_matrix(TOPICS)
    model = TopicGeo(get_preset("cpu").with_prompts(*prompts.shape), prompts=prompts)
    data = _dataset(data_dir / "sjer", ["SJER_002", "SJER_009"], seed=3)
    with torch.no_grad():
        training_step(model, collate_pairs([data[0], data[1]]), LossConfig(), torch.Generator().manual_seed(0), 16, 64)
    target, valid = seen["target"], seen["valid"]
    assert valid.sum() > 0
    assert target[valid].abs().max() <= 1.0
    # the batch does hold labelled children whose true position lies between the outer centre and the window edge
    outside = torch.isfinite(target).all(-1) & (target.abs() > 1.0).any(-1) & (target.abs() <= 4 / 3).all(-1)
    assert outside.sum() > 0


def _pair_with_negative(data_dir: Path, index: int) -> TrainingPair:
    synth = QuerySynthesisConfig(query_size=256, side_fraction_range=(0.5, 0.9))
    data = PairDataset(sjer_sources(data_dir / "sjer", ["SJER_002", "SJER_009"]),
                       PairConfig(synthesis=synth, ref_size=448, pad_mode="ref_size", negative_prob=1.0),
                       seed=5, length=8)
    pair = data[index]
    assert pair.negative is not None
    return pair


def test_a_batch_keeps_the_negative_of_one_pair_and_uses_it_in_the_loss(data_dir: Path) -> None:
    import dataclasses

    with_neg = _pair_with_negative(data_dir, 0)
    without = dataclasses.replace(_pair_with_negative(data_dir, 1), negative=None, negative_valid=None,
                                  negative_id=None)
    batch = collate_pairs([with_neg, without])
    assert batch["has_negative"].tolist() == [True, False]
    assert batch["negative"].shape == batch["reference"].shape
    assert torch.equal(batch["negative_valid"][0], torch.from_numpy(with_neg.negative_valid))
    assert not batch["negative_valid"][1].any() and not batch["negative"][1].any()
    assert "negative" not in collate_pairs([without, without])

    torch.manual_seed(0)
    prompts = load_prompts_matrix(TOPICS)
    model = TopicGeo(get_preset("cpu").with_prompts(*prompts.shape), prompts=prompts)

    loss_config = LossConfig(focal_gamma=0.0)  # untrained confidences are tiny: keep their focal term measurable

    def coarse(b: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return float(training_step(model, b, loss_config, torch.Generator().manual_seed(0), 4, 4)["coarse"])

    used = coarse(batch)
    masked = coarse({**batch, "has_negative": torch.tensor([False, False])})
    no_keys = coarse({k: v for k, v in batch.items() if not k.startswith(("negative", "has_negative"))})
    assert masked == pytest.approx(no_keys, abs=1e-6)
    assert used > masked + 1e-4  # the negative adds a focal term on its (all non-matching) coarse pairs
    # the pair without a negative is ignored whatever its (zero) slot holds
    noisy = {**batch, "negative": batch["negative"].clone(), "negative_valid": batch["negative_valid"].clone()}
    noisy["negative"][1] = torch.rand_like(noisy["negative"][1])
    noisy["negative_valid"][1] = True
    assert coarse(noisy) == pytest.approx(used, abs=1e-6)


class _StubPart:
    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, int]:
        assert 0 <= i < self.n
        return self.name, i


@pytest.mark.parametrize("lengths", [(6, 6, 6), (4, 4, 2), (5, 3, 7)])
def test_the_weighted_mixture_draws_every_sample_of_every_part_in_proportion(lengths: tuple[int, int, int]) -> None:
    from collections import Counter

    from topicgeo.train.datasets import MixedPairs

    names, weights = ("a", "b", "c"), (2, 2, 1)
    parts = {n: _StubPart(n, k) for n, k in zip(names, lengths, strict=True)}
    mix = MixedPairs(parts, dict(zip(names, weights, strict=True)))  # type: ignore[arg-type]
    drawn = Counter(mix[i] for i in range(len(mix)))
    for name, n in zip(names, lengths, strict=True):
        counts = [drawn[(name, i)] for i in range(n)]
        assert min(counts) >= 1, (name, counts)  # every sample reachable
        assert max(counts) - min(counts) <= 1, (name, counts)  # and drawn equally often (up to one)
    per_part = Counter(name for name, _ in drawn.elements())
    assert len(mix) % sum(weights) == 0
    for name, w in zip(names, weights, strict=True):
        assert per_part[name] == len(mix) * w // sum(weights)  # the mixture proportions 2 : 2 : 1
    # consecutive occurrences of a weight-2 part in one block draw different samples
    assert mix[0] != mix[1] and mix[0][0] == mix[1][0] == "a"


def test_checkpoints_are_flushed_to_disk_before_and_after_the_rename(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    from topicgeo.checkpoint import atomic_torch_save

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "run" / "last.pt"
    atomic_torch_save({"step": 3, "w": torch.arange(4.0)}, path)
    assert "replace" in events
    cut = events.index("replace")
    assert "fsync file" in events[:cut], events  # the new file's bytes are on disk before it replaces the old one
    assert "fsync dir" in events[cut + 1:], events  # and the rename itself is flushed
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


class _IndexData:
    """A stand-in training set: item ``i`` is ``i`` (collated by the stub below)."""

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> int:
        return i


def _stub_training(monkeypatch: pytest.MonkeyPatch, crash_at: int | None = None) -> list[tuple[list[int], float]]:
    """Replace the data and the loss of :func:`topicgeo.train.trainer.train` by cheap stubs that record, per step,
    the drawn sample indices and one draw of the window sampler's generator."""
    import topicgeo.train.datasets as datasets_module
    import topicgeo.train.trainer as trainer_module

    draws: list[tuple[list[int], float]] = []

    def step(model: TopicGeo, batch: dict[str, torch.Tensor], loss_config: LossConfig, generator: torch.Generator,
             coarse_samples: int, level2_samples: int) -> dict[str, torch.Tensor]:
        if crash_at is not None and len(draws) == crash_at:
            raise KeyboardInterrupt("stopped")
        draws.append((batch["idx"].tolist(), float(torch.rand(1, generator=generator))))
        total = sum((p.float() ** 2).mean() for p in model.parameters() if p.requires_grad) * 1e-3
        zero = total.detach() * 0
        return {"total": total, **dict.fromkeys(("coarse", "topic", "fine1", "fine2", "subpixel", "n_coarse_gt"), zero)}

    monkeypatch.setattr(datasets_module, "build_training_dataset", lambda **_: _IndexData())
    monkeypatch.setattr(trainer_module, "collate_pairs", lambda items: {"idx": torch.tensor(items)})
    monkeypatch.setattr(trainer_module, "training_step", step)
    return draws


def _log_steps(path: Path) -> list[int]:
    import csv

    with path.open() as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def test_a_stopped_and_resumed_run_draws_the_samples_of_an_uninterrupted_one(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses
    import logging

    from topicgeo.checkpoint import atomic_torch_save, read_checkpoint
    from topicgeo.train.trainer import TrainConfig, train

    def config(out: Path, steps: int = 6) -> TrainConfig:
        return TrainConfig(out_dir=str(out), steps=steps, batch_size=3, warmup_steps=2, milestones=(4,),
                           checkpoint_every=2, log_every=1, seed=7)

    straight = _stub_training(monkeypatch)
    train(config(tmp_path / "straight"))
    assert len(straight) == 6

    first = _stub_training(monkeypatch, crash_at=3)  # killed during step 4: last.pt is at step 2, log.csv at 3
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "stopped"))
    assert _log_steps(tmp_path / "stopped" / "log.csv") == [1, 2, 3]
    second = _stub_training(monkeypatch)
    train(config(tmp_path / "stopped"))
    assert first[:2] + second == straight  # the same pairs and windows, step for step
    assert _log_steps(tmp_path / "stopped" / "log.csv") == [1, 2, 3, 4, 5, 6]  # row 3 was dropped and rewritten
    payload = read_checkpoint(tmp_path / "stopped" / "last.pt")
    assert payload["step"] == 6 and "grad_scaler" in payload and payload["sampling_state"]["world_size"] == 1

    # A checkpoint written before the sampling state was stored still resumes, re-seeded, and says so.
    old = read_checkpoint(tmp_path / "straight" / "last.pt")
    del old["sampling_state"]
    atomic_torch_save(old, tmp_path / "straight" / "last.pt")
    later = _stub_training(monkeypatch)
    with caplog.at_level(logging.INFO, logger="topicgeo.train.trainer"):
        train(dataclasses.replace(config(tmp_path / "straight"), steps=7))
    assert len(later) == 1 and "re-seeded from step 6" in caplog.text
    assert _log_steps(tmp_path / "straight" / "log.csv") == [1, 2, 3, 4, 5, 6, 7]
