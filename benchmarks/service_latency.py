"""Latency, drops and memory of the ``edge-runtime`` service on this machine, through a real mosquitto.

For each offered frame rate the service runs in its own process (so the peak RSS is that run's) on a looping image
folder (default: the 512 x 288 Brighton frames of ``tests/data/service/frames`` with their EXIF/XMP priors and EXIF
intrinsics) with the live-camera queue (``latest``, one frame: lagging = dropping), publishing to a loopback
mosquitto. Reported per rate: per-stage and end-to-end latency (median, p95) over the measured frames, frames offered /
processed / dropped, poses and "no fix" counts, throughput, and the peak RSS of the service process. Counts are over
the measured window: frames processed in it may exceed those offered in it by the one or two frames queued or in
flight at its start.

Stages: ``queue_wait`` (frame read -> taken by the loop), ``decode`` (JPEG -> RGB, size check), ``priors``
(EXIF/XMP and intrinsics), ``locate`` (the locator call) with its own stages as ``locator.<stage>``, ``end_to_end``
(frame read -> pose handed to MQTT).

Rates: ``2`` fps and ``max``: frames offered at ``--max-rate-fps`` (default 30, a camera's rate), which the locator
cannot follow on a CPU, so it runs flat out and the queue drops what it cannot take.

Usage::

    python benchmarks/service_latency.py --bundle BUNDLE --cache CACHE [--duration 30] [--json out.json]
    python benchmarks/service_latency.py --locator tests/service_double.py:DoubleLocator   # service overhead only
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_FRAMES = REPO / "tests" / "data" / "service" / "frames"


def load_class(spec: str) -> tuple[Any, Any]:
    """``module:Class`` or ``path/to/file.py:Class`` -> (the class, its config class ``<Class>Config``)."""
    target, _, name = spec.partition(":")
    if target.endswith(".py"):
        path = Path(target).resolve()
        sys.path.insert(0, str(path.parent))
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise SystemExit(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, name), getattr(module, f"{name}Config")


def run_once(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """One service run at one offered rate (in this process); the measurement as a dict."""
    import numpy as np

    from edge_runtime.service.config import ServiceConfig, parse_section
    from edge_runtime.service.sdnotify import Notifier
    from edge_runtime.service.service import Service

    locator_type, locator_config_type = load_class(args.locator)
    options: dict[str, Any] = {}
    for item in args.locator_option:
        key, _, raw = item.partition("=")
        options[key] = json.loads(raw) if raw[:1] in "[{0123456789-tf" else raw
    locator_config = parse_section(locator_config_type, options, "locator")
    raw = {
        "vehicle_id": "bench", "bundle_dir": str(args.bundle), "cache_dir": str(args.cache),
        "source": {"kind": "image_folder", "path": str(args.frames), "loop": True, "rate_fps": rate},
        "telemetry": {"kind": "exif", "exif_utc_offset_h": args.exif_utc_offset_h},
        "queue": {"maxsize": 1, "mode": "latest"},
        "mqtt": {"host": "127.0.0.1", "port": args.port, "status_interval_s": 5.0},
    }
    if args.sensor_width_mm:
        raw["camera"] = {"from_exif": True, "sensor_width_mm": args.sensor_width_mm}
    config = parse_section(ServiceConfig, raw, "", source="benchmark")
    service = Service(config, locator_type, locator_config, notifier=Notifier(""))
    t0 = time.monotonic()
    service.start()
    startup_s = time.monotonic() - t0
    if not service.link.wait_connected(10):
        raise SystemExit("the service did not reach the broker")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    time.sleep(args.warmup)  # first frames: allocations, caches
    before = service.counters_snapshot()
    n_before = len(service.latency.records)
    t_start = time.monotonic()
    time.sleep(args.duration)
    elapsed = time.monotonic() - t_start
    after = service.counters_snapshot()
    records = list(service.latency.records)[n_before:]
    service.request_stop("benchmark over")
    thread.join(30)
    service.close()
    stages: dict[str, dict[str, float]] = {}
    for stage in sorted({k for r in records for k in r}):
        values = np.array([r[stage] for r in records if stage in r])
        stages[stage] = {"median_ms": round(float(np.median(values)), 2),
                         "p95_ms": round(float(np.percentile(values, 95)), 2), "n": int(values.size)}

    def delta(key: str) -> int:
        return int(after[key] or 0) - int(before[key] or 0)

    processed = delta("processed") + delta("locate_error") + delta("frame_error")
    return {
        "offered_fps": rate, "duration_s": round(elapsed, 2), "startup_s": round(startup_s, 2),
        "frames_offered": delta("frames_in"), "frames_processed": processed, "frames_dropped": delta("frames_dropped"),
        "drop_ratio": round(delta("frames_dropped") / max(1, delta("frames_in")), 3),
        "poses": delta("poses"), "no_fix": delta("no_fix"), "errors": delta("locate_error") + delta("frame_error"),
        "throughput_fps": round(processed / elapsed, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "latency": stages,
        "backend": service._backend(),
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A small report table."""
    lines = [f"service latency on {meta['machine']} ({meta['cpus']} CPUs), locator {meta['locator']}, frames "
             f"{meta['frames']} ({meta['frame_size']}), {meta['duration_s']} s per rate", ""]
    stages = sorted({s for r in results for s in r["latency"]}, key=lambda s: (s.startswith("locator."), s))
    head = "| stage | " + " | ".join(f"{r['offered_fps'] or 'max'} fps median / p95 ms" for r in results) + " |"
    lines += [head, "|---" * (len(results) + 1) + "|"]
    for stage in stages:
        cells = [f"{r['latency'][stage]['median_ms']} / {r['latency'][stage]['p95_ms']}" if stage in r["latency"]
                 else "-" for r in results]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    for key in ("frames_offered", "frames_processed", "frames_dropped", "drop_ratio", "throughput_fps", "poses",
                "no_fix", "errors", "peak_rss_mb", "startup_s"):
        lines.append(f"| {key} | " + " | ".join(str(r[key]) for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one child process per rate, a broker for all of them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="exported bundle (required for the real locator)")
    parser.add_argument("--cache", type=Path, help="map cache built with the bundle")
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES, help="folder of JPEG frames with EXIF/XMP")
    parser.add_argument("--sensor-width-mm", type=float, default=6.17,
                        help="sensor width for EXIF intrinsics (default: DJI FC300S of the default frames; 0 = none)")
    parser.add_argument("--exif-utc-offset-h", type=float, default=-5.0)
    parser.add_argument("--locator", default="edge_runtime.locator:Locator", help="module:Class or file.py:Class")
    parser.add_argument("--locator-option", action="append", default=[], metavar="KEY=VALUE",
                        help="locator config option (VALUE as JSON when it parses), repeatable")
    parser.add_argument("--rates", default="2,max", help="offered rates in fps; 'max' = --max-rate-fps")
    parser.add_argument("--max-rate-fps", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds run before measuring")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--single-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single_rate is not None:  # child process
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_once(args, args.single_rate)))
        return 0
    if args.bundle is None or args.cache is None:
        if args.locator.startswith("edge_runtime.locator"):
            parser.error("--bundle and --cache are required for the real locator")
        tmp = Path(tempfile.mkdtemp(prefix="service-bench-"))
        args.bundle, args.cache = args.bundle or tmp / "bundle", args.cache or tmp / "cache"
        args.bundle.mkdir(exist_ok=True)
        args.cache.mkdir(exist_ok=True)
    from edge_runtime.service.broker import LocalMosquitto

    rates = [args.max_rate_fps if r.strip() == "max" else float(r) for r in args.rates.split(",")]
    results = []
    with LocalMosquitto() as broker:
        for rate in rates:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--single-rate", str(rate), "--port",
                   str(broker.port), "--bundle", str(args.bundle), "--cache", str(args.cache), "--frames",
                   str(args.frames), "--sensor-width-mm", str(args.sensor_width_mm), "--exif-utc-offset-h",
                   str(args.exif_utc_offset_h), "--locator", args.locator, "--duration", str(args.duration),
                   "--warmup", str(args.warmup), *[f"--locator-option={o}" for o in args.locator_option]]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import cv2

    first = next(p for p in sorted(args.frames.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg"))
    h, w = cv2.imread(str(first)).shape[:2]
    meta = {"machine": platform.processor() or platform.machine(), "cpus": len(__import__("os").sched_getaffinity(0)),
            "locator": args.locator, "frames": str(args.frames), "frame_size": f"{w}x{h}",
            "duration_s": args.duration, "python": platform.python_version()}
    print(markdown(results, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
