"""TensorRT engine builds (optional: only when ``tensorrt`` is importable).

- TensorRT with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (every 10.x; weak typing is deprecated from 10.12
  and removed in 11): strongly typed networks built from the FP16 ONNX, whose Casts already keep softmax,
  normalisation, similarity and index arithmetic in FP32 (exported from the model code's fp32 islands).
- Older TensorRT without that flag (weakly typed): build from the FP32 ONNX with ``BuilderFlag.FP16`` and pin the
  fp32 islands to FP32 with layer precision constraints: every reduction, softmax and normalisation layer, and the
  layers whose (case-insensitive) names match ``FP32_LAYER_PATTERNS`` (the exporter names its nodes in lower case,
  ``node_sum_4``, ``node_pow_3``, ``node_sqrt``; the masked GroupNorm's sums reach 1e6 on real frames, beyond the
  FP16 maximum 65504).

A graph whose engine cannot be parsed or built is logged and recorded as not built (with the reason) in the
bundle's ``engines_status``; the other graphs' engines and the bundle are still written (engines are optional).

Engines are named ``<graph>.<gpu>.trt<version>.<model hash>.plan``; a persistent timing cache per TensorRT version
lives beside them; the workspace is limited.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_runtime.bundle import safe_name

logger = logging.getLogger(__name__)

# lower case; matched case-insensitively as substrings of the layer names (weakly typed builds only)
FP32_LAYER_PATTERNS = ("layernorm", "layer_norm", "groupnorm", "group_norm", "softmax", "reduce", "sum", "mean",
                       "pow", "sqrt", "div", "reciprocal", "norm")
# layer types kept in FP32 whatever their names (weakly typed builds only)
FP32_LAYER_TYPES = ("REDUCE", "SOFTMAX", "NORMALIZATION")


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
    """True when this TensorRT can build strongly typed networks (every 10.x; weak typing removed in 11)."""
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def pinned_to_fp32(trt: Any, layer: Any) -> bool:
    """Whether a layer of a weakly typed FP16 build must compute in FP32 (reductions, softmax, normalisations and the
    pow / sqrt / div of the norms, whatever the case of their names)."""
    kinds = [getattr(trt.LayerType, k) for k in FP32_LAYER_TYPES if hasattr(trt.LayerType, k)]
    if layer.type in kinds:
        return True
    name = str(layer.name).lower()
    return any(p in name for p in FP32_LAYER_PATTERNS)


def _pin_fp32_islands(trt: Any, network: Any) -> list[str]:
    """Constrain the fp32 islands of a weakly typed network to FP32; returns the pinned layer names."""
    pinned = []
    floats = (trt.float16, trt.float32)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outputs or not pinned_to_fp32(trt, layer):  # integer index arithmetic (floor_divide...) stays as is
            continue
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        pinned.append(str(layer.name))
    return pinned


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
    """Parse ``onnx_path`` and serialise an engine to ``plan_path`` (raises RuntimeError with parser errors).

    ``fp16`` only matters for weakly typed TensorRT (``BuilderFlag.FP16`` with FP32 islands pinned); a strongly typed
    network computes in the types of ``onnx_path`` (the FP16 ONNX for FP16 engines)."""
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    if builder is None:
        raise RuntimeError("TensorRT returned no builder (no CUDA device?)")
    typed = strongly_typed(trt)
    creation = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(creation.STRONGLY_TYPED) if typed else 0
    if int(trt.__version__.split(".")[0]) < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # before 10 the ONNX parser needs an explicit-batch network
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
        pinned = _pin_fp32_islands(trt, network)
        logger.info("weakly typed FP16 build of %s: %d of %d layers pinned to FP32", onnx_path.name, len(pinned),
                    network.num_layers)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_engines(
    onnx_files: dict[str, dict[str, Path]], out_dir: Path, precision: str, model_hash: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build one engine per graph when possible; a graph whose build fails is logged and skipped (engines are
    optional: the runtime falls back, or refuses, explicitly).

    Args:
        onnx_files: graph -> precision -> ONNX path.
        out_dir: the bundle folder being written (engines go to ``engines/``).
        precision: ``fp16`` or ``fp32``.
        model_hash: short hash of the checkpoint, part of the engine names.

    Returns:
        ``(engines, status)``: manifest entries of the built engines and the bundle's ``engines_status``:
        ``built`` (at least one engine), ``complete`` (every graph has one), ``reason`` (None when complete, else
        why not), ``graphs`` (graph -> ``{"built": bool, "reason": str | None}``), and when TensorRT was usable
        ``tensorrt``, ``gpu`` and ``typing``.
    """
    trt, reason = tensorrt_status()
    if trt is None:
        logger.warning("no TensorRT engines: %s", reason)
        return [], {"built": False, "complete": False, "reason": reason,
                    "graphs": {graph: {"built": False, "reason": reason} for graph in onnx_files}}
    gpu = safe_name(gpu_name())
    version = trt.__version__
    typed = strongly_typed(trt)
    cache = out_dir / "engines" / f"timing.trt{safe_name(version)}.cache"
    engines = []
    per_graph: dict[str, dict[str, Any]] = {}
    for graph, files in onnx_files.items():
        source = files["fp16"] if (precision == "fp16" and typed) else files["fp32"]
        plan = out_dir / "engines" / f"{graph}.{gpu}.trt{safe_name(version)}.{model_hash[:12]}.plan"
        logger.info("building TensorRT %s engine of %s from %s (%s typing; may take minutes)", precision, graph,
                    source.name, "strong" if typed else "weak")
        try:
            build_engine(trt, source, plan, cache, fp16=precision == "fp16")
        except Exception as exc:  # parser / builder / CUDA errors of any type: this graph gets no engine
            why = f"TensorRT {version} could not build {graph!r} from {source.name}: {type(exc).__name__}: {exc}"
            logger.error("no TensorRT engine for %s (the bundle is written without it): %s", graph, why)
            plan.unlink(missing_ok=True)
            per_graph[graph] = {"built": False, "reason": why}
            continue
        per_graph[graph] = {"built": True, "reason": None}
        engines.append({
            "graph": graph, "file": str(plan.relative_to(out_dir)), "gpu": gpu, "tensorrt": version,
            "precision": precision, "typing": "strong" if typed else "weak", "source_onnx": source.name,
        })
    failed = [f"{g}: {st['reason']}" for g, st in per_graph.items() if not st["built"]]
    return engines, {"built": bool(engines), "complete": not failed, "reason": "; ".join(failed) or None,
                     "graphs": per_graph, "tensorrt": version, "gpu": gpu, "typing": "strong" if typed else "weak"}
