"""Backend start-up failures never degrade silently: stub ``tensorrt`` / ``pycuda`` modules and a fake ONNX Runtime
session (no GPU needed) show each failure either falling back to ONNX Runtime, logged and marked degraded with the
reason (allowed), or raising BackendError (not allowed)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import types
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from edge_runtime.backends import BackendChoice, BackendError, open_graph
from edge_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge_runtime.bundle import BUNDLE_SCHEMA, GRAPH_NAMES, Bundle, TensorSpec, open_bundle

TRT_VERSION = "10.3.0"
SHAPE = (1, 4)


def _tiny_onnx(path: Path) -> None:
    """y = x + 1 on a (1, 4) float32 tensor."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A bundle of three one-op graphs; ``encoder_query`` has a (stub) TensorRT engine."""
    root = tmp_path_factory.mktemp("degradation") / "bundle"
    (root / "engines").mkdir(parents=True)
    spec = {"inputs": [{"name": "x", "shape": list(SHAPE), "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": list(SHAPE), "dtype": "float32"}]}
    graphs: dict[str, Any] = {}
    for graph in GRAPH_NAMES:
        _tiny_onnx(root / f"{graph}.fp32.onnx")
        graphs[graph] = {"onnx": {"fp32": f"{graph}.fp32.onnx"}, **spec}
    (root / "engines" / "encoder_query.plan").write_bytes(b"plan")
    graphs["encoder_query"]["engines"] = [{"graph": "encoder_query", "file": "engines/encoder_query.plan",
                                           "gpu": "Orin", "tensorrt": TRT_VERSION, "precision": "fp32"}]
    manifest = {"schema": BUNDLE_SCHEMA, "bundle_id": "test", "precision": "fp32", "graphs": graphs,
                "engines_status": {"built": True, "reason": None}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return open_bundle(root, verify=False)


# --- stub TensorRT and pycuda -----------------------------------------------------------------------------------


class Fault:
    """What the stubs should get wrong (all healthy by default)."""

    def __init__(self) -> None:
        self.context_none = False
        self.address_refused = False
        self.alloc_error: Exception | None = None
        self.engine_dtype = "float32"
        self.engine_shape = SHAPE


def _stub_tensorrt(fault: Fault) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = TRT_VERSION
    trt.TensorIOMode = IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.float32, trt.float16 = "float32", "float16"
    trt.nptype = lambda dtype: {"float32": np.float32, "float16": np.float16}[dtype]

    class Logger:
        WARNING = 2

        def __init__(self, *args: Any) -> None:
            pass

    class Context:
        def set_tensor_address(self, name: str, ptr: int) -> bool:
            return not fault.address_refused

        def execute_async_v3(self, stream: int) -> bool:
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ("x", "y")[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name == "x" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return fault.engine_shape

        def get_tensor_dtype(self, name: str) -> str:
            return fault.engine_dtype

        def create_execution_context(self) -> Context | None:
            return None if fault.context_none else Context()

    class Runtime:
        def __init__(self, log: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            return Engine()

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


def _stub_pycuda(fault: Fault) -> dict[str, types.ModuleType]:
    pycuda = types.ModuleType("pycuda")
    pycuda.__path__ = []
    autoinit = types.ModuleType("pycuda.autoinit")
    driver = types.ModuleType("pycuda.driver")

    class Stream:
        handle = 0

        def synchronize(self) -> None:
            pass

    class Device:
        def __init__(self, index: int) -> None:
            pass

        def name(self) -> str:
            return "Orin"

    def mem_alloc(nbytes: int) -> int:
        if fault.alloc_error is not None:
            raise fault.alloc_error
        return 4096

    driver.Stream, driver.Device, driver.mem_alloc = Stream, Device, mem_alloc
    pycuda.autoinit, pycuda.driver = autoinit, driver
    return {"pycuda": pycuda, "pycuda.autoinit": autoinit, "pycuda.driver": driver}


class _FailingAutoinit(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import pycuda.autoinit`` raising what pycuda raises without a usable device (not an ImportError)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self) if name == "pycuda.autoinit" else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Fault:
    """Install the stubs; the test sets the fault."""
    fault = Fault()
    monkeypatch.setitem(sys.modules, "tensorrt", _stub_tensorrt(fault))
    for name, module in _stub_pycuda(fault).items():
        monkeypatch.setitem(sys.modules, name, module)
    return fault


def _autoinit_fails(fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "pycuda.autoinit")
    monkeypatch.delattr(sys.modules["pycuda"], "autoinit")
    monkeypatch.setattr(sys, "meta_path", [_FailingAutoinit(), *sys.meta_path])


FAULTS: dict[str, tuple[Callable[[Fault, pytest.MonkeyPatch], None], str]] = {
    "no execution context": (lambda f, m: setattr(f, "context_none", True), "execution context"),
    "pycuda autoinit error": (_autoinit_fails, "cuInit failed"),
    "device allocation error": (lambda f, m: setattr(f, "alloc_error", RuntimeError("cuMemAlloc failed: no memory")),
                                "cuMemAlloc failed"),
    "tensor address refused": (lambda f, m: setattr(f, "address_refused", True), "refused the device address"),
    "engine dtype differs": (lambda f, m: setattr(f, "engine_dtype", "float16"), "float16 in the engine"),
    "engine shape differs": (lambda f, m: setattr(f, "engine_shape", (1, 8)), "shape (1, 8) in the engine"),
}


def test_healthy_stub_engine_is_used_not_degraded(bundle: Bundle, fault: Fault) -> None:
    """The stubs themselves do not fail: what the fault cases see is the fault."""
    sel = open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=False, threads=1))
    assert sel.backend.name == "tensorrt" and not sel.degraded and sel.reason is None


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_tensorrt_start_up_failure_falls_back_when_allowed(
    case: str, bundle: Bundle, fault: Fault, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make, message = FAULTS[case]
    make(fault, monkeypatch)
    with caplog.at_level("WARNING"):
        sel = open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=True, threads=1))
    assert sel.backend.name == "onnxruntime" and sel.degraded and sel.requested == "tensorrt"
    assert message in (sel.reason or "")
    assert "DEGRADED" in caplog.text and message in caplog.text
    np.testing.assert_array_equal(sel.backend.run({"x": np.zeros(SHAPE, np.float32)})["y"], np.ones(SHAPE))


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_tensorrt_start_up_failure_raises_when_fallback_is_not_allowed(
    case: str, bundle: Bundle, fault: Fault, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, message = FAULTS[case]
    make(fault, monkeypatch)
    with pytest.raises(BackendError, match="fallback not allowed") as info:
        open_graph(bundle, "encoder_query", BackendChoice("tensorrt", allow_fallback=False, threads=1))
    assert message in str(info.value)


# --- ONNX Runtime CUDA ------------------------------------------------------------------------------------------


class FakeSession:
    """An ``InferenceSession`` that records ``disable_fallback`` and reports the configured providers."""

    providers: ClassVar[list[str]] = ["CPUExecutionProvider"]
    created: ClassVar[list[FakeSession]] = []

    def __init__(self, path: str, sess_options: Any = None, providers: list[str] | None = None) -> None:
        self.requested = providers
        self.fallback_disabled = False
        FakeSession.created.append(self)

    def get_providers(self) -> list[str]:
        return list(self.providers)

    def disable_fallback(self) -> None:
        self.fallback_disabled = True

    def get_inputs(self) -> list[Any]:
        return [types.SimpleNamespace(name="x")]


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    """CUDA listed as available (as onnxruntime-gpu does even when its libraries cannot load), sessions faked."""
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "created", [])
    return FakeSession


