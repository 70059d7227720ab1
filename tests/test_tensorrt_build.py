"""TensorRT engine builds against a stub ``tensorrt`` module (no GPU needed): strongly typed networks wherever the
flag exists, FP32 pinning of the lower-case exporter names and of every reduction in the weakly typed fallback, and
per-graph build failures recorded in ``engines_status`` instead of aborting the export."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest

from export import tensorrt_build
from export.tensorrt_build import build_engine, build_engines

FP16, FP32, INT32 = "float16", "float32", "int32"


class LayerType(IntEnum):
    CONVOLUTION = 0
    ELEMENTWISE = 1
    UNARY = 2
    REDUCE = 3
    SOFTMAX = 4
    NORMALIZATION = 5


class Tensor:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class Layer:
    def __init__(self, name: str, kind: LayerType, dtype: str = FP32) -> None:
        self.name, self.type = name, kind
        self.precision: str | None = None
        self.outputs = [Tensor(dtype)]
        self.output_types: dict[int, str] = {}

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, j: int) -> Tensor:
        return self.outputs[j]

    def set_output_type(self, j: int, dtype: str) -> None:
        self.output_types[j] = dtype


def weak_network_layers() -> list[Layer]:
    """Layers as TensorRT's ONNX parser names them after the exporter's (lower-case) nodes."""
    return [
        Layer("node_Conv_1319", LayerType.CONVOLUTION),
        Layer("node_sum_4", LayerType.REDUCE),  # masked GroupNorm sums (1e6 on real frames)
        Layer("node_pow_3", LayerType.ELEMENTWISE),
        Layer("node_sqrt", LayerType.UNARY),
        Layer("node_div_2", LayerType.ELEMENTWISE),
        Layer("ONNXTRT_unnamed_12", LayerType.REDUCE),  # a reduction whatever its name
        Layer("node_mul_1", LayerType.ELEMENTWISE),
        Layer("node_floor_divide", LayerType.ELEMENTWISE, INT32),  # integer index arithmetic: never pinned
    ]


class Recorder:
    """What the stub builder saw."""

    def __init__(self, fail_graphs: tuple[str, ...] = (), fail_build: tuple[str, ...] = ()) -> None:
        self.fail_graphs, self.fail_build = fail_graphs, fail_build
        self.network_flags: list[int] = []
        self.parsed: list[str] = []
        self.builder_flags: list[Any] = []
        self.networks: list[Any] = []


def stub_tensorrt(rec: Recorder, version: str, strongly_typed: bool) -> types.ModuleType:
    """A ``tensorrt`` module with just what ``export.tensorrt_build`` calls."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    flags = {"EXPLICIT_BATCH": 0}
    if strongly_typed:
        flags["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", flags)
    trt.BuilderFlag = IntEnum("BuilderFlag", {"FP16": 0, "OBEY_PRECISION_CONSTRAINTS": 1})
    trt.MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.LayerType = LayerType
    trt.float16, trt.float32 = FP16, FP32

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, *args: Any) -> None:
            pass

    class Network:
        def __init__(self) -> None:
            self.layers = weak_network_layers()
            self.source = ""

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network: Network, log: Logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            rec.parsed.append(path)
            self.network.source = path
            if any(Path(path).name.startswith(g) for g in rec.fail_graphs):
                self.num_errors = 1
                return False
            return True

        def get_error(self, i: int) -> str:
            return "Unsupported ONNX op EinsumX"

    class Cache:
        def serialize(self) -> bytes:
            return b"timing"

    class Config:
        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            pass

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache()

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
            pass

        def get_timing_cache(self) -> Cache:
            return Cache()

        def set_flag(self, flag: Any) -> None:
            rec.builder_flags.append(flag)

    class Builder:
        def __init__(self, log: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            rec.network_flags.append(flags)
            network = Network()
            rec.networks.append(network)
            return network

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if any(Path(network.source).name.startswith(g) for g in rec.fail_build):
                return None
            return b"plan"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


def onnx_files(tmp_path: Path,
               graphs: tuple[str, ...] = ("encoder_query", "fine_matcher")) -> dict[str, dict[str, Path]]:
    files: dict[str, dict[str, Path]] = {}
    for graph in graphs:
        files[graph] = {}
        for precision in ("fp32", "fp16"):
            path = tmp_path / f"{graph}.{precision}.onnx"
            path.write_bytes(b"onnx")
            files[graph][precision] = path
    return files


@pytest.fixture(autouse=True)
def _gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt_build, "gpu_name", lambda: "Orin")


