"""edge-export: bundle contents, parity PyTorch vs ONNX Runtime (FP32, FP16), graph rules and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_runtime.backends import BackendChoice, BackendError, open_graph
from edge_runtime.bundle import BundleError, open_bundle
from edge_runtime.numerics.coarse import CoarseMatchConfig, coarse_matches
from edge_runtime.numerics.geometry import estimate_homography, footprint
from export.bundle_writer import ExportConfig, export_bundle
from topicgeo.checkpoint import CheckpointError, load_model, save_checkpoint
from topicgeo.config import get_preset
from topicgeo.data.raster import GeoRaster
from topicgeo.data.synthesis import EvalProtocol, evaluation_queries
from topicgeo.model import TopicGeo

FEATURE_RTOL = 1e-4  # FP32 ORT vs PyTorch: max |a - b| / max |b| per feature map
FP16_RTOL = 2e-2  # FP16 ORT vs FP32 ORT, same measure
POINT_ATOL_PX = 1e-2  # FP32 fine-match positions
FOOTPRINT_ATOL_PX = 0.5


@pytest.fixture(scope="module")
def real_pair(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 256 px cross-season query (2017) and the 2018 plot padded to a 512 px tile, with its valid mask."""
    protocol = EvalProtocol("test", "fraction", (0.55, 0.95), queries_per_source=1, query_size=256)
    sjer = data_dir / "sjer"
    query = evaluation_queries([(sjer / "2017" / "SJER_002.tif", sjer / "2018" / "SJER_002.tif")], protocol, seed=1)[0]
    with GeoRaster(sjer / "2018" / "SJER_002.tif") as raster:
        image, valid = raster.read_rgb()
    tile = np.zeros((512, 512, 3), np.uint8)
    tile_valid = np.zeros((512, 512), bool)
    tile[: image.shape[0], : image.shape[1]] = image
    tile_valid[: image.shape[0], : image.shape[1]] = valid
    return query.image, tile, tile_valid


def _chw(image: np.ndarray) -> np.ndarray:
    return (image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).copy()


