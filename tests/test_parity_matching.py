"""Parity: the torch matching primitives inside the network equal the numpy ones the vehicle runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_runtime.numerics import matching as np_matching
from edge_runtime.numerics.grid import cell_centers
from topicgeo.model import matching as th_matching

TOLERANCE = 1e-6  # float32 softmax products, absolute


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [0, 1, 2])
def test_dual_softmax_and_mknn_parity(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    grid_q, grid_r = (4, 5), (6, 7)
    sim = rng.normal(size=(20, 42)).astype(np.float32) * 2.0
    p_np = np_matching.dual_softmax(sim, 0.1)
    p_th = th_matching.dual_softmax(torch.from_numpy(sim)[None], 0.1)[0].numpy()
    np.testing.assert_allclose(p_th, p_np, atol=TOLERANCE, rtol=0)
    for border in (0, 1):
        m_np = np_matching.mknn_mask(p_np, grid_q, grid_r, k, 0.01, border)
        m_th = th_matching.mknn_mask(torch.from_numpy(p_np)[None], grid_q, grid_r, k, 0.01, border)[0].numpy()
        np.testing.assert_array_equal(m_th, m_np)


def test_topk_parity() -> None:
    rng = np.random.default_rng(7)
    conf = rng.random((12, 15)).astype(np.float32)
    mask = conf > 0.8
    iq, ir, sc, va = np_matching.topk_fixed(mask, conf, 40)
    tq, tr, ts, tv = th_matching.topk_matches(torch.from_numpy(conf)[None], torch.from_numpy(mask)[None], 40)
    n = int(mask.sum())
    np.testing.assert_array_equal(va, tv[0].numpy())
    assert int(va.sum()) == n
    np.testing.assert_allclose(sc[:n], ts[0, :n].numpy(), atol=TOLERANCE)
    # Same set of pairs (ties may be ordered differently).
    assert set(zip(iq[:n].tolist(), ir[:n].tolist(), strict=True)) == set(
        zip(tq[0, :n].tolist(), tr[0, :n].tolist(), strict=True)
    )


def test_cell_centres_parity() -> None:
    idx = torch.arange(6 * 9)
    for stride in (4, 16, 64):
        np.testing.assert_allclose(
            th_matching.cell_center(idx, 9, stride).numpy(), cell_centers(6, 9, stride), atol=0
        )
