"""TensorRT backend: deserialise a ``.plan`` and run it with pycuda buffers (cuda-python as the alternative).

Imported only when TensorRT is selected; ``tensorrt`` and ``pycuda``/``cuda-python`` are optional extras.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import BackendError, InferenceBackend
from edge_runtime.bundle import TensorSpec

logger = logging.getLogger(__name__)


class _PyCudaBuffers:
    """Device buffers and a stream through pycuda."""

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as cuda

        self.cuda = cuda
        self.stream = cuda.Stream()

    def alloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(1, nbytes))

    @staticmethod
    def ptr(buf: Any) -> int:
        return int(buf)

    def h2d(self, buf: Any, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(buf, host, self.stream)

    def d2h(self, host: np.ndarray, buf: Any) -> None:
        self.cuda.memcpy_dtoh_async(host, buf, self.stream)

    @property
    def handle(self) -> int:
        return self.stream.handle

    def sync(self) -> None:
        self.stream.synchronize()


class _CudaPythonBuffers:
    """Device buffers and a stream through cuda-python (``cuda.bindings.runtime``)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python layout
        self.cudart = cudart
        err, self.stream = cudart.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")

    def _check(self, err: Any, what: str) -> None:
        if int(err) != 0:
            raise BackendError(f"{what} failed with CUDA error {err}")

    def alloc(self, nbytes: int) -> int:
        err, ptr = self.cudart.cudaMalloc(max(1, nbytes))
        self._check(err, "cudaMalloc")
        return int(ptr)

    @staticmethod
    def ptr(buf: int) -> int:
        return int(buf)

    def h2d(self, buf: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        (err,) = self.cudart.cudaMemcpyAsync(buf, host.ctypes.data, host.nbytes, kind, self.stream)
        self._check(err, "cudaMemcpyAsync H2D")

    def d2h(self, host: np.ndarray, buf: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        (err,) = self.cudart.cudaMemcpyAsync(host.ctypes.data, buf, host.nbytes, kind, self.stream)
        self._check(err, "cudaMemcpyAsync D2H")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def sync(self) -> None:
        (err,) = self.cudart.cudaStreamSynchronize(self.stream)
        self._check(err, "cudaStreamSynchronize")


def _buffers() -> Any:
    """Device buffers through pycuda, else cuda-python; BackendError when neither can create a CUDA context."""
    try:
        return _PyCudaBuffers()
    except ImportError:
        logger.info("pycuda is not installed; using cuda-python for TensorRT buffers")
    except Exception as exc:  # pycuda.autoinit / driver errors (no device, driver mismatch, out of memory)
        raise BackendError(f"pycuda cannot create a CUDA context and stream: {type(exc).__name__}: {exc}") from exc
    try:
        return _CudaPythonBuffers()
    except ImportError as exc:
        raise BackendError("TensorRT needs pycuda or cuda-python for device buffers; neither is installed") from exc
    except BackendError:
        raise
    except Exception as exc:  # cuda-python errors other than the checked status codes
        raise BackendError(f"cuda-python cannot create a CUDA stream: {type(exc).__name__}: {exc}") from exc


def _engine_mismatches(trt: Any, engine: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> list[str]:
    """How the engine's I/O tensors differ from the manifest's specs (names, direction, static shape, dtype)."""
    if not hasattr(engine, "num_io_tensors"):
        return ["the engine has no named I/O tensors (TensorRT >= 8.5 needed)"]
    found = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        found[name] = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
    wanted = {s.name: True for s in inputs} | {s.name: False for s in outputs}
    problems = []
    if set(found) != set(wanted):
        problems.append(f"I/O tensors {sorted(found)}, the manifest declares {sorted(wanted)}")
    for spec in (*inputs, *outputs):
        if spec.name not in found:
            continue
        if found[spec.name] != wanted[spec.name]:
            problems.append(f"{spec.name!r} is an {'input' if found[spec.name] else 'output'} of the engine")
        shape = tuple(int(d) for d in engine.get_tensor_shape(spec.name))
        if shape != spec.shape:
            problems.append(f"{spec.name!r} has shape {shape} in the engine, {spec.shape} in the manifest")
        trt_dtype = engine.get_tensor_dtype(spec.name)
        try:
            dtype = np.dtype(trt.nptype(trt_dtype))
        except TypeError:
            problems.append(f"{spec.name!r} has TensorRT type {trt_dtype} without a numpy equivalent")
            continue
        if dtype != np.dtype(spec.dtype):
            problems.append(f"{spec.name!r} is {dtype} in the engine, {spec.dtype} in the manifest")
    return problems


class TensorRTBackend(InferenceBackend):
    """Runs a serialised TensorRT engine (static shapes, ``execute_async_v3``)."""

    name = "tensorrt"

    def __init__(
        self, plan: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], precision: str
    ) -> None:
        super().__init__(inputs, outputs)
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendError("TensorRT is not installed (pip extra 'trt')") from exc
        if not Path(plan).is_file():
            raise BackendError(f"TensorRT engine not found: {plan}")
        self.precision = precision
        self.trt = trt
        self.device = "cuda"
        self.host: dict[str, np.ndarray] = {}
        self.device_mem: dict[str, Any] = {}
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.buffers = _buffers()
        try:
            self._start(Path(plan))
        except BackendError:
            raise
        except Exception as exc:  # TensorRT / CUDA errors of their own types: start-up failed, say so as one type
            raise BackendError(f"TensorRT could not start {Path(plan).name}: {type(exc).__name__}: {exc}") from exc

    def _start(self, plan: Path) -> None:
        """Deserialise the engine, check its I/O against the manifest, create the context and bind the buffers."""
        runtime = self.trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise {plan} (built for another GPU or TensorRT version?)")
        problems = _engine_mismatches(self.trt, self.engine, self.inputs, self.outputs)
        if problems:
            raise BackendError(f"TensorRT engine {plan.name} does not match the bundle manifest: {'; '.join(problems)}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {plan.name} "
                               "(not enough device memory?)")
        for spec in (*self.inputs, *self.outputs):
            host = np.empty(spec.shape, dtype=np.dtype(spec.dtype))
            self.host[spec.name] = host
            try:
                self.device_mem[spec.name] = self.buffers.alloc(host.nbytes)
            except BackendError:
                raise
            except Exception as exc:  # pycuda MemoryError / driver errors
                raise BackendError(f"cannot allocate {host.nbytes} bytes of device memory for {spec.name!r}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            if not self.context.set_tensor_address(spec.name, self.buffers.ptr(self.device_mem[spec.name])):
                raise BackendError(f"TensorRT refused the device address of {spec.name!r} in {plan.name}")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            np.copyto(self.host[name], value)
            self.buffers.h2d(self.device_mem[name], self.host[name])
        if not self.context.execute_async_v3(self.buffers.handle):
            raise BackendError("TensorRT execution failed")
        for spec in self.outputs:
            self.buffers.d2h(self.host[spec.name], self.device_mem[spec.name])
        self.buffers.sync()
        return {spec.name: self.host[spec.name].copy() for spec in self.outputs}
