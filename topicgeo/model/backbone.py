"""Backbone of Table 1: 4x4 space-to-depth stem, GroupNorm ResNet stages to 1/64 and a 256-channel FPN."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from topicgeo.config import BackboneConfig
from topicgeo.model.norms import FP32GroupNorm


def space_to_depth(image: torch.Tensor, block: int = 4) -> torch.Tensor:
    """Parameter-free stacking of ``block x block`` patches: ``(B, C, H, W) -> (B, C*block^2, H/block, W/block)``."""
    b, c, h, w = image.shape
    x = image.reshape(b, c, h // block, block, w // block, block)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * block * block, h // block, w // block)


class MaskedSequential(nn.Sequential):
    """``nn.Sequential`` (same state-dict keys) that hands a validity mask to the children that take one."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, C, H, W)``, optional ``mask (B, 1, h, w)`` (see :class:`FP32GroupNorm`)."""
        for module in self:
            x = module(x, mask) if isinstance(module, (FP32GroupNorm, MaskedSequential, ResBlock)) else module(x)
        return x


def conv_gn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> MaskedSequential:
    """Conv (no bias) + GroupNorm."""
    return MaskedSequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        FP32GroupNorm(groups, out_ch),
    )


class ResBlock(nn.Module):
    """Two 3x3 conv+GN blocks with a residual (1x1 conv+GN projection when stride or width changes), then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = conv_gn(in_ch, out_ch, 3, stride, groups)
        self.conv2 = conv_gn(out_ch, out_ch, 3, 1, groups)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None if (stride == 1 and in_ch == out_ch) else conv_gn(in_ch, out_ch, 1, stride, groups)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, in, H, W) -> (B, out, H/stride, W/stride)``; ``mask`` as in :class:`FP32GroupNorm`."""
        y = self.conv2(self.relu(self.conv1(x, mask)), mask)
        identity = x if self.shortcut is None else self.shortcut(x, mask)
        return self.relu(y + identity)


class BackboneFeatures(NamedTuple):
    """FPN outputs of one image batch.

    Attributes:
        coarse: F4_out = Fc, ``(B, C, H/64, W/64)``.
        fine1: F2_out = Fa, ``(B, C, H/16, W/16)``.
        fine2: F1_out, ``(B, C, H/8, W/8)`` (upsampled to 1/4 for fine encoder 2).
    """

    coarse: torch.Tensor
    fine1: torch.Tensor
    fine2: torch.Tensor


class ResNetFPN(nn.Module):
    """Table 1 backbone. Input ``(B, 3, H, W)`` in [0, 1] with H, W multiples of 64."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        c1, c2, c3, c4 = config.stage_channels
        g = config.gn_groups
        fpn = config.fpn_channels
        self.stem = MaskedSequential(conv_gn(config.in_channels * 16, c1, 7, 2, g), nn.ReLU(inplace=True))
        self.layer1 = MaskedSequential(ResBlock(c1, c1, 1, g), ResBlock(c1, c1, 1, g))
        self.layer2 = MaskedSequential(ResBlock(c1, c2, 2, g), ResBlock(c2, c2, 1, g))
        self.layer3 = MaskedSequential(ResBlock(c2, c3, 2, g), ResBlock(c3, c3, 1, g))
        self.layer4 = MaskedSequential(ResBlock(c3, c4, 2, g), ResBlock(c4, c4, 1, g))
        self.lateral3 = nn.Conv2d(c3, fpn, 1, bias=False)
        self.lateral2 = nn.Conv2d(c2, fpn, 1, bias=False)
        self.lateral1 = nn.Conv2d(c1, fpn, 1, bias=False)
        self.smooth3 = self._smooth(fpn, g)
        self.smooth2 = self._smooth(fpn, g)
        self.smooth1 = self._smooth(fpn, g)

    @staticmethod
    def _smooth(channels: int, groups: int) -> MaskedSequential:
        return MaskedSequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            FP32GroupNorm(groups, channels),
            nn.LeakyReLU(0.1, inplace=True),
        )

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor, cell_mask: torch.Tensor | None = None) -> BackboneFeatures:
        """``(B, 3, H, W)`` -> :class:`BackboneFeatures` at 1/64, 1/16 and 1/8.

        ``cell_mask`` ``(B, 1, H/64, W/64)`` float {0, 1}, optional: the coarse cells with content. Every GroupNorm
        then normalises with the statistics of those cells only, so the amount of padding around the content does not
        change its features (without a mask the statistics include the padding).
        """
        m = cell_mask
        x = self.stem(space_to_depth(image, 4), m)
        f1 = self.layer1(x, m)
        f2 = self.layer2(f1, m)
        f3 = self.layer3(f2, m)
        f4 = self.layer4(f3, m)
        f3_out = self.smooth3(self.lateral3(f3) + self._up(f4), m)
        f2_out = self.smooth2(self.lateral2(f2) + self._up(f3_out), m)
        f1_out = self.smooth1(self.lateral1(f1) + self._up(f2_out), m)
        return BackboneFeatures(coarse=f4, fine1=f2_out, fine2=f1_out)
