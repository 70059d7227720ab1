"""Smoke run of ``benchmarks/service_latency.py`` (the service's latency, drops and memory through a real mosquitto)
with the locator double, so the script cannot rot: at 2 fps offered a 0.2 s locator keeps up (no drops, end-to-end
latency at least its 0.2 s), at 30 fps offered it cannot (the latest-frame queue drops, throughput near 5 fps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import service_latency
from edge_runtime.service.broker import mosquitto_executable

DOUBLE = Path(__file__).resolve().parent / "service_double.py"
DELAY_S = 0.2


@pytest.mark.slow
@pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")
def test_service_latency_script_measures_a_known_locator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    code = service_latency.main(["--locator", f"{DOUBLE}:DoubleLocator", f"--locator-option=delay_s={DELAY_S}",
                                 "--rates", "2,max", "--duration", "3", "--warmup", "1", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert "| end_to_end |" in capsys.readouterr().out  # the markdown table
    paced, flat_out = report["results"]
    assert paced["offered_fps"] == 2.0 and flat_out["offered_fps"] == 30.0
    assert paced["frames_dropped"] == 0 and 4 <= paced["frames_offered"] <= 8
    assert paced["latency"]["locate"]["median_ms"] >= 1e3 * DELAY_S
    assert paced["latency"]["end_to_end"]["median_ms"] >= paced["latency"]["locate"]["median_ms"]
    assert flat_out["frames_dropped"] > 0 and flat_out["drop_ratio"] > 0.5
    assert 0.5 / DELAY_S <= flat_out["throughput_fps"] <= 1.05 / DELAY_S
    for run in (paced, flat_out):
        assert run["peak_rss_mb"] > 20 and run["poses"] + run["no_fix"] + run["errors"] == run["frames_processed"]
