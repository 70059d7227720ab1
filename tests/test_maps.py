"""edge-maps build: tiling, cell validity, features vs a direct encoder run, resume, bad inputs and the CLI.

Real rasters in three CRSs: Brighton Beach 0.10 m with an alpha band (EPSG:32615, tests/data/maps), SJER 0.10 m with
nodata 255 (EPSG:32611, tests/data/sjer) and NAIP 5 m, 4 bands, nodata 0 (EPSG:26914, tests/data/naip). The encoder is
the randomly initialised ``tiny_bundle`` (tiles of 512 px, so the 700x600 Brighton map has a 2x2 grid).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning

from edge_runtime.backends import BackendChoice, open_graph
from edge_runtime.bundle import open_bundle
from edge_runtime.map_cache import MapCacheError, open_map_cache
from maps.build import BuildConfig, MapsError, build_cache, work_dir_for
from maps.cli import main
from maps.tiling import cell_validity, image_tensor, make_grid, overlap_pixels

TILE = 512
CELL = 64


@pytest.fixture(scope="module")
def built(tiny_bundle, map_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps") / "cache"
    summary = build_cache(tiny_bundle, map_paths, out, BuildConfig(progress=False))
    return out, summary


def _listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _window(bands: np.ndarray, x0: int, y0: int, size: int = TILE) -> np.ndarray:
    """``bands (C, H, W)`` cut to the ``size`` x ``size`` window at ``(x0, y0)``, zero outside the array (origins may
    be negative: a map narrower than a tile sits centred in it)."""
    c, h, w = bands.shape
    out = np.zeros((c, size, size), dtype=bands.dtype)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)
    if xb > xa and yb > ya:
        out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = bands[:, ya:yb, xa:xb]
    return out


def _alpha_cells(path: Path, x0: int, y0: int) -> np.ndarray:
    """Expected cell validity of one tile straight from the alpha band (independent of the cache code)."""
    with rasterio.open(path) as ds:
        alpha = ds.read(4)
    tile = _window(alpha[None], x0, y0)[0] > 0
    return tile.reshape(TILE // CELL, CELL, TILE // CELL, CELL).mean(axis=(1, 3)).ravel() >= 0.5


# -- tiling ---------------------------------------------------------------------------------------------------------
def test_decision_14_overlap_and_cell_lattice():
    assert overlap_pixels(4096, 0.125, 64) == 512  # method.md decision 14
    assert overlap_pixels(512, 0.125, 64) == 64
    assert overlap_pixels(1024, 0.1, 64) == 128  # 102.4 px rounds to two whole cells
    assert overlap_pixels(512, 0.0, 64) == 0
    assert BuildConfig().overlap == 0.125
    with pytest.raises(ValueError, match="overlap"):
        overlap_pixels(512, 0.6, 64)


@pytest.mark.parametrize(("width", "height", "tile", "overlap"), [
    (1, 1, 512, 0.125), (512, 512, 512, 0.125), (513, 300, 512, 0.125), (960, 961, 512, 0.125),
    (700, 600, 512, 0.25), (13000, 4097, 4096, 0.125), (934, 723, 1024, 0.0),
])
def test_tile_grid_covers_every_pixel_without_superfluous_tiles(width, height, tile, overlap):
    grid = make_grid(width, height, tile, overlap, CELL)
    origins = grid.origins()
    assert origins.shape == (grid.nx * grid.ny, 2)
    for axis, extent in ((0, width), (1, height)):
        starts = np.unique(origins[:, axis])
        covered = np.zeros(extent, dtype=np.int32)
        for s in starts:
            covered[max(s, 0) : max(s + tile, 0)] += 1
        assert covered.min() >= 1, "a pixel column/row is not covered"
        assert starts.max() < extent and starts.min() + tile > 0, "a tile lies wholly outside the map"
        assert np.all(np.diff(starts) == tile - overlap_pixels(tile, overlap, CELL))
        assert np.all(starts % CELL == 0), "tiles must share the map-wide 64-px cell lattice"
        before, after = -starts.min(), starts.max() + tile - extent
        if extent < tile:  # centred to whole cells
            assert before >= 0 and after >= 0 and abs(before - after) <= CELL
        else:  # from pixel 0
            assert before == 0
    # row-major: x fastest
    if grid.nx > 1:
        assert origins[1, 0] == origins[0, 0] + grid.stride and origins[1, 1] == origins[0, 1] == grid.y0


def test_built_cache_grids_cover_each_map(built, map_paths):
    out, summary = built
    cache = open_map_cache(out)
    assert cache.map_ids == [p.stem for p in map_paths]
    assert summary.tiles == cache.n_tiles == 4 + 1 + 1
    for path in map_paths:
        entry = cache.map(path.stem)
        with rasterio.open(path) as ds:
            width, height = ds.width, ds.height
        cover = np.zeros((height, width), dtype=np.int32)
        for x0, y0 in entry.origins:
            cover[max(y0, 0) : max(y0 + TILE, 0), max(x0, 0) : max(x0 + TILE, 0)] += 1
        assert cover.min() >= 1
        np.testing.assert_array_equal(entry.origins, make_grid(width, height, TILE, 0.125, CELL).origins())


# -- contents -------------------------------------------------------------------------------------------------------
def test_cell_validity_follows_alpha_band_and_nodata(built, map_paths):
    cache = open_map_cache(built[0])
    brighton = cache.map(map_paths[0].stem)
    expected = np.stack([_alpha_cells(map_paths[0], x0, y0) for x0, y0 in brighton.origins])
    np.testing.assert_array_equal(brighton.cell_valid, expected)
    assert expected[3].sum() == 0 and expected[:3].any(axis=1).all()  # the real hole: tile 3 has no valid cell
    assert not np.any(brighton.coarse[3]), "a tile without valid cells must not be encoded (zeros)"
    assert brighton.record["stats"]["tiles_encoded"] == 3
    assert cache.manifest["maps"][0]["stats"]["valid_cells"] == int(expected.sum())
    # SJER: 400x400 centred in one 512 tile to whole cells (origin (-64, -64): 64 px of padding before the plot, 48
    # after); nodata 255 in all bands -> invalid; cells over the padding are invalid
    sjer = cache.map(map_paths[1].stem)
    np.testing.assert_array_equal(sjer.origins, [[-64, -64]])
    with rasterio.open(map_paths[1]) as ds:
        raw = ds.read()
    pix = np.zeros((TILE, TILE), dtype=bool)
    pix[64:464, 64:464] = ~np.all(raw == 255, axis=0)
    np.testing.assert_array_equal(sjer.cell_valid[0], cell_validity(pix, CELL, 0.5))
    cells = sjer.cell_valid[0].reshape(8, 8)
    assert cells[:, 0].sum() == cells[:, 7].sum() == 0  # all padding; 16 of 64 px of the last column: < 50 %


def test_cache_features_equal_a_direct_backend_run(built, map_paths, tiny_bundle):
    """Read each tile with rasterio directly (RGB + alpha, zero padding) and run the encoder on it."""
    cache = open_map_cache(built[0])
    backend = open_graph(open_bundle(tiny_bundle), "encoder_tile", BackendChoice()).backend
    entry = cache.map(map_paths[0].stem)
    with rasterio.open(map_paths[0]) as ds:
        bands = ds.read()
    checked = 0
    for k, (x0, y0) in enumerate(entry.origins):
        cells = _alpha_cells(map_paths[0], x0, y0)
        if not cells.any():
            continue
        sub = _window(bands, x0, y0)
        keep = sub[3] > 0
        rgb = np.where(keep[..., None], sub[:3].transpose(1, 2, 0), 0).astype(np.uint8)
        direct = backend.run({"image": image_tensor(rgb), "cell_valid": cells[None]})["coarse"][0]
        assert entry.coarse.dtype == np.float16
        # float16 storage: relative rounding 2**-11
        np.testing.assert_allclose(entry.coarse[k].astype(np.float32), direct, rtol=1e-3, atol=1e-3)
        assert np.abs(direct).max() > 0.1  # a real, non-trivial feature map
        checked += 1
    assert checked == 3


# -- resume -----------------------------------------------------------------------------------------------------------
class _Interrupt(RuntimeError):
    pass


def test_interrupted_build_resumes_to_identical_files(built, tiny_bundle, map_paths, tmp_path):
    out = tmp_path / "cache"
    seen: list[tuple[str, int]] = []

    def stop_after_two(map_id, idx):
        seen.append((map_id, idx))
        if len(seen) == 2:
            raise _Interrupt("killed")

    with pytest.raises(_Interrupt):
        build_cache(tiny_bundle, map_paths, out, BuildConfig(progress=False), on_tile=stop_after_two)
    assert not out.exists(), "an interrupted build must not leave a cache at --out"
    assert work_dir_for(out).is_dir()

    resumed: list[tuple[str, int]] = []
    summary = build_cache(tiny_bundle, map_paths, out, BuildConfig(progress=False),
                          on_tile=lambda m, i: resumed.append((m, i)))
    assert summary.tiles_resumed == 2
    assert set(resumed).isdisjoint(seen) and len(resumed) == summary.tiles - 2, "done tiles must not be redone"
    assert not work_dir_for(out).exists()
    reference, result = _listing(built[0]), _listing(out)
    assert sorted(result) == sorted(reference)
    for name, data in reference.items():
        assert result[name] == data, f"{name} differs from the uninterrupted build"


def test_resume_refuses_another_plan_unless_fresh(tiny_bundle, map_paths, tmp_path):
    out = tmp_path / "cache"

    def stop(map_id, idx):
        raise _Interrupt("killed")

    with pytest.raises(_Interrupt):
        build_cache(tiny_bundle, map_paths[:1], out, BuildConfig(progress=False), on_tile=stop)
    plan_bytes = (work_dir_for(out) / "plan.json").read_bytes()
    with pytest.raises(MapsError, match=r"(?s)another plan.*tiling.*--fresh"):
        build_cache(tiny_bundle, map_paths[:1], out, BuildConfig(overlap=0.25, progress=False))
    assert (work_dir_for(out) / "plan.json").read_bytes() == plan_bytes and not out.exists()
    summary = build_cache(tiny_bundle, map_paths[:1], out, BuildConfig(overlap=0.25, fresh=True, progress=False))
    assert summary.tiles_resumed == 0 and summary.tiles == 4
    assert json.loads((out / "manifest.json").read_text())["tiling"]["overlap_px"] == 128


@pytest.mark.parametrize(("bundle_precision", "choice", "expected"), [
    ("fp16", BackendChoice(), "fp32"),  # ONNX Runtime on the CPU: the bundle's FP32 graphs
    ("fp16", BackendChoice(device="cuda"), "fp16"),
    ("fp16", BackendChoice(precision="fp16"), "fp16"),
    ("fp16", BackendChoice("tensorrt"), "fp16"),  # engines as built
    ("fp32", BackendChoice(), "fp32"),
])
def test_cache_records_the_precision_its_features_were_computed_in(bundle_precision, choice, expected):
    from types import SimpleNamespace

    from maps.build import encoder_precision

    assert encoder_precision(SimpleNamespace(precision=bundle_precision), choice) == expected


def test_fp16_features_need_an_fp16_bundle_and_a_refusal_leaves_nothing(built, tiny_bundle, map_paths, tmp_path):
    assert json.loads((built[0] / "manifest.json").read_text())["bundle"]["precision"] == "fp32"
    out = tmp_path / "other"
    with pytest.raises(MapsError, match="no fp16 encoder_tile graph"):
        build_cache(tiny_bundle, map_paths[:1], out, BuildConfig(progress=False, precision="fp16"))
    assert not out.exists() and not work_dir_for(out).exists()  # a plain rebuild is not blocked
    assert build_cache(tiny_bundle, map_paths[:1], out, BuildConfig(progress=False)).tiles_resumed == 0


@pytest.mark.slow
def test_an_fp16_bundles_cache_records_the_graph_its_features_came_from(fp16_bundle, map_paths, tmp_path):
    """On the CPU an FP16 bundle's cache is computed by its FP32 graph (``auto``): the manifest names that precision
    and that graph's hash, the reader accepts it, and the features are the FP32 graph's; ``--precision fp16`` gives
    the FP16 graph's. A resumed build of the other precision is refused by name."""
    from edge_runtime.map_cache import encoder_sha256

    bundle = open_bundle(fp16_bundle)
    caches = {}
    for precision in ("auto", "fp16"):
        out = tmp_path / precision
        build_cache(fp16_bundle, map_paths[:1], out, BuildConfig(progress=False, precision=precision))
        rec = json.loads((out / "manifest.json").read_text())["bundle"]
        expected = "fp32" if precision == "auto" else "fp16"
        assert rec["precision"] == expected and rec["encoder_sha256"] == encoder_sha256(bundle, expected)
        caches[precision] = open_map_cache(out, bundle=bundle)  # check_bundle: the graph of that precision
    assert encoder_sha256(bundle, "fp32") != encoder_sha256(bundle, "fp16")
    a, b = (np.asarray(next(iter(caches[k].maps.values())).coarse, np.float32) for k in ("auto", "fp16"))
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()  # the same network within FP16 rounding
    from edge_runtime.locator import Locator, LocatorConfig

    status = Locator(bundle, caches["fp16"], LocatorConfig()).backend_status  # FP32 queries on FP16 map features
    assert status["precision"] == "fp32" and status["map_precision"] == "fp16"
    for cache in caches.values():
        cache.close()

    out = tmp_path / "resumed"

    def stop(map_id, idx):
        raise _Interrupt("killed")

    with pytest.raises(_Interrupt):
        build_cache(fp16_bundle, map_paths[:1], out, BuildConfig(progress=False), on_tile=stop)
    with pytest.raises(MapsError, match=r"bundle\.encoder_sha256, bundle\.precision"):
        build_cache(fp16_bundle, map_paths[:1], out, BuildConfig(progress=False, precision="fp16"))


