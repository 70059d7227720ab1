"""``edge-export``: write a versioned, checksummed model bundle (ONNX FP32/FP16, topics, engines, manifest).

The whole bundle is built in a temporary folder and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from edge_runtime.atomic import atomic_directory, atomic_write_bytes, sha256_file
from edge_runtime.bundle import BUNDLE_SCHEMA, GRAPH_NAMES
from export.onnx_export import OPSET, PRECISIONS, export_graph
from export.tensorrt_build import build_engines
from export.topics import TopicEmbeddings, save_topic_embeddings
from topicgeo.checkpoint import model_from_payload, read_checkpoint
from topicgeo.config import COARSE_STRIDE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """What to export.

    Attributes:
        precision: ``fp16`` (FP32 + FP16 ONNX, FP16 engines) or ``fp32``.
        query_size: square query side (multiple of 64).
        tile_size: square map-tile side (multiple of 64); also the fine-stage region-of-interest size.
        opset: ONNX opset (17 or 18).
        build_engines: try TensorRT when it is importable.
    """

    precision: str = "fp16"
    query_size: int = 512
    tile_size: int = 1024
    opset: int = OPSET
    build_engines: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        for name in ("query_size", "tile_size"):
            value = getattr(self, name)
            if value < COARSE_STRIDE * 2 or value % COARSE_STRIDE:
                raise ValueError(f"{name}={value} must be a multiple of {COARSE_STRIDE} and >= {2 * COARSE_STRIDE}")
        if self.opset not in (17, 18):
            raise ValueError(f"opset must be 17 or 18, got {self.opset}")


def bundle_topics(payload: dict[str, Any], prompts: torch.Tensor) -> TopicEmbeddings:
    """The topic embeddings a checkpoint was trained with (its prompt buffer plus the recorded metadata)."""
    meta = payload.get("topics")
    if not meta:
        raise ValueError("the checkpoint records no topic metadata (prompts, encoder id); train it with topicgeo-train")
    emb = prompts.detach().float().numpy()
    if emb.shape != (len(meta["prompts"]), int(meta["dim"])):
        raise ValueError(f"checkpoint prompt buffer {emb.shape} disagrees with its topic metadata")
    return TopicEmbeddings.from_array(emb, meta["prompts"], meta["encoder_id"])


def tool_versions() -> dict[str, str]:
    """Versions of the tools that produced the bundle."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return versions


def export_bundle(checkpoint: Path, out: Path, config: ExportConfig, overwrite: bool = False) -> Path:
    """Export ``checkpoint`` into the bundle folder ``out`` (atomically); returns ``out``."""
    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    model = model_from_payload(payload, checkpoint)
    ckpt_sha = sha256_file(checkpoint)
    topics = bundle_topics(payload, model.prompts)
    bundle_id = hashlib.sha256(
        json.dumps([BUNDLE_SCHEMA, ckpt_sha, config.precision, config.query_size, config.tile_size, config.opset])
        .encode()
    ).hexdigest()[:16]
    precisions = ("fp32", "fp16") if config.precision == "fp16" else ("fp32",)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        graphs: dict[str, Any] = {}
        onnx_files: dict[str, dict[str, Path]] = {}
        for graph in GRAPH_NAMES:
            entry: dict[str, Any] = {"onnx": {}}
            onnx_files[graph] = {}
            for precision in precisions:
                path = tmp / f"{graph}.{precision}.onnx"
                logger.info("exporting %s (%s) -> %s", graph, precision, path.name)
                specs = export_graph(model, graph, precision, path, config.query_size, config.tile_size, config.opset)
                entry["onnx"][precision] = path.name
                entry.update(specs)
                onnx_files[graph][precision] = path
            graphs[graph] = entry
        save_topic_embeddings(tmp / "topics.npz", topics)
        engines: list[dict[str, Any]] = []
        status: dict[str, Any] = {"built": False, "reason": "engine build disabled (--no-engines)"}
        if config.build_engines:
            engines, status = build_engines(onnx_files, tmp, config.precision, ckpt_sha)
        for e in engines:
            graphs[e["graph"]].setdefault("engines", []).append(e)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*"))
                 if p.is_file() and not p.name.startswith("timing.")}
        manifest = {
            "schema": BUNDLE_SCHEMA,
            "bundle_id": bundle_id,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_config": model.config.to_dict(),
            "checkpoint": {"file": checkpoint.name, "sha256": ckpt_sha, "step": payload.get("step")},
            "precision": config.precision,
            "opset": config.opset,
            "query_size": config.query_size,
            "tile_size": config.tile_size,
            "coarse_stride": COARSE_STRIDE,
            "graphs": graphs,
            "topics": {"file": "topics.npz", "encoder_id": topics.encoder_id, "dim": topics.dim,
                       "prompts": list(topics.prompts), "sha256": topics.sha256},
            "engines_status": status,
            "tools": tool_versions(),
            "files": files,
        }
        atomic_write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
    logger.info("bundle %s written to %s", bundle_id, out)
    return Path(out)
