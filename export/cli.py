"""``edge-export``: model bundle export, and ``edge-export topics`` for prompt embeddings."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

DEFAULT_SIZES = (512, 1024)  # query, tile: for checkpoints that do not record their training sizes


def training_sizes(checkpoint: Path) -> tuple[int, int]:
    """The query and reference-window sides a checkpoint was trained at (``train_config.data``), the sizes its
    bundle should run at: map tiles of another size change the coarse grid the network sees (on the CPU reference,
    1024 px tiles lost accuracy on every suite against its 512 px training windows,
    ``benchmarks/results/2026-11-25_cpu_subset_tile512``). ``DEFAULT_SIZES`` when not recorded."""
    from topicgeo.checkpoint import read_checkpoint

    data = (read_checkpoint(checkpoint).get("train_config") or {}).get("data") or {}
    query, tile = data.get("query_size"), data.get("ref_size")
    if not (isinstance(query, int) and isinstance(tile, int)):
        logging.getLogger(__name__).warning("%s does not record its training sizes: query %d, tiles %d px", checkpoint,
                                            *DEFAULT_SIZES)
        return DEFAULT_SIZES
    return query, tile


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-export``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "topics":
        from export.topics import main as topics_main

        return topics_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="edge-export", description="Export a TopicGeo checkpoint into a versioned edge bundle "
        "(ONNX FP32/FP16, TensorRT engines when available, topic embeddings, manifest). "
        "'edge-export topics --help' encodes prompt embeddings.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--precision", default="fp16", help="fp16 or fp32")
    parser.add_argument("--query-size", type=int, default=None,
                        help="query canvas side (default: the checkpoint's training query size, else 512)")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="map tile side (default: the checkpoint's training reference-window size, else 1024)")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    parser.add_argument("--no-engines", action="store_true", help="do not try to build TensorRT engines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)  # this tool's steps; the ONNX libraries' chatter stays off
    # torch.onnx warns per graph that torchvision (not a dependency: no torchvision ops here) is not installed
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    from export.bundle_writer import ExportConfig, export_bundle

    try:
        query_size, tile_size = args.query_size, args.tile_size
        if query_size is None or tile_size is None:
            trained = training_sizes(args.checkpoint)
            query_size, tile_size = query_size or trained[0], tile_size or trained[1]
        config = ExportConfig(args.precision, query_size, tile_size, args.opset, not args.no_engines)
        out = export_bundle(args.checkpoint, args.out, config, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"edge-export: error: {exc} (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"edge-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle written: {out}")
    status = engines_status(out)
    missing = engines_missing(status)
    if missing and not args.no_engines:
        print(f"edge-export: warning: no TensorRT engine for {', '.join(missing)} (see engines_status in "
              f"{out / 'manifest.json'}): {status.get('reason') or 'unknown'}", file=sys.stderr)
    return 0


def engines_status(bundle: Path) -> dict[str, Any]:
    """``engines_status`` of a written bundle's manifest (``{}`` when absent)."""
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    status = manifest.get("engines_status") or {}
    return status if isinstance(status, dict) else {}


def engines_missing(status: dict[str, Any]) -> list[str]:
    """Graphs without a TensorRT engine, from a bundle's ``engines_status`` (all graphs when none was built)."""
    graphs = status.get("graphs")
    if isinstance(graphs, dict):
        return [g for g, st in graphs.items() if not (isinstance(st, dict) and st.get("built"))]
    return [] if status.get("built") else ["all graphs"]


if __name__ == "__main__":
    raise SystemExit(main())
