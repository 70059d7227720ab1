"""LoFTR-style transformer encoder layers (linear or full attention) and the sine positional encoding.

Layer (method.md §2): q/k/v/merge projections without bias, LayerNorm on the message, an MLP on
``concat[x, message]`` (2d -> 2d -> d, ReLU, no bias), LayerNorm, residual. Parameters: 10 d^2 + 4 d (self-attention).
All ops are plain matmuls so the layers export to ONNX with static shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from topicgeo.model.norms import FP32LayerNorm


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_mask: torch.Tensor | None) -> torch.Tensor:
    """Linear attention with phi(x) = elu(x) + 1 (Katharopoulos et al.; LoFTR), computed in fp32.

    Args:
        q: ``(B, L, H, D)`` queries. k, v: ``(B, S, H, D)``. kv_mask: ``(B, S)`` bool, True = valid source token.

    Returns:
        ``(B, L, H, D)`` messages.
    """
    out_dtype = v.dtype
    q = torch.nn.functional.elu(q.float()) + 1.0
    k = torch.nn.functional.elu(k.float()) + 1.0
    v = v.float()
    if kv_mask is not None:
        m = kv_mask[:, :, None, None].to(k.dtype)
        k = k * m
        v = v * m
    s = v.shape[1]
    v = v / s  # keeps the KV sum in a safe range for fp16
    kv = torch.einsum("bshd,bshv->bhdv", k, v)
    z = 1.0 / (torch.einsum("blhd,bhd->blh", q, k.sum(dim=1)) + 1e-6)
    return (torch.einsum("blhd,bhdv,blh->blhv", q, kv, z) * s).to(out_dtype)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention computed in fp32 (an fp32 island: logits and softmax never run in fp16).

    Args:
        q: ``(B, L, H, D)``. k, v: ``(B, S, H, D)``. kv_mask: ``(B, S)`` bool or None.

    Returns:
        ``(B, L, H, D)`` messages in the dtype of ``v``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.einsum("blhd,bshd->bhls", q.float(), k.float()) * scale
    if kv_mask is not None:
        logits = logits.masked_fill(~kv_mask[:, None, None, :], -1e9)
    attn = torch.softmax(logits, dim=-1)
    return torch.einsum("bhls,bshd->blhd", attn, v.float()).to(v.dtype)


class EncoderLayer(nn.Module):
    """One LoFTR encoder layer; self-attention when ``source`` is ``x``, cross-attention otherwise."""

    def __init__(self, d_model: int, n_heads: int, attention: str = "linear", d_source: int | None = None) -> None:
        super().__init__()
        d_source = d_model if d_source is None else d_source
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.attention = attention
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_source, d_model, bias=False)
        self.v_proj = nn.Linear(d_source, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model, 2 * d_model, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(2 * d_model, d_model, bias=False),
        )
        self.norm1 = FP32LayerNorm(d_model)
        self.norm2 = FP32LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Update ``x (B, L, d_model)`` with messages from ``source (B, S, d_source)``; returns ``(B, L, d)``."""
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.n_heads, self.head_dim)
        k = self.k_proj(source).view(b, source.shape[1], self.n_heads, self.head_dim)
        v = self.v_proj(source).view(b, source.shape[1], self.n_heads, self.head_dim)
        attend = linear_attention if self.attention == "linear" else full_attention
        message = attend(q, k, v, source_mask).reshape(b, length, -1)
        message = self.norm1(self.merge(message))
        message = self.norm2(self.mlp(torch.cat([x, message], dim=-1)))
        return x + message


def sine_position_encoding(d_model: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """LoFTR's 2-D sine encoding computed for the requested grid (no state that grows with use).

    Returns:
        ``(1, d_model, height, width)`` float32.
    """
    if d_model % 4:
        raise ValueError(f"d_model={d_model} must be divisible by 4 for the 2-D sine encoding")
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
    steps = torch.arange(0, d_model // 2, 2, dtype=torch.float32, device=device)
    div = torch.exp(steps * (-math.log(10000.0) / (d_model // 2)))
    div = div[:, None, None]
    pe = torch.zeros(d_model, height, width, dtype=torch.float32, device=device)
    pe[0::4] = torch.sin(x[None] * div)
    pe[1::4] = torch.cos(x[None] * div)
    pe[2::4] = torch.sin(y[None] * div)
    pe[3::4] = torch.cos(y[None] * div)
    return pe[None]
