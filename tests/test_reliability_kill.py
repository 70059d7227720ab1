"""SIGKILL in the middle of writing artifacts: ``edge-maps build`` and ``edge-export`` run as real processes and are
killed with SIGKILL (no handler, no cleanup) at chosen and at random moments.

Map cache: a restart resumes from the per-tile progress and the finished cache is byte-identical to an uninterrupted
build; at no moment is there a cache at ``--out`` that does not verify. Export: no half bundle ever appears at
``--out`` (the bundle is built in a hidden ``.<name>.*.partial`` folder, which ``open_bundle`` refuses, and renamed
into place), a rerun succeeds, and an export killed while overwriting a bundle leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import BundleError, open_bundle
from edge_runtime.map_cache import open_map_cache
from maps.build import BuildConfig, build_cache, work_dir_for

REPO = Path(__file__).resolve().parent.parent
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def map_paths(data_dir):
    return [data_dir / "maps" / "brighton_ortho_0p10m_x364_y377.tif", data_dir / "sjer" / "2018" / "SJER_002.tif",
            data_dir / "naip" / "naip_nd_20150926_x340_y330.tif"]


@pytest.fixture(scope="module")
def reference(tiny_bundle, map_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "cache"
    build_cache(tiny_bundle, map_paths, out, BuildConfig(progress=False))
    return out


def listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def build_cmd(bundle: Path, maps: list[Path], out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "maps.cli", "build", "--bundle", str(bundle), "--out", str(out), "--no-progress",
           "--json"]
    for m in maps:
        cmd += ["--map", str(m)]
    return cmd


def tiles_done(work: Path) -> int:
    total = 0
    for f in (work / "progress").glob("*.npy") if work.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):  # replaced while reading: counted next time
            total += int(np.load(f, allow_pickle=False).sum())
    return total


def kill_when(proc: subprocess.Popen, ready, timeout: float) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return True
        time.sleep(0.005)
    proc.kill()
    proc.wait(10)
    raise TimeoutError("the condition never came true")


def assert_no_cache_or_a_verified_one(out: Path, bundle: Path, reference: Path) -> None:
    if out.exists():
        open_map_cache(out, bundle=open_bundle(bundle))  # verifies every hash
        assert listing(out) == listing(reference)


def test_sigkill_during_a_map_cache_build_resumes_to_identical_files(tiny_bundle, map_paths, reference, tmp_path):
    out = tmp_path / "cache"
    work = work_dir_for(out)
    for target in (2, 4):  # of 6 tiles (5 encoded, 1 without valid cells)
        proc = subprocess.Popen(build_cmd(tiny_bundle, map_paths, out), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert kill_when(proc, lambda t=target: tiles_done(work) >= t, 120), "the build finished before the kill"
        assert proc.returncode == -signal.SIGKILL
        assert not out.exists(), "a killed build left a cache at --out"
        assert tiles_done(work) >= target
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([work.name])  # nothing else left behind
    done = subprocess.run(build_cmd(tiny_bundle, map_paths, out), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["tiles_resumed"] >= 4 and summary["tiles"] == 6
    assert not work.exists()
    assert listing(out) == listing(reference)  # byte-identical to the uninterrupted build
    open_map_cache(out, bundle=open_bundle(tiny_bundle))


def test_sigkill_at_random_moments_never_leaves_a_corrupt_cache(tiny_bundle, map_paths, reference, tmp_path):
    """Kills land in random phases: a random number of further tiles done, then a random extra delay (inside a tile
    write, the progress rename, the final hashing / manifest / rename, the work folder removal).

    How many kills land before a build finishes depends on the machine's speed, so a build that finishes is checked
    (verified, byte-identical to the reference, a rerun refuses the existing cache) and removed, and the kill cycle
    goes on until ``wanted`` kills have landed."""
    out = tmp_path / "cache"
    work = work_dir_for(out)
    rng = np.random.default_rng(20260925)
    wanted, log, completed = 4, [], 0
    for _ in range(24):
        before = tiles_done(work)
        more, extra = int(rng.integers(0, 3)), float(rng.uniform(0.0, 0.4))
        proc = subprocess.Popen(build_cmd(tiny_bundle, map_paths, out), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state: dict = {}

        def due(before=before, more=more, extra=extra, state=state) -> bool:
            if "t" not in state and work.is_dir() and tiles_done(work) >= before + more:
                state["t"] = time.monotonic()
            return "t" in state and time.monotonic() - state["t"] >= extra

        killed = kill_when(proc, due, 300)
        log.append((before, more, round(extra, 2), killed, tiles_done(work), out.exists()))
        assert_no_cache_or_a_verified_one(out, tiny_bundle, reference)
        if out.exists():
            completed += 1
            if work.exists():  # killed between the rename into place and the removal of the work folder
                again = subprocess.run(build_cmd(tiny_bundle, map_paths, out), cwd=REPO, env=ENV,
                                       capture_output=True, text=True, timeout=300)
                assert again.returncode == 1 and "exists" in again.stderr  # the leftover is removed, cache kept
                assert not work.exists()
                assert_no_cache_or_a_verified_one(out, tiny_bundle, reference)
            shutil.rmtree(out)  # start the next build from scratch
        if sum(entry[3] for entry in log) >= wanted:
            break
    print("kills (tiles done before, further tiles, extra s, killed, tiles done after, cache at --out):", log)
    assert sum(entry[3] for entry in log) >= wanted
    done = subprocess.run(build_cmd(tiny_bundle, map_paths, out), cwd=REPO, env=ENV, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert listing(out) == listing(reference)
    assert not work.exists()


@pytest.mark.slow
def test_sigkill_during_export_leaves_no_half_bundle_and_a_rerun_succeeds(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "export.cli", "--checkpoint", str(tiny_checkpoint), "--precision", "fp32",
           "--query-size", "256", "--tile-size", "512", "--no-engines", "--out", str(out)]

    def partial_has_graph() -> bool:
        return any(any(d.glob("*.onnx")) for d in tmp_path.glob(".bundle.*.partial"))

    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kill_when(proc, partial_has_graph, 600), "the export finished before the kill"
    assert not out.exists(), "a killed export left a bundle at --out"
    stale = list(tmp_path.glob(".bundle.*.partial"))
    assert len(stale) == 1
    with pytest.raises(BundleError, match="not a bundle"):
        open_bundle(stale[0])  # the half-written folder can never be taken for a bundle

    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    bundle = open_bundle(out)  # verifies every hash
    good = listing(out)

    # killed while replacing the bundle (--overwrite): the old bundle stays in place, intact
    over = subprocess.Popen([*cmd, "--overwrite"], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before = set(tmp_path.glob(".bundle.*.partial"))
    assert kill_when(over, lambda: any(any(d.glob("*.onnx")) for d in set(tmp_path.glob(".bundle.*.partial"))
                                       - before), 600)
    assert open_bundle(out).bundle_id == bundle.bundle_id and listing(out) == good
