"""Cross-date training pairs, reference windows, negatives, splits and dataset layouts on real crops."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from edge_runtime.map_cache import zoom_expand, zoom_matrix
from topicgeo.data.pairs import (
    SPLITS_DIR,
    MapSource,
    PairConfig,
    PairDataset,
    _load_naip_split,
    folder_sources,
    load_split_ids,
    mtgl_sources,
    query_center_in_ref,
    sjer_eval_pairs,
    sjer_sources,
)
from topicgeo.data.raster import GeoRaster, apply_homography, pixel_map_between
from topicgeo.data.synthesis import QuerySynthesisConfig

CLEAN = QuerySynthesisConfig(color_prob=0.0, noise_prob=0.0)
PLOTS = ["SJER_002", "SJER_009", "SJER_048"]


@pytest.fixture(scope="module")
def sjer_root(data_dir):
    return data_dir / "sjer"


@pytest.fixture(scope="module")
def naip_crops(data_dir):
    return data_dir / "naip" / "naip_nd_20150926_x340_y330.tif", data_dir / "naip" / "naip_nd_20160816_x340_y330.tif"


def warp_error(pair) -> float:
    """Mean |query - reference warped into the query frame by H| over pixels valid in both (grey levels)."""
    size = pair.query.shape[0]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(pair.reference, pair.H_query_to_ref, (size, size), flags=flags)
    wvalid = cv2.warpPerspective(pair.ref_valid.astype(np.uint8) * 255, pair.H_query_to_ref, (size, size), flags=flags)
    use = pair.query_valid & (wvalid == 255)
    assert use.mean() > 0.2, "too little overlap to judge"
    return float(np.abs(warped.astype(float) - pair.query.astype(float))[use].mean())


def test_sjer_cross_season_pairs(sjer_root):
    ds = PairDataset(sjer_sources(sjer_root, PLOTS), PairConfig(negative_prob=0.0), seed=0, length=6)
    for i in range(6):
        p = ds[i]
        assert {p.query_date, p.ref_date} == {"2017", "2018"}
        assert p.map_id == PLOTS[i % 3]
        assert p.query.shape == (512, 512, 3) and p.query.dtype == np.uint8
        assert p.reference.shape == (448, 448, 3) and p.ref_origin == (0, 0)  # 400-px plot, padded to 7 x 64
        assert not p.ref_valid[400:].any() and not p.ref_valid[:, 400:].any() and p.ref_valid[:400, :400].all()
        truth, _ = GeoRaster(sjer_root / p.ref_date / f"{p.map_id}.tif").read_window(0, 0, 448, 448)
        np.testing.assert_array_equal(p.reference, truth)
        c = query_center_in_ref(p)
        assert (c >= -0.5).all() and (c < 399.5).all()
        assert p.H_query_to_ref.dtype == np.float64 and abs(p.H_query_to_ref[2, 2] - 1) < 1e-12


def test_ground_truth_aligns_query_and_reference(sjer_root):
    """Same-date pair: the reference warped by H reproduces the query (a wrong H or offset would not)."""
    sources = [dataclasses.replace(s, date_pairs=(("2018", "2018"),)) for s in sjer_sources(sjer_root, PLOTS)]
    ds = PairDataset(sources, PairConfig(synthesis=CLEAN, ref_size=256, negative_prob=0.0), seed=1, length=6)
    for i in range(6):
        p = ds[i]
        assert p.reference.shape == (256, 256, 3)
        assert warp_error(p) < 1.5
        bad = dataclasses.replace(p, H_query_to_ref=p.H_query_to_ref + np.array([[0, 0, 3.0], [0, 0, 0], [0, 0, 0]]))
        assert warp_error(bad) > 3 * warp_error(p)


def test_cross_grid_ground_truth_through_world_coordinates(naip_crops, tmp_path):
    """Query raster and reference raster with different origins (a real sub-window): GT must follow georeferences."""
    with rasterio.open(naip_crops[0]) as ds:
        win = Window(37, 21, 200, 210)
        profile = ds.profile | {"width": 200, "height": 210, "transform": ds.window_transform(win)}
        sub = tmp_path / "sub.tif"
        with rasterio.open(sub, "w", **profile) as out:
            out.write(ds.read(window=win))
    H_ab = pixel_map_between(naip_crops[0], sub)
    np.testing.assert_allclose(H_ab, [[1, 0, -37], [0, 1, -21], [0, 0, 1]], atol=1e-9)
    src = MapSource("nd", (naip_crops[0], sub), ("a", "b"), date_pairs=(("a", "b"),))
    syn = dataclasses.replace(CLEAN, query_size=256, side_range=(60.0, 150.0), side_fraction_range=None)
    ds = PairDataset([src], PairConfig(synthesis=syn, ref_size=128, negative_prob=0.0), seed=2, length=5)
    for i in range(5):
        p = ds[i]
        assert p.reference.shape == (128, 128, 3)
        assert warp_error(p) < 1.5


def test_cross_year_naip_pairs_use_the_date_offset(naip_crops):
    src = MapSource("nd", naip_crops, ("2015", "2016"), date_pairs=(("2016", "2015"),))
    syn = dataclasses.replace(CLEAN, query_size=256, side_range=(60.0, 150.0), side_fraction_range=None)
    ds = PairDataset([src], PairConfig(synthesis=syn, ref_size=128, negative_prob=0.0), seed=3, length=4)
    offset = pixel_map_between(naip_crops[1], naip_crops[0])
    for i in range(4):
        p = ds[i]
        assert (p.query_date, p.ref_date) == ("2016", "2015")
        # Re-derive the query's footprint in its own raster: ref window -> 2015 raster -> 2016 raster.
        x0, y0 = p.ref_origin
        to_2016 = np.linalg.inv(offset) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]]) @ p.H_query_to_ref
        same_date = dataclasses.replace(
            p, H_query_to_ref=to_2016, reference=GeoRaster(naip_crops[1]).read_rgb()[0],
            ref_valid=GeoRaster(naip_crops[1]).read_rgb()[1],
        )
        assert warp_error(same_date) < 1.5


def test_pairs_are_deterministic_per_seed_and_epoch(sjer_root):
    make = lambda seed: PairDataset(sjer_sources(sjer_root, PLOTS), PairConfig(), seed=seed, length=4)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    for i in (0, 3):
        np.testing.assert_array_equal(a[i].query, b[i].query)
        np.testing.assert_array_equal(a[i].H_query_to_ref, b[i].H_query_to_ref)
    assert not np.allclose(a[0].H_query_to_ref, c[0].H_query_to_ref)
    before = a[1].H_query_to_ref
    a.set_epoch(1)
    assert not np.allclose(a[1].H_query_to_ref, before)
    with pytest.raises(IndexError):
        a[4]


def test_zoomed_reference_windows_keep_the_ground_truth_exact(sjer_root):
    """A zoomed pair's reference is the raster window magnified 2x; H maps the query onto it (same-date pairs: the
    reference warped back reproduces the query), and its negative is magnified alike."""
    sources = [dataclasses.replace(s, date_pairs=(("2018", "2018"),)) for s in sjer_sources(sjer_root, PLOTS)]
    syn = dataclasses.replace(CLEAN, side_fraction_range=(0.25, 0.35))  # 100-140 px crops fit a 256-px window
    cfg = PairConfig(synthesis=syn, ref_size=512, negative_prob=1.0, ref_zoom_prob=1.0)
    ds = PairDataset(sources, cfg, seed=2, length=6)
    for i in range(6):
        p = ds[i]
        assert p.ref_zoom == 2 and p.reference.shape == (512, 512, 3)
        assert p.negative is not None and p.negative.shape == (512, 512, 3)
        raster = GeoRaster(sjer_root / p.ref_date / f"{p.map_id}.tif")
        window, valid = raster.read_window(*p.ref_origin, 256, 256)
        expected, _ = zoom_expand(window, valid, 2)
        np.testing.assert_array_equal(p.reference, expected)
        assert warp_error(p) < 2.0
        unzoomed = dataclasses.replace(p, H_query_to_ref=np.diag([0.5, 0.5, 1.0]) @ p.H_query_to_ref)
        assert warp_error(unzoomed) > 3 * warp_error(p)
    # Queries too large for the magnified window keep the raster's own pixels; probability 0 draws nothing.
    big = PairDataset(sources, dataclasses.replace(cfg, synthesis=dataclasses.replace(
        syn, side_fraction_range=(0.8, 0.95))), seed=2, length=3)
    assert [big[i].ref_zoom for i in range(3)] == [1, 1, 1]
    plain = PairDataset(sources, dataclasses.replace(cfg, ref_zoom_prob=0.0, negative_prob=0.0), seed=2, length=2)
    before = PairDataset(sources, PairConfig(synthesis=syn, ref_size=512, negative_prob=0.0), seed=2, length=2)
    for i in range(2):
        np.testing.assert_array_equal(plain[i].reference, before[i].reference)
    for bad in ({"ref_zoom": 3, "ref_zoom_prob": 0.5}, {"ref_zoom": 1}, {"ref_zoom_prob": 1.5}):
        with pytest.raises(ValueError, match="ref_zoom"):
            PairConfig(ref_size=512, **bad)


def test_zoom_expand_is_bilinear_on_pixel_centres_and_strict_about_validity():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    valid = np.ones((6, 7), dtype=bool)
    valid[2, 3] = False
    out, out_valid = zoom_expand(image, valid, 2)
    assert out.shape == (12, 14, 3) and out_valid.shape == (12, 14)
    # Output pixel u is centred on input (u + 0.5) / 2 - 0.5: column 5 -> 2.25 (inputs 2 and 3, weights 3:1), row 9
    # -> 4.25 (rows 4 and 5, 3:1).
    img = image.astype(float)
    row4, row5 = 0.75 * img[4, 2] + 0.25 * img[4, 3], 0.75 * img[5, 2] + 0.25 * img[5, 3]
    np.testing.assert_allclose(out[9, 5].astype(float), 0.75 * row4 + 0.25 * row5, atol=1.0)
    assert (zoom_matrix(2) @ np.array([2.25, 2.25, 1.0]))[:2].tolist() == [5.0, 5.0]
    # Every output pixel that interpolates the invalid input is invalid (and black); the others are valid.
    assert not out_valid[3:7, 5:9].any() and (out[~out_valid] == 0).all()
    assert out_valid.sum() == 12 * 14 - 16
    same, same_valid = zoom_expand(image, valid, 1)
    assert same is image and same_valid is valid


def test_negatives_come_from_unrelated_ground(sjer_root, naip_crops):
    ds = PairDataset(sjer_sources(sjer_root, PLOTS), PairConfig(negative_prob=1.0), seed=4, length=6)
    for i in range(6):
        p = ds[i]
        assert p.negative is not None and p.negative.shape == p.reference.shape
        assert p.negative_valid.shape == p.ref_valid.shape and p.negative_valid.any()
        assert not p.negative_id.startswith(p.map_id + "/")
    # One area only (two dates): the negative window must avoid the query's footprint.
    src = MapSource("nd", naip_crops, ("2015", "2016"))
    syn = dataclasses.replace(CLEAN, query_size=128, side_range=(30.0, 60.0), side_fraction_range=None)
    ds = PairDataset([src], PairConfig(synthesis=syn, ref_size=64, negative_prob=1.0), seed=5, length=8)
    seen = 0
    for i in range(8):
        p = ds[i]
        if p.negative is None:
            continue
        seen += 1
        date, x0, y0 = re.match(r"nd/(\d+)@(\d+),(\d+)", p.negative_id).groups()
        ref_raster = naip_crops[0] if p.ref_date == "2015" else naip_crops[1]
        neg_raster = naip_crops[0] if date == "2015" else naip_crops[1]
        ox, oy = p.ref_origin
        to_neg = pixel_map_between(ref_raster, neg_raster) @ np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1.0]])
        fp = apply_homography(to_neg @ p.H_query_to_ref, np.array([[-0.5, -0.5], [127.5, -0.5], [127.5, 127.5],
                                                                   [-0.5, 127.5]]))
        x0, y0 = int(x0), int(y0)
        overlap_x = fp[:, 0].max() >= x0 - 0.5 and fp[:, 0].min() <= x0 + 63.5
        overlap_y = fp[:, 1].max() >= y0 - 0.5 and fp[:, 1].min() <= y0 + 63.5
        assert not (overlap_x and overlap_y)
    assert seen >= 4


def test_pad_to_ref_size_and_padded_copy(sjer_root):
    cfg = PairConfig(pad_mode="ref_size", negative_prob=1.0)
    p = PairDataset(sjer_sources(sjer_root, PLOTS), cfg, seed=0, length=1)[0]
    assert p.reference.shape == (512, 512, 3) and p.negative.shape == (512, 512, 3)
    assert p.ref_valid[:400, :400].all() and not p.ref_valid[400:].any()
    q = p.padded(576, 640)
    assert q.reference.shape == (576, 640, 3) and not q.ref_valid[:, 512:].any()
    assert q.negative_valid.shape == (576, 640)
    np.testing.assert_array_equal(q.H_query_to_ref, p.H_query_to_ref)


def test_uint16_four_band_sources(naip_crops, tmp_path):
    paths = []
    for k, path in enumerate(naip_crops):
        with rasterio.open(path) as ds:
            profile = ds.profile | {"dtype": "uint16"}
            data = ds.read().astype(np.uint16) * (30 + 10 * k) + 200
        out = tmp_path / f"u16_{k}.tif"
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(data)
        paths.append(out)
    src = MapSource("nd16", tuple(paths), ("2015", "2016"))
    syn = dataclasses.replace(CLEAN, query_size=128, side_range=(60.0, 120.0), side_fraction_range=None)
    p = PairDataset([src], PairConfig(synthesis=syn, ref_size=128, negative_prob=0.0), seed=0, length=1)[0]
    assert p.query.dtype == np.uint8 and p.reference.dtype == np.uint8
    assert p.reference[p.ref_valid].std() > 20  # stretched to the full uint8 range, not crushed


def test_bad_sources_and_configs(naip_crops, tmp_path):
    with pytest.raises(ValueError, match="duplicate dates"):
        MapSource("x", naip_crops, ("2015", "2015"))
    with pytest.raises(ValueError, match="unknown dates"):
        MapSource("x", naip_crops, ("2015", "2016"), date_pairs=(("2015", "2019"),))
    with pytest.raises(ValueError, match="multiple of 64"):
        PairConfig(ref_size=500)
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), np.zeros((64, 80, 3), np.uint8))
    with pytest.raises(ValueError, match="no CRS"):
        PairDataset([MapSource("p", (plain,), ("0",))])
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="shared grid"):
        PairDataset([MapSource("p", (plain, other), ("0", "1"), shared_grid=True)])
    with pytest.raises(ValueError, match="duplicate map ids"):
        PairDataset([MapSource("x", naip_crops[:1], ("a",)), MapSource("x", naip_crops[1:], ("b",))])


def test_split_files_hold_dev_apart(tmp_path):
    train = load_split_ids(SPLITS_DIR / "sjer_train.txt")
    dev = load_split_ids(SPLITS_DIR / "sjer_dev.txt")
    assert len(train) == 16 and len(dev) == 8 and not set(train) & set(dev)
    assert all(re.fullmatch(r"SJER_\d{3}", p) for p in train + dev)
    naip = _load_naip_split(SPLITS_DIR / "naip.json")
    dev_pairs = {tuple(p) for p in naip["dev_pairs"]}
    assert dev_pairs == {("2016", "2015")}
    assert not dev_pairs & {tuple(p) for p in naip["train_pairs"]}
    assert all("2016" not in p for p in naip["train_pairs"])
    leaky = dict(naip, train_pairs=[*naip["train_pairs"], ["2016", "2015"]])
    (tmp_path / "leaky.json").write_text(json.dumps(leaky))
    with pytest.raises(ValueError, match="held-apart"):
        _load_naip_split(tmp_path / "leaky.json")


def test_sjer_loaders(sjer_root):
    sources = sjer_sources(sjer_root, PLOTS, date_pairs=(("2017", "2018"),))
    assert [s.map_id for s in sources] == PLOTS and sources[0].pairs() == (("2017", "2018"),)
    pairs = sjer_eval_pairs(sjer_root, PLOTS)
    assert pairs[0][0].parent.name == "2017" and pairs[0][1].parent.name == "2018"
    with pytest.raises(FileNotFoundError, match="SJER_999"):
        sjer_sources(sjer_root, ["SJER_999"])


def test_folder_of_geotiffs_with_split_file(naip_crops, tmp_path):
    root = tmp_path / "maps"
    (root / "nd").mkdir(parents=True)
    shutil.copy(naip_crops[0], root / "nd" / "2015.tif")
    shutil.copy(naip_crops[1], root / "nd" / "2016.tif")
    shutil.copy(naip_crops[0], root / "single.tif")
    split = tmp_path / "train.txt"
    split.write_text("# maps\nnd: nd/2015.tif nd/2016.tif\nsingle.tif\n")
    sources = folder_sources(root, split)
    assert [(s.map_id, s.dates) for s in sources] == [("nd", ("2015", "2016")), ("single", ("single",))]
    syn = dataclasses.replace(CLEAN, query_size=128, side_range=(60.0, 120.0), side_fraction_range=None)
    ds = PairDataset(sources, PairConfig(synthesis=syn, ref_size=128, negative_prob=0.0), seed=0, length=2)
    assert {ds[0].query_date, ds[0].ref_date} == {"2015", "2016"}
    assert warp_error(ds[1]) < 1.5  # single date: query and reference from the same raster
    split.write_text("nd: nd/2015.tif nd/2017.tif\n")
    with pytest.raises(FileNotFoundError, match="2017"):
        folder_sources(root, split)


def test_mtgl_layout(sjer_root, tmp_path):
    img2018 = GeoRaster(sjer_root / "2018" / "SJER_002.tif").read_rgb()[0]
    for phase in (0, 1):
        folder = tmp_path / "mtgl" / "loc07" / "support" / str(phase)
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / "base.png"), img2018[..., ::-1])
    sources = mtgl_sources(tmp_path / "mtgl", phases=(0, 1))
    assert len(sources) == 1 and sources[0].shared_grid and sources[0].dates == ("0", "1")
    ds = PairDataset(sources, PairConfig(synthesis=CLEAN, ref_size=256, negative_prob=0.0), seed=0, length=2)
    for i in range(2):
        assert warp_error(ds[i]) < 1.5  # identical phases on a shared grid: H aligns them exactly
    cv2.imwrite(str(tmp_path / "mtgl" / "loc07" / "support" / "1" / "extra.png"), img2018)
    with pytest.raises(ValueError, match="exactly one base-map image"):
        mtgl_sources(tmp_path / "mtgl", phases=(0, 1))
    with pytest.raises(FileNotFoundError, match="support/2"):
        mtgl_sources(tmp_path / "mtgl", phases=(0, 2))


_SHARED: dict = {}


def _query_of(args):
    ds, i = args
    return ds[i].query


def _inherited_query(i):
    return _SHARED["ds"][i].query  # the dataset object inherited through fork, not pickled


def test_worker_processes_reproduce_the_parent_samples(sjer_root):
    import multiprocessing

    # No in-memory cache: every sample reads through rasterio handles, opened in the parent before forking.
    ds = PairDataset(sjer_sources(sjer_root, PLOTS), PairConfig(negative_prob=0.0, cache_max_pixels=0), seed=9,
                     length=4)
    expected = [ds[i].query for i in range(4)]
    _SHARED["ds"] = ds
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            forked = pool.map(_inherited_query, [3, 2, 1, 0, 3, 2, 1, 0])
    finally:
        _SHARED.clear()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        spawned = pool.map(_query_of, [(ds, 3)])
    for i, q in zip([3, 2, 1, 0, 3, 2, 1, 0], forked, strict=True):
        np.testing.assert_array_equal(q, expected[i])
    np.testing.assert_array_equal(spawned[0], expected[3])
    np.testing.assert_array_equal(ds[2].query, expected[2])  # the parent's handles still work afterwards


def test_folder_of_dated_subfolders_with_one_file_name(naip_crops, tmp_path):
    """The common layout ``2019/area.tif 2020/area.tif``: the dates are the folder names, not the (equal) stems."""
    root = tmp_path / "maps"
    for year, crop in (("2019", naip_crops[0]), ("2020", naip_crops[1])):
        with rasterio.open(crop) as src:
            profile = src.profile
            window = Window(0, 0, 192, 192)
            data = src.read(window=window)
            profile.update(width=192, height=192, transform=src.window_transform(window))
        (root / year).mkdir(parents=True)
        with rasterio.open(root / year / "area.tif", "w", **profile) as dst:
            dst.write(data)
    (root / "other" / "2019").mkdir(parents=True)
    shutil.copy(root / "2019" / "area.tif", root / "other" / "2019" / "area.tif")
    split = tmp_path / "train.txt"
    split.write_text("area: 2019/area.tif 2020/area.tif\nboth: 2019/area.tif other/2019/area.tif\n")
    area, both = folder_sources(root, split)
    assert area.dates == ("2019", "2020") and area.pairs() == (("2019", "2020"), ("2020", "2019"))
    assert area.raster_path("2020") == root / "2020" / "area.tif"
    assert both.dates == ("2019/area", "other/2019/area")  # folder names collide too: relative paths
    syn = dataclasses.replace(CLEAN, query_size=64, side_range=(48.0, 96.0), side_fraction_range=None)
    ds = PairDataset([area], PairConfig(synthesis=syn, ref_size=128, negative_prob=0.0), seed=0, length=2)
    assert {ds[0].query_date, ds[0].ref_date} == {"2019", "2020"}
    split.write_text("twice: 2019/area.tif 2019/area.tif\n")
    with pytest.raises(ValueError, match="listed twice"):
        folder_sources(root, split)