@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "10.11.0", "10.13.0"])
def test_every_tensorrt_with_the_flag_builds_strongly_typed_from_the_fp16_onnx(
    version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", stub_tensorrt(rec, version, strongly_typed=True))
    engines, status = build_engines(onnx_files(tmp_path), tmp_path, "fp16", "ab" * 32)
    assert rec.network_flags == [1 << 1, 1 << 1]  # STRONGLY_TYPED, for both graphs
    assert [Path(p).name for p in rec.parsed] == ["encoder_query.fp16.onnx", "fine_matcher.fp16.onnx"]
    assert rec.builder_flags == []  # no BuilderFlag.FP16: the FP16 ONNX's types (and fp32 Casts) rule
    assert all(layer.precision is None for net in rec.networks for layer in net.layers)
    assert [e["typing"] for e in engines] == ["strong", "strong"]
    assert status["built"] and status["complete"] and status["typing"] == "strong"


def test_without_the_flag_reductions_and_lower_case_norm_layers_are_pinned_to_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    trt = stub_tensorrt(rec, "8.6.1", strongly_typed=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    files = onnx_files(tmp_path, ("encoder_query",))
    engines, _ = build_engines(files, tmp_path, "fp16", "ab" * 32)
    assert [Path(p).name for p in rec.parsed] == ["encoder_query.fp32.onnx"]
    assert rec.network_flags == [1 << 0]  # explicit batch, not strongly typed
    assert set(rec.builder_flags) == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    layers = {layer.name: layer for layer in rec.networks[0].layers}
    pinned = {"node_sum_4", "node_pow_3", "node_sqrt", "node_div_2", "ONNXTRT_unnamed_12"}
    for name in pinned:
        assert layers[name].precision == FP32, name
        assert layers[name].output_types == {0: FP32}, name
    for name in set(layers) - pinned:
        assert layers[name].precision is None and not layers[name].output_types, name
    assert engines[0]["typing"] == "weak"


def test_fp32_bundles_build_from_the_fp32_onnx_without_the_fp16_flag(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", stub_tensorrt(rec, "8.6.1", strongly_typed=False))
    build_engine(sys.modules["tensorrt"], tmp_path / "g.fp32.onnx", tmp_path / "g.plan", tmp_path / "t.cache",
                 fp16=False)
    assert rec.builder_flags == [] and all(layer.precision is None for layer in rec.networks[0].layers)
    assert (tmp_path / "g.plan").read_bytes() == b"plan"


def test_a_graph_that_fails_to_build_is_recorded_and_the_others_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(fail_graphs=("encoder_query",), fail_build=("encoder_tile",))
    monkeypatch.setitem(sys.modules, "tensorrt", stub_tensorrt(rec, "10.3.0", strongly_typed=True))
    files = onnx_files(tmp_path, ("encoder_query", "encoder_tile", "fine_matcher"))
    with caplog.at_level("ERROR"):
        engines, status = build_engines(files, tmp_path, "fp16", "ab" * 32)
    assert [e["graph"] for e in engines] == ["fine_matcher"]
    assert (tmp_path / engines[0]["file"]).read_bytes() == b"plan"
    assert sorted(p.name for p in (tmp_path / "engines").glob("*.plan")) == [Path(engines[0]["file"]).name]
    assert status["built"] is True and status["complete"] is False
    assert status["graphs"]["fine_matcher"] == {"built": True, "reason": None}
    assert status["graphs"]["encoder_query"]["built"] is False
    assert "Unsupported ONNX op EinsumX" in status["graphs"]["encoder_query"]["reason"]
    assert "failed to build" in status["graphs"]["encoder_tile"]["reason"]
    assert "encoder_query" in status["reason"] and "encoder_tile" in status["reason"]
    assert "no TensorRT engine for encoder_query" in caplog.text and "EinsumX" in caplog.text


def test_export_writes_the_bundle_when_an_engine_fails_and_the_runtime_says_why(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture
) -> None:
    """``edge-export`` with TensorRT present but one graph unbuildable: exit 0, a complete bundle whose
    ``engines_status`` names the graph and the parser error, a warning on stderr; asking that bundle for TensorRT
    falls back (allowed) with that reason or refuses (not allowed)."""
    from edge_runtime.backends import BackendChoice, BackendError, open_graph
    from edge_runtime.bundle import open_bundle
    from export.cli import main

    rec = Recorder(fail_graphs=("encoder_query",))
    monkeypatch.setitem(sys.modules, "tensorrt", stub_tensorrt(rec, "10.3.0", strongly_typed=True))
    monkeypatch.setitem(sys.modules, "pycuda", None)  # the runtime's GPU-name probe: unknown GPU
    out = tmp_path / "bundle"
    rc = main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--precision", "fp32", "--query-size", "128",
               "--tile-size", "128"])
    assert rc == 0
    assert "no TensorRT engine for encoder_query" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    status = manifest["engines_status"]
    failed = status["graphs"]["encoder_query"]
    assert failed["built"] is False and "EinsumX" in failed["reason"]
    assert status["graphs"]["encoder_tile"]["built"] and status["graphs"]["fine_matcher"]["built"]
    assert "engines" not in manifest["graphs"]["encoder_query"]
    assert len(manifest["graphs"]["fine_matcher"]["engines"]) == 1
    bundle = open_bundle(out)  # every written file is listed and verified
    with pytest.raises(BackendError, match="EinsumX"):
        open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=False, threads=1))
    with caplog.at_level("WARNING"):
        sel = open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=True, threads=1))
    assert sel.degraded and sel.backend.name == "onnxruntime" and "EinsumX" in (sel.reason or "")
    assert "DEGRADED" in caplog.text
