"""``python -m topicgeo.train.average``: average the weights of several checkpoints of one run (SWA).

Stochastic weight averaging (Izmailov et al., 2018): snapshots taken along a run at a constant learning rate lie around
a minimum; their mean often generalises better than any one of them. The network normalises with GroupNorm only, so
there are no batch statistics to re-estimate after averaging.

    python -m topicgeo.train.average --out runs/cpu_stage7/swa/last.pt runs/cpu_stage7/snapshots/*.pt

The output is a training checkpoint (fp32, ``last.pt``-like: the newest snapshot's ``train_config``, ``step``,
``data_manifest``, ``topics`` and ``prompt_sha256``, plus ``averaged_steps``), so the release tools
(``scripts/release_reference.sh``) take its folder as a run; a ``log.csv`` beside the newest snapshot is copied along.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from edge_runtime.atomic import atomic_write_bytes
from topicgeo.checkpoint import CheckpointError, atomic_torch_save, read_checkpoint

logger = logging.getLogger(__name__)

KEPT = ("train_config", "data_manifest", "topics", "prompt_sha256", "wall_seconds")


def average_payloads(payloads: Sequence[dict]) -> dict:
    """The checkpoint payload whose floating weights are the mean of ``payloads``' (same config and prompt hash);
    integer buffers and the prompt matrix come from the newest (highest ``step``) payload."""
    if not payloads:
        raise CheckpointError("nothing to average")
    newest = max(payloads, key=lambda p: int(p.get("step") or 0))
    for p in payloads:
        if p["config"] != newest["config"] or p["prompt_sha256"] != newest["prompt_sha256"]:
            raise CheckpointError(f"checkpoint of step {p.get('step')} has another config or prompt hash than step "
                                  f"{newest.get('step')}: only snapshots of one run can be averaged")
    state = {}
    for key, value in newest["model"].items():
        if key == "prompts" or not value.is_floating_point():
            state[key] = value.clone()
        else:
            state[key] = torch.stack([p["model"][key].float() for p in payloads]).mean(dim=0)
    out = {"format": newest["format"], "config": newest["config"], "model": state,
           "step": int(newest.get("step") or 0),
           "averaged_steps": sorted(int(p.get("step") or 0) for p in payloads)}
    out.update({k: newest[k] for k in KEPT if k in newest})
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint (e.g. RUN/swa/last.pt)")
    parser.add_argument("--log", type=Path, default=None, help="log.csv to copy beside the output (loss curve)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        payloads = [read_checkpoint(p) for p in args.checkpoints]
        averaged = average_payloads(payloads)
    except CheckpointError as exc:
        parser.error(str(exc))
    atomic_torch_save(averaged, args.out)
    if args.log is not None:
        atomic_write_bytes(args.out.parent / "log.csv", args.log.read_bytes())
    logger.info("averaged %d checkpoints (steps %s) into %s", len(payloads), averaged["averaged_steps"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
