"""Soak test of the ``edge-runtime`` service: N frames through the whole service, resident memory, fds and threads.

The service runs in this process (so ``/proc/self`` is the service's) exactly as the vehicle runs it: a looping image
folder (default: the 512 x 288 Brighton frames of ``tests/data/service/frames``, with their EXIF/XMP priors) ->
frame queue -> JPEG decode -> priors -> locator -> pose JSON -> MQTT to a loopback mosquitto (started here, on a free
port, and stopped at the end) with a retained heartbeat every ``--status-interval`` seconds. The queue blocks
(lossless replay), so every frame the folder yields is processed.

Locators:

* ``--locator double`` (default): ``tests/service_double.py``'s ``DoubleLocator`` (a fix per textured frame, no
  network): measures the service itself (decode, priors, payloads, MQTT, queue, counters, latency log).
* ``--locator bundle --bundle B --cache C``: the real :class:`edge_runtime.locator.Locator` with an ``edge-export``
  bundle and an ``edge-maps`` cache (``--map M`` instead of ``--cache`` builds one into a temporary folder first).

Every ``--sample-every`` frames it records the resident set size (``VmRSS``), the open file descriptors
(``/proc/self/fd``) and the threads (``Threads`` in ``/proc/self/status``). After ``--warmup`` frames (default 10 %)
the baseline is the median of the first three samples and the end value the median of the last three; the report
gives the RSS growth in percent and as a least-squares slope (KiB per 1000 frames), and the fd and thread counts.

Pass/fail (exit status 1 when any fails): RSS growth after warm-up < ``--max-rss-growth-pct`` (default 5), no growth
in fds or threads, every frame accounted for (processed = poses + no fix + errors), no locator exception.

Usage::

    python benchmarks/soak.py                              # 10,000 frames with the double
    python benchmarks/soak.py --frames 2000 --json soak.json
    python benchmarks/soak.py --locator bundle --bundle BUNDLE --cache CACHE --frames 500

Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

DEFAULT_FRAMES = REPO / "tests" / "data" / "service" / "frames"

logger = logging.getLogger("soak")


def proc_stats() -> dict[str, int]:
    """``rss_kib``, ``fds`` and ``threads`` of this process (from ``/proc/self``)."""
    fields: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                fields["rss_kib"] = int(value.split()[0])
            elif key == "Threads":
                fields["threads"] = int(value.strip())
    fields["fds"] = len(os.listdir("/proc/self/fd"))
    return fields


def growth(samples: Sequence[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Compare the samples after ``warmup`` frames: baseline (median of the first 3) vs end (median of the last 3).

    Args:
        samples: dicts with ``frame``, ``rss_kib``, ``fds``, ``threads`` in frame order.
        warmup: frames excluded from the baseline.

    Returns:
        ``rss_baseline_kib``, ``rss_end_kib``, ``rss_growth_pct``, ``rss_slope_kib_per_1000``,
        ``rss_growth_second_half_pct`` (end vs the middle of the run), ``fds_*`` and ``threads_*`` (baseline and end
        as medians of 3 samples, max after warm-up), ``samples_after_warmup``.

    Raises:
        ValueError: fewer than 6 samples after the warm-up (the run is too short for a comparison).
    """
    after = [s for s in samples if s["frame"] >= warmup]
    if len(after) < 6:
        raise ValueError(f"only {len(after)} samples after the {warmup}-frame warm-up; run more frames or sample "
                         "more often")
    base = statistics.median(s["rss_kib"] for s in after[:3])
    end = statistics.median(s["rss_kib"] for s in after[-3:])
    n = len(after)
    xs = [s["frame"] for s in after]
    ys = [s["rss_kib"] for s in after]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    out: dict[str, Any] = {
        "samples_after_warmup": n,
        "rss_baseline_kib": int(base),
        "rss_end_kib": int(end),
        "rss_growth_pct": round(100.0 * (end - base) / base, 3),
        "rss_slope_kib_per_1000": round(slope * 1000.0, 2),
    }
    half = after[len(after) // 2 :]
    mid = statistics.median(s["rss_kib"] for s in half[:3])
    out["rss_growth_second_half_pct"] = round(100.0 * (end - mid) / mid, 3)
    for key in ("fds", "threads"):  # medians: a file being read at the sampling instant is not a leak
        out[f"{key}_baseline"] = int(statistics.median(s[key] for s in after[:3]))
        out[f"{key}_end"] = int(statistics.median(s[key] for s in after[-3:]))
        out[f"{key}_max"] = max(s[key] for s in after)
    return out


def soak_double_type() -> type:
    """``DoubleLocator`` without its per-call record (a test aid that would grow by one entry per frame)."""
    from service_double import DoubleLocator

    class SoakDoubleLocator(DoubleLocator):
        def locate(self, image_rgb: Any, priors: Any, camera: Any = None) -> Any:
            result = super().locate(image_rgb, priors, camera)
            with self._lock:
                self.calls.clear()
            return result

    return SoakDoubleLocator


def locator_types(args: argparse.Namespace) -> tuple[Any, Any, Path, Path]:
    """The locator class, its config object, and the bundle / cache folders for the service config."""
    from edge_runtime.service.config import parse_section

    if args.locator == "double":
        from service_double import DoubleLocatorConfig

        work = Path(tempfile.mkdtemp(prefix="soak-"))
        (work / "bundle").mkdir()
        (work / "cache").mkdir()
        return soak_double_type(), DoubleLocatorConfig(), work / "bundle", work / "cache"
    from edge_runtime.locator import Locator, LocatorConfig

    if args.bundle is None:
        raise SystemExit("--locator bundle needs --bundle")
    cache = args.cache
    if cache is None:
        if not args.map:
            raise SystemExit("--locator bundle needs --cache or --map")
        from maps.build import BuildConfig, build_cache

        cache = Path(tempfile.mkdtemp(prefix="soak-cache-")) / "cache"
        logger.info("building a map cache from %s into %s", [str(m) for m in args.map], cache)
        build_cache(args.bundle, args.map, cache, BuildConfig(progress=False))
    return Locator, parse_section(LocatorConfig, {}, "locator"), Path(args.bundle), Path(cache)


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak (see the module docstring); the report as a dict."""
    from edge_runtime.service.broker import LocalMosquitto
    from edge_runtime.service.config import ServiceConfig, parse_section
    from edge_runtime.service.sdnotify import Notifier
    from edge_runtime.service.service import Service

    locator_type, locator_config, bundle_dir, cache_dir = locator_types(args)
    warmup = args.warmup if args.warmup is not None else max(args.sample_every * 3, args.frames // 10)
    with LocalMosquitto() as broker:
        raw = {
            "vehicle_id": "soak", "bundle_dir": str(bundle_dir), "cache_dir": str(cache_dir),
            "source": {"kind": "image_folder", "path": str(args.frames_dir), "loop": True, "rate_fps": 0.0},
            "telemetry": {"kind": "exif", "exif_utc_offset_h": -5},
            "queue": {"maxsize": 2, "mode": "block"},
            "mqtt": {"port": broker.port, "status_interval_s": args.status_interval},
        }
        config = parse_section(ServiceConfig, raw, "", source="soak")
        service = Service(config, locator_type, locator_config, notifier=Notifier(""))
        t0 = time.monotonic()
        service.start()
        if not service.link.wait_connected(10):
            raise SystemExit(f"the service did not reach the broker on port {broker.port}")
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.setdefault("code", service.run()), name="soak-loop",
                                  daemon=True)
        thread.start()
        samples: list[dict[str, Any]] = []
        next_sample = 0
        deadline = time.monotonic() + args.timeout
        while True:
            done = service.seq
            if done >= next_sample:
                samples.append({"frame": done, "t": round(time.monotonic() - t0, 3), **proc_stats()})
                next_sample = (done // args.sample_every + 1) * args.sample_every
            if done >= args.frames or not thread.is_alive():
                break
            if time.monotonic() > deadline:
                service.request_stop("soak timeout")
                thread.join(30)
                service.close()
                raise SystemExit(f"timeout: {done} of {args.frames} frames in {args.timeout} s")
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        service.request_stop("soak over")
        thread.join(30)
        counters = service.counters_snapshot()
        link = dict(service.link.counters)
        backend = service._backend()
        service.close()
    latency = service.latency.summary(last=1000)
    report: dict[str, Any] = {
        "frames_requested": args.frames,
        "frames_processed": int(service.seq),
        "seconds": round(elapsed, 1),
        "fps": round(service.seq / elapsed, 1),
        "warmup_frames": warmup,
        "locator": args.locator,
        "backend": backend,
        "counters": counters,
        "mqtt": link,
        "latency_ms_last_1000": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in latency.items()
                                 if k in ("decode", "priors", "locate", "end_to_end")},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "samples": samples,
        **growth(samples, warmup),
    }
    accounted = counters["poses"] + counters["pose_publish_failed"] + counters["no_fix"]
    errors = counters["frame_error"] + counters["locate_error"] + counters["telemetry_error"]
    report["checks"] = {
        "rss_growth_ok": report["rss_growth_pct"] < args.max_rss_growth_pct,
        "fds_stable": report["fds_end"] <= report["fds_baseline"],
        "threads_stable": report["threads_end"] <= report["threads_baseline"],
        "frames_accounted": accounted + errors >= counters["processed"] and counters["processed"] >= args.frames - 2,
        "no_locate_errors": counters["locate_error"] == 0,
    }
    report["ok"] = all(report["checks"].values())
    return report


def summary_text(report: dict[str, Any]) -> str:
    """A few human-readable lines."""
    c = report["counters"]
    return "\n".join([
        f"soak: {report['frames_processed']} frames ({report['locator']} locator) in {report['seconds']} s "
        f"({report['fps']} fps); warm-up {report['warmup_frames']} frames",
        f"RSS {report['rss_baseline_kib'] / 1024:.1f} -> {report['rss_end_kib'] / 1024:.1f} MiB "
        f"({report['rss_growth_pct']:+.2f} %, slope {report['rss_slope_kib_per_1000']:+.1f} KiB/1000 frames; "
        f"second half {report['rss_growth_second_half_pct']:+.2f} %)",
        f"fds {report['fds_baseline']} -> {report['fds_end']} (max {report['fds_max']}); threads "
        f"{report['threads_baseline']} -> {report['threads_end']} (max {report['threads_max']})",
        f"poses {c['poses']}, no fix {c['no_fix']}, frame errors {c['frame_error']}, locate errors "
        f"{c['locate_error']}, MQTT published {report['mqtt']['published']}",
        "checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in report["checks"].items()),
    ])


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--frames", type=int, default=10_000, help="frames to process (default 10000)")
    p.add_argument("--warmup", type=int, default=None, help="frames before the baseline (default 10 %%)")
    p.add_argument("--sample-every", type=int, default=100, help="frames between samples (default 100)")
    p.add_argument("--locator", choices=("double", "bundle"), default="double")
    p.add_argument("--bundle", type=Path, default=None, help="edge-export bundle (--locator bundle)")
    p.add_argument("--cache", type=Path, default=None, help="edge-maps cache built with the bundle")
    p.add_argument("--map", type=Path, action="append", default=[], help="build a cache from this map first")
    p.add_argument("--frames-dir", type=Path, default=DEFAULT_FRAMES, help="JPEG folder replayed in a loop")
    p.add_argument("--status-interval", type=float, default=1.0, help="heartbeat period in s (default 1)")
    p.add_argument("--max-rss-growth-pct", type=float, default=5.0, help="pass threshold (default 5)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--json", type=Path, default=None, help="write the full report (with every sample) here")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak, print the summary, exit 0 when every check passed."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.frames < 1 or args.sample_every < 1:
        raise SystemExit("--frames and --sample-every must be >= 1")
    report = run_soak(args)
    print(summary_text(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
