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
    try:
        return _PyCudaBuffers()
    except ImportError:
        logger.info("pycuda is not installed; using cuda-python for TensorRT buffers")
    try:
        return _CudaPythonBuffers()
    except ImportError as exc:
        raise BackendError("TensorRT needs pycuda or cuda-python for device buffers; neither is installed") from exc


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
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.buffers = _buffers()
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise {plan} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.device = "cuda"
        self.host: dict[str, np.ndarray] = {}
        self.device_mem: dict[str, Any] = {}
        for spec in (*self.inputs, *self.outputs):
            host = np.empty(spec.shape, dtype=np.dtype(spec.dtype))
            self.host[spec.name] = host
            self.device_mem[spec.name] = self.buffers.alloc(host.nbytes)
            self.context.set_tensor_address(spec.name, self.buffers.ptr(self.device_mem[spec.name]))

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
