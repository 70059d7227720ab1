"""The ``edge-locate --json`` contract as the benchmark reads it, and a runner that measures the process.

Every method (the project's ``edge-locate`` and the peers' ``benchmarks.peers.cli``) is run as its own process on the
same image files; its stdout is parsed line by line into :class:`LocateRecord`, and the process's wall time and peak
resident set size (``os.wait4`` rusage of that child) are recorded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class ContractError(ValueError):
    """A line of ``--json`` output that breaks the contract (the message names the line and the field)."""


@dataclass(frozen=True)
class LocateRecord:
    """One image's result.

    Attributes:
        image: the image path as given to the command.
        ok: located or not.
        map_id: the map's file stem (None when not ok, unless the command named the map it failed on).
        footprint_px: ``(4, 2)`` float64 image corners (0,0), (w,0), (w,h), (0,h) in the map's pixels, or None.
        lat, lon: WGS84 degrees, or None.
        latency_ms: per-stage milliseconds; has ``total`` when ok (a not-ok record may lack it, e.g. bad input).
        reason: why not located (None when ok).
        inliers: homography inliers reported (0 when absent).
        candidates: optional ranked map ids (peers report them; used for R@k with k > 1).
    """

    image: str
    ok: bool
    map_id: str | None
    footprint_px: np.ndarray | None
    lat: float | None
    lon: float | None
    latency_ms: dict[str, float]
    reason: str | None
    inliers: int = 0
    candidates: tuple[str, ...] | None = None

    @property
    def total_ms(self) -> float | None:
        """``latency_ms['total']`` or None."""
        return self.latency_ms.get("total")

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (footprint as nested lists)."""
        return {"image": self.image, "ok": self.ok, "map_id": self.map_id,
                "footprint_px": None if self.footprint_px is None else self.footprint_px.tolist(),
                "lat": self.lat, "lon": self.lon, "latency_ms": self.latency_ms, "reason": self.reason,
                "inliers": self.inliers, "candidates": None if self.candidates is None else list(self.candidates)}


def _finite_number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ContractError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def parse_record(obj: Any, where: str = "record") -> LocateRecord:
    """Validate one decoded JSON object against the contract.

    Args:
        obj: the decoded object.
        where: context for error messages (e.g. ``"edge-locate line 3"``).

    Raises:
        ContractError: a missing or mistyped field, naming it.
    """
    if not isinstance(obj, dict):
        raise ContractError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("image", "ok"):
        if key not in obj:
            raise ContractError(f"{where}: missing key {key!r}")
    if not isinstance(obj["image"], str) or not obj["image"]:
        raise ContractError(f"{where}: 'image' must be a non-empty string")
    if not isinstance(obj["ok"], bool):
        raise ContractError(f"{where}: 'ok' must be true or false, got {obj['ok']!r}")
    lat_ms = obj.get("latency_ms", {})
    if not isinstance(lat_ms, dict) or (obj["ok"] and "total" not in lat_ms):
        raise ContractError(f"{where}: 'latency_ms' must be an object (with a 'total' when ok)")
    latency = {str(k): _finite_number(v, where, f"latency_ms.{k}") for k, v in lat_ms.items()}
    map_id = obj.get("map_id")
    if map_id is not None and not isinstance(map_id, str):
        raise ContractError(f"{where}: 'map_id' must be a string")
    candidates = obj.get("candidates")
    if candidates is not None:
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise ContractError(f"{where}: 'candidates' must be a list of map ids")
        candidates = tuple(candidates)
    inliers = obj.get("inliers", 0)
    if isinstance(inliers, bool) or not isinstance(inliers, int) or inliers < 0:
        raise ContractError(f"{where}: 'inliers' must be a non-negative integer, got {inliers!r}")
    if not obj["ok"]:
        reason = obj.get("reason")
        if not isinstance(reason, str) or not reason:
            raise ContractError(f"{where}: a record with ok=false needs a non-empty 'reason'")
        return LocateRecord(obj["image"], False, map_id, None, None, None, latency, reason, inliers, candidates)
    for key in ("map_id", "footprint_px", "lat", "lon"):
        if key not in obj:
            raise ContractError(f"{where}: ok=true but key {key!r} is missing")
    if not isinstance(map_id, str) or not map_id:
        raise ContractError(f"{where}: ok=true needs a non-empty 'map_id'")
    try:
        quad = np.asarray(obj["footprint_px"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{where}: 'footprint_px' is not numeric: {exc}") from exc
    if quad.shape != (4, 2) or not np.all(np.isfinite(quad)):
        raise ContractError(f"{where}: 'footprint_px' must be 4 finite (x, y) corners, got shape {quad.shape}")
    lat = None if obj["lat"] is None else _finite_number(obj["lat"], where, "lat")
    lon = None if obj["lon"] is None else _finite_number(obj["lon"], where, "lon")
    if lat is not None and not -90.0 <= lat <= 90.0:
        raise ContractError(f"{where}: 'lat' {lat} is outside [-90, 90]")
    return LocateRecord(obj["image"], True, map_id, quad, lat, lon, latency, None, inliers, candidates)


def parse_json_lines(text: str, source: str = "output") -> list[LocateRecord]:
    """Parse every non-empty line of ``text`` (one JSON object per image).

    Raises:
        ContractError: a line that is not JSON or breaks the contract (message: ``source line N: ...``).
    """
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{where}: not JSON ({exc.msg}): {line[:120]!r}") from exc
        records.append(parse_record(obj, where))
    return records


@dataclass(frozen=True)
class ProcessRun:
    """One method's process on a list of images.

    Attributes:
        records: parsed output, one per image, in the images' order.
        wall_s: whole-process wall time (start-up, model and cache loading included).
        peak_rss_mb: peak resident set size of the process (MiB, ``ru_maxrss``).
        returncode: exit status (0 all located, 1 some not located; anything else is an error).
        stderr_tail: the last 2,000 characters of stderr.
    """

    records: list[LocateRecord]
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stderr_tail: str


def run_json_command(cmd: list[str], images: list[Path], source: str, env: dict[str, str] | None = None,
                     cwd: Path | None = None, timeout_s: float | None = None) -> ProcessRun:
    """Run ``cmd + images`` and parse its ``--json`` output.

    Raises:
        RuntimeError: the process failed (exit status not 0 or 1), timed out, or did not answer every image.
        ContractError: malformed output.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, *map(str, images)], stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = None if timeout_s is None else t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"{source}: timed out after {timeout_s:.0f} s")
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", errors="replace")
        stderr = err.read().decode("utf-8", errors="replace")[-2000:]
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{source}: exit status {proc.returncode}; stderr: {stderr}")
    records = parse_json_lines(stdout, source)
    got = [r.image for r in records]
    want = [str(p) for p in images]
    if got != want:
        raise RuntimeError(f"{source}: answered {len(got)} images, expected {len(want)} in order "
                           f"(first difference: {next((g for g, w in zip(got, want, strict=False) if g != w), None)})")
    return ProcessRun(records, wall, usage.ru_maxrss / 1024.0, proc.returncode, stderr)
