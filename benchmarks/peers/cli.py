"""Peer locator CLI with the ``edge-locate --json`` contract (one JSON object per image on stdout).

    python -m benchmarks.peers.cli --method sift --map A.tif [--map B.tif ...] [--tile-size 512] [--stats S.json]
                                   IMAGE... --json

Map ids are the maps' file stems. JPEG frames with EXIF/XMP intrinsics get a camera position by ``edge-locate``'s
pose step (the gimbal's roll / pitch prior with the fit's heading and scale, else a 6-DoF PnP pose; priors and
intrinsics from ``edge_runtime.locate_cli.frame_priors``); other images report the frame centre's ground point.
``--stats`` writes the offline preparation time (tile features) and the tile count as JSON. ``--time-pairs N``
skips localisation and times N query/tile pairs at ``--pair-size`` (queries resized, the map's first tile).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.matchers import METHODS, MatcherConfig, make_matcher
from benchmarks.peers.tiling import TilingConfig

logger = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def time_pairs(config: MatcherConfig, queries: list[np.ndarray], tile: np.ndarray, pairs: int) -> list[float]:
    """Seconds per query/tile pair (extraction of both + matching; one warm-up pair first), for speed-only peers.

    Args:
        config: matcher settings.
        queries: ``(S, S, 3)`` uint8 RGB images, used in turn.
        tile: ``(S, S, 3)`` uint8 RGB map tile (equal input size).
        pairs: number of timed pairs.
    """
    if not queries or pairs < 1:
        raise ValueError("time_pairs needs at least one query image and pairs >= 1")
    matcher = make_matcher(config)
    matcher.match(matcher.extract(queries[0]), matcher.extract(tile))
    out = []
    for i in range(pairs):
        t0 = time.perf_counter()
        matcher.match(matcher.extract(queries[i % len(queries)]), matcher.extract(tile))
        out.append(time.perf_counter() - t0)
    return out


def pair_inputs(images: list[Path], map_path: Path, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Queries resized to ``size x size`` and the map's top-left ``size x size`` tile (boundless read)."""
    import cv2

    from edge_runtime.locate_cli import read_frame
    from topicgeo.data.raster import GeoRaster

    queries = [cv2.resize(read_frame(p), (size, size), interpolation=cv2.INTER_AREA) for p in images]
    with GeoRaster(map_path) as raster:
        tile, _ = raster.read_window(0, 0, size, size)
    return queries, tile


def main(argv: list[str] | None = None) -> int:
    """Entry point (exit 0 when every image was located, 1 otherwise, 2 on bad arguments / maps)."""
    parser = argparse.ArgumentParser(prog="peer-locate", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--map", dest="maps", action="append", type=Path, default=[])
    parser.add_argument("--tile-size", type=int, default=512, help="peer tile side in map pixels")
    parser.add_argument("--overlap-area", type=float, default=0.25)
    parser.add_argument("--query-side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rotations", type=int, default=1, choices=(1, 4), help="also try the query turned by 90 deg")
    parser.add_argument("--xfeat-top-k", type=int, default=4096)
    parser.add_argument("--min-inliers", type=int, default=4, help="fewest homography inliers to report a fix")
    parser.add_argument("--stats", type=Path, default=None)
    parser.add_argument("--time-pairs", type=int, default=0)
    parser.add_argument("--pair-size", type=int, default=512)
    parser.add_argument("--no-exif", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        mconf = MatcherConfig(method=args.method, threads=args.threads, xfeat_top_k=args.xfeat_top_k)
        if args.time_pairs:
            if not args.images or len(args.maps) != 1:
                raise ValueError("--time-pairs needs query images and exactly one --map")
            secs = time_pairs(mconf, *pair_inputs(args.images, args.maps[0], args.pair_size), args.time_pairs)
            stats = {"pair_seconds": secs, "pair_size": args.pair_size, "method": args.method}
            if args.stats:
                write_json_atomic(args.stats, stats)
            print(json.dumps(stats))
            return 0
        from benchmarks.peers.locator import PeerConfig, PeerLocator

        config = PeerConfig(matcher=mconf, tiling=TilingConfig(args.tile_size, args.overlap_area),
                            query_side=args.query_side, rotations=args.rotations,
                            min_inliers=args.min_inliers)
        if not args.maps:
            raise ValueError("give at least one --map")
        locator = PeerLocator(args.maps, config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"peer-locate: error: {exc}", file=sys.stderr)
        return 2
    if args.stats:
        write_json_atomic(args.stats, {"prepare_seconds": locator.prepare_seconds, "tiles": locator.n_tiles,
                                       "maps": [m.map_id for m in locator.maps], "method": args.method})
    from edge_runtime.locate_cli import FrameError, frame_priors, read_frame

    failures = 0
    for image in args.images:
        try:
            frame = read_frame(image)
            priors, camera = frame_priors(image, frame.shape[:2], None, None, not args.no_exif)
            record = locator.locate(frame, camera, priors)
        except (FrameError, ValueError) as exc:
            record = {"ok": False, "reason": f"bad input: {exc}", "latency_ms": {"total": 0.0}}
        failures += not record["ok"]
        out = {"image": str(image), **record}
        if args.json:
            print(json.dumps(out), flush=True)
        else:
            where = f"{out['lat']:.7f}, {out['lon']:.7f} on {out['map_id']}" if out["ok"] else out["reason"]
            print(f"{image.name}: {where} ({out['latency_ms']['total']:.0f} ms)", flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
