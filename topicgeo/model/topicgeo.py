"""The TopicGeo network: encode each image independently, then coarse MKNN matching and multi-level fine matching.

Stages (all fixed-size, with validity masks, so the graphs export with static shapes):

1. ``encode``: backbone -> Fc (1/64), Fa (1/16), F1_out (1/8, upsampled to 1/4); topic module on Fc. No cross-image
   attention at this stage, so reference-map features can be precomputed and cached.
2. ``match_coarse``: dual-softmax over topic features, MKNN (k = 1), top-M fixed list.
3. ``match_level1``: the 4x4 children at 1/16 of each coarse match, fine encoder 1, in-window MNN.
4. ``match_level2``: the 4x4 children at 1/4 of the top level-1 matches, fine encoder 2, in-window MNN and a sub-pixel
   expectation over the reference window with the (W-1)/2 even-window scaling.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from topicgeo.config import (
    COARSE_STRIDE,
    FINE1_STRIDE,
    FINE2_STRIDE,
    TopicGeoConfig,
    coarse_grid,
    fine_offset_scale,
)
from topicgeo.model.backbone import ResNetFPN
from topicgeo.model.fine import FineEncoder, match_windows, subpixel_expectation
from topicgeo.model.matching import (
    cell_center,
    child_index,
    dual_softmax,
    gather_windows,
    mknn_mask,
    topk_matches,
)
from topicgeo.model.topic import TopicModule


class EncodedImage(NamedTuple):
    """Per-image features (no cross-image dependency).

    Attributes:
        coarse: ``(B, Nc, C)`` topic features at 1/64, row-major over ``grid``.
        theta: ``(B, Nc, P)`` topic distribution per coarse cell.
        fine1: ``(B, C, H/16, W/16)`` Fa.
        fine2: ``(B, C, H/4, W/4)`` upsampled F1_out.
        valid: ``(B, Nc)`` bool, coarse cells with image content (False on padding).
        grid: ``(h, w)`` of the coarse grid.
    """

    coarse: torch.Tensor
    theta: torch.Tensor
    fine1: torch.Tensor
    fine2: torch.Tensor
    valid: torch.Tensor
    grid: tuple[int, int]


class CoarseMatches(NamedTuple):
    """Coarse matching result.

    Attributes:
        conf: ``(B, Nq, Nr)`` dual-softmax confidences.
        mask: ``(B, Nq, Nr)`` MKNN mask.
        idx_q, idx_r: ``(B, M)`` flat coarse indices of the top-M matches.
        score: ``(B, M)`` their confidences. valid: ``(B, M)`` bool.
    """

    conf: torch.Tensor
    mask: torch.Tensor
    idx_q: torch.Tensor
    idx_r: torch.Tensor
    score: torch.Tensor
    valid: torch.Tensor


class FineMatches(NamedTuple):
    """Matches at one fine level, fixed size with a mask.

    Attributes:
        pts_q, pts_r: ``(B, K, 2)`` pixel positions in the query and the reference image.
        idx_q, idx_r: ``(B, K)`` flat cell indices at this level's stride.
        score: ``(B, K)`` in-window confidence. valid: ``(B, K)`` bool.
        conf: ``(B, N, 16, 16)`` in-window confidence matrices (for the losses).
        mu, std: ``(B, K, 2)`` / ``(B, K)`` sub-pixel expectation (level 2 only; zeros at level 1).
    """

    pts_q: torch.Tensor
    pts_r: torch.Tensor
    idx_q: torch.Tensor
    idx_r: torch.Tensor
    score: torch.Tensor
    valid: torch.Tensor
    conf: torch.Tensor
    mu: torch.Tensor
    std: torch.Tensor


class MatchResult(NamedTuple):
    """Everything :meth:`TopicGeo.forward` produces for a query/reference pair."""

    query: EncodedImage
    reference: EncodedImage
    coarse: CoarseMatches
    level1: FineMatches
    level2: FineMatches


class TopicGeo(nn.Module):
    """TopicGeo network. The prompt embedding matrix is an explicit registered buffer ``prompts (P, D)``."""

    def __init__(self, config: TopicGeoConfig, prompts: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetFPN(config.backbone)
        self.topic = TopicModule(config.topic)
        self.fine_encoder1 = FineEncoder(config.fine)
        self.fine_encoder2 = FineEncoder(config.fine)
        shape = (config.topic.n_prompts, config.topic.prompt_dim)
        if prompts is None:
            prompts = torch.zeros(shape)
        if tuple(prompts.shape) != shape:
            raise ValueError(f"prompt embeddings have shape {tuple(prompts.shape)}, config expects {shape}")
        self.register_buffer("prompts", prompts.detach().clone().float())

    # ------------------------------------------------------------------ stage 1
    def encode(self, image: torch.Tensor, valid: torch.Tensor | None = None) -> EncodedImage:
        """Encode images independently.

        Args:
            image: ``(B, 3, H, W)`` float in [0, 1], H and W multiples of 64.
            valid: optional ``(B, H, W)`` bool pixel mask (False = padding / nodata).

        Returns:
            :class:`EncodedImage`.
        """
        if image.ndim != 4 or image.shape[1] != self.config.backbone.in_channels:
            raise ValueError(
                f"expected images (B, {self.config.backbone.in_channels}, H, W), got {tuple(image.shape)}"
            )
        grid = coarse_grid(image.shape[2], image.shape[3])
        cell_valid = self.cell_validity(image, valid)
        feats = self.backbone(image, None if valid is None else cell_mask(cell_valid, grid))
        topic = self.topic(feats.coarse, self.prompts, cell_valid)
        fine2 = nn.functional.interpolate(feats.fine2, scale_factor=2.0, mode="bilinear", align_corners=False)
        return EncodedImage(topic.features, topic.theta, feats.fine1, fine2, cell_valid, grid)

    @staticmethod
    def cell_validity(image: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``(B, Nc)`` bool: a coarse cell is valid when at least half of its pixels are valid."""
        b, _, h, w = image.shape
        if valid is None:
            return torch.ones(b, (h // COARSE_STRIDE) * (w // COARSE_STRIDE), dtype=torch.bool, device=image.device)
        frac = nn.functional.avg_pool2d(valid[:, None].float(), COARSE_STRIDE)
        return (frac >= 0.5).flatten(1)

    # ------------------------------------------------------------------ stage 2
    def coarse_confidence(self, query: EncodedImage, reference: EncodedImage) -> torch.Tensor:
        """Dual-softmax confidences ``(B, Nq, Nr)`` between topic features (each scaled by 1/sqrt(C))."""
        c = query.coarse.shape[-1]
        sim = torch.einsum("bnc,bmc->bnm", query.coarse.float(), reference.coarse.float()) / c
        return dual_softmax(sim, self.config.matching.temperature, query.valid, reference.valid)

    def match_coarse(self, query: EncodedImage, reference: EncodedImage) -> CoarseMatches:
        """Coarse MKNN matching with a fixed-size top-M list."""
        cfg = self.config.matching
        conf = self.coarse_confidence(query, reference)
        mask = mknn_mask(conf, query.grid, reference.grid, cfg.mknn_k, cfg.threshold, cfg.border)
        idx_q, idx_r, score, valid = topk_matches(conf, mask, cfg.max_coarse_matches)
        return CoarseMatches(conf, mask, idx_q, idx_r, score, valid)

    # ------------------------------------------------------------------ stages 3 and 4
    def match_level1(
        self, query: EncodedImage, reference: EncodedImage, idx_q: torch.Tensor, idx_r: torch.Tensor,
        valid: torch.Tensor,
    ) -> FineMatches:
        """Level-1 matching at 1/16 inside the 4x4 children of coarse matches ``idx_q, idx_r (B, M)``."""
        return self._match_level(
            query.fine1, reference.fine1, query.grid[1], reference.grid[1], idx_q, idx_r, valid,
            self.fine_encoder1, FINE1_STRIDE, subpixel=False,
        )

    def match_level2(
        self, query: EncodedImage, reference: EncodedImage, idx_q: torch.Tensor, idx_r: torch.Tensor,
        valid: torch.Tensor,
    ) -> FineMatches:
        """Level-2 matching at 1/4 inside the children of level-1 cells ``idx_q, idx_r (B, K)`` (1/16 indices)."""
        return self._match_level(
            query.fine2, reference.fine2, query.grid[1] * 4, reference.grid[1] * 4, idx_q, idx_r, valid,
            self.fine_encoder2, FINE2_STRIDE, subpixel=True,
        )

    def _match_level(
        self,
        feat_q: torch.Tensor,
        feat_r: torch.Tensor,
        parent_w_q: int,
        parent_w_r: int,
        idx_q: torch.Tensor,
        idx_r: torch.Tensor,
        valid: torch.Tensor,
        encoder: FineEncoder,
        stride: int,
        subpixel: bool,
    ) -> FineMatches:
        cfg = self.config.matching
        b, m = idx_q.shape
        win_q = gather_windows(feat_q, idx_q, parent_w_q).reshape(b * m, 16, -1)
        win_r = gather_windows(feat_r, idx_r, parent_w_r).reshape(b * m, 16, -1)
        win_q, win_r = encoder(win_q, win_r)
        wm = match_windows(win_q, win_r, cfg.fine_temperature, cfg.fine_threshold)
        children = torch.arange(16, device=idx_q.device)[None, None].expand(b, m, 16)
        cq = child_index(idx_q[:, :, None], parent_w_q, children).reshape(b, m * 16)
        cr = child_index(idx_r[:, :, None], parent_w_r, wm.best.reshape(b, m, 16)).reshape(b, m * 16)
        pts_q = cell_center(cq, parent_w_q * 4, stride)
        if subpixel:
            mu, std = subpixel_expectation(win_q, win_r)  # (B*M, 16, 2), (B*M, 16)
            centre = cell_center(idx_r, parent_w_r, stride * 4)[:, :, None, :]  # (B, M, 1, 2) window centre
            pts_r = (centre + mu.reshape(b, m, 16, 2) * fine_offset_scale(stride)).reshape(b, m * 16, 2)
            mu, std = mu.reshape(b, m * 16, 2), std.reshape(b, m * 16)
        else:
            pts_r = cell_center(cr, parent_w_r * 4, stride)
            mu = pts_q.new_zeros(b, m * 16, 2)
            std = pts_q.new_zeros(b, m * 16)
        ok = wm.valid.reshape(b, m, 16) & valid[:, :, None]
        return FineMatches(
            pts_q=pts_q, pts_r=pts_r, idx_q=cq, idx_r=cr, score=wm.score.reshape(b, m * 16),
            valid=ok.reshape(b, m * 16), conf=wm.conf.reshape(b, m, 16, 16), mu=mu, std=std,
        )

    def select_level2_windows(self, level1: FineMatches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-K valid level-1 matches (K = ``max_level2_windows``) as 1/16 cell indices ``(B, K)`` and a mask."""
        k = min(self.config.matching.max_level2_windows, level1.score.shape[1])
        key = torch.where(level1.valid, level1.score, torch.full_like(level1.score, -1.0))
        score, order = key.topk(k, dim=1)
        return torch.gather(level1.idx_q, 1, order), torch.gather(level1.idx_r, 1, order), score >= 0.0

    def forward(
        self,
        query_image: torch.Tensor,
        reference_image: torch.Tensor,
        reference_valid: torch.Tensor | None = None,
    ) -> MatchResult:
        """Match queries ``(B, 3, Hq, Wq)`` against reference windows ``(B, 3, Hr, Wr)``; inputs are not mutated."""
        query = self.encode(query_image)
        reference = self.encode(reference_image, reference_valid)
        coarse = self.match_coarse(query, reference)
        level1 = self.match_level1(query, reference, coarse.idx_q, coarse.idx_r, coarse.valid)
        l2_q, l2_r, l2_valid = self.select_level2_windows(level1)
        level2 = self.match_level2(query, reference, l2_q, l2_r, l2_valid)
        return MatchResult(query, reference, coarse, level1, level2)


def cell_mask(cell_valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, Nc)`` bool coarse-cell validity -> ``(B, 1, h, w)`` float mask for the backbone's GroupNorms."""
    return cell_valid.reshape(cell_valid.shape[0], 1, grid[0], grid[1]).float()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (buffers such as the prompt matrix excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
