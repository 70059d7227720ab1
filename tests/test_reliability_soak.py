"""Soak (slow): ``benchmarks/soak.py`` runs 1,500 frames through the whole service (real Brighton frames with their
EXIF priors, the locator double, a loopback mosquitto) in its own process and samples ``/proc/self`` every 50 frames.

After the warm-up (150 frames) the resident memory may grow by less than 5 % and the open file descriptors and
threads may not grow at all; every frame is accounted for. The full 10,000-frame run and its numbers are in
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.service.broker import mosquitto_executable

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed"),
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")]


def test_soak_without_growth_in_memory_fds_or_threads(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--frames", "1500", "--sample-every",
                          "50", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stderr[-3000:]
    report = json.loads(out.read_text())
    print(run.stdout)
    assert report["frames_processed"] >= 1500
    assert report["samples_after_warmup"] >= 20
    assert report["rss_growth_pct"] < 5.0, report["rss_growth_pct"]
    assert report["fds_end"] <= report["fds_baseline"] and report["fds_max"] <= report["fds_baseline"] + 2
    assert report["threads_end"] <= report["threads_baseline"] and report["threads_max"] <= report["threads_baseline"]
    c = report["counters"]
    assert c["poses"] + c["no_fix"] == c["processed"] >= 1500 and c["locate_error"] == c["frame_error"] == 0
    assert report["mqtt"]["published"] >= c["poses"] and c["poses_undelivered"] == 0
    assert report["ok"] and run.returncode == 0, report["checks"]
