"""Training loop: AdamW + warm-up + MultiStepLR, gradient clipping, CSV logs, tqdm, resumable checkpoints.

``topicgeo-train --config FILE`` (YAML). Runs on CPU; on CUDA with AMP; on several GPUs or machines with
``torchrun --nproc_per_node N -m topicgeo.train.trainer --config FILE`` (DistributedDataParallel; each rank draws
different samples; rank 0 writes logs and checkpoints).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from edge_runtime.atomic import atomic_write_bytes
from topicgeo.checkpoint import load_model, prompt_hash, read_checkpoint, save_checkpoint
from topicgeo.config import TopicGeoConfig, get_preset
from topicgeo.model.topicgeo import TopicGeo
from topicgeo.train.losses import LossConfig
from topicgeo.train.step import collate_pairs, training_step

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One training run (stored in every checkpoint).

    Attributes:
        preset: network preset name. topics: ``.npz`` of prompt embeddings (``export/topics.py`` format).
        data: keyword arguments of :func:`topicgeo.data.pairs.build_training_dataset`.
        out_dir: run folder (checkpoints, ``log.csv``). steps: optimiser steps. batch_size: pairs per step.
        lr, weight_decay, warmup_steps, milestones, gamma, grad_clip: optimiser schedule (decision 21).
        coarse_samples / level2_samples: teacher-forced windows per pair at level 1 / level 2.
        checkpoint_every / log_every: in steps. seed: global seed. loss: loss weights.
        snapshot_every: also keep a copy of ``last.pt`` as ``snapshots/step_<N>.pt`` every this many steps (a multiple
            of ``checkpoint_every``; 0 = none), e.g. for weight averaging (``python -m topicgeo.train.average``).
        init_from: warm start from these weights (e.g. the committed fp16 reference checkpoint) when ``out_dir``
            has no ``last.pt``; the step counter continues from the checkpoint's ``step``.
    """

    preset: str = "cpu"
    topics: str = "topicgeo/assets/topics_minilm.npz"
    data: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs/cpu"
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 200
    milestones: tuple[int, ...] = (1500, 3000, 4500)
    gamma: float = 0.5
    grad_clip: float = 0.5
    coarse_samples: int = 32
    level2_samples: int = 64
    checkpoint_every: int = 100
    snapshot_every: int = 0
    log_every: int = 10
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError("milestones must be increasing")
        if self.snapshot_every < 0 or (self.snapshot_every and self.snapshot_every % self.checkpoint_every):
            raise ValueError(f"snapshot_every must be 0 or a multiple of checkpoint_every ({self.checkpoint_every}), "
                             f"got {self.snapshot_every}")

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        """Read a YAML file; unknown keys are an error that names them."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {sorted(unknown)}")
        if "loss" in raw:
            raw["loss"] = LossConfig(**raw["loss"])
        if "milestones" in raw:
            raw["milestones"] = tuple(raw["milestones"])
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)


def load_prompts_matrix(path: str | Path) -> torch.Tensor:
    """Prompt embeddings ``(P, D)`` float32 from an ``export/topics.py`` ``.npz``."""
    from topicgeo.topics import load_topic_embeddings

    return torch.from_numpy(np.array(load_topic_embeddings(Path(path)).embeddings, dtype=np.float32))  # writable copy


def topics_metadata(path: str | Path) -> dict[str, Any]:
    """Prompt strings, encoder id, dimension and hash of a topics file (stored in checkpoints and bundles)."""
    from topicgeo.topics import load_topic_embeddings

    topics = load_topic_embeddings(Path(path))
    return {"prompts": list(topics.prompts), "encoder_id": topics.encoder_id, "dim": int(topics.dim),
            "sha256": topics.sha256}


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up from 0.1 to 1, then a factor ``gamma`` at each milestone."""
    if step < config.warmup_steps:
        return 0.1 + 0.9 * step / max(1, config.warmup_steps)
    return config.gamma ** sum(step >= m for m in config.milestones)


def build_model(config: TrainConfig) -> TopicGeo:
    """Network of the preset, sized for the prompt matrix."""
    prompts = load_prompts_matrix(config.topics)
    net_config: TopicGeoConfig = get_preset(config.preset).with_prompts(*prompts.shape)
    return TopicGeo(net_config, prompts=prompts)


def data_manifest(dataset: Any) -> dict[str, Any]:
    """What the run was trained on (stored in checkpoints)."""
    describe = getattr(dataset, "describe", None)
    info = describe() if callable(describe) else {"length": len(dataset)}
    info["sha256"] = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()
    return info


def warm_start_model(path: Path, model: TopicGeo) -> TopicGeo:
    """``model`` with the weights of checkpoint ``path`` (e.g. a released card).

    The architecture and prompt embeddings must match exactly; the test-time ``matching`` parameters may differ (a
    released checkpoint carries thresholds tuned after training) and the run keeps ``model``'s own, so its later
    ``last.pt`` resumes against the preset.
    """
    stored = TopicGeoConfig.from_dict(read_checkpoint(path)["config"])
    expected = dataclasses.replace(model.config, matching=stored.matching)
    if stored.matching != model.config.matching:
        logger.info("warm start from %s: its test-time matching parameters are replaced by the preset's", path)
    loaded = load_model(path, expected_config=expected, prompts=model.prompts.cpu())
    # The prompt matrix stays the run's own exact float32 one (a released checkpoint stores it in fp16; its hash, of
    # that float32 matrix or of its fp16 copy, is checked above), so the run's checkpoints hash like its topics file.
    weights = {k: v for k, v in loaded.state_dict().items() if k != "prompts"}
    model.load_state_dict({**weights, "prompts": model.prompts}, strict=True)
    return model


