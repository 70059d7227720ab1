"""Normalisation layers that always compute in fp32 (a precision island for fp16 export and AMP).

Same parameters and state-dict keys as ``nn.LayerNorm`` / ``nn.GroupNorm``; the output keeps the input dtype.

GroupNorm takes an optional validity mask: its statistics then come from the valid positions only, so padding (a
letterboxed frame, a map tile that overhangs the raster, nodata) does not shift the features of the content. With
a mask that is valid everywhere (or none) it is exactly ``nn.GroupNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 (fp16 LayerNorm after attention overflows; deployment.md §1.4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> same shape and dtype."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        y = nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


def masked_group_norm(x: torch.Tensor, groups: int, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """GroupNorm statistics over the valid positions only (no affine), in fp32.

    Args:
        x: ``(B, C, H, W)`` features.
        groups: number of groups (divides C).
        mask: ``(B, 1, h, w)`` float {0, 1}, at the resolution of ``x`` or a coarser one that divides it (resized by
            nearest neighbour). A sample without a valid position falls back to the plain statistics.
        eps: added to the variance.

    Returns:
        ``(B, C, H, W)`` fp32, normalised per sample and group with the mean and variance of its valid positions.
    """
    b, c, h, w = x.shape
    m = mask.float()
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m, size=(h, w), mode="nearest")
    xg = x.float().reshape(b, groups, c // groups, h, w)
    mg = m.reshape(b, 1, 1, h, w)
    count = mg.sum(dim=(2, 3, 4), keepdim=True)
    mg = torch.where(count > 0, mg, torch.ones_like(mg))
    n = mg.sum(dim=(2, 3, 4), keepdim=True) * (c // groups)
    mean = (xg * mg).sum(dim=(2, 3, 4), keepdim=True) / n
    var = (((xg - mean) * mg) ** 2).sum(dim=(2, 3, 4), keepdim=True) / n
    return ((xg - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w)


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm evaluated in fp32, optionally over the valid positions of a mask (:func:`masked_group_norm`)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` and an optional ``(B, 1, h, w)`` validity mask -> same shape and dtype as ``x``."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        if mask is None:
            y = nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        else:
            y = masked_group_norm(x, self.num_groups, mask, self.eps)
            if weight is not None:
                y = y * weight[None, :, None, None]
            if bias is not None:
                y = y + bias[None, :, None, None]
        return y.to(x.dtype)
