"""Center-based ACA labels: brute force on real synthesized pairs, exactness under 90-degree rotations, fine levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from topicgeo.data.pairs import PairConfig, PairDataset, sjer_sources
from topicgeo.data.synthesis import QuerySynthesisConfig
from topicgeo.train.labels import (
    aca_coarse_labels,
    aca_fine_labels,
    cell_valid_from_pixels,
    gather_child_valid,
    topleft_coarse_labels,
)

S = 512


@pytest.fixture(scope="module")
def real_pairs(data_dir):
    sources = sjer_sources(data_dir / "sjer", ["SJER_002", "SJER_009", "SJER_048"])
    cfg = PairConfig(synthesis=QuerySynthesisConfig(side_fraction_range=(0.35, 1.0)), negative_prob=0.0)
    ds = PairDataset(sources, cfg, seed=5, length=6)
    return [ds[i] for i in range(6)]


def brute_coarse(H, grid_q, grid_r, s, ref_valid, direction):
    """Loop implementation: project every cell centre on its own."""
    hq, wq = grid_q
    hr, wr = grid_r
    out = np.zeros((hq * wq, hr * wr), dtype=bool)

    def land(M, x, y, h, w):
        p = M @ np.array([x, y, 1.0])
        if p[2] <= 0:
            return None
        cu, cv = math.floor((p[0] / p[2] + 0.5) / s), math.floor((p[1] / p[2] + 0.5) / s)
        return cv * w + cu if 0 <= cu < w and 0 <= cv < h else None

    if direction in ("forward", "union"):
        for i in range(hq * wq):
            u, v = i % wq, i // wq
            j = land(H, s * u + (s - 1) / 2, s * v + (s - 1) / 2, hr, wr)
            if j is not None and ref_valid[j]:
                out[i, j] = True
    if direction in ("backward", "union"):
        Hi = np.linalg.inv(H)
        for j in range(hr * wr):
            if not ref_valid[j]:
                continue
            u, v = j % wr, j // wr
            i = land(Hi, s * u + (s - 1) / 2, s * v + (s - 1) / 2, hq, wq)
            if i is not None:
                out[i, j] = True
    return out


@pytest.mark.parametrize("stride", [64, 16])
@pytest.mark.parametrize("direction", ["forward", "backward", "union"])
def test_coarse_labels_match_brute_force_on_real_pairs(real_pairs, stride, direction):
    total = 0
    for pair in real_pairs:
        gq = (S // stride, S // stride)
        gr = (pair.reference.shape[0] // stride, pair.reference.shape[1] // stride)
        rv = cell_valid_from_pixels(pair.ref_valid, stride)
        got = aca_coarse_labels(pair.H_query_to_ref, gq, gr, stride, rv, direction=direction)
        want = brute_coarse(pair.H_query_to_ref, gq, gr, stride, rv.numpy(), direction)
        assert got.dtype == torch.bool and got.shape == want.shape
        np.testing.assert_array_equal(got.numpy(), want)
        total += int(want.sum())
    assert total > 10 * len(real_pairs)  # every pair has positives in each direction


def test_batched_labels_equal_single(real_pairs):
    pairs = [p for p in real_pairs if p.reference.shape == real_pairs[0].reference.shape]
    H = torch.from_numpy(np.stack([p.H_query_to_ref for p in pairs]))
    gr = (pairs[0].reference.shape[0] // 64, pairs[0].reference.shape[1] // 64)
    rv = torch.stack([cell_valid_from_pixels(p.ref_valid, 64) for p in pairs])
    batched = aca_coarse_labels(H, (8, 8), gr, 64, rv)
    for b, p in enumerate(pairs):
        np.testing.assert_array_equal(batched[b].numpy(), aca_coarse_labels(p.H_query_to_ref, (8, 8), gr, 64, rv[b]))


def test_padding_and_invalid_cells_never_positive(real_pairs):
    pair = real_pairs[0]
    assert pair.reference.shape[:2] == (448, 448)  # 400-px plot padded to a multiple of 64
    rv = cell_valid_from_pixels(pair.ref_valid, 64)
    grid = rv.reshape(7, 7)
    assert not grid[6].any() and not grid[:, 6].any() and grid[:6, :6].all()
    labels = aca_coarse_labels(pair.H_query_to_ref, (8, 8), (7, 7), 64, rv)
    assert labels.any() and not labels[:, ~rv].any()
    qv = torch.zeros(64, dtype=torch.bool)
    qv[:10] = True
    assert not aca_coarse_labels(pair.H_query_to_ref, (8, 8), (7, 7), 64, rv, qv)[10:].any()


def rotation_h(k: int, size: int, shift: tuple[float, float]) -> np.ndarray:
    """Pixel-exact rotation by k * 90 degrees of a size x size image (centres at integers), then a shift."""
    e = size - 1
    mats = {
        0: [[1, 0, 0], [0, 1, 0]],
        1: [[0, -1, e], [1, 0, 0]],
        2: [[-1, 0, e], [0, -1, e]],
        3: [[0, 1, 0], [-1, 0, e]],
    }
    H = np.eye(3)
    H[:2] = np.array(mats[k], dtype=float)
    H[0, 2] += shift[0]
    H[1, 2] += shift[1]
    return H


def true_cell_map(H, stride, grid_q, grid_r):
    """Each query cell's pixels (all of them) projected: the single reference cell they fill, or None."""
    hq, wq = grid_q
    truth = np.zeros((hq * wq, grid_r[0] * grid_r[1]), dtype=bool)
    for i in range(hq * wq):
        u, v = i % wq, i // wq
        ys, xs = np.mgrid[v * stride : (v + 1) * stride, u * stride : (u + 1) * stride]
        pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
        p = (H @ pts)[:2].T
        cells = {(math.floor((x + 0.5) / stride), math.floor((y + 0.5) / stride)) for x, y in p}
        assert len(cells) == 1, "a pixel-exact rotation keeps cells whole"
        cu, cv = cells.pop()
        truth[i, cv * grid_r[1] + cu] = True
    return truth


