"""ONNX export of the encoder and fine-matcher graphs (FP32 and FP16 with FP32 islands).

FP16 graphs are exported from a ``.half()`` copy of the network: the fp32 islands are written in the model code
(``FP32LayerNorm``/``FP32GroupNorm``, fp32 attention logits and softmax, fp32 similarity, dual-softmax and sub-pixel
expectation, integer index arithmetic), so they appear in the graph as explicit Casts. Graph inputs and outputs stay
float32 / int64 / bool in both precisions, so the runtime feeds both the same way.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.graphs import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    MATCHER_INPUTS,
    MATCHER_OUTPUTS,
    EncoderGraph,
    FineMatcherGraph,
)
from topicgeo.config import COARSE_STRIDE, FINE1_STRIDE, FINE2_STRIDE
from topicgeo.model.topicgeo import TopicGeo

logger = logging.getLogger(__name__)

OPSET = 18
PRECISIONS = ("fp32", "fp16")


class FloatIO(nn.Module):
    """Runs ``inner`` in ``dtype`` while its floating inputs and outputs stay float32."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Cast float inputs to ``dtype``, run, cast float outputs back to float32."""
        cast = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        outs = self.inner(*cast)
        return tuple(o.float() if o.is_floating_point() else o for o in outs)


def example_encoder_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``image (1, 3, S, S)`` and ``cell_valid (1, N)`` for tracing."""
    n = (size // COARSE_STRIDE) ** 2
    return torch.rand(1, 3, size, size), torch.ones(1, n, dtype=torch.bool)


def example_matcher_inputs(model: TopicGeo, query_size: int, tile_size: int) -> tuple[torch.Tensor, ...]:
    """Fine maps of a query and a tile plus M coarse matches, shaped as the runtime feeds them."""
    c = model.config.backbone.fpn_channels
    m = model.config.matching.max_coarse_matches
    nq = (query_size // COARSE_STRIDE) ** 2
    nr = (tile_size // COARSE_STRIDE) ** 2
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, c, query_size // FINE1_STRIDE, query_size // FINE1_STRIDE, generator=g),
        torch.randn(1, c, query_size // FINE2_STRIDE, query_size // FINE2_STRIDE, generator=g),
        torch.randn(1, c, tile_size // FINE1_STRIDE, tile_size // FINE1_STRIDE, generator=g),
        torch.randn(1, c, tile_size // FINE2_STRIDE, tile_size // FINE2_STRIDE, generator=g),
        torch.randint(0, nq, (1, m), generator=g),
        torch.randint(0, nr, (1, m), generator=g),
        torch.ones(1, m, dtype=torch.bool),
    )


def _export(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names_in: tuple[str, ...],
    names_out: tuple[str, ...],
    path: Path,
    opset: int,
) -> None:
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            inputs,
            dynamo=True,
            opset_version=opset,
            input_names=list(names_in),
            output_names=list(names_out),
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    onnx.checker.check_model(str(path))


def export_graph(
    model: TopicGeo, graph: str, precision: str, path: Path, query_size: int, tile_size: int, opset: int = OPSET
) -> dict[str, Any]:
    """Export one graph (``encoder_query``, ``encoder_tile`` or ``fine_matcher``) and return its I/O specs."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    net = copy.deepcopy(model).eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    net = net.to(dtype)
    if graph in ("encoder_query", "encoder_tile"):
        size = query_size if graph == "encoder_query" else tile_size
        inner: nn.Module = EncoderGraph(net)
        inputs = example_encoder_inputs(size)
        names_in, names_out = ENCODER_INPUTS, ENCODER_OUTPUTS
    elif graph == "fine_matcher":
        inner = FineMatcherGraph(net, query_size, tile_size)
        inputs = example_matcher_inputs(model, query_size, tile_size)
        names_in, names_out = MATCHER_INPUTS, MATCHER_OUTPUTS
    else:
        raise ValueError(f"unknown graph {graph!r}")
    module = FloatIO(inner, dtype).eval()
    with torch.no_grad():
        outputs = module(*inputs)
        _export(module, inputs, names_in, names_out, path, opset)
    return {
        "inputs": [_spec(n, t) for n, t in zip(names_in, inputs, strict=True)],
        "outputs": [_spec(n, t) for n, t in zip(names_out, outputs, strict=True)],
    }


def _spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    dtype = str(tensor.numpy().dtype) if tensor.dtype != torch.bool else "bool"
    return {"name": name, "shape": list(tensor.shape), "dtype": dtype}


def onnx_op_types(path: Path) -> dict[str, int]:
    """Histogram of the op types of an ONNX file."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def torch_reference(
    model: TopicGeo, graph: str, inputs: tuple[np.ndarray, ...], query_size: int, tile_size: int
) -> tuple[np.ndarray, ...]:
    """The fp32 PyTorch outputs of a graph for numpy inputs (used by parity checks)."""
    module: nn.Module
    if graph == "fine_matcher":
        module = FineMatcherGraph(model, query_size, tile_size)
    else:
        module = EncoderGraph(model)
    with torch.no_grad():
        outs = module.eval()(*(torch.from_numpy(np.asarray(a)) for a in inputs))
    return tuple(o.numpy() for o in outs)
