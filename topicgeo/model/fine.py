"""Fine encoders (one SA + one CA layer inside 4x4 windows) and in-window matching with sub-pixel expectation."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from topicgeo.config import FineConfig
from topicgeo.model.attention import EncoderLayer
from topicgeo.model.matching import dual_softmax, window_grid


class FineEncoder(nn.Module):
    """SA within each window, then CA between the paired query and reference windows (shared weights)."""

    def __init__(self, config: FineConfig) -> None:
        super().__init__()
        self.self_attn = EncoderLayer(config.d_model, config.n_heads, "full")
        self.cross_attn = EncoderLayer(config.d_model, config.n_heads, "full")

    def forward(self, win_q: torch.Tensor, win_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``win_q, win_r (N, W*W, C)`` paired windows -> encoded windows of the same shape."""
        win_q = self.self_attn(win_q, win_q)
        win_r = self.self_attn(win_r, win_r)
        return self.cross_attn(win_q, win_r), self.cross_attn(win_r, win_q)


class WindowMatches(NamedTuple):
    """In-window matching of N window pairs of 16 children each.

    Attributes:
        conf: ``(N, 16, 16)`` dual-softmax confidences (query child x reference child).
        best: ``(N, 16)`` best reference child of each query child.
        score: ``(N, 16)`` confidence of that pair.
        valid: ``(N, 16)`` bool, mutual nearest neighbour (MKNN k = 0) above the threshold.
    """

    conf: torch.Tensor
    best: torch.Tensor
    score: torch.Tensor
    valid: torch.Tensor


def match_windows(win_q: torch.Tensor, win_r: torch.Tensor, temperature: float, threshold: float) -> WindowMatches:
    """Dual-softmax + mutual nearest neighbour inside paired windows ``(N, 16, C)``."""
    c = win_q.shape[-1]
    sim = torch.einsum("nic,njc->nij", win_q.float(), win_r.float()) / c
    conf = dual_softmax(sim, temperature)
    score, best = conf.max(dim=2)
    best_q = conf.argmax(dim=1)  # (N, 16)
    mutual = torch.gather(best_q, 1, best) == torch.arange(conf.shape[1], device=conf.device)[None]
    return WindowMatches(conf=conf, best=best, score=score, valid=mutual & (score > threshold))


def subpixel_expectation(query_win: torch.Tensor, ref_win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LoFTR-style spatial expectation of every query child over its paired 4x4 reference window (fp32).

    Args:
        query_win: ``(N, Q, C)`` features of the query cells of N windows (Q = 16 children each).
        ref_win: ``(N, 16, C)`` the reference windows they are refined in (one per query window, shared by its Q
            children: no per-child copy of the window is made).

    Returns:
        ``mu (N, Q, 2)`` expected position in normalised window coordinates ([-1, 1] = outer child centres; multiply
        by ``(W - 1) / 2 * child_stride`` for pixels) and ``std (N, Q)`` = sum over x, y of the standard deviation.
    """
    c = query_win.shape[-1]
    logits = torch.einsum("nic,njc->nij", query_win.float(), ref_win.float()) / math.sqrt(c)
    heat = torch.softmax(logits, dim=-1)
    grid = window_grid(4, query_win.device)
    mu = heat @ grid
    var = heat @ (grid**2) - mu**2
    std = var.clamp_min(1e-10).sqrt().sum(dim=-1)
    return mu, std
