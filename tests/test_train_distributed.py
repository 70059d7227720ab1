"""Data-parallel training on two CPU processes (gloo): the ranks' gradients are averaged, so their weights agree."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _sync_worker(rank: int, init_file: str, out: str) -> None:
    from topicgeo.train.trainer import average_gradients, broadcast_module

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(rank)  # different initial weights per rank, as in the trainer
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        only_rank1 = torch.nn.Parameter(torch.zeros(2))  # a gradient on rank 1 only
        never = torch.nn.Parameter(torch.zeros(2))  # no gradient anywhere
        broadcast_module(model)
        weights = [p.detach().clone() for p in model.parameters()]
        x = torch.randn(8, 4) * (rank + 1)  # different inputs per rank
        loss = model(x).square().sum()
        if rank == 1:
            loss = loss + (3.0 * only_rank1).sum()
        loss.backward()
        local = [p.grad.clone() for p in model.parameters()]
        average_gradients([*model.parameters(), only_rank1, never])
        torch.save({"weights": weights, "local": local, "synced": [p.grad for p in model.parameters()],
                    "only_rank1": only_rank1.grad, "never": never.grad}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_over_the_ranks(tmp_path: Path) -> None:
    mp.spawn(_sync_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for a, b in zip(r0["weights"], r1["weights"], strict=True):
        assert torch.equal(a, b)  # rank 0's initial weights everywhere
    assert not all(torch.allclose(a, b) for a, b in zip(r0["local"], r1["local"], strict=True))  # different data
    for a, b, la, lb in zip(r0["synced"], r1["synced"], r0["local"], r1["local"], strict=True):
        assert torch.equal(a, b)
        assert torch.allclose(a, (la + lb) / 2, atol=1e-6)
    assert torch.equal(r0["only_rank1"], torch.full((2,), 1.5)) and torch.equal(r1["only_rank1"], r0["only_rank1"])
    assert r0["never"] is None and r1["never"] is None  # untouched parameters stay out of the optimiser step


def _train_worker(rank: int, port: int, out: str) -> None:
    import topicgeo.train.datasets as datasets_module
    import topicgeo.train.trainer as trainer_module

    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    records: list[dict[str, object]] = []

    class Data:
        def __len__(self) -> int:
            return 1000

        def __getitem__(self, i: int) -> int:
            return i

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor], loss_config: object, generator: torch.Generator,
             coarse_samples: int, level2_samples: int) -> dict[str, torch.Tensor]:
        params = [p for p in model.parameters() if p.requires_grad]
        records.append({"idx": batch["idx"].clone(),
                        "weights": torch.cat([p.detach().reshape(-1)[:64] for p in params])})
        target = batch["idx"].float().mean() / 500.0 - 1.0  # a rank-dependent pull on every weight
        total = sum(((p.float() - target) ** 2).mean() for p in params)
        zero = total.detach() * 0
        return {"total": total, **dict.fromkeys(("coarse", "topic", "fine1", "fine2", "subpixel", "n_coarse_gt"), zero)}

    datasets_module.build_training_dataset = lambda **_: Data()
    trainer_module.collate_pairs = lambda items: {"idx": torch.tensor(items)}
    trainer_module.training_step = step
    config = trainer_module.TrainConfig(out_dir=str(Path(out) / "run"), steps=3, batch_size=2, warmup_steps=0,
                                        milestones=(), checkpoint_every=3, log_every=1, lr=1e-2)
    trainer_module.train(config)
    torch.save(records, Path(out) / f"records{rank}.pt")
    # train() has destroyed the process group; under load a gloo thread still winding down at interpreter exit can
    # abort the process ("terminate called without an active exception") after everything is written, so the worker
    # leaves without C++ static teardown
    os._exit(0)


def test_a_data_parallel_run_keeps_the_ranks_weights_equal(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_train_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"records{r}.pt", weights_only=True) for r in range(WORLD))
    assert len(r0) == len(r1) == 3
    assert not torch.equal(r0[0]["idx"], r1[0]["idx"])  # each rank draws its own samples
    for a, b in zip(r0, r1, strict=True):
        assert torch.equal(a["weights"], b["weights"])  # ... yet every step starts from the same weights
    assert not torch.equal(r0[0]["weights"], r0[-1]["weights"])  # and they did move
    assert (tmp_path / "run" / "last.pt").is_file()
