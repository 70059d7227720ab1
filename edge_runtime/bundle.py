"""Reader of the versioned model bundle that ``edge-export`` writes (torch-free).

Layout::

    BUNDLE/
      manifest.json              schema, model config, hashes, graph I/O specs, engines (or why none)
      topics.npz                 prompt embeddings the checkpoint was trained with
      <graph>.fp32.onnx          encoder_query, encoder_tile, fine_matcher
      <graph>.fp16.onnx          (precision fp16)
      engines/<graph>.<gpu>.trt<version>.<hash>.plan   (when TensorRT was present)

Opening a bundle verifies the schema and the sha256 of every file it lists; a missing, extra-broken or mismatched
file is a :class:`BundleError` that names it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.atomic import verify_listed_files

logger = logging.getLogger(__name__)

BUNDLE_SCHEMA = "topicgeo-edge-bundle/1"
GRAPH_NAMES = ("encoder_query", "encoder_tile", "fine_matcher")


def safe_name(text: str) -> str:
    """File-name-safe form of a GPU name or a version (used in engine file names and their manifest entries)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


class BundleError(ValueError):
    """A bundle that is missing, corrupt, or does not match what the caller needs."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype (numpy name) of one graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        """Parse a manifest entry."""
        return cls(str(raw["name"]), tuple(int(d) for d in raw["shape"]), str(raw["dtype"]))

    def to_dict(self) -> dict[str, Any]:
        """Manifest entry."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: its ONNX files per precision, I/O specs and optional TensorRT engines."""

    name: str
    onnx: dict[str, str]  # precision -> file name
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    engines: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Bundle:
    """A verified bundle opened from ``root``."""

    root: Path
    manifest: dict[str, Any]
    graphs: dict[str, GraphEntry]

    @property
    def bundle_id(self) -> str:
        """Identifier that map caches record (hash of the model and export settings)."""
        return str(self.manifest["bundle_id"])

    @property
    def precision(self) -> str:
        """``fp16`` or ``fp32``: the precision the bundle was exported for."""
        return str(self.manifest["precision"])

    @property
    def model_config(self) -> dict[str, Any]:
        """The network config stored at export."""
        return dict(self.manifest["model_config"])

    @property
    def query_size(self) -> int:
        """Square query side in pixels."""
        return int(self.manifest["query_size"])

    @property
    def tile_size(self) -> int:
        """Square map-tile side in pixels."""
        return int(self.manifest["tile_size"])

    def onnx_path(self, graph: str, precision: str | None = None) -> Path:
        """Path of a graph's ONNX file at ``precision`` (default: the bundle's)."""
        entry = self._graph(graph)
        precision = precision or self.precision
        if precision not in entry.onnx:
            raise BundleError(f"bundle {self.root} has no {precision} ONNX of {graph!r} (has {sorted(entry.onnx)})")
        return self.root / entry.onnx[precision]

    def engines(self, graph: str) -> tuple[dict[str, Any], ...]:
        """TensorRT engines built for ``graph`` (each with ``file``, ``gpu``, ``tensorrt``, ``precision``)."""
        return self._graph(graph).engines

    def _graph(self, graph: str) -> GraphEntry:
        try:
            return self.graphs[graph]
        except KeyError:
            raise BundleError(f"bundle {self.root} has no graph {graph!r} (has {sorted(self.graphs)})") from None


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` of a bundle folder (no hash checks)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"not a bundle: {path} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"corrupt bundle manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
        got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: schema {got!r}, expected {BUNDLE_SCHEMA!r}")
    return manifest


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Recompute the sha256 of every listed file; raises :class:`BundleError` naming the first bad one."""
    verify_listed_files(root, manifest.get("files"), "bundle", BundleError)


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Open (and by default verify) a bundle."""
    root = Path(root)
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    graphs = {}
    try:
        for name, raw in manifest.get("graphs", {}).items():
            graphs[name] = GraphEntry(
                name=name,
                onnx=dict(raw["onnx"]),
                inputs=tuple(TensorSpec.from_dict(s) for s in raw["inputs"]),
                outputs=tuple(TensorSpec.from_dict(s) for s in raw["outputs"]),
                engines=tuple(raw.get("engines", [])),
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a damaged manifest (a key or value changed)
        raise BundleError(f"{root / 'manifest.json'} is malformed: {type(exc).__name__}: {exc}") from exc
    missing = set(GRAPH_NAMES) - set(graphs)
    if missing:
        raise BundleError(f"bundle {root} lacks graphs {sorted(missing)}")
    return Bundle(root=root, manifest=manifest, graphs=graphs)
