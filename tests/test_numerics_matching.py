"""Tests of edge_runtime.numerics.matching: dual-softmax, MKNN / MNN masks, match lists.

Real similarity matrices come from dense SIFT descriptors at stride-16 cell centres of SJER plots imaged in 2017
and 2018 (tests/data/sjer, same pixel grid in both years), so the true match of cell i is cell i.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.numerics.grid import cell_centers, cell_index_to_uv
from edge_runtime.numerics.matching import (
    dual_softmax,
    matches_from_mask,
    mknn_mask,
    mutual_nearest_mask,
    topk_fixed,
)

DATA = Path(__file__).parent / "data" / "sjer"
PLOTS = ("002", "009", "048")
STRIDE = 16
# Sharp dual-softmax for cosine similarities of SIFT descriptors (values in [0, 1]).
TEMPERATURE = 0.01
THRESHOLD = 0.1


def _load(year: int, plot: str) -> np.ndarray:
    path = DATA / str(year) / f"SJER_{plot}.tif"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"cannot read {path}"
    return img


def _dense_sift(gray: np.ndarray, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """L2-normalised SIFT descriptors at every cell centre (row-major) and the grid (h, w)."""
    gh, gw = gray.shape[0] // stride, gray.shape[1] // stride
    centres = cell_centers(gh, gw, stride)
    kps = [cv2.KeyPoint(float(x), float(y), float(2 * stride)) for x, y in centres]
    _, desc = cv2.SIFT_create().compute(gray, kps)
    assert desc.shape[0] == gh * gw  # SIFT must not drop cells (all centres are far enough inside)
    desc = desc / np.linalg.norm(desc, axis=1, keepdims=True).clip(1e-6)
    return desc.astype(np.float32), (gh, gw)


@pytest.fixture(scope="module")
def real_conf() -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Dual-softmax confidence 2017 (query rows) vs 2018 (reference columns) for each plot, plus the grid."""
    out = []
    for plot in PLOTS:
        dq, grid = _dense_sift(_load(2017, plot), STRIDE)
        dr, grid_r = _dense_sift(_load(2018, plot), STRIDE)
        assert grid == grid_r
        out.append((dual_softmax(dq @ dr.T, TEMPERATURE), grid))
    return out


def _brute_mknn(conf, grid_q, grid_r, k, threshold, border=0, valid_q=None, valid_r=None):
    """Loop implementation of method.md §3's MKNN definition (LoFTR-style border removal after the argmax)."""
    nq, nr = conf.shape
    vq = np.ones(nq, bool) if valid_q is None else valid_q
    vr = np.ones(nr, bool) if valid_r is None else valid_r
    masked = np.where(vq[:, None] & vr[None, :], conf, -np.inf)
    hq, wq = grid_q
    hr, wr = grid_r
    out = np.zeros_like(conf, dtype=bool)
    for i in range(nq):
        ui, vi = i % wq, i // wq
        if not vq[i] or min(ui, vi, wq - 1 - ui, hq - 1 - vi) < border:
            continue
        ri = int(np.argmax(masked[i]))
        for j in range(nr):
            uj, vj = j % wr, j // wr
            if not vr[j] or min(uj, vj, wr - 1 - uj, hr - 1 - vj) < border:
                continue
            if conf[i, j] <= threshold:
                continue
            qj = int(np.argmax(masked[:, j]))
            d_r = max(abs(uj - ri % wr), abs(vj - ri // wr))
            d_q = max(abs(ui - qj % wq), abs(vi - qj // wq))
            out[i, j] = d_r <= k and d_q <= k
    return out


# ----------------------------------------------------------------------------------------------------- dual softmax


def test_dual_softmax_matches_naive_formula_and_bounds():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 11))
    t = 0.3
    e = np.exp(sim / t)
    expected = (e / e.sum(axis=1, keepdims=True)) * (e / e.sum(axis=0, keepdims=True))
    got = dual_softmax(sim, t)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # Each factor is a softmax, so every row and every column of P sums to at most 1.
    assert np.all(got.sum(axis=1) <= 1 + 1e-12) and np.all(got.sum(axis=0) <= 1 + 1e-12)


def test_dual_softmax_is_stable_and_preserves_float32():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(20, 30)).astype(np.float32) * 1e3  # exp(1e5) would overflow without max subtraction
    got = dual_softmax(sim, 0.01)
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got)) and got.min() >= 0 and got.max() <= 1
    # Shift invariance: adding a constant to S changes nothing (both softmaxes are shift invariant).
    ref = dual_softmax(sim.astype(np.float64), 0.01)
    np.testing.assert_allclose(dual_softmax(sim.astype(np.float64) + 123.0, 0.01), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("sim", "temperature", "match"),
    [
        (np.zeros(5), 0.1, "2-D"),
        (np.zeros((0, 3)), 0.1, "non-empty"),
        (np.array([[0.0, np.nan]]), 0.1, "non-finite"),
        (np.zeros((2, 2)), 0.0, "temperature"),
        (np.zeros((2, 2)), -1.0, "temperature"),
    ],
)
def test_dual_softmax_rejects_bad_input(sim, temperature, match):
    with pytest.raises(ValueError, match=match):
        dual_softmax(sim, temperature)


