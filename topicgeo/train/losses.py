"""Losses of TopicGeo training (method.md decisions 7, 11, 12): focal losses on dual-softmax confidences at the
coarse level and in both fine windows, a sub-pixel regression at 1/4 and the topic-consistency loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-6


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and focal parameters (stored in checkpoints).

    Attributes:
        focal_alpha, focal_gamma: focal loss (0.25, 2).
        coarse_weight, fine1_weight, fine2_weight, subpixel_weight, topic_weight: per-term weights.
        negative_weight: weight of the negative term relative to the positives in the focal losses.
    """

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    coarse_weight: float = 1.0
    fine1_weight: float = 1.0
    fine2_weight: float = 1.0
    subpixel_weight: float = 1.0
    topic_weight: float = 0.5
    negative_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.focal_alpha < 1.0:
            raise ValueError("focal_alpha must lie in (0, 1)")
        for name in ("focal_gamma", "coarse_weight", "fine1_weight", "fine2_weight", "subpixel_weight",
                     "topic_weight", "negative_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


def focal_loss(conf: torch.Tensor, positive: torch.Tensor, weight: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Focal loss on probabilities (mean over positives + weighted mean over negatives).

    Args:
        conf: ``(...)`` probabilities in [0, 1]. positive: same shape, bool. weight: same shape, float (0 = ignore).
        config: focal parameters.

    Returns:
        Scalar loss (0 when there is nothing to supervise).
    """
    p = conf.clamp(EPS, 1.0 - EPS)
    a, g = config.focal_alpha, config.focal_gamma
    pos_w = weight * positive
    neg_w = weight * (~positive)
    loss = conf.new_zeros(())
    if pos_w.sum() > 0:
        loss = loss + (-a * (1 - p) ** g * p.log() * pos_w).sum() / pos_w.sum()
    if neg_w.sum() > 0:
        neg = (-(1 - a) * p**g * (1 - p).log() * neg_w).sum() / neg_w.sum()
        loss = loss + config.negative_weight * neg
    return loss


def window_targets_to_mask(target: torch.Tensor) -> torch.Tensor:
    """``target (N, 16)`` reference child per query child (-1 = none) -> ``(N, 16, 16)`` bool positives."""
    onehot = torch.zeros(*target.shape, 16, dtype=torch.bool, device=target.device)
    ok = target >= 0
    onehot[ok, target[ok]] = True
    return onehot


def fine_loss(conf: torch.Tensor, target: torch.Tensor, window_valid: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Focal loss inside 4x4 windows.

    Args:
        conf: ``(N, 16, 16)`` in-window confidences. target: ``(N, 16)`` int64 (-1 = child outside the window).
        window_valid: ``(N,)`` bool, windows that belong to a true coarse/level-1 match.
    """
    positive = window_targets_to_mask(target)
    # Rows of children without a target carry no negative evidence either (their match may lie outside the window).
    row_ok = (target >= 0) & window_valid[:, None]
    weight = row_ok[:, :, None].float().expand_as(conf)
    return focal_loss(conf, positive, weight, config)


def subpixel_loss(mu: torch.Tensor, std: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Inverse-std weighted L2 between expected and true normalised positions (LoFTR fine loss).

    Args:
        mu: ``(N, 2)`` predicted normalised offsets. std: ``(N,)``. target: ``(N, 2)``. valid: ``(N,)`` bool
            (true position inside the window, |target| <= 1).
    """
    if valid.sum() == 0:
        return mu.new_zeros(())
    inv = 1.0 / std[valid].clamp_min(1e-6)
    w = (inv / inv.mean()).detach()
    return (((mu[valid] - target[valid]) ** 2).sum(-1) * w).mean()


def topic_loss(
    theta_q: torch.Tensor, theta_r: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Topic consistency (decision 7a): matched cells share topics, unmatched cells do not.

    Args:
        theta_q: ``(Nq, P)``; theta_r: ``(Nr, P)`` topic distributions.
        positive: ``(Nq, Nr)`` bool ground-truth matches. valid: ``(Nq, Nr)`` bool pairs to supervise.
    """
    agree = (theta_q @ theta_r.T).clamp(EPS, 1.0 - EPS)  # probability that both cells draw the same topic
    pos = positive & valid
    neg = (~positive) & valid
    loss = theta_q.new_zeros(())
    if pos.any():
        loss = loss - agree[pos].log().mean()
    if neg.any():
        loss = loss - (1.0 - agree[neg]).log().mean()
    return loss
