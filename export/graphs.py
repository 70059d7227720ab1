"""Export wrappers: the network's stages as modules with tensor-only, static-shape inputs and outputs.

- :class:`EncoderGraph`: ``image (1, 3, S, S)`` float32 in [0, 1] and ``cell_valid (1, N)`` bool ->
  ``coarse (1, N, C)``, ``fine1 (1, C, S/16, S/16)``, ``fine2 (1, C, S/4, S/4)``.
- :class:`FineMatcherGraph`: the query's and a reference tile's fine maps plus a fixed list of M coarse matches
  (``idx_q, idx_r (1, M)`` int64, ``valid (1, M)`` bool) -> K*16 level-2 matches
  ``pts_q, pts_r (1, K*16, 2)`` float32, ``score (1, K*16)`` float32, ``valid (1, K*16)`` bool.

Coarse matching, retrieval and homography stay outside the graphs (numpy/OpenCV in edge_runtime).
"""

from __future__ import annotations

import torch
from torch import nn

from topicgeo.config import COARSE_STRIDE
from topicgeo.model.topicgeo import EncodedImage, TopicGeo, cell_mask

ENCODER_INPUTS = ("image", "cell_valid")
ENCODER_OUTPUTS = ("coarse", "fine1", "fine2")
MATCHER_INPUTS = ("fine1_q", "fine2_q", "fine1_r", "fine2_r", "idx_q", "idx_r", "match_valid")
MATCHER_OUTPUTS = ("pts_q", "pts_r", "score", "valid")


class EncoderGraph(nn.Module):
    """Per-image encoder (backbone + topic module); no cross-image dependency."""

    def __init__(self, model: TopicGeo) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, cell_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image (1, 3, S, S)``, ``cell_valid (1, N)`` -> ``coarse, fine1, fine2``."""
        grid = (image.shape[2] // COARSE_STRIDE, image.shape[3] // COARSE_STRIDE)
        feats = self.model.backbone(image, cell_mask(cell_valid, grid))
        topic = self.model.topic(feats.coarse, self.model.prompts, cell_valid)
        fine2 = nn.functional.interpolate(feats.fine2, scale_factor=2.0, mode="bilinear", align_corners=False)
        return topic.features, feats.fine1, fine2


class FineMatcherGraph(nn.Module):
    """Multi-level fine matching for a fixed number of coarse matches."""

    def __init__(self, model: TopicGeo, query_size: int, tile_size: int) -> None:
        super().__init__()
        self.model = model
        self.grid_q = (query_size // COARSE_STRIDE, query_size // COARSE_STRIDE)
        self.grid_r = (tile_size // COARSE_STRIDE, tile_size // COARSE_STRIDE)

    def _encoded(self, fine1: torch.Tensor, fine2: torch.Tensor, grid: tuple[int, int]) -> EncodedImage:
        b = fine1.shape[0]
        empty = fine1.new_zeros(b, 0, 0)
        valid = torch.ones(b, grid[0] * grid[1], dtype=torch.bool, device=fine1.device)
        return EncodedImage(empty, empty, fine1, fine2, valid, grid)

    def forward(
        self,
        fine1_q: torch.Tensor,
        fine2_q: torch.Tensor,
        fine1_r: torch.Tensor,
        fine2_r: torch.Tensor,
        idx_q: torch.Tensor,
        idx_r: torch.Tensor,
        match_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level 1 -> top-K windows -> level 2 (with sub-pixel refinement); fixed-size outputs with a mask."""
        query = self._encoded(fine1_q, fine2_q, self.grid_q)
        ref = self._encoded(fine1_r, fine2_r, self.grid_r)
        level1 = self.model.match_level1(query, ref, idx_q, idx_r, match_valid)
        l2q, l2r, l2v = self.model.select_level2_windows(level1)
        level2 = self.model.match_level2(query, ref, l2q, l2r, l2v)
        return level2.pts_q, level2.pts_r, level2.score, level2.valid
