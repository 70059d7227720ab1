"""Normalisation layers that always compute in fp32 (a precision island for fp16 export and AMP).

Same parameters and state-dict keys as ``nn.LayerNorm`` / ``nn.GroupNorm``; the output keeps the input dtype.
"""

from __future__ import annotations

import torch
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 (fp16 LayerNorm after attention overflows; deployment.md §1.4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> same shape and dtype."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        y = nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm evaluated in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> same shape and dtype."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        y = nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return y.to(x.dtype)