@pytest.mark.parametrize("k", [1, 2, 3])
def test_center_labels_exact_under_right_angle_rotations_topleft_not(k):
    H = rotation_h(k, S, (128.0, 64.0))
    gq, gr = (8, 8), (10, 12)
    truth = true_cell_map(H, 64, gq, gr)
    for direction in ("forward", "backward", "union"):
        np.testing.assert_array_equal(aca_coarse_labels(H, gq, gr, 64, direction=direction).numpy(), truth)
    topleft = topleft_coarse_labels(H, gq, gr, 64).numpy()
    assert (topleft != truth).any()
    assert (topleft & truth).sum() < truth.sum()  # some cells are assigned to a neighbour, not the true cell


def test_identity_both_conventions_agree():
    H = rotation_h(0, S, (128.0, 64.0))
    truth = true_cell_map(H, 64, (8, 8), (10, 12))
    np.testing.assert_array_equal(aca_coarse_labels(H, (8, 8), (10, 12), 64).numpy(), truth)
    np.testing.assert_array_equal(topleft_coarse_labels(H, (8, 8), (10, 12), 64).numpy(), truth)


def test_scale_difference_gives_many_to_one():
    H = np.diag([0.5, 0.5, 1.0])  # query at twice the reference resolution
    fwd = aca_coarse_labels(H, (8, 8), (8, 8), 64, direction="forward")
    assert (fwd.sum(dim=1) == 1).all()  # each query cell -> one reference cell
    per_ref = fwd.sum(dim=0).reshape(8, 8)
    assert (per_ref[:4, :4] == 4).all() and per_ref[4:].sum() == 0  # 2x2 query cells share a reference cell
    bwd = aca_coarse_labels(H, (8, 8), (8, 8), 64, direction="backward")
    assert bwd.sum() == 16 and (bwd.sum(dim=0).reshape(8, 8)[:4, :4] == 1).all()
    uni = aca_coarse_labels(H, (8, 8), (8, 8), 64)
    np.testing.assert_array_equal(uni.numpy(), (fwd | bwd).numpy())


def brute_fine(H, pq, pr, gq, gr, ps, cs):
    target = np.full((len(pq), 16), -1)
    for m, (i, j) in enumerate(zip(pq, pr, strict=True)):
        uq, vq = i % gq[1], i // gq[1]
        ur, vr = j % gr[1], j // gr[1]
        for a in range(16):
            cu, cv = uq * 4 + a % 4, vq * 4 + a // 4
            p = H @ np.array([cu * cs + (cs - 1) / 2, cv * cs + (cs - 1) / 2, 1.0])
            x, y = p[0] / p[2], p[1] / p[2]
            lu, lv = math.floor((x + 0.5) / cs) - ur * 4, math.floor((y + 0.5) / cs) - vr * 4
            if 0 <= lu < 4 and 0 <= lv < 4:
                target[m, a] = lv * 4 + lu
    return target