def check_resumable(stored: dict[str, Any], config: TrainConfig, step: int, path: Path) -> None:
    """Refuse to resume ``path`` (written at ``step`` with train config ``stored``) under a different ``config``.

    Free between sittings of one run: ``steps``, ``init_from``, ``snapshot_every`` and the milestones still ahead (the
    schedule that has not run yet may be shortened or stretched; the learning rates already used may not change).
    """
    current = json.loads(json.dumps(config.to_dict()))
    free = {"steps", "init_from", "milestones", "snapshot_every"}
    if {k: v for k, v in stored.items() if k not in free} != {k: v for k, v in current.items() if k not in free}:
        raise ValueError(f"{path} was written by a different training config; use a new out_dir or --no-resume")
    past_old = [m for m in stored.get("milestones", []) if m < step]  # steps 0 .. step-1 ran under these
    past_new = [m for m in current["milestones"] if m < step]
    if past_old != past_new:
        raise ValueError(f"{path} is at step {step}: milestones already passed ({past_old}) cannot change to "
                         f"{past_new}; use a new out_dir or --no-resume")


def train(config: TrainConfig, resume: bool = True) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint."""
    from topicgeo.train.datasets import build_training_dataset

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank = 0
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = torch.distributed.get_rank()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed + rank)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"

    model = build_model(config).to(device)
    dataset = build_training_dataset(**config.data)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, elapsed = 0, 0.0
    if resume and last.exists():
        payload = read_checkpoint(last)
        check_resumable(payload.get("train_config", {}), config, int(payload["step"]), last)
        model = load_model(last, expected_config=model.config, prompts=model.prompts.cpu()).to(device).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        optimiser.load_state_dict(payload["optimizer"])
        start, elapsed = int(payload["step"]), float(payload.get("wall_seconds", 0.0))
        logger.info("resumed %s at step %d", last, start)
    elif config.init_from:
        payload = read_checkpoint(Path(config.init_from))
        model = warm_start_model(Path(config.init_from), model)
        model = model.to(device).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        start, elapsed = int(payload.get("step") or 0), float(payload.get("wall_seconds", 0.0))
        logger.info("warm start from %s (step %d; optimiser state starts fresh)", config.init_from, start)
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    model.train()
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    # Seeded by the start step too: a resumed sitting draws new pairs instead of replaying the first sitting's.
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank + 1_000_003 * start)
    manifest = data_manifest(dataset)
    topics = topics_metadata(config.topics)
    log_path = out / "log.csv"
    fields = ["step", "lr", "total", "coarse", "topic", "fine1", "fine2", "subpixel", "n_coarse_gt", "seconds"]
    if rank == 0 and not log_path.exists():
        with log_path.open("w", newline="") as fh:
            csv.writer(fh).writerow(fields)
    rng = np.random.default_rng([config.seed, rank, start])
    t0 = time.time() - elapsed
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=rank != 0, desc="train")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        indices = rng.integers(0, len(dataset), size=config.batch_size)
        batch = {k: v.to(device) for k, v in collate_pairs([dataset[int(i)] for i in indices]).items()}
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            losses = training_step(
                net.module if distributed else net, batch, config.loss, generator,
                config.coarse_samples, config.level2_samples,
            )
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(optimiser)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimiser)
        scaler.update()
        if rank != 0:
            continue
        bar.set_postfix(loss=f"{float(losses['total'].detach()):.3f}")
        if (step + 1) % config.log_every == 0 or step == start:
            with log_path.open("a", newline="") as fh:
                row = [step + 1, optimiser.param_groups[0]["lr"]]
                row += [round(float(losses[k].detach()), 5) for k in fields[2:-1]] + [round(time.time() - t0, 1)]
                csv.writer(fh).writerow(row)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            extra = {
                "train_config": json.loads(json.dumps(config.to_dict())),
                "optimizer": optimiser.state_dict(),
                "step": step + 1,
                "wall_seconds": time.time() - t0,
                "data_manifest": manifest,
                "topics": topics,
                "prompt_sha256": prompt_hash(model.prompts),
            }
            save_checkpoint(last, model, extra)
            if config.snapshot_every and (step + 1) % config.snapshot_every == 0:
                atomic_write_bytes(out / "snapshots" / f"step_{step + 1:06d}.pt", last.read_bytes())
    if distributed:
        torch.distributed.destroy_process_group()
    return last


def main(argv: list[str] | None = None) -> int:
    """``topicgeo-train --config FILE [--no-resume]``."""
    parser = argparse.ArgumentParser(prog="topicgeo-train", description=__doc__)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--no-resume", action="store_true", help="start from scratch even if out_dir has last.pt")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig.from_yaml(args.config)
    if args.steps:
        config = dataclasses.replace(config, steps=args.steps)
    path = train(config, resume=not args.no_resume)
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
