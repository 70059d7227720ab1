"""One supervised training step of TopicGeo: ACA labels at every level, teacher-forced fine windows, losses.

Batches are dicts of tensors (see :func:`collate_pairs`):
``query (B, 3, S, S)`` float in [0, 1], ``reference (B, 3, R, R)``, ``ref_valid (B, R, R)`` bool,
``H (B, 3, 3)`` float64 query pixels -> reference-window pixels, and, when at least one pair of the batch carries
one, ``negative (B, 3, R, R)``, ``negative_valid (B, R, R)`` (an unrelated window: every coarse pair is a negative)
and ``has_negative (B,)`` bool (pairs without a negative hold zeros, all invalid, and are left out of the loss).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from topicgeo.config import COARSE_STRIDE, FINE1_STRIDE, FINE2_STRIDE
from topicgeo.model.matching import child_index
from topicgeo.model.topicgeo import EncodedImage, TopicGeo
from topicgeo.train.labels import aca_coarse_labels, aca_fine_labels
from topicgeo.train.losses import LossConfig, fine_loss, focal_loss, subpixel_loss, topic_loss


def collate_pairs(pairs: list[Any]) -> dict[str, torch.Tensor]:
    """Stack :class:`topicgeo.data.pairs.TrainingPair` objects into a batch dict (images to float [0, 1])."""

    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0

    batch = {
        "query": torch.stack([img(p.query) for p in pairs]),
        "reference": torch.stack([img(p.reference) for p in pairs]),
        "ref_valid": torch.stack([torch.from_numpy(np.ascontiguousarray(p.ref_valid)) for p in pairs]).bool(),
        "H": torch.stack([torch.from_numpy(np.asarray(p.H_query_to_ref, dtype=np.float64)) for p in pairs]),
    }
    has_negative = [getattr(p, "negative", None) is not None and getattr(p, "negative_valid", None) is not None
                    for p in pairs]
    if any(has_negative):
        height, width = next(p.negative.shape[:2] for p, h in zip(pairs, has_negative, strict=True) if h)
        negative = torch.zeros(len(pairs), 3, height, width)
        negative_valid = torch.zeros(len(pairs), height, width, dtype=torch.bool)
        for i, p in enumerate(pairs):
            if has_negative[i]:
                negative[i] = img(p.negative)
                negative_valid[i] = torch.from_numpy(np.ascontiguousarray(p.negative_valid)).bool()
        batch["negative"] = negative
        batch["negative_valid"] = negative_valid
        batch["has_negative"] = torch.tensor(has_negative, dtype=torch.bool)
    return batch


def _select(encoded: EncodedImage, rows: torch.Tensor) -> EncodedImage:
    """The batch rows ``rows (K,)`` (int64) of an :class:`EncodedImage` (per-image encodings: rows are independent)."""
    return EncodedImage(encoded.coarse[rows], encoded.theta[rows], encoded.fine1[rows], encoded.fine2[rows],
                        encoded.valid[rows], encoded.grid)


def subpixel_valid(target: torch.Tensor, subpixel: torch.Tensor) -> torch.Tensor:
    """Which level-2 children supervise the sub-pixel regression.

    Args:
        target: ``(...,)`` int64 reference child per query child (-1 = none).
        subpixel: ``(..., 2)`` true position in normalised window coordinates (child centres at -1 .. 1).

    Returns:
        ``(...,)`` bool: a target child exists and the true position lies within ``[-1, 1]^2``, the range of the
        prediction (a softmax-weighted mean of the child centres, as in LoFTR); NaN positions are excluded.
    """
    return (target >= 0) & (subpixel.abs() <= 1.0).all(dim=-1)


def _sample_rows(candidates: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick up to ``k`` rows of ``candidates (N, 2)`` at random; returns ``(k, 2)`` padded with zeros and a mask."""
    n = candidates.shape[0]
    out = candidates.new_zeros(k, 2)
    valid = torch.zeros(k, dtype=torch.bool)
    if n:
        order = torch.randperm(n, generator=generator)[:k]
        out[: len(order)] = candidates[order]
        valid[: len(order)] = True
    return out, valid