SPECS = ([TensorSpec("x", SHAPE, "float32")], [TensorSpec("y", SHAPE, "float32")])


def test_cuda_session_that_landed_on_the_cpu_is_an_error(bundle: Bundle, fake_ort: type[FakeSession]) -> None:
    with pytest.raises(BackendError, match="CUDA provider"):
        OnnxRuntimeBackend(bundle.onnx_path("fine_matcher"), *SPECS, "fp32", device="cuda")
    assert fake_ort.created[0].requested == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendError, match="CPUExecutionProvider"):
        open_graph(bundle, "fine_matcher", BackendChoice("onnxruntime", device="cuda"))


def test_cuda_session_disables_run_time_cpu_fallback(bundle: Bundle, fake_ort: type[FakeSession],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeSession, "providers", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = OnnxRuntimeBackend(bundle.onnx_path("fine_matcher"), *SPECS, "fp32", device="cuda")
    assert backend.device == "cuda:CUDAExecutionProvider"
    assert fake_ort.created[0].fallback_disabled


def test_tensorrt_fallback_to_a_cuda_session_on_the_cpu_fails_with_both_reasons(
    bundle: Bundle, fault: Fault, fake_ort: type[FakeSession]
) -> None:
    fault.context_none = True
    with pytest.raises(BackendError, match=r"execution context.*fallback failed too.*CUDA provider"):
        open_graph(bundle, "encoder_query", BackendChoice("tensorrt", device="cuda", allow_fallback=True))