# ------------------------------------------------------------------------------------------------------------- MKNN


@pytest.mark.parametrize("seed", range(6))
def test_mknn_equals_bruteforce_definition_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    grid_q = (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
    grid_r = (int(rng.integers(3, 8)), int(rng.integers(3, 8)))
    nq, nr = grid_q[0] * grid_q[1], grid_r[0] * grid_r[1]
    conf = dual_softmax(rng.normal(size=(nq, nr)) * 3, 0.5)
    valid_q = rng.random(nq) > 0.15
    valid_r = rng.random(nr) > 0.15
    for k in (0, 1, 2):
        for border in (0, 1):
            for vq, vr in ((None, None), (valid_q, valid_r)):
                got = mknn_mask(conf, grid_q, grid_r, k, 0.01, border=border, valid_q=vq, valid_r=vr)
                want = _brute_mknn(conf, grid_q, grid_r, k, 0.01, border, vq, vr)
                np.testing.assert_array_equal(got, want, err_msg=f"k={k} border={border} valid={vq is not None}")


@pytest.mark.parametrize("seed", range(5))
def test_mknn_k0_equals_mutual_nearest_on_random_matrices(seed):
    rng = np.random.default_rng(100 + seed)
    grid_q, grid_r = (8, 9), (10, 7)
    conf = dual_softmax(rng.normal(size=(72, 70)), 0.1)
    for thr in (0.0, 0.05, 0.2):
        np.testing.assert_array_equal(mknn_mask(conf, grid_q, grid_r, 0, thr), mutual_nearest_mask(conf, thr))
    # Ties (quantised confidences) resolve to the lowest index in both rules, so they still agree exactly.
    tied = np.round(conf * 20) / 20
    np.testing.assert_array_equal(mknn_mask(tied, grid_q, grid_r, 0, 0.0), mutual_nearest_mask(tied, 0.0))
    mnn = mutual_nearest_mask(tied, -1.0)
    assert mnn.sum(axis=0).max() <= 1 and mnn.sum(axis=1).max() <= 1


def test_mknn_on_real_sjer_similarity(real_conf):
    """k=0 == MNN; k=1 adds matches and keeps all k=0 ones; matches land on the shared grid (cross-season)."""
    for conf, grid in real_conf:
        m0 = mknn_mask(conf, grid, grid, 0, THRESHOLD)
        np.testing.assert_array_equal(m0, mutual_nearest_mask(conf, THRESHOLD))
        m1 = mknn_mask(conf, grid, grid, 1, THRESHOLD)
        m2 = mknn_mask(conf, grid, grid, 2, THRESHOLD)
        assert np.all(m1[m0]) and np.all(m2[m1]), "k=1 must be a superset of k=0, k=2 of k=1"
        assert m1.sum() > m0.sum(), "k=1 should admit one-to-many matches on a real matrix"
        assert m0.sum() >= 0.05 * conf.shape[0], f"too few MNN matches ({m0.sum()}) on a real pair"
        # 2017 and 2018 share the pixel grid, so the right match of cell i is cell i (misregistration < 1 cell).
        iq, ir, _ = matches_from_mask(m0, conf)
        err = np.abs(cell_index_to_uv(iq, grid[1]) - cell_index_to_uv(ir, grid[1])).max(axis=1)
        assert np.mean(err <= 1) >= 0.9, f"only {np.mean(err <= 1):.2f} of MNN matches within 1 cell"
        # k=1 extras lie within one cell of a row's best match, hence within 2 cells of the truth when it is right.
        iq1, ir1, _ = matches_from_mask(m1, conf)
        err1 = np.abs(cell_index_to_uv(iq1, grid[1]) - cell_index_to_uv(ir1, grid[1])).max(axis=1)
        assert np.mean(err1 <= 2) >= 0.9


def test_mknn_border_removal_on_real_similarity(real_conf):
    conf, grid = real_conf[1]
    h, w = grid
    full = mknn_mask(conf, grid, grid, 1, THRESHOLD)
    for border in (1, 2):
        cut = mknn_mask(conf, grid, grid, 1, THRESHOLD, border=border)
        iq, ir, _ = matches_from_mask(cut, conf)
        for uv in (cell_index_to_uv(iq, w), cell_index_to_uv(ir, w)):
            assert np.all(uv >= border) and np.all(uv[:, 0] < w - border) and np.all(uv[:, 1] < h - border)
        # LoFTR semantics: removal only drops pairs; interior pairs are exactly those of the full mask.
        uv_all = cell_index_to_uv(np.arange(h * w), w)
        inner = np.all(uv_all >= border, axis=1) & (uv_all[:, 0] < w - border) & (uv_all[:, 1] < h - border)
        np.testing.assert_array_equal(cut, full & inner[:, None] & inner[None, :])
        assert 0 < cut.sum() < full.sum()
    # A border that swallows the grid leaves nothing.
    assert not mknn_mask(conf, grid, grid, 1, THRESHOLD, border=(min(h, w) + 1) // 2).any()


def test_mknn_validity_mask_excludes_padded_cells_from_argmax():
    # Query cell 0's best reference is cell 1, but cell 1 is padding: cell 0 must then pair with cell 0.
    conf = np.array([[0.6, 0.9, 0.1, 0.0], [0.1, 0.2, 0.5, 0.1], [0.0, 0.1, 0.1, 0.7], [0.2, 0.1, 0.0, 0.1]])
    grid = (2, 2)
    valid_r = np.array([True, False, True, True])
    assert not mknn_mask(conf, grid, grid, 0, 0.3)[0, 0]  # suppressed by the padded winner
    masked = mknn_mask(conf, grid, grid, 0, 0.3, valid_r=valid_r)
    assert masked[0, 0] and not masked[:, 1].any()
    np.testing.assert_array_equal(masked, mutual_nearest_mask(conf, 0.3, valid_r=valid_r))
    valid_q = np.array([True, True, False, True])
    assert not mknn_mask(conf, grid, grid, 1, 0.0, valid_q=valid_q)[2].any()


def test_mknn_rejects_bad_arguments():
    conf = np.full((6, 6), 0.1)
    with pytest.raises(ValueError, match="grid_q"):
        mknn_mask(conf, (2, 2), (2, 3), 0, 0.1)
    with pytest.raises(ValueError, match="grid_r"):
        mknn_mask(conf, (2, 3), (3, 3), 0, 0.1)
    with pytest.raises(ValueError, match="k must"):
        mknn_mask(conf, (2, 3), (2, 3), -1, 0.1)
    with pytest.raises(ValueError, match="border"):
        mknn_mask(conf, (2, 3), (2, 3), 0, 0.1, border=-1)
    with pytest.raises(ValueError, match="valid_q"):
        mknn_mask(conf, (2, 3), (2, 3), 0, 0.1, valid_q=np.ones(5, bool))
    with pytest.raises(ValueError, match="valid_r"):
        mknn_mask(conf, (2, 3), (2, 3), 0, 0.1, valid_r=np.ones(6))  # not bool
    with pytest.raises(ValueError, match="non-finite"):
        mknn_mask(np.full((6, 6), np.nan), (2, 3), (2, 3), 0, 0.1)


# ------------------------------------------------------------------------------------------------------ match lists


def test_matches_from_mask_sorted_and_consistent(real_conf):
    conf, grid = real_conf[0]
    mask = mknn_mask(conf, grid, grid, 1, THRESHOLD)
    iq, ir, c = matches_from_mask(mask, conf)
    assert iq.dtype == np.int64 and ir.dtype == np.int64 and c.dtype == conf.dtype
    assert iq.shape[0] == mask.sum()
    assert np.all(np.diff(c) <= 0)
    np.testing.assert_array_equal(c, conf[iq, ir])
    rebuilt = np.zeros_like(mask)
    rebuilt[iq, ir] = True
    np.testing.assert_array_equal(rebuilt, mask)


def test_matches_from_mask_ties_keep_row_major_order():
    conf = np.full((2, 3), 0.5)
    mask = np.array([[False, True, True], [True, False, False]])
    iq, ir, _ = matches_from_mask(mask, conf)
    np.testing.assert_array_equal(iq, [0, 0, 1])
    np.testing.assert_array_equal(ir, [1, 2, 0])
    with pytest.raises(ValueError, match="bool"):
        matches_from_mask(mask.astype(int), conf)
    with pytest.raises(ValueError, match="shape"):
        matches_from_mask(mask, conf[:, :2])


def test_topk_fixed_truncates_and_pads(real_conf):
    conf, grid = real_conf[2]
    mask = mknn_mask(conf, grid, grid, 1, THRESHOLD)
    iq, ir, c = matches_from_mask(mask, conf)
    m = iq.shape[0]
    for k in (1, m // 2, m, m + 17):
        oq, orr, oc, valid = topk_fixed(mask, conf, k)
        assert oq.shape == orr.shape == oc.shape == valid.shape == (k,)
        n = min(k, m)
        assert valid[:n].all() and not valid[n:].any()
        np.testing.assert_array_equal(oq[:n], iq[:n])
        np.testing.assert_array_equal(orr[:n], ir[:n])
        np.testing.assert_array_equal(oc[:n], c[:n])
        assert np.all(oq[n:] == 0) and np.all(orr[n:] == 0) and np.all(oc[n:] == 0)
    empty = topk_fixed(np.zeros_like(mask), conf, 4)
    assert not empty[3].any()
    with pytest.raises(ValueError, match="max_matches"):
        topk_fixed(mask, conf, 0)