def _cell_valid(valid: np.ndarray) -> np.ndarray:
    return TopicGeo.cell_validity(torch.zeros(1, 3, *valid.shape), torch.from_numpy(valid)[None]).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_bundle_manifest_records_everything(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    m = bundle.manifest
    assert m["precision"] == "fp32" and m["opset"] == 18 and m["query_size"] == 256 and m["tile_size"] == 512
    assert m["engines_status"]["built"] is False and m["engines_status"]["reason"]
    assert m["topics"]["dim"] == 384 and len(m["topics"]["prompts"]) == 31
    assert {"topics.npz", "fine_matcher.fp32.onnx", "encoder_query.fp32.onnx"} <= set(m["files"])
    assert m["graphs"]["encoder_tile"]["inputs"][0] == {"name": "image", "shape": [1, 3, 512, 512], "dtype": "float32"}
    assert m["graphs"]["fine_matcher"]["outputs"][-1]["dtype"] == "bool"
    assert m["model_config"] == load_model(tiny_checkpoint).config.to_dict()
    for name in ("torch", "onnx", "onnxruntime"):
        assert m["tools"][name]


def test_fp32_parity_torch_vs_onnxruntime_on_a_real_pair(tiny_bundle: Path, tiny_checkpoint: Path, real_pair) -> None:
    query, tile, tile_valid = real_pair
    bundle = open_bundle(tiny_bundle)
    model = load_model(tiny_checkpoint)
    choice = BackendChoice("onnxruntime")
    enc_q = open_graph(bundle, "encoder_query", choice).backend
    enc_t = open_graph(bundle, "encoder_tile", choice).backend
    matcher = open_graph(bundle, "fine_matcher", choice).backend
    cv_q = np.ones((1, 16), bool)
    cv_t = _cell_valid(tile_valid)
    ort_q = enc_q.run({"image": _chw(query), "cell_valid": cv_q})
    ort_t = enc_t.run({"image": _chw(tile), "cell_valid": cv_t})
    with torch.no_grad():
        th_q = model.encode(torch.from_numpy(_chw(query)))
        th_t = model.encode(torch.from_numpy(_chw(tile)), torch.from_numpy(tile_valid)[None])
        th_coarse = model.match_coarse(th_q, th_t)
    for name, ref in (("coarse", th_q.coarse), ("fine1", th_q.fine1), ("fine2", th_q.fine2)):
        assert _rel(ort_q[name], ref.numpy()) < FEATURE_RTOL, name
    for name, ref in (("coarse", th_t.coarse), ("fine1", th_t.fine1), ("fine2", th_t.fine2)):
        assert _rel(ort_t[name], ref.numpy()) < FEATURE_RTOL, name

    # Coarse matching in numpy on ONNX Runtime features == the network's own coarse matching.
    cfg = CoarseMatchConfig.from_model_config(bundle.model_config)
    iq, ir, _, valid, _ = coarse_matches(ort_q["coarse"][0], ort_t["coarse"][0], (4, 4), (8, 8), cfg,
                                         cv_q[0], cv_t[0])
    th_set = {(int(a), int(b)) for a, b, v in zip(th_coarse.idx_q[0], th_coarse.idx_r[0], th_coarse.valid[0],
                                                  strict=True) if v}
    np_set = {(int(a), int(b)) for a, b, v in zip(iq, ir, valid, strict=True) if v}
    assert np_set == th_set

    feeds = {"fine1_q": ort_q["fine1"], "fine2_q": ort_q["fine2"], "fine1_r": ort_t["fine1"],
             "fine2_r": ort_t["fine2"], "idx_q": iq[None], "idx_r": ir[None], "match_valid": valid[None]}
    out = matcher.run(feeds)
    with torch.no_grad():
        l1 = model.match_level1(th_q, th_t, torch.from_numpy(iq)[None], torch.from_numpy(ir)[None],
                                torch.from_numpy(valid)[None])
        l2 = model.match_level2(th_q, th_t, *model.select_level2_windows(l1))
    np.testing.assert_array_equal(out["valid"][0], l2.valid[0].numpy())
    ok = out["valid"][0]
    np.testing.assert_allclose(out["pts_q"][0][ok], l2.pts_q[0].numpy()[ok], atol=POINT_ATOL_PX)
    np.testing.assert_allclose(out["pts_r"][0][ok], l2.pts_r[0].numpy()[ok], atol=POINT_ATOL_PX)
    if ok.sum() >= 8:
        h_ort = estimate_homography(out["pts_q"][0][ok], out["pts_r"][0][ok], 4.0, image_size=(256, 256))
        h_th = estimate_homography(l2.pts_q[0].numpy()[ok], l2.pts_r[0].numpy()[ok], 4.0, image_size=(256, 256))
        if h_ort.ok and h_th.ok:
            np.testing.assert_allclose(footprint(h_ort.H, 256, 256), footprint(h_th.H, 256, 256),
                                       atol=FOOTPRINT_ATOL_PX)


@pytest.mark.slow
def test_fp16_onnx_runs_on_cpu_close_to_fp32(fp16_bundle: Path, real_pair) -> None:
    query, _, _ = real_pair
    bundle = open_bundle(fp16_bundle)
    assert bundle.precision == "fp16"
    feeds = {"image": _chw(query), "cell_valid": np.ones((1, 16), bool)}
    backend16 = open_graph(bundle, "encoder_query", BackendChoice("onnxruntime", precision="fp16")).backend
    assert backend16.precision == "fp16"
    out16 = backend16.run(feeds)
    from edge_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    entry = bundle.graphs["encoder_query"]
    out32 = OnnxRuntimeBackend(bundle.onnx_path("encoder_query", "fp32"), entry.inputs, entry.outputs,
                               "fp32").run(feeds)
    for name in ("coarse", "fine1", "fine2"):
        assert out16[name].dtype == np.float32
        assert _rel(out16[name], out32[name]) < FP16_RTOL, name
    # The fp32 islands are explicit: LayerNormalization runs on float (not float16) inputs.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(bundle.onnx_path("encoder_query", "fp16"))))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    norms = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "GroupNormalization", "Softmax")]
    assert norms
    for node in norms:
        if node.input[0] in types:
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name


@pytest.mark.slow
def test_onnxruntime_on_the_cpu_runs_fp32_graphs_unless_told(fp16_bundle: Path, tiny_bundle: Path, real_pair,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """An FP16 bundle's FP16 graphs are for GPUs: on the CPU, ``precision='auto'`` runs its FP32 graphs (the numbers
    of an FP32 bundle, logged), ``fp16`` runs the FP16 ones; a precision the bundle lacks, or FP32 asked of FP16
    TensorRT engines, is an error that says what to do."""
    bundle = open_bundle(fp16_bundle)
    feeds = {"image": _chw(real_pair[0]), "cell_valid": np.ones((1, 16), bool)}
    with caplog.at_level(logging.INFO, logger="edge_runtime.backends"):
        auto = open_graph(bundle, "encoder_query", BackendChoice()).backend
    assert auto.precision == "fp32" and "runs the bundle's fp32 graph" in caplog.text
    forced = open_graph(bundle, "encoder_query", BackendChoice(precision="fp16")).backend
    assert forced.precision == "fp16" and forced.describe()["precision"] == "fp16"
    entry = bundle.graphs["encoder_query"]
    from edge_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    out32 = OnnxRuntimeBackend(bundle.onnx_path("encoder_query", "fp32"), entry.inputs, entry.outputs,
                               "fp32").run(feeds)
    got_auto, got16 = auto.run(feeds), forced.run(feeds)
    np.testing.assert_array_equal(got_auto["coarse"], out32["coarse"])
    assert 0 < _rel(got16["coarse"], out32["coarse"]) < FP16_RTOL  # really the FP16 graph
    with pytest.raises(BackendError, match="no fp16 ONNX"):
        open_graph(open_bundle(tiny_bundle), "encoder_query", BackendChoice(precision="fp16"))
    with pytest.raises(BackendError, match=r"TensorRT engines of bundle .* are fp16"):
        open_graph(bundle, "encoder_query", BackendChoice("tensorrt", precision="fp32", allow_fallback=True))
    with pytest.raises(ValueError, match="precision must be"):
        BackendChoice(precision="int8")  # type: ignore[arg-type]


def _integer_index_paths_are_clean(path: Path) -> list[str]:
    """Names of Floor nodes or float->int Casts that feed a gather index."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    producer = {out: node for node in model.graph.node for out in node.output}
    elem = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                          *model.graph.output)}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    bad, seen = [], set()
    stack = [n.input[1] for n in model.graph.node if n.op_type in ("Gather", "GatherElements", "GatherND")]
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        if node.op_type == "Floor":
            bad.append(node.name)
        if node.op_type == "Cast" and elem.get(node.input[0]) in floats:
            bad.append(node.name)
        if node.op_type in ("TopK", "ArgMax", "ArgMin"):
            continue  # their index outputs are integers by construction
        stack.extend(i for i in node.input if elem.get(i) not in floats)
    return bad


def test_integer_index_arithmetic_stays_integer(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    for graph in ("fine_matcher", "encoder_query"):
        path = bundle.onnx_path(graph, "fp32")
        assert _integer_index_paths_are_clean(path) == [], graph
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert not any(n.domain == "com.microsoft" for n in onnx.load(str(path)).graph.node)
        assert "NonZero" not in ops  # static shapes: fixed-size outputs + masks


def test_one_flipped_byte_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    target = copy / "fine_matcher.fp32.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fine_matcher\.fp32\.onnx"):
        open_bundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt bundle manifest"):
        open_bundle(copy)


def test_bad_export_inputs_leave_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        ExportConfig("int3")
    with pytest.raises(ValueError, match="multiple of 64"):
        ExportConfig("fp32", 250, 512)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        export_bundle(broken, out, ExportConfig("fp32", 128, 128, build_engines=False))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary folder may remain"
    with pytest.raises(CheckpointError, match="not found"):
        export_bundle(tmp_path / "missing.pt", out, ExportConfig("fp32", 128, 128, build_engines=False))


def test_checkpoint_from_another_config_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    other = dataclasses.replace(get_preset("cpu"), name="paper-ish").with_prompts(31, 384)
    with pytest.raises(CheckpointError, match="differs"):
        load_model(tiny_checkpoint, expected_config=other)
    with pytest.raises(CheckpointError, match="prompt embeddings"):
        load_model(tiny_checkpoint, prompts=torch.zeros(31, 384))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tiny_checkpoint, prompts=torch.zeros(31, 512))
    # A checkpoint without topic metadata cannot be exported (the bundle must say what the prompts are).
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, load_model(tiny_checkpoint))
    with pytest.raises(ValueError, match="topic metadata"):
        export_bundle(bare, tmp_path / "x", ExportConfig("fp32", 128, 128, build_engines=False))


def test_tensorrt_fallback_is_explicit(tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = open_bundle(tiny_bundle)
    with pytest.raises(BackendError, match="fallback not allowed"):
        open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=False))
    with caplog.at_level("WARNING"):
        sel = open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=True))
    assert sel.degraded and sel.backend.name == "onnxruntime" and sel.reason
    assert "DEGRADED" in caplog.text


def test_onnxruntime_threads_do_not_spin_unless_asked(tiny_bundle: Path) -> None:
    """Idle sessions' spin-waiting threads take the cores from the running one (BackendChoice.spin): off by default,
    and the same outputs either way."""
    bundle = open_bundle(tiny_bundle)
    feeds = {"image": np.random.default_rng(0).random((1, 3, 256, 256), np.float32),
             "cell_valid": np.ones((1, 16), bool)}
    outs = []
    for spin, expected in ((False, "0"), (True, "1")):
        backend = open_graph(bundle, "encoder_query", BackendChoice(spin=spin)).backend
        options = backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
        outs.append(backend.run(feeds)["coarse"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_backend_rejects_wrong_shapes(tiny_bundle: Path) -> None:
    backend = open_graph(open_bundle(tiny_bundle), "encoder_query", BackendChoice()).backend
    with pytest.raises(BackendError, match="shape"):
        backend.run({"image": np.zeros((1, 3, 128, 128), np.float32), "cell_valid": np.ones((1, 16), bool)})
    with pytest.raises(BackendError, match="missing input"):
        backend.run({"image": np.zeros((1, 3, 256, 256), np.float32)})


def test_manifest_hashes_cover_every_file(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(manifest["files"])


TRT_FP16_RTOL = 2e-2  # TensorRT FP16 vs ONNX Runtime FP32, max |a - b| / max |b|


@pytest.mark.gpu
def test_tensorrt_engines_match_onnxruntime(tiny_checkpoint: Path, real_pair, tmp_path: Path) -> None:
    """On a CUDA machine with TensorRT: build FP16 engines and compare them with ONNX Runtime FP32 (unverified here)."""
    pytest.importorskip("tensorrt")
    query = real_pair[0]
    out = export_bundle(tiny_checkpoint, tmp_path / "trt", ExportConfig("fp16", 256, 512, build_engines=True))
    bundle = open_bundle(out)
    assert bundle.manifest["engines_status"]["built"], bundle.manifest["engines_status"]
    trt = open_graph(bundle, "encoder_query", BackendChoice("tensorrt")).backend
    from edge_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    entry = bundle.graphs["encoder_query"]
    ort32 = OnnxRuntimeBackend(bundle.onnx_path("encoder_query", "fp32"), entry.inputs, entry.outputs, "fp32")
    feeds = {"image": _chw(query), "cell_valid": np.ones((1, 16), bool)}
    a, b = trt.run(feeds), ort32.run(feeds)
    for name in ("coarse", "fine1", "fine2"):
        assert _rel(a[name], b[name]) < TRT_FP16_RTOL, name


def test_bundle_sizes_default_to_the_checkpoints_training_sizes(tiny_checkpoint: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """``edge-export`` without sizes exports at the query / reference-window sides the checkpoint was trained with
    (the committed reference: 512 / 512), and warns and falls back to 512 / 1024 for a checkpoint without them."""
    import torch

    from export.cli import DEFAULT_SIZES, training_sizes

    payload = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    recorded = tmp_path / "recorded.pt"
    torch.save({**payload, "train_config": {"data": {"query_size": 384, "ref_size": 640}}}, recorded)
    assert training_sizes(recorded) == (384, 640)
    bare = tmp_path / "bare.pt"
    torch.save({k: v for k, v in payload.items() if k != "train_config"}, bare)
    with caplog.at_level("WARNING"):
        assert training_sizes(bare) == DEFAULT_SIZES
    assert "does not record its training sizes" in caplog.text
    reference = Path(__file__).resolve().parent.parent / "topicgeo" / "assets" / "topicgeo_cpu.pt"
    if reference.exists():
        assert training_sizes(reference) == (512, 512)


def test_export_cli_names_the_overwrite_flag_and_refuses_a_non_checkpoint(tiny_checkpoint: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from export.cli import main

    taken = tmp_path / "bundle"
    taken.mkdir()
    assert main(["--checkpoint", str(tiny_checkpoint), "--out", str(taken), "--precision", "fp32",
                 "--no-engines"]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "frame.jpg"
    not_a_checkpoint.write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    with pytest.raises(CheckpointError, match="not a weights-only PyTorch checkpoint") as info:
        load_model(not_a_checkpoint)
    assert "weights_only" not in str(info.value).replace("weights-only", "")  # no advice to unpickle it