def test_fine_labels_consistent_with_coarse_and_brute_force(real_pairs):
    hit = 0
    for pair in real_pairs:
        H = pair.H_query_to_ref
        gr = (pair.reference.shape[0] // 64, pair.reference.shape[1] // 64)
        coarse = aca_coarse_labels(H, (8, 8), gr, 64, cell_valid_from_pixels(pair.ref_valid, 64), direction="forward")
        pq, pr = coarse.nonzero(as_tuple=True)
        t1, sub1 = aca_fine_labels(H, pq, pr, (8, 8), gr, 64, 16)
        assert t1.shape == (len(pq), 16) and t1.dtype == torch.int64 and sub1.shape == (len(pq), 16, 2)
        np.testing.assert_array_equal(t1.numpy(), brute_fine(H, pq.numpy(), pr.numpy(), (8, 8), gr, 64, 16))
        ok = t1 >= 0
        # forward coarse positive: the query cell centre lies in the reference parent, so most children do too
        assert ok.float().mean() > 0.5
        # target and subpixel agree: local child = floor(2 + 1.5 * subpixel) per axis (W = 4)
        local = torch.floor(2 + 1.5 * sub1.double()).long()
        np.testing.assert_array_equal(t1[ok].numpy(), (local[..., 1] * 4 + local[..., 0])[ok].numpy())
        assert sub1[ok].abs().max() <= 4 / 3 + 1e-5
        hit += int(ok.sum())
        # level 2: parents are the level-1 matches (query child, reference child) at stride 16
        m, a = ok.nonzero(as_tuple=True)
        q_child = (pq[m] // 8 * 4 + a // 4) * 32 + (pq[m] % 8) * 4 + a % 4
        tgt = t1[m, a]
        r_child = (pr[m] // gr[1] * 4 + tgt // 4) * (gr[1] * 4) + (pr[m] % gr[1]) * 4 + tgt % 4
        g1r = (gr[0] * 4, gr[1] * 4)
        t2, sub2 = aca_fine_labels(H, q_child, r_child, (32, 32), g1r, 16, 4)
        np.testing.assert_array_equal(
            t2.numpy(), brute_fine(H, q_child.numpy(), r_child.numpy(), (32, 32), g1r, 16, 4)
        )
        assert (t2 >= 0).float().mean() > 0.5
        ok2 = t2 >= 0
        local2 = torch.floor(2 + 1.5 * sub2.double()).long()
        np.testing.assert_array_equal(t2[ok2].numpy(), (local2[..., 1] * 4 + local2[..., 0])[ok2].numpy())
        batched, _ = aca_fine_labels(torch.from_numpy(np.repeat(H[None], len(q_child), 0)), q_child, r_child,
                                     (32, 32), g1r, 16, 4)
        np.testing.assert_array_equal(batched.numpy(), t2.numpy())
    assert hit > 100


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_fine_labels_exact_under_rotation(k):
    H = rotation_h(k, S, (128.0, 64.0))
    coarse = aca_coarse_labels(H, (8, 8), (10, 12), 64)
    pq, pr = coarse.nonzero(as_tuple=True)
    assert len(pq) == 64
    target, sub = aca_fine_labels(H, pq, pr, (8, 8), (10, 12), 64, 16)
    assert (target >= 0).all()
    assert sorted(target[0].tolist()) == list(range(16))  # a permutation of the window
    grid = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert torch.isclose(sub[..., :, None], grid, atol=1e-6).any(dim=-1).all()  # exactly on child centres


def test_ref_child_validity_and_gather():
    H = np.eye(3)
    pq = torch.tensor([0, 9])
    pr = torch.tensor([0, 9])
    child_valid = torch.ones(32 * 32, dtype=torch.bool).reshape(32, 32)
    child_valid[4:8, 6] = False  # column 6 of parent cell 9 = (1, 1): local column 2
    rv = gather_child_valid(child_valid.reshape(-1), pr, (8, 8))
    assert rv.shape == (2, 16) and rv[0].all() and (~rv[1]).sum() == 4
    target, _ = aca_fine_labels(H, pq, pr, (8, 8), (8, 8), 64, 16, ref_child_valid=rv)
    assert (target[0] == torch.arange(16)).all()
    assert (target[1] == -1).sum() == 4 and (target[1][torch.arange(16) % 4 == 2] == -1).all()


def test_cell_valid_from_pixels_matches_loop():
    rng = np.random.default_rng(0)
    valid = rng.random((128, 192)) > 0.4
    got = cell_valid_from_pixels(valid, 16, 0.6).numpy()
    want = [valid[v * 16 : v * 16 + 16, u * 16 : u * 16 + 16].mean() >= 0.6 for v in range(8) for u in range(12)]
    np.testing.assert_array_equal(got, np.array(want))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        aca_coarse_labels(np.eye(2), (8, 8), (8, 8), 64)
    with pytest.raises(ValueError, match="direction"):
        aca_coarse_labels(np.eye(3), (8, 8), (8, 8), 64, direction="both")
    with pytest.raises(ValueError, match="ref_valid_cells"):
        aca_coarse_labels(np.eye(3), (8, 8), (8, 8), 64, torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="parent_stride"):
        aca_fine_labels(np.eye(3), torch.tensor([0]), torch.tensor([0]), (8, 8), (8, 8), 64, 8)
    with pytest.raises(ValueError, match="out of range"):
        aca_fine_labels(np.eye(3), torch.tensor([64]), torch.tensor([0]), (8, 8), (8, 8), 64, 16)
    with pytest.raises(ValueError, match="non-finite"):
        aca_coarse_labels(np.full((3, 3), np.nan), (8, 8), (8, 8), 64)
