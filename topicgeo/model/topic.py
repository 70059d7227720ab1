"""Topic module (Table 1; method.md decision 4): parallel SA and prompt-CA branches fused by a Linear."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from topicgeo.config import TopicConfig
from topicgeo.model.attention import EncoderLayer, sine_position_encoding


class TopicOutput(NamedTuple):
    """Topic features of one image batch.

    Attributes:
        features: ``(B, N, d_model)`` coarse topic features (N = h*w cells at 1/64, row-major).
        theta: ``(B, N, P)`` topic distribution of each cell over the P prompts (sums to 1).
    """

    features: torch.Tensor
    theta: torch.Tensor


def unit_scaled(features: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` features scaled to norm ``sqrt(C)`` (in fp32), so the coarse similarity ``<f_q, f_r> / C`` is the
    cosine and the dual-softmax logits span ``[-1/T, 1/T]`` whatever the weights' scale (weight decay cannot
    flatten the coarse confidences)."""
    c = features.shape[-1]
    return (nn.functional.normalize(features.float(), dim=-1) * math.sqrt(c)).to(features.dtype)


class TopicModule(nn.Module):
    """``F_SA = SA^n(Fc + PE)``; ``F_CA = CA^n(Linear_ca(Fc), prompts)``; ``out = Linear_d(concat(F_SA, F_CA))``
    scaled to norm ``sqrt(d_model)`` per cell."""

    def __init__(self, config: TopicConfig) -> None:
        super().__init__()
        self.config = config
        self.to_ca = nn.Linear(config.d_model, config.ca_dim)
        self.sa_layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.n_heads, config.sa_attention) for _ in range(config.n_sa_layers)
        )
        self.ca_layers = nn.ModuleList(
            EncoderLayer(config.ca_dim, config.n_heads, "full", d_source=config.prompt_dim)
            for _ in range(config.n_ca_layers)
        )
        self.fuse = nn.Linear(config.d_model + config.ca_dim, config.d_model)

    def forward(self, coarse: torch.Tensor, prompts: torch.Tensor, valid: torch.Tensor | None = None) -> TopicOutput:
        """Run the topic module.

        Args:
            coarse: Fc ``(B, d_model, h, w)``.
            prompts: prompt embeddings ``(P, prompt_dim)`` (shared by the batch).
            valid: optional ``(B, h*w)`` bool mask of valid cells (padding excluded from self-attention sources).

        Returns:
            :class:`TopicOutput`.
        """
        b, c, h, w = coarse.shape
        if prompts.shape != (self.config.n_prompts, self.config.prompt_dim):
            raise ValueError(
                f"prompt embeddings have shape {tuple(prompts.shape)}, the network expects "
                f"({self.config.n_prompts}, {self.config.prompt_dim})"
            )
        tokens = coarse.flatten(2).transpose(1, 2)  # (B, N, C)
        pe = sine_position_encoding(c, h, w, coarse.device).to(coarse.dtype).flatten(2).transpose(1, 2)
        sa = tokens + pe
        for layer in self.sa_layers:
            sa = layer(sa, sa, valid)
        source = prompts.to(coarse.dtype)[None].expand(b, -1, -1)
        ca = self.to_ca(tokens)
        for layer in self.ca_layers:
            ca = layer(ca, source)
        features = unit_scaled(self.fuse(torch.cat([sa, ca], dim=-1)))
        theta = self.topic_distribution(ca, source)
        return TopicOutput(features=features, theta=theta)

    def topic_distribution(self, ca: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``theta = softmax_p(cos(F_CA, K(prompt_p)) / T)`` with the last CA layer's key projection: ``(B, N, P)``."""
        keys = self.ca_layers[-1].k_proj(source)
        cos = torch.einsum(
            "bnc,bpc->bnp", nn.functional.normalize(ca.float(), dim=-1), nn.functional.normalize(keys.float(), dim=-1)
        )
        return torch.softmax(cos / self.config.topic_temperature, dim=-1)