def training_step(
    model: TopicGeo,
    batch: dict[str, torch.Tensor],
    loss_config: LossConfig,
    generator: torch.Generator,
    coarse_samples: int = 32,
    level2_samples: int = 64,
) -> dict[str, torch.Tensor]:
    """Forward pass with ground-truth supervision; returns the individual losses and ``total``."""
    query = model.encode(batch["query"])
    reference = model.encode(batch["reference"], batch["ref_valid"])
    conf = model.coarse_confidence(query, reference)
    b = conf.shape[0]
    gq, gr = query.grid, reference.grid
    gt = torch.stack([
        torch.as_tensor(aca_coarse_labels(batch["H"][i], gq, gr, COARSE_STRIDE, reference.valid[i]))
        for i in range(b)
    ]).bool()
    pair_valid = query.valid[:, :, None] & reference.valid[:, None, :]
    losses: dict[str, torch.Tensor] = {}
    losses["coarse"] = focal_loss(conf, gt, pair_valid.float(), loss_config)
    if "negative" in batch:
        # Only the pairs that carry a negative are encoded and supervised (``has_negative``; older batch dicts
        # without it: every pair).
        has = batch.get("has_negative")
        rows = torch.arange(b, device=conf.device) if has is None else has.to(conf.device).nonzero().flatten()
        if rows.numel():
            negative = model.encode(batch["negative"][rows], batch["negative_valid"][rows])
            query_rows = _select(query, rows)
            conf_neg = model.coarse_confidence(query_rows, negative)
            neg_valid = query_rows.valid[:, :, None] & negative.valid[:, None, :]
            losses["coarse"] = losses["coarse"] + focal_loss(
                conf_neg, torch.zeros_like(conf_neg, dtype=torch.bool), neg_valid.float(), loss_config
            )
    losses["topic"] = sum(
        topic_loss(query.theta[i], reference.theta[i], gt[i], pair_valid[i]) for i in range(b)
    ) / b

    # Level 1: teacher-forced windows under sampled ground-truth coarse matches.
    picks = [_sample_rows(gt[i].nonzero(), coarse_samples, generator) for i in range(b)]
    idx = torch.stack([p[0] for p in picks])  # (B, M, 2)
    valid1 = torch.stack([p[1] for p in picks])
    level1 = model.match_level1(query, reference, idx[..., 0], idx[..., 1], valid1)
    targets1, parents2 = [], []
    for i in range(b):
        t, _ = aca_fine_labels(batch["H"][i], idx[i, :, 0], idx[i, :, 1], gq, gr, COARSE_STRIDE, FINE1_STRIDE)
        t = torch.as_tensor(t).long()
        t[~valid1[i]] = -1
        targets1.append(t)
        ok = (t >= 0).nonzero()  # (n, 2): window m, child k
        cq = child_index(idx[i, ok[:, 0], 0], gq[1], ok[:, 1])
        cr = child_index(idx[i, ok[:, 0], 1], gr[1], t[ok[:, 0], ok[:, 1]])
        parents2.append(_sample_rows(torch.stack([cq, cr], dim=1), level2_samples, generator))
    target1 = torch.stack(targets1)
    losses["fine1"] = fine_loss(
        level1.conf.reshape(-1, 16, 16), target1.reshape(-1, 16), valid1.reshape(-1), loss_config
    )

    # Level 2: teacher-forced windows under sampled ground-truth level-1 matches; sub-pixel regression.
    idx2 = torch.stack([p[0] for p in parents2])
    valid2 = torch.stack([p[1] for p in parents2])
    level2 = model.match_level2(query, reference, idx2[..., 0], idx2[..., 1], valid2)
    g1q, g1r = (gq[0] * 4, gq[1] * 4), (gr[0] * 4, gr[1] * 4)
    targets2, subs2 = [], []
    for i in range(b):
        t, s = aca_fine_labels(batch["H"][i], idx2[i, :, 0], idx2[i, :, 1], g1q, g1r, FINE1_STRIDE, FINE2_STRIDE)
        t = torch.as_tensor(t).long()
        t[~valid2[i]] = -1
        targets2.append(t)
        subs2.append(torch.as_tensor(s).float())
    target2 = torch.stack(targets2)
    sub2 = torch.stack(subs2)
    losses["fine2"] = fine_loss(
        level2.conf.reshape(-1, 16, 16), target2.reshape(-1, 16), valid2.reshape(-1), loss_config
    )
    sub_valid = subpixel_valid(target2, sub2).reshape(-1)
    losses["subpixel"] = subpixel_loss(level2.mu.reshape(-1, 2), level2.std.reshape(-1), sub2.reshape(-1, 2), sub_valid)
    losses["total"] = (
        loss_config.coarse_weight * losses["coarse"]
        + loss_config.topic_weight * losses["topic"]
        + loss_config.fine1_weight * losses["fine1"]
        + loss_config.fine2_weight * losses["fine2"]
        + loss_config.subpixel_weight * losses["subpixel"]
    )
    losses["n_coarse_gt"] = gt.sum().float() / b
    return losses
