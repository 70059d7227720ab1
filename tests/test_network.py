"""The TopicGeo network: parameter count, shapes, purity of forward, matching primitives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topicgeo.config import TopicGeoConfig, get_preset
from topicgeo.model import TopicGeo
from topicgeo.model.backbone import space_to_depth
from topicgeo.model.matching import (
    child_index,
    dual_softmax,
    mknn_mask,
    topk_matches,
    window_grid,
    windows,
)
from topicgeo.model.norms import FP32GroupNorm
from topicgeo.model.topicgeo import cell_mask, count_parameters
from topicgeo.summary import PAPER_PARAMETERS


def test_paper_preset_has_the_published_parameter_count() -> None:
    params = count_parameters(TopicGeo(get_preset("paper")))
    assert abs(params / PAPER_PARAMETERS - 1.0) < 0.01, params


def test_topic_cross_attention_holds_the_published_10_5m() -> None:
    topic = TopicGeo(get_preset("paper")).topic
    ca = sum(p.numel() for p in topic.ca_layers.parameters())
    assert ca == 10_493_952  # 4 LoFTR layers at d = 512 (method.md §2)


@pytest.fixture(scope="module")
def cpu_model() -> TopicGeo:
    torch.manual_seed(0)
    return TopicGeo(get_preset("cpu"), prompts=torch.randn(31, 384)).eval()


@pytest.mark.parametrize(("hq", "wq", "hr", "wr"), [(256, 256, 256, 256), (512, 384, 448, 640), (192, 320, 512, 256)])
def test_output_shapes_at_several_sizes(cpu_model: TopicGeo, hq: int, wq: int, hr: int, wr: int) -> None:
    cfg = cpu_model.config
    with torch.no_grad():
        out = cpu_model(torch.rand(1, 3, hq, wq), torch.rand(1, 3, hr, wr))
    nq, nr = (hq // 64) * (wq // 64), (hr // 64) * (wr // 64)
    c = cfg.backbone.fpn_channels
    assert out.query.coarse.shape == (1, nq, c)
    assert out.reference.coarse.shape == (1, nr, c)
    assert out.query.fine1.shape == (1, c, hq // 16, wq // 16)
    assert out.query.fine2.shape == (1, c, hq // 4, wq // 4)
    assert out.query.theta.shape == (1, nq, 31)
    torch.testing.assert_close(out.query.theta.sum(-1), torch.ones(1, nq), atol=1e-5, rtol=0)
    assert out.coarse.conf.shape == (1, nq, nr)
    m = cfg.matching.max_coarse_matches
    assert out.coarse.idx_q.shape == (1, m)
    assert out.level1.pts_q.shape == (1, m * 16, 2)
    k = min(cfg.matching.max_level2_windows, m * 16)
    assert out.level2.pts_r.shape == (1, k * 16, 2)
    # Level-2 query points lie inside the query image, refined reference points near the reference image.
    assert bool((out.level2.pts_q[..., 0] < wq).all() and (out.level2.pts_q[..., 1] < hq).all())


def test_forward_does_not_mutate_its_inputs(cpu_model: TopicGeo) -> None:
    q, r = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    q0, r0 = q.clone(), r.clone()
    with torch.no_grad():
        cpu_model(q, r)
    assert torch.equal(q, q0) and torch.equal(r, r0)


def test_bad_inputs_are_refused(cpu_model: TopicGeo) -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        cpu_model.encode(torch.rand(1, 3, 250, 256))
    with pytest.raises(ValueError, match="expected images"):
        cpu_model.encode(torch.rand(1, 4, 256, 256))
    with pytest.raises(ValueError, match="prompt embeddings"):
        TopicGeo(get_preset("cpu"), prompts=torch.zeros(31, 512))


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = get_preset("cpu")
    assert TopicGeoConfig.from_dict(cfg.to_dict()) == cfg
    raw = cfg.to_dict()
    raw["topic"]["n_layers"] = 3
    with pytest.raises(ValueError, match="n_layers"):
        TopicGeoConfig.from_dict(raw)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_padding_cells_never_match(cpu_model: TopicGeo) -> None:
    ref_valid = torch.ones(1, 256, 256, dtype=torch.bool)
    ref_valid[:, :, 128:] = False  # right half is padding
    with torch.no_grad():
        q = cpu_model.encode(torch.rand(1, 3, 256, 256))
        r = cpu_model.encode(torch.rand(1, 3, 256, 256), ref_valid)
        conf = cpu_model.coarse_confidence(q, r)
    invalid_cols = ~r.valid[0]
    assert int(invalid_cols.sum()) == 8
    assert float(conf[0][:, invalid_cols].abs().max()) == 0.0


def _mnn_reference(conf: np.ndarray, threshold: float) -> np.ndarray:
    row = conf.argmax(1)
    col = conf.argmax(0)
    out = np.zeros_like(conf, dtype=bool)
    for i, j in enumerate(row):
        if col[j] == i and conf[i, j] > threshold:
            out[i, j] = True
    return out


def test_mknn_k0_is_mutual_nearest_neighbour_on_random_matrices() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        conf = dual_softmax(torch.randn(1, 20, 35, generator=g) * 3, 0.5)
        mask = mknn_mask(conf, (4, 5), (5, 7), k=0, threshold=0.0)
        np.testing.assert_array_equal(mask[0].numpy(), _mnn_reference(conf[0].numpy(), 0.0))
        wider = mknn_mask(conf, (4, 5), (5, 7), k=1, threshold=0.0)
        assert bool((wider | ~mask).all()), "k = 1 must keep every k = 0 match"


def test_mknn_k1_allows_one_to_many_within_a_3x3_block() -> None:
    conf = torch.zeros(1, 4, 9)  # query 2x2, reference 3x3
    conf[0, 0, 4] = 0.9  # best of query 0: centre cell
    conf[0, 0, 5] = 0.5  # neighbour of the centre: kept with k = 1 if query 0 is also best for column 5
    conf[0, 0, 8] = 0.3  # corner, also adjacent to centre (Chebyshev 1)
    m1 = mknn_mask(conf, (2, 2), (3, 3), k=1, threshold=0.2)[0]
    m0 = mknn_mask(conf, (2, 2), (3, 3), k=0, threshold=0.2)[0]
    assert m0[0].nonzero().flatten().tolist() == [4]
    assert m1[0].nonzero().flatten().tolist() == [4, 5, 8]


def test_topk_is_fixed_size_with_a_mask() -> None:
    conf = torch.zeros(1, 3, 3)
    conf[0, 0, 1], conf[0, 2, 2] = 0.8, 0.4
    mask = conf > 0.1
    iq, ir, s, v = topk_matches(conf, mask, 16)
    assert iq.shape == (1, 16) and v.sum() == 2
    assert (iq[0, :2].tolist(), ir[0, :2].tolist()) == ([0, 2], [1, 2])
    assert s[0, 0] == pytest.approx(0.8)


def test_windows_and_child_index_agree() -> None:
    feat = torch.arange(8 * 12, dtype=torch.float32).reshape(1, 1, 8, 12)  # 2x3 parents of 4x4 children
    win = windows(feat)
    for parent in range(6):
        for child in range(16):
            flat = int(child_index(torch.tensor(parent), 3, torch.tensor(child)))
            assert win[0, parent, child, 0].item() == feat.flatten()[flat].item()


def test_gather_windows_equals_regrouping_the_whole_map() -> None:
    from topicgeo.model.matching import gather_rows, gather_windows

    torch.manual_seed(0)
    feat = torch.randn(2, 5, 16, 24)  # 4x6 parents of 4x4 children, 5 channels, batch of 2
    parents = torch.tensor([[0, 23, 7, 7, 12], [5, 18, 0, 22, 9]])
    expected = gather_rows(windows(feat), parents)
    got = gather_windows(feat, parents, 6)
    assert got.shape == (2, 5, 16, 5)
    assert torch.equal(got, expected)


def test_even_window_grid_uses_the_half_cell_offsets() -> None:
    grid = window_grid(4)
    np.testing.assert_allclose(grid[:4, 0].numpy(), [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
    # +-1 is 1.5 child cells: the outer child centres of an even window, not 2 cells (the W//2 pitfall).
    from topicgeo.config import fine_offset_scale

    assert fine_offset_scale(4) == 6.0


def test_masked_group_norm_takes_its_statistics_from_the_valid_positions_only() -> None:
    torch.manual_seed(0)
    norm = FP32GroupNorm(4, 16)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    x = torch.randn(2, 16, 32, 32) * 3.0 + 1.0
    everywhere = torch.ones(2, 1, 4, 4)
    assert torch.allclose(norm(x, everywhere), norm(x), atol=1e-5)  # an all-valid mask is plain GroupNorm
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2, :3] = 1.0  # the top-left 16 x 24 positions (mask cells are 8 x 8 here)
    masked = norm(x, mask)
    assert torch.allclose(masked[:, :, :16, :24], norm(x[:, :, :16, :24]), atol=1e-5)
    assert not torch.allclose(norm(x)[:, :, :16, :24], norm(x[:, :, :16, :24]), atol=1e-2)
    empty = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(norm(x, empty), norm(x), atol=1e-5)  # nothing valid: plain statistics, no division by 0


def test_padding_around_the_content_leaves_the_stem_features_of_the_content_unchanged(cpu_model: TopicGeo) -> None:
    """A letterboxed frame or an overhanging map tile: the amount of padding must not shift the content's features."""
    content = torch.rand(1, 3, 128, 128)
    small = torch.zeros(1, 3, 192, 192)
    large = torch.zeros(1, 3, 256, 256)
    small[..., :128, :128] = content
    large[..., :128, :128] = content
    with torch.no_grad():
        outs = {}
        for name, canvas in (("small", small), ("large", large)):
            valid = torch.zeros(1, canvas.shape[2], canvas.shape[3], dtype=torch.bool)
            valid[:, :128, :128] = True
            grid = (canvas.shape[2] // 64, canvas.shape[3] // 64)
            mask = cell_mask(cpu_model.cell_validity(canvas, valid), grid)
            x = space_to_depth(canvas, 4)
            outs[name] = (cpu_model.backbone.stem(x, mask), cpu_model.backbone.stem(x))
    # stem output at 1/8: the content is the top-left 16 x 16 (its 7x7 stride-2 convolution sees the same zeros)
    masked_small, plain_small = (t[..., :14, :14] for t in outs["small"])
    masked_large, plain_large = (t[..., :14, :14] for t in outs["large"])
    assert torch.allclose(masked_small, masked_large, atol=1e-5)
    assert not torch.allclose(plain_small, plain_large, atol=1e-3)
