"""Health bookkeeping of the processing loop, without a broker (status messages wait in the outbox)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from service_double import DoubleLocator, DoubleLocatorConfig, wait_until

from edge_runtime.service.config import ServiceConfig, load_config
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import Service, run_service
from edge_runtime.service.sources import Frame
from edge_runtime.types import LocateResult

FRAMES = Path(__file__).parent / "data" / "service" / "frames"


def make_config(tmp_path: Path, **sections) -> ServiceConfig:
    for name in ("bundle", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    data = {"vehicle_id": "h1", "bundle_dir": "bundle", "cache_dir": "cache",
            "source": {"kind": "image_folder", "path": str(FRAMES)}, "mqtt": {"port": 9, "outbox_max": 50},
            "health": {"max_consecutive_errors": 3}, **sections}
    path = tmp_path / "vehicle.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def make_service(tmp_path: Path, locator_config: DoubleLocatorConfig, **sections) -> Service:
    service = Service(make_config(tmp_path, **sections), DoubleLocator, locator_config, notifier=Notifier(""))
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


def outbox(service: Service, event: str) -> list[dict]:
    """The status messages of one event waiting in the (never connected) link's outbox."""
    return [m for m in (json.loads(p.payload) for p in service.link._outbox) if m["event"] == event]


@pytest.mark.parametrize("t_capture", ["1e20", "nan", "inf", "-1", "1.7e12", "1.7e18", "soon"])
def test_an_implausible_t_capture_is_bad_input_not_a_locator_failure(tmp_path, t_capture):
    service = make_service(tmp_path, DoubleLocatorConfig(), source={"kind": "mqtt"})
    data = (FRAMES / "DJI_0030.JPG").read_bytes()
    bad = Frame(0, "topic#1", time.time(), time.monotonic(), jpeg=data, properties={"t_capture": t_capture})
    assert service.process(bad) is None
    assert service.counters["telemetry_error"] == 1 and service.counters["locate_error"] == 0
    assert service.consecutive_errors == 0 and service._check_health(time.monotonic())
    (status,) = outbox(service, "telemetry_error")
    assert "t_capture" in status["message"] and status["frame"] == "topic#1"
    good = Frame(1, "topic#2", time.time(), time.monotonic(), jpeg=data, properties={"t_capture": "1700000000.25"})
    assert service.process(good).ok  # the service carries on


def test_a_no_fix_with_nan_numbers_is_published_with_nulls(tmp_path):
    service = make_service(tmp_path, DoubleLocatorConfig())
    service.locator.locate = lambda *a, **k: LocateResult.failure(
        "homography degenerate", confidence=float("nan"), latency_ms={"total": 2.0, "match": float("inf")})
    result = service.process(frame(0))
    assert result is not None and not result.ok
    assert service.counters["no_fix"] == 1 and service.counters["locate_error"] == 0
    (status,) = outbox(service, "no_fix")
    assert status["detail"] == {"reason": "homography degenerate", "confidence": None, "inliers": 0,
                                "latency_ms": {"total": 2.0, "match": None}}


def test_an_unexpected_exception_in_one_frame_does_not_end_the_loop(tmp_path):
    service = make_service(tmp_path, DoubleLocatorConfig())

    def broken_camera(*args):
        raise KeyError("a bug")

    service._camera = broken_camera
    codes: list[int] = []
    loop = threading.Thread(target=lambda: codes.append(service.run()), daemon=True)
    loop.start()
    try:
        for i in range(2):
            service.queue.put(frame(i))
            assert wait_until(lambda n=i + 1: service.counters["locate_error"] == n), service.counters
        assert loop.is_alive() and service.consecutive_errors == 2  # counted towards unhealthy
    finally:
        service.request_stop("test over")
        loop.join(5)
    assert codes == [0]
    assert all("KeyError" in m["message"] for m in outbox(service, "locate_error"))


