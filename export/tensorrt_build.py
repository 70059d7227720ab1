"""TensorRT engine builds (optional: only when ``tensorrt`` is importable).

- TensorRT 10.x before 10.12 (weakly typed): build from the FP32 ONNX with ``BuilderFlag.FP16``; the fp32 islands of
  the graph (LayerNorm/GroupNorm, softmax, similarity) are pinned to FP32 with layer precision constraints.
- TensorRT >= 10.12 and 11.x (strongly typed): build from the FP16 ONNX, whose Casts already keep softmax,
  normalisation, similarity and index arithmetic in FP32 (exported from the model code's fp32 islands).

Engines are named ``<graph>.<gpu>.trt<version>.<model hash>.plan``; a persistent timing cache per TensorRT version
lives beside them; the workspace is limited.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_runtime.bundle import safe_name

logger = logging.getLogger(__name__)

FP32_LAYER_PATTERNS = ("LayerNorm", "layer_norm", "group_norm", "Softmax", "softmax", "ReduceMean", "Pow", "Sqrt")


def tensorrt_status() -> tuple[Any | None, str | None]:
    """``(tensorrt module, None)`` when TensorRT and a CUDA device are usable, else ``(None, reason)``."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return None, f"tensorrt is not importable ({exc})"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # no driver / no device: TensorRT raises various errors
        return None, f"TensorRT cannot create a builder (no CUDA device?): {exc}"
    if builder is None:
        return None, "TensorRT returned no builder (no CUDA device?)"
    return trt, None


def strongly_typed(trt: Any) -> bool:
    """True for TensorRT >= 10.12 (weak typing deprecated; removed in 11)."""
    major, minor = (int(x) for x in trt.__version__.split(".")[:2])
    return (major, minor) >= (10, 12)


def gpu_name() -> str:
    """Name of CUDA device 0, safe for file names."""
    name = "gpu"
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        name = cuda.Device(0).name()
    except Exception:
        try:
            from cuda.bindings import runtime as cudart

            _, props = cudart.cudaGetDeviceProperties(0)
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        except Exception:
            logger.warning("could not read the GPU name; engines are named 'gpu'")
    return name


def build_engine(
    trt: Any,
    onnx_path: Path,
    plan_path: Path,
    timing_cache: Path,
    fp16: bool,
    workspace_bytes: int = 2 << 30,
) -> None:
    """Parse ``onnx_path`` and serialise an engine to ``plan_path`` (raises RuntimeError with parser errors)."""
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    typed = strongly_typed(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if fp16 and not typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if any(p in layer.name for p in FP32_LAYER_PATTERNS) or layer.type == trt.LayerType.SOFTMAX:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float16, trt.float32):
                        layer.set_output_type(j, trt.float32)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_engines(
    onnx_files: dict[str, dict[str, Path]], out_dir: Path, precision: str, model_hash: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build one engine per graph when possible.

    Args:
        onnx_files: graph -> precision -> ONNX path.
        out_dir: the bundle folder being written (engines go to ``engines/``).
        precision: ``fp16`` or ``fp32``.
        model_hash: short hash of the checkpoint, part of the engine names.

    Returns:
        ``(engines, status)``: manifest entries of the built engines and ``{"built": bool, "reason": ...}``.
    """
    trt, reason = tensorrt_status()
    if trt is None:
        logger.warning("no TensorRT engines: %s", reason)
        return [], {"built": False, "reason": reason}
    gpu = safe_name(gpu_name())
    version = trt.__version__
    typed = strongly_typed(trt)
    cache = out_dir / "engines" / f"timing.trt{safe_name(version)}.cache"
    engines = []
    for graph, files in onnx_files.items():
        source = files["fp16"] if (precision == "fp16" and typed) else files["fp32"]
        plan = out_dir / "engines" / f"{graph}.{gpu}.trt{safe_name(version)}.{model_hash[:12]}.plan"
        logger.info("building TensorRT %s engine of %s from %s (may take minutes)", precision, graph, source.name)
        build_engine(trt, source, plan, cache, fp16=precision == "fp16")
        engines.append({
            "graph": graph, "file": str(plan.relative_to(out_dir)), "gpu": gpu, "tensorrt": version,
            "precision": precision, "typing": "strong" if typed else "weak", "source_onnx": source.name,
        })
    return engines, {"built": True, "reason": None, "tensorrt": version, "gpu": gpu}
