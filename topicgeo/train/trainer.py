"""Training loop: AdamW + warm-up + MultiStepLR, gradient clipping, CSV logs, tqdm, resumable checkpoints.

``topicgeo-train --config FILE`` (YAML). Runs on CPU; on CUDA with AMP; on several GPUs or machines with
``torchrun --nproc_per_node N -m topicgeo.train.trainer --config FILE`` (data parallel: rank 0's weights are broadcast
at the start, every rank draws different samples and the gradients are averaged over the ranks every step, see
:func:`average_gradients`; rank 0 writes logs and checkpoints).

A checkpoint also stores every rank's sampling state (the index sampler's and the window sampler's random
generators) and the AMP gradient scaler, so a resumed run continues exactly where the checkpoint was written; on
resume, ``log.csv`` rows written after that checkpoint are dropped.
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
from collections.abc import Iterable
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


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank of the default process group (in place)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks of the default process group (a no-op without one).

    Called after ``backward`` and before unscaling / clipping on every rank, with the parameters in the same order.
    A parameter without a gradient on some ranks takes zeros there; one without a gradient on every rank keeps
    ``None`` (the optimiser skips it, as in a single process). The gradients of one dtype travel as one flat
    buffer (one ``all_reduce`` per dtype plus one for the presence flags).

    Args:
        parameters: the model's parameters; ``p.grad`` has ``p``'s shape (any, e.g. ``(C_out, C_in, k, k)``).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    params = [p for p in parameters if p.requires_grad]
    if world == 1 or not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    torch.distributed.all_reduce(present)  # how many ranks hold a gradient, per parameter
    synced = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
    for p in synced:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for dtype in dict.fromkeys(p.grad.dtype for p in synced):  # first-seen order: the same on every rank
        grads = [p.grad for p in synced if p.grad.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


def sampling_state(rng: np.random.Generator, generator: torch.Generator) -> dict[str, Any]:
    """One rank's random state for a checkpoint: the index sampler ``rng`` (its bit generator state as JSON), the
    window sampler ``generator`` and torch's global CPU generator (uint8 state tensors)."""
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": generator.get_state(),
            "torch_global": torch.get_rng_state()}


def restore_sampling_state(
    saved: dict[str, Any] | None, rank: int, world: int, rng: np.random.Generator, generator: torch.Generator
) -> bool:
    """Restore this rank's :func:`sampling_state` from a checkpoint's ``sampling_state`` entry (in place).

    Returns False, leaving ``rng`` and ``generator`` as seeded, when the checkpoint predates the entry or was
    written with another number of ranks.
    """
    if not saved or int(saved.get("world_size", -1)) != world or len(saved.get("ranks", [])) != world:
        return False
    state = saved["ranks"][rank]
    rng.bit_generator.state = json.loads(state["numpy"])
    generator.set_state(state["torch"])
    torch.set_rng_state(state["torch_global"])
    return True


def trim_log(path: Path, step: int) -> int:
    """Drop the rows of ``log.csv`` at ``path`` logged after ``step`` (a checkpoint the run restarts from).

    Returns the number of rows dropped; the file is rewritten atomically only when rows go.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return 0
    kept = [lines[0]]
    for line in lines[1:]:
        cells = next(csv.reader([line]), [])
        try:
            logged = int(float(cells[0]))
        except (IndexError, ValueError):
            logged = step + 1  # a torn last line of a killed run
        if logged <= step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_bytes(path, "".join(kept).encode())
    return dropped


def train(config: TrainConfig, resume: bool = True) -> Path:
    """Run (or resume) training; returns the path of the last checkpoint."""
    from topicgeo.train.datasets import build_training_dataset

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank, world = 0, 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(config.seed + rank)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"

    model = build_model(config).to(device)
    dataset = build_training_dataset(**config.data)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, elapsed = 0, 0.0
    resumed: dict[str, Any] | None = None
    if resume and last.exists():
        resumed = read_checkpoint(last)
        check_resumable(resumed.get("train_config", {}), config, int(resumed["step"]), last)
        model = load_model(last, expected_config=model.config, prompts=model.prompts.cpu()).to(device).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        optimiser.load_state_dict(resumed["optimizer"])
        start, elapsed = int(resumed["step"]), float(resumed.get("wall_seconds", 0.0))
        logger.info("resumed %s at step %d", last, start)
    elif config.init_from:
        payload = read_checkpoint(Path(config.init_from))
        model = warm_start_model(Path(config.init_from), model)
        model = model.to(device).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        start, elapsed = int(payload.get("step") or 0), float(payload.get("wall_seconds", 0.0))
        logger.info("warm start from %s (step %d; optimiser state starts fresh)", config.init_from, start)
    if distributed:
        broadcast_module(model)  # ranks were initialised from different seeds
    model.train()
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    # A fresh sitting seeds by the start step too (a warm start draws new pairs instead of replaying the first run's);
    # a resumed one continues the checkpoint's generators.
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank + 1_000_003 * start)
    rng = np.random.default_rng([config.seed, rank, start])
    if resumed is not None:
        if not restore_sampling_state(resumed.get("sampling_state"), rank, world, rng, generator):
            logger.info("%s holds no sampling state for %d rank(s) (older checkpoint or another world size): the "
                        "samplers are re-seeded from step %d", last, world, start)
        if scaler.is_enabled():
            if resumed.get("grad_scaler"):
                scaler.load_state_dict(resumed["grad_scaler"])
            else:
                logger.info("%s holds no gradient-scaler state: the AMP loss scale starts afresh", last)
    manifest = data_manifest(dataset)
    topics = topics_metadata(config.topics)
    log_path = out / "log.csv"
    fields = ["step", "lr", "total", "coarse", "topic", "fine1", "fine2", "subpixel", "n_coarse_gt", "seconds"]
    if rank == 0:
        dropped = trim_log(log_path, start)
        if dropped:
            logger.info("dropped %d row(s) of %s logged after step %d", dropped, log_path, start)
        if not log_path.exists() or not log_path.read_text().strip():
            with log_path.open("w", newline="") as fh:
                csv.writer(fh).writerow(fields)
    t0 = time.time() - elapsed
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=rank != 0, desc="train")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        indices = rng.integers(0, len(dataset), size=config.batch_size)
        batch = {k: v.to(device) for k, v in collate_pairs([dataset[int(i)] for i in indices]).items()}
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            losses = training_step(model, batch, config.loss, generator, config.coarse_samples, config.level2_samples)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        if distributed:
            average_gradients(model.parameters())  # before unscaling: every rank clips and steps the same gradients
        scaler.unscale_(optimiser)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimiser)
        scaler.update()
        checkpoint_due = (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps
        states = [sampling_state(rng, generator)] if checkpoint_due else []
        if checkpoint_due and distributed:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, states[0])  # every rank takes part
            states = gathered
        if rank != 0:
            continue
        bar.set_postfix(loss=f"{float(losses['total'].detach()):.3f}")
        if (step + 1) % config.log_every == 0 or step == start:
            with log_path.open("a", newline="") as fh:
                row = [step + 1, optimiser.param_groups[0]["lr"]]
                row += [round(float(losses[k].detach()), 5) for k in fields[2:-1]] + [round(time.time() - t0, 1)]
                csv.writer(fh).writerow(row)
        if checkpoint_due:
            extra = {
                "train_config": json.loads(json.dumps(config.to_dict())),
                "optimizer": optimiser.state_dict(),
                "grad_scaler": scaler.state_dict(),
                "sampling_state": {"world_size": world, "ranks": states},
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
