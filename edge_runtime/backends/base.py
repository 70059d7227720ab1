"""The inference-backend interface shared by ONNX Runtime and TensorRT (numpy in, numpy out)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np

from edge_runtime.bundle import TensorSpec


class BackendError(RuntimeError):
    """An inference backend that cannot be created or cannot run the given inputs."""


class InferenceBackend(abc.ABC):
    """Runs one exported graph with static shapes.

    Attributes:
        name: ``onnxruntime`` or ``tensorrt``.
        device: ``cpu`` or ``cuda`` (with the provider or GPU name).
        precision: ``fp32`` or ``fp16`` (what the graph / engine computes in).
    """

    name: str
    device: str
    precision: str

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the feeds against the input specs, run, and return outputs by name.

        Raises:
            BackendError: a missing, unexpected or wrongly shaped input (the message names it).
        """
        checked = self.check_inputs(feeds)
        return self._run(checked)

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate names and shapes and cast to the declared dtypes (no silent reshape)."""
        expected = {s.name: s for s in self.inputs}
        unknown = set(feeds) - set(expected)
        if unknown:
            raise BackendError(f"unexpected inputs {sorted(unknown)}; the graph takes {sorted(expected)}")
        out = {}
        for name, spec in expected.items():
            if name not in feeds:
                raise BackendError(f"missing input {name!r} {spec.shape}")
            arr = np.asarray(feeds[name])
            if tuple(arr.shape) != spec.shape:
                raise BackendError(f"input {name!r} has shape {tuple(arr.shape)}, the graph expects {spec.shape}")
            out[name] = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
        return out

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend-specific execution."""

    def describe(self) -> dict[str, str]:
        """Short description for logs and status messages."""
        return {"backend": self.name, "device": self.device, "precision": self.precision}
