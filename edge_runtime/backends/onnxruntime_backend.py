"""ONNX Runtime backend: CPU everywhere, CUDA when ``onnxruntime-gpu`` is installed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_runtime.backends.base import BackendError, InferenceBackend
from edge_runtime.bundle import TensorSpec

logger = logging.getLogger(__name__)


class OnnxRuntimeBackend(InferenceBackend):
    """One ``onnxruntime.InferenceSession`` over an ONNX file."""

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        precision: str,
        device: str = "cpu",
        threads: int = 0,
        spin: bool = False,
    ) -> None:
        super().__init__(inputs, outputs)
        import onnxruntime as ort

        self.precision = precision
        available = ort.get_available_providers()
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"ONNX Runtime has no CUDA provider here (available: {available})")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # fp16 constant-folding notices are not errors
        if threads:
            options.intra_op_num_threads = threads
        # spinning intra-op threads of idle sessions take the cores from the running one (BackendChoice.spin)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if not Path(path).is_file():
            raise BackendError(f"ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise BackendError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        if hasattr(self.session, "disable_fallback"):
            # a CUDA failure at run time must raise, not re-run on the CPU with only a printed notice
            self.session.disable_fallback()
        active = list(self.session.get_providers())
        if device == "cuda" and (not active or active[0] != "CUDAExecutionProvider"):
            # CUDA listed as available but its libraries (CUDA, cuDNN) failed to load: ORT drops to the CPU silently
            raise BackendError(
                f"ONNX Runtime could not start the CUDA provider for {Path(path).name} (the session runs on "
                f"{active}; CUDA or cuDNN libraries missing or mismatched?)")
        self.device = f"{device}:{active[0]}"
        logger.info("ONNX Runtime session for %s on %s", Path(path).name, active)
        names = {i.name for i in self.session.get_inputs()}
        declared = {s.name for s in self.inputs}
        if names != declared:
            raise BackendError(f"{path}: graph inputs {sorted(names)} differ from the manifest {sorted(declared)}")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self.outputs]
        values = self.session.run(names, feeds)
        return dict(zip(names, values, strict=True))