def test_a_multi_line_locator_error_reaches_systemd_as_one_status_line(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2.0)
        service = make_service(tmp_path, DoubleLocatorConfig())
        service.notifier = Notifier(path)

        def opencv_failure(*args, **kwargs):
            raise RuntimeError("OpenCV(4.9) error: (-215)\n in function 'warp'\n")

        service.locator.locate = opencv_failure
        for i in range(3):
            assert service.process(frame(i)) is None
        assert not service._check_health(time.monotonic())
        assert server.recv(4096) == (b"STATUS=unhealthy: the locator failed 3 times in a row: RuntimeError: "
                                     b"OpenCV(4.9) error: (-215) in function 'warp'\n")
        service.close()
        assert server.recv(4096).startswith(b"STOPPING=1\nSTATUS=stopping: ")


def telemetry_service(tmp_path: Path) -> Service:
    return make_service(tmp_path, DoubleLocatorConfig(), source={"kind": "mqtt"},
                        telemetry={"kind": "mqtt", "max_age_s": 2.0})


def sample(**values) -> bytes:
    return json.dumps({"altitude_agl_m": 50.0, **values}).encode()


def test_retained_telemetry_is_ignored(tmp_path, caplog):
    service = telemetry_service(tmp_path)
    caplog.set_level("INFO", logger="edge_runtime.service.service")
    service._on_telemetry(sample(), True, {})
    assert service.telemetry.latest() is None and service.counters["telemetry_error"] == 0
    assert "retained telemetry" in caplog.text
    service._on_telemetry(sample(), False, {})
    assert service.telemetry.latest().priors.altitude_agl_m == 50.0


@pytest.mark.parametrize(("offset_s", "scale", "fragment"), [(-30.0, 1.0, "s old"), (0.0, 1e3, "Unix seconds")])
def test_telemetry_older_than_max_age_by_its_own_time_is_refused(tmp_path, offset_s, scale, fragment):
    service = telemetry_service(tmp_path)
    service._on_telemetry(sample(t=(time.time() + offset_s) * scale), False, {})
    assert service.telemetry.latest() is None
    assert service.counters["telemetry_error"] == 1
    (status,) = outbox(service, "telemetry_error")
    assert fragment in status["message"], status
    service._on_telemetry(sample(t=time.time() - 0.5), False, {})  # a fresh one is used
    assert service.telemetry.latest() is not None and service.counters["telemetry_error"] == 1


def test_close_publishes_offline_before_the_slow_source_teardown(tmp_path):
    service = make_service(tmp_path, DoubleLocatorConfig())
    calls: list = []

    class SlowSource:
        def request_stop(self) -> None:
            calls.append("request_stop")

        def stop(self) -> None:
            calls.append("stop")  # a camera release can take seconds

    service.source = SlowSource()
    service.link.stop = lambda final, timeout=3.0: calls.append(json.loads(final)["event"])
    service.close()
    assert calls == ["request_stop", "offline", "stop"]
    assert service.stop_event.is_set()


def test_unset_password_variable_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("TOPICGEO_TEST_UNSET_PASSWORD", raising=False)
    config = make_config(tmp_path, mqtt={"port": 9, "username": "uav",
                                         "password_env": "TOPICGEO_TEST_UNSET_PASSWORD"})
    assert run_service(config, DoubleLocator, DoubleLocatorConfig(), Notifier(""), install_signals=False) == 2


def test_the_loop_is_stopped_before_close_when_run_raises(tmp_path, monkeypatch):
    seen: list[bool] = []

    def run(self):
        raise RuntimeError("loop bug")

    monkeypatch.setattr(Service, "start", lambda self: None)
    monkeypatch.setattr(Service, "run", run)
    monkeypatch.setattr(Service, "close", lambda self: seen.append(self.stop_event.is_set()))
    with pytest.raises(RuntimeError, match="loop bug"):
        run_service(make_config(tmp_path), DoubleLocator, DoubleLocatorConfig(), Notifier(""), install_signals=False)
    assert seen == [True]
