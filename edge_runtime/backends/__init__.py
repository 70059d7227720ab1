"""Inference backends (ONNX Runtime, TensorRT) behind one interface, and their explicit selection."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Literal

from edge_runtime.backends.base import BackendError, InferenceBackend
from edge_runtime.bundle import Bundle, BundleError, safe_name

logger = logging.getLogger(__name__)

__all__ = ["BackendChoice", "BackendError", "BackendSelection", "InferenceBackend", "onnx_precision", "open_graph"]

BackendName = Literal["onnxruntime", "tensorrt"]


@dataclass(frozen=True)
class BackendChoice:
    """What the vehicle asks for.

    Attributes:
        backend: ``tensorrt`` or ``onnxruntime``.
        device: ``cpu`` or ``cuda`` for ONNX Runtime.
        allow_fallback: when TensorRT cannot be used, fall back to ONNX Runtime (logged and reported) instead of
            failing.
        threads: ONNX Runtime intra-op threads (0 = library default).
        spin: let ONNX Runtime's intra-op threads spin-wait for work after a run (the library's default). Off by
            default: the locator alternates between three sessions (query encoder, tile encoder, fine matcher) and
            numpy, and the idle sessions' spinning threads take the cores from the busy one. On this 2-core CPU,
            20 NAIP queries without priors: 434-464 ms median per frame with spinning, 254-258 ms without.
        precision: the ONNX graphs ONNX Runtime runs: ``fp32``, ``fp16`` (the bundle must hold them) or ``auto``
            (:func:`onnx_precision`): the bundle's precision on CUDA, its FP32 graphs on the CPU, which every bundle
            holds. FP16 graphs are for GPUs: on ONNX Runtime's CPU kernels they are slower (2-core CPU, stage-4
            release: 157 against 139 ms median per NAIP query) and their fits have fewer inliers (264 pooled dev
            queries, ``benchmarks.acceptance``: at the rule calibrated on FP32 outputs 95 right fixes of 107
            accepted against 100 of 111; at the seeds 1-3 rule 98 of 126 against 104 of 122), and a CPU fallback
            from TensorRT would otherwise inherit them. TensorRT runs its engines as built (``fp32`` with FP16
            engines is an error).
    """

    backend: BackendName = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    allow_fallback: bool = False
    threads: int = 0
    spin: bool = False
    precision: Literal["auto", "fp32", "fp16"] = "auto"

    def __post_init__(self) -> None:
        if self.backend not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"backend must be 'onnxruntime' or 'tensorrt', got {self.backend!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if self.precision not in ("auto", "fp32", "fp16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'fp16', got {self.precision!r}")


def onnx_precision(bundle: Bundle, choice: BackendChoice) -> str:
    """The precision of the ONNX graphs ONNX Runtime runs for ``choice`` (see :attr:`BackendChoice.precision`)."""
    if choice.precision != "auto":
        return choice.precision
    return bundle.precision if choice.device == "cuda" else "fp32"


@dataclass(frozen=True)
class BackendSelection:
    """The backend in use and, when it is not the one asked for, why (for logs and status messages)."""

    backend: InferenceBackend
    requested: str
    degraded: bool
    reason: str | None


def _tensorrt_engine(bundle: Bundle, graph: str) -> tuple[str | None, str | None]:
    """Path of an engine built for this GPU and TensorRT version, or None with the reason."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, "TensorRT is not installed"
    import tensorrt as trt

    engines = bundle.engines(graph)
    if not engines:
        status = bundle.manifest.get("engines_status") or {}
        graph_status = (status.get("graphs") or {}).get(graph) or {}
        why = graph_status.get("reason") or status.get("reason") or "the bundle has no engines"
        return None, f"no TensorRT engine for {graph!r} in the bundle ({why})"
    gpu = _gpu_name()
    for entry in engines:
        if entry.get("tensorrt") == trt.__version__ and (gpu is None or entry.get("gpu") == gpu):
            return str(bundle.root / entry["file"]), None
    built = [f"{e.get('gpu')} / TensorRT {e.get('tensorrt')}" for e in engines]
    return None, f"engines of {graph!r} were built for {built}, this is {gpu} / TensorRT {trt.__version__}"


def _gpu_name() -> str | None:
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        return safe_name(str(cuda.Device(0).name()))
    except Exception:  # no pycuda or no device: the name is unknown, not an error here
        return None


def open_graph(bundle: Bundle, graph: str, choice: BackendChoice) -> BackendSelection:
    """Create the backend for one graph of a bundle, following ``choice`` and never degrading silently."""
    entry = bundle.graphs[graph]
    if choice.backend == "tensorrt":
        if choice.precision not in ("auto", bundle.precision):
            raise BackendError(f"precision {choice.precision!r} asked for, but the TensorRT engines of bundle "
                               f"{bundle.root} are {bundle.precision} (export another bundle, or use 'auto')")
        plan, reason = _tensorrt_engine(bundle, graph)
        cause: Exception | None = None
        if plan is not None:
            from edge_runtime.backends.tensorrt_backend import TensorRTBackend

            try:
                backend = TensorRTBackend(plan, entry.inputs, entry.outputs, bundle.precision)
                return BackendSelection(backend, "tensorrt", False, None)
            except BackendError as exc:
                reason, cause = str(exc), exc
            except Exception as exc:  # not wrapped by the backend: still a start-up failure, named with its type
                logger.error("TensorRT start-up of %s failed unexpectedly", graph, exc_info=True)
                reason, cause = f"TensorRT start-up failed: {type(exc).__name__}: {exc}", exc
        if not choice.allow_fallback:
            raise BackendError(
                f"TensorRT requested for {graph!r} but unusable: {reason} (fallback not allowed)") from cause
        logger.warning("DEGRADED: %s: TensorRT unusable (%s); falling back to ONNX Runtime %s", graph, reason,
                       choice.device)
        try:
            backend = _onnxruntime(bundle, graph, choice)
        except BackendError as exc:
            raise BackendError(f"TensorRT unusable for {graph!r} ({reason}) and the ONNX Runtime {choice.device} "
                               f"fallback failed too: {exc}") from exc
        return BackendSelection(backend, "tensorrt", True, reason)
    return BackendSelection(_onnxruntime(bundle, graph, choice), "onnxruntime", False, None)


def _onnxruntime(bundle: Bundle, graph: str, choice: BackendChoice) -> InferenceBackend:
    from edge_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    entry = bundle.graphs[graph]
    precision = onnx_precision(bundle, choice)
    try:
        path = bundle.onnx_path(graph, precision)
    except BundleError as exc:  # the bundle lacks that precision's graph
        raise BackendError(f"{exc}; export it with edge-export --precision fp16, or ask for precision 'auto' or "
                           "'fp32'") from exc
    if precision != bundle.precision:
        logger.info("%s: ONNX Runtime on %s runs the bundle's %s graph, not its %s one (precision %r)", graph,
                    choice.device.upper(), precision, bundle.precision, choice.precision)
    return OnnxRuntimeBackend(path, entry.inputs, entry.outputs, precision, choice.device, choice.threads, choice.spin)
