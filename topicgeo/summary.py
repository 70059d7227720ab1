"""``python -m topicgeo summary --preset NAME``: parameter count and GFLOPs of a preset as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from topicgeo.config import PRESETS, TopicGeoConfig, get_preset
from topicgeo.model.topicgeo import TopicGeo, count_parameters

logger = logging.getLogger(__name__)

PAPER_PARAMETERS = 20_630_000  # supplement §1
PAPER_GFLOPS = {512: 71.0, 1024: 123.0}  # supplement Table 5 (testing)


def count_gflops(model: TopicGeo, query_size: int, reference_size: int | None = None) -> dict[str, float]:
    """GFLOPs (2 x multiply-accumulates, torch's FlopCounterMode) of one query at ``query_size``.

    Returns:
        ``encode_query``: backbone + topic module of the query alone; ``pair``: the whole forward pass of a query
        against a reference window of ``reference_size`` (default: the query size), coarse and fine matching included.
    """
    reference_size = query_size if reference_size is None else reference_size
    query = torch.rand(1, 3, query_size, query_size)
    reference = torch.rand(1, 3, reference_size, reference_size)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model.encode(query)
        encode = counter.get_total_flops() / 1e9
        counter = FlopCounterMode(display=False)
        with counter:
            model(query, reference)
        pair = counter.get_total_flops() / 1e9
    return {"encode_query": round(encode, 2), "pair": round(pair, 2)}


def summarize(config: TopicGeoConfig, sizes: tuple[int, ...] = (512, 1024)) -> dict[str, Any]:
    """Parameter count and GFLOPs of a configuration."""
    model = TopicGeo(config).eval()
    params = count_parameters(model)
    by_module = {
        name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()
    }
    return {
        "preset": config.name,
        "parameters": params,
        "parameters_millions": round(params / 1e6, 3),
        "parameters_by_module": by_module,
        "paper_parameters_millions": PAPER_PARAMETERS / 1e6,
        "relative_to_paper": round(params / PAPER_PARAMETERS - 1.0, 4),
        "gflops": {str(s): count_gflops(model, s) for s in sizes},
        "paper_gflops": {str(k): v for k, v in PAPER_GFLOPS.items()},
        "prompt_matrix": [config.topic.n_prompts, config.topic.prompt_dim],
        "matching": {
            "max_coarse_matches": config.matching.max_coarse_matches,
            "max_level2_windows": config.matching.max_level2_windows,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m topicgeo summary`` / ``topicgeo-summary``."""
    parser = argparse.ArgumentParser(prog="topicgeo summary", description=__doc__)
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="query sizes (multiples of 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(summarize(get_preset(args.preset), tuple(args.sizes)), indent=2))
    return 0
