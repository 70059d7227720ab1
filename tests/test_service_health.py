"""Health bookkeeping of the processing loop, without a broker (status messages wait in the outbox)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from service_double import DoubleLocator, DoubleLocatorConfig

from edge_runtime.service.config import load_config
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import Service
from edge_runtime.service.sources import Frame

FRAMES = Path(__file__).parent / "data" / "service" / "frames"


def make_service(tmp_path: Path, locator_config: DoubleLocatorConfig, **sections) -> Service:
    for name in ("bundle", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    data = {"vehicle_id": "h1", "bundle_dir": "bundle", "cache_dir": "cache",
            "source": {"kind": "image_folder", "path": str(FRAMES)}, "mqtt": {"port": 9, "outbox_max": 50},
            "health": {"max_consecutive_errors": 3}, **sections}
    path = tmp_path / "vehicle.yaml"
    path.write_text(yaml.safe_dump(data))
    service = Service(load_config(path), DoubleLocator, locator_config, notifier=Notifier(""))
    service.locator = DoubleLocator.open(tmp_path / "bundle", tmp_path / "cache", locator_config)
    service.locator.warmup()
    return service


def frame(i: int, name: str = "DJI_0030.JPG") -> Frame:
    return Frame(i, name, time.time(), time.monotonic(), jpeg=(FRAMES / name).read_bytes(), path=FRAMES / name)


@pytest.mark.parametrize(("fail_with", "event"), [("runtime", "locate_error"), ("value", "frame_error")])
def test_consecutive_locator_failures_make_the_pipeline_unhealthy(tmp_path, fail_with, event):
    service = make_service(tmp_path, DoubleLocatorConfig(fail_after=1, fail_with=fail_with))
    assert service.process(frame(0)).ok
    for i in range(1, 3):
        assert service.process(frame(i)) is None
        assert service._check_health(time.monotonic())  # 1 and 2 failures: still healthy
    assert service.process(frame(3)) is None
    assert not service._check_health(time.monotonic())
    exc = "ValueError" if fail_with == "value" else "RuntimeError"
    assert service.state == "unhealthy" and f"failed 3 times in a row: {exc}" in service.unhealthy_reason
    assert service.counters[event] == 3
    queued = [m.payload for m in service.link._outbox]
    assert any(b'"event":"unhealthy"' in p for p in queued)


def test_a_success_resets_the_count_and_recovers(tmp_path):
    service = make_service(tmp_path, DoubleLocatorConfig())
    service.consecutive_errors = 3
    service.last_locate_error = "RuntimeError: earlier"
    assert not service._check_health(time.monotonic())
    assert service.process(frame(0)).ok
    assert service.consecutive_errors == 0
    assert service._check_health(time.monotonic()) and service.state == "running"


def test_bad_input_and_no_fix_do_not_count_as_failures(tmp_path):
    service = make_service(tmp_path, DoubleLocatorConfig(min_std=1e9))  # every frame: no fix
    for i in range(5):
        assert service.process(frame(i)).ok is False
    for i in range(5):
        assert service.process(Frame(i, "cut", time.time(), time.monotonic(), jpeg=b"\xff\xd8\xff")) is None
    assert service.consecutive_errors == 0 and service._check_health(time.monotonic())
    assert service.counters["no_fix"] == 5 and service.counters["frame_error"] == 5


def test_a_silent_live_source_is_unhealthy(tmp_path):
    service = make_service(tmp_path, DoubleLocatorConfig(), source={"kind": "mqtt"},
                           health={"source_timeout_s": 0.2})
    from edge_runtime.service.sources import MqttFrameSource

    service.source = MqttFrameSource(service.link, "topicgeo/v1/h1/frame", 0)
    service.started_mono = time.monotonic()
    assert service._check_health(time.monotonic())
    assert not service._check_health(time.monotonic() + 0.3)
    assert "no frame from mqtt topic topicgeo/v1/h1/frame" in service.unhealthy_reason