# -- bad inputs -------------------------------------------------------------------------------------------------------
def _png_from(path: Path, dst: Path) -> Path:
    """Real SJER pixels as a PNG without any georeference."""
    with rasterio.open(path) as ds:
        rgb = ds.read([1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(dst, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8") as png:
            png.write(rgb)
    return dst


def test_image_without_georeference_needs_gsd_or_bounds(tiny_bundle, map_paths, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    png = _png_from(map_paths[1], src / "plot.png")
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(MapsError, match=r"plot\.png has no georeference.*--bounds.*--gsd"):
        build_cache(tiny_bundle, [map_paths[2], png], outdir / "cache", BuildConfig(progress=False))
    assert list(outdir.iterdir()) == [], "a rejected build must write nothing"

    # --gsd alone: a local metric frame, no latitude/longitude
    build_cache(tiny_bundle, [png], outdir / "gsd", BuildConfig(gsd=0.1, progress=False))
    entry = open_map_cache(outdir / "gsd").map("plot")
    assert entry.georef.source == "gsd" and entry.georef.crs_wkt is None
    np.testing.assert_allclose(entry.georef.pixels_to_world(np.array([[0.0, 0.0], [399.0, 10.0]])),
                               [[0.05, -0.05], [39.95, -1.05]], atol=1e-12)
    with pytest.raises(MapCacheError, match="no CRS"):
        entry.georef.pixels_to_lonlat(np.zeros((1, 2)))

    # --bounds in lon/lat: the outer pixel edges land on the bounds
    bounds = (-119.7436, 37.0826, -119.7390, 37.0862)
    build_cache(tiny_bundle, [png], outdir / "bounds", BuildConfig(bounds=bounds, progress=False))
    geo = open_map_cache(outdir / "bounds").map("plot").georef
    assert geo.source == "bounds" and geo.epsg == 4326
    corners = geo.pixels_to_lonlat(np.array([[-0.5, -0.5], [399.5, 399.5]]))
    np.testing.assert_allclose(corners, [[bounds[0], bounds[3]], [bounds[2], bounds[1]]], atol=1e-12)
    assert 0.5 < geo.gsd_m < 1.5  # 0.0046 deg lon / 400 px at 37 N ~ 1.0 m
    with pytest.raises(MapsError, match=r"--gsd says 0\.1 m"):
        build_cache(tiny_bundle, [png], outdir / "both", BuildConfig(bounds=bounds, gsd=0.1, progress=False))
    assert not (outdir / "both").exists()
    # the same square degrees at 46.8 N are 0.68 as wide as high on the ground: refused, naming the UTM reprojection
    with pytest.raises(MapsError, match=r"not square.*gdalwarp -t_srs EPSG:32615"):
        build_cache(tiny_bundle, [png], outdir / "squashed",
                    BuildConfig(bounds=(-92.0, 46.8, -91.995, 46.805), progress=False))
    assert not (outdir / "squashed").exists()


def test_unreadable_or_missing_map_is_a_clear_error(tiny_bundle, map_paths, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 this is not a tiff" * 10)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(MapsError, match=r"broken\.tif.*cannot read"):
        build_cache(tiny_bundle, [map_paths[1], broken], tmp_path / "cache", BuildConfig(progress=False))
    with pytest.raises(MapsError, match=r"missing\.tif does not exist"):
        build_cache(tiny_bundle, [tmp_path / "missing.tif"], tmp_path / "cache", BuildConfig(progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bundle_mismatch_and_other_input_errors(built, tiny_bundle, map_paths, data_dir, tmp_path):
    other = tmp_path / "other_bundle"
    shutil.copytree(tiny_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["bundle_id"] = "0123456789abcdef"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MapCacheError, match=r"built with bundle [0-9a-f]{16}.*is 0123456789abcdef"):
        open_map_cache(built[0], bundle=open_bundle(other))
    assert open_map_cache(built[0], bundle=open_bundle(tiny_bundle)).bundle_id != "0123456789abcdef"

    # resuming an unfinished build with another bundle
    out = tmp_path / "cache"

    def stop(map_id, idx):
        raise _Interrupt("killed")

    with pytest.raises(_Interrupt):
        build_cache(tiny_bundle, map_paths[1:2], out, BuildConfig(progress=False), on_tile=stop)
    with pytest.raises(MapsError, match=r"another plan.*bundle"):
        build_cache(other, map_paths[1:2], out, BuildConfig(progress=False))

    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(MapsError, match="static 512 px input"):
        build_cache(tiny_bundle, map_paths[1:2], tmp_path / "t", BuildConfig(tile_size=1024, progress=False))
    dup = [data_dir / "sjer" / "2017" / "SJER_002.tif", data_dir / "sjer" / "2018" / "SJER_002.tif"]
    with pytest.raises(MapsError, match="same id 'SJER_002'"):
        build_cache(tiny_bundle, dup, tmp_path / "d", BuildConfig(progress=False))
    with pytest.raises(MapsError, match=r"'@' in a map id .*'SJER_002@2x'"):  # would collide with SJER_002's level
        build_cache(tiny_bundle, [Path("elsewhere/SJER_002@2x.tif"), dup[0]], tmp_path / "d",
                    BuildConfig(progress=False))
    with pytest.raises(MapsError, match="exists; choose another --out or pass --overwrite"):
        build_cache(tiny_bundle, map_paths[1:2], built[0], BuildConfig(progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_cli_build_info_verify_and_a_flipped_byte(tiny_bundle, map_paths, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["build", "--bundle", str(tiny_bundle), "--out", str(out), "--no-progress"]
    for p in map_paths:
        args += ["--map", str(p)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "3 map(s)" in text and "6 tiles of 512 px (5 encoded, 1 without valid cells)" in text
    assert "km2/min at 0.5 m" in text and "MB/km2 at 0.5 m" in text

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    for path, epsg in zip(map_paths, (32615, 32611, 26914), strict=True):
        line = next(x for x in info.splitlines() if x.strip().startswith(path.stem + ":"))
        with rasterio.open(path) as ds:
            cx, cy = ds.xy((ds.height - 1) / 2, (ds.width - 1) / 2)  # pixel-centre convention, rasterio's own
            lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
            assert f"{ds.width}x{ds.height} px" in line
        assert f"EPSG:{epsg}" in line and f"lat {lat:.6f} lon {lon:.6f}" in line
    assert "tiles (2x2, 3 encoded)" in info and "overlap 64 px (stride 448)" in info

    assert main(["info", str(out), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in as_json["maps"]] == [p.stem for p in map_paths]
    assert [m["tiles"] for m in as_json["maps"]] == [4, 1, 1]

    assert main(["verify", str(out), "--sources", "--bundle", str(tiny_bundle)]) == 0
    assert "OK" in capsys.readouterr().out

    target = out / "maps" / map_paths[0].stem / "coarse.npy"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"maps/{map_paths[0].stem}/coarse.npy" in err and "corrupt or modified" in err

    assert main(["build", "--bundle", str(tiny_bundle), "--map", str(tmp_path / "nope.tif"), "--out",
                 str(tmp_path / "c2"), "--no-progress"]) == 1
    assert "nope.tif does not exist" in capsys.readouterr().err
    assert not (tmp_path / "c2").exists()
