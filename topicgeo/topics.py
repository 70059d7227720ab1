"""The prompt-embedding file format (``.npz``, no pickle): what the network is trained with and bundles ship.

Encoders that produce these files live in ``export/topics.py`` (``edge-export topics``); this module only reads,
validates and writes them, so training never depends on the export tools.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.atomic import atomic_write_bytes

FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-3


class TopicEmbeddingError(ValueError):
    """A topic-embedding file or array is missing, corrupt or inconsistent."""


def embedding_sha256(embeddings: np.ndarray) -> str:
    """sha256 hex digest of ``embeddings`` as contiguous little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(embeddings, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class TopicEmbeddings:
    """Validated prompt embeddings.

    Attributes:
        embeddings: ``(P, D)`` float32, every row L2-normalised.
        prompts: the ``P`` prompt sentences, in row order.
        encoder_id: which text encoder produced them (name, model, weights).
        dim: ``D``.
        sha256: :func:`embedding_sha256` of ``embeddings``.
    """

    embeddings: np.ndarray
    prompts: tuple[str, ...]
    encoder_id: str
    dim: int
    sha256: str

    def __post_init__(self) -> None:
        emb = self.embeddings
        if not isinstance(emb, np.ndarray) or emb.ndim != 2 or emb.dtype != np.float32:
            raise TopicEmbeddingError(
                f"embeddings must be a (P, D) float32 array, got {getattr(emb, 'shape', None)} "
                f"{getattr(emb, 'dtype', type(emb))}"
            )
        if emb.shape[0] != len(self.prompts):
            raise TopicEmbeddingError(f"{emb.shape[0]} embeddings for {len(self.prompts)} prompts")
        if emb.shape[1] != self.dim:
            raise TopicEmbeddingError(f"embeddings have dimension {emb.shape[1]}, dim says {self.dim}")
        if emb.shape[0] == 0 or self.dim == 0:
            raise TopicEmbeddingError(f"empty embedding matrix {emb.shape}")
        if not np.isfinite(emb).all():
            raise TopicEmbeddingError("embeddings contain non-finite values")
        norms = np.linalg.norm(emb.astype(np.float64), axis=1)
        if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
            raise TopicEmbeddingError(
                f"embedding rows are not L2-normalised (norms {norms.min():.4f}..{norms.max():.4f})"
            )
        if not self.encoder_id:
            raise TopicEmbeddingError("encoder_id is empty")
        actual = embedding_sha256(emb)
        if actual != self.sha256:
            raise TopicEmbeddingError(f"sha256 mismatch: stored {self.sha256}, embeddings hash to {actual}")
        emb.setflags(write=False)

    @classmethod
    def from_array(cls, embeddings: np.ndarray, prompts: Sequence[str], encoder_id: str) -> TopicEmbeddings:
        """L2-normalise ``embeddings`` ``(P, D)`` (float32) and wrap them with their hash."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2:
            raise TopicEmbeddingError(f"embeddings must be (P, D), got shape {emb.shape}")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if (norms <= 0).any():
            raise TopicEmbeddingError("an embedding row is zero and cannot be normalised")
        emb32 = np.ascontiguousarray(emb / norms, dtype=np.float32)
        return cls(emb32, tuple(prompts), encoder_id, int(emb32.shape[1]), embedding_sha256(emb32))


def save_topic_embeddings(path: str | os.PathLike[str], topics: TopicEmbeddings) -> Path:
    """Write ``topics`` atomically (temp file in the same folder + ``os.replace``); returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        embeddings=np.ascontiguousarray(topics.embeddings, dtype="<f4"),
        prompts=np.array(topics.prompts, dtype=np.str_),
        encoder_id=np.array(topics.encoder_id, dtype=np.str_),
        dim=np.array(topics.dim, dtype=np.int64),
        sha256=np.array(topics.sha256, dtype=np.str_),
        format_version=np.array(FORMAT_VERSION, dtype=np.int64),
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_topic_embeddings(
    path: str | os.PathLike[str], expected_dim: int | None = None, expected_count: int | None = None
) -> TopicEmbeddings:
    """Read and validate a topic-embedding file.

    Args:
        path: ``.npz`` written by :func:`save_topic_embeddings`.
        expected_dim: if set, the embedding dimension the caller's network expects.
        expected_count: if set, the number of prompts expected.

    Raises:
        FileNotFoundError: no such file.
        TopicEmbeddingError: corrupt file, missing keys, wrong dtypes, hash mismatch or unexpected shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"topic embedding file {path} does not exist")
    required = ("embeddings", "prompts", "encoder_id", "dim", "sha256", "format_version")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in required if k not in data.files]
            if missing:
                raise TopicEmbeddingError(f"{path}: missing keys {missing}")
            arrays = {k: data[k] for k in required}
    except TopicEmbeddingError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise TopicEmbeddingError(f"{path} is not a readable topic-embedding .npz: {exc}") from exc
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise TopicEmbeddingError(f"{path}: format_version {version}, this code reads {FORMAT_VERSION}")
    for key in ("prompts", "encoder_id", "sha256"):
        if arrays[key].dtype.kind != "U":
            raise TopicEmbeddingError(f"{path}: {key!r} must be a unicode array, got {arrays[key].dtype}")
    emb = arrays["embeddings"]
    if emb.dtype != np.dtype("<f4"):
        raise TopicEmbeddingError(f"{path}: embeddings must be little-endian float32, got {emb.dtype}")
    try:
        topics = TopicEmbeddings(
            embeddings=np.ascontiguousarray(emb, dtype=np.float32),
            prompts=tuple(str(p) for p in arrays["prompts"].reshape(-1)),
            encoder_id=str(arrays["encoder_id"]),
            dim=int(arrays["dim"]),
            sha256=str(arrays["sha256"]),
        )
    except TopicEmbeddingError as exc:
        raise TopicEmbeddingError(f"{path}: {exc}") from exc
    if expected_dim is not None and topics.dim != expected_dim:
        raise TopicEmbeddingError(
            f"{path}: embedding dimension {topics.dim} ({topics.encoder_id}) does not match the expected {expected_dim}"
        )
    if expected_count is not None and len(topics.prompts) != expected_count:
        raise TopicEmbeddingError(f"{path}: {len(topics.prompts)} prompts, expected {expected_count}")
    return topics
