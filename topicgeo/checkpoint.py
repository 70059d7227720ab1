"""Checkpoints that carry their config and the hash of the prompt embeddings they were trained with.

Files are written atomically and durably (temp file, fsync, rename, fsync of the folder) and read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from edge_runtime.atomic import atomic_write_bytes
from topicgeo.config import TopicGeoConfig
from topicgeo.model.topicgeo import TopicGeo

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "topicgeo-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the requested config / prompt embeddings."""


def prompt_hash(prompts: torch.Tensor) -> str:
    """sha256 of the prompt matrix as contiguous little-endian float32 bytes."""
    return hashlib.sha256(prompts.detach().float().contiguous().cpu().numpy().astype("<f4").tobytes()).hexdigest()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` so that a crash or power loss leaves the old file or the complete new one.

    The payload is serialised in memory and written by :func:`edge_runtime.atomic.atomic_write_bytes` (a temp file in
    the target folder fsynced before the rename, the folder fsynced after it, so the rename itself survives).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def save_checkpoint(path: Path, model: TopicGeo, extra: dict[str, Any] | None = None, half: bool = False) -> None:
    """Write weights, config and prompt hash (``half`` stores floating weights as fp16, e.g. for the repo)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "prompt_sha256": prompt_hash(model.prompts),
        "model": state,
        **(extra or {}),
    }
    atomic_torch_save(payload, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict safely; a missing or corrupt file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        if isinstance(exc, pickle.UnpicklingError):
            # torch's own text suggests weights_only=False, i.e. running the file's pickle code: never for a file
            # that is not a checkpoint of ours
            why = "not a weights-only PyTorch checkpoint (no tensors and plain data could be read from it)"
        else:  # truncated or foreign: torch's first line says which
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a TopicGeo checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def load_model(
    path: Path, expected_config: TopicGeoConfig | None = None, prompts: torch.Tensor | None = None
) -> TopicGeo:
    """Rebuild the network from a checkpoint, refusing config or prompt-embedding drift.

    Args:
        path: checkpoint file.
        expected_config: when given, the checkpoint's config must equal it.
        prompts: when given, these ``(P, D)`` embeddings must hash to the checkpoint's prompt hash: the hash of the
            float32 matrix a run was trained with, or of its fp16 rounding (a checkpoint re-saved from a loaded fp16
            release, as ``topicgeo.train.card`` did before it kept the run's hash, carries that one).
    """
    return model_from_payload(read_checkpoint(path), path, expected_config, prompts)


def model_from_payload(
    payload: dict[str, Any], path: Path, expected_config: TopicGeoConfig | None = None,
    prompts: torch.Tensor | None = None,
) -> TopicGeo:
    """:func:`load_model` on a payload already read by :func:`read_checkpoint` from ``path`` (named in errors)."""
    config = TopicGeoConfig.from_dict(payload["config"])
    if expected_config is not None and expected_config != config:
        raise CheckpointError(
            f"checkpoint {path} was trained with config {config.name!r} that differs from the requested "
            f"{expected_config.name!r}: {_config_diff(config, expected_config)}"
        )
    state = payload["model"]
    stored = state["prompts"].float()
    if prompts is not None:
        if tuple(prompts.shape) != tuple(stored.shape):
            raise CheckpointError(
                f"prompt embeddings of shape {tuple(prompts.shape)} do not fit checkpoint {path} "
                f"(trained with {tuple(stored.shape)})"
            )
        if payload["prompt_sha256"] not in (prompt_hash(prompts), prompt_hash(prompts.half())):
            raise CheckpointError(
                f"prompt embeddings differ from those checkpoint {path} was trained with "
                f"(sha256 {payload['prompt_sha256'][:12]}...)"
            )
    model = TopicGeo(config, prompts=stored)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval()


def _config_diff(a: TopicGeoConfig, b: TopicGeoConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for section in da:
        if isinstance(da[section], dict):
            for key in da[section]:
                if da[section][key] != db[section].get(key):
                    diffs.append(f"{section}.{key}: {da[section][key]} != {db[section].get(key)}")
        elif da[section] != db[section]:
            diffs.append(f"{section}: {da[section]} != {db[section]}")
    return "; ".join(diffs) or "no field differs"
