"""``edge-runtime`` as a process (with the locator double): readiness and watchdog messages on a notify socket the test
binds, SIGTERM, an unhealthy pipeline, a start-up failure and an invalid config, with a real mosquitto."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from service_double import RecordingSubscriber

from edge_runtime.service.broker import LocalMosquitto, mosquitto_executable

pytestmark = pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")

REPO = Path(__file__).resolve().parent.parent
FRAMES = Path(__file__).parent / "data" / "service" / "frames"
STATUS = "topicgeo/v1/p1/status"
WATCHDOG_USEC = 400_000  # pings expected every 0.1 s (a quarter of the interval)


@pytest.fixture
def broker(tmp_path):
    with LocalMosquitto(workdir=tmp_path / "broker") as b:
        yield b


class NotifySocket:
    """The systemd side of the notify protocol: a datagram socket the service sends to."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.messages: list[tuple[float, dict[str, str]]] = []

    def read_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            self.sock.settimeout(max(0.01, min(0.1, deadline - time.monotonic())))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))
        return predicate(self)

    def first(self, key: str) -> int | None:
        return next((i for i, (_, m) in enumerate(self.messages) if key in m), None)

    def close(self) -> None:
        self.sock.close()


def write_config(tmp_path: Path, port: int, **sections) -> Path:
    for name in ("bundle", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    data = {"vehicle_id": "p1", "bundle_dir": "bundle", "cache_dir": "cache",
            "source": {"kind": "image_folder", "path": str(FRAMES), "rate_fps": 5.0, "loop": True},
            "telemetry": {"kind": "exif", "exif_utc_offset_h": -5},
            "mqtt": {"port": port, "status_interval_s": 0.5}}
    data.update(sections)
    path = tmp_path / "vehicle.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(config: Path, notify: NotifySocket | None, watchdog: bool = True) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
    if watchdog:
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "service_double.py"), "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def retained(port: int) -> dict:
    sub = RecordingSubscriber(port, [STATUS], client_id=f"late-{time.monotonic_ns()}")
    try:
        assert sub.wait_for(lambda s: s.messages, 5) and sub.messages[0].retain
        return json.loads(sub.messages[0].payload)
    finally:
        sub.close()


def test_ready_then_watchdog_pings_then_clean_sigterm(tmp_path, broker):
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start(write_config(tmp_path, broker.port), notify)
    try:
        assert notify.read_until(lambda n: n.first("READY") is not None, 20), proc.stderr.read() if proc.poll() else ""
        ready = notify.messages[notify.first("READY")][1]
        assert ready["READY"] == "1" and ready["STATUS"].startswith("running: double fp32, image folder")
        extend = notify.first("EXTEND_TIMEOUT_USEC")
        assert extend is not None and extend < notify.first("READY")  # start-up time asked for before READY
        assert all("WATCHDOG" not in m for _, m in notify.messages[: notify.first("READY")])  # no ping before READY
        t_ready = notify.messages[notify.first("READY")][0]
        notify.read_until(lambda n: n.messages[-1][0] - t_ready > 1.0, 3)
        pings = [t for t, m in notify.messages if m.get("WATCHDOG") == "1"]
        assert 6 <= len(pings) <= 16, pings  # ~every 0.1 s over ~1 s
        assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_USEC / 2e6
        assert retained(broker.port)["online"] is True
        proc.send_signal(signal.SIGTERM)
        assert notify.read_until(lambda n: proc.poll() is not None, 10)
        assert proc.returncode == 0
        assert notify.read_until(lambda n: n.first("STOPPING") is not None, 2)
        assert notify.messages[notify.first("STOPPING")][1]["STATUS"] == "stopping: SIGTERM"
        final = retained(broker.port)
        assert (final["online"], final["event"], final["message"]) == (False, "offline", "SIGTERM")
        assert final["counters"]["poses"] >= 3
    finally:
        proc.kill()
        proc.wait()
        notify.close()


def test_unhealthy_pipeline_stops_the_watchdog_and_exits_1(tmp_path, broker):
    notify = NotifySocket(tmp_path / "notify.sock")
    config = write_config(tmp_path, broker.port, locator={"fail_after": 3},
                          health={"max_consecutive_errors": 2, "unhealthy_exit_s": 1.0})
    proc = start(config, notify)
    try:
        assert notify.read_until(lambda n: proc.poll() is not None, 20)  # keep reading while it runs
        assert proc.returncode == 1
        notify.read_until(lambda n: False, 0.2)  # drain
        unhealthy = next(i for i, (_, m) in enumerate(notify.messages) if m.get("STATUS", "").startswith("unhealthy"))
        assert "the locator failed 2 times in a row: RuntimeError: simulated backend failure" in \
            notify.messages[unhealthy][1]["STATUS"]
        before = [m for _, m in notify.messages[:unhealthy] if m.get("WATCHDOG") == "1"]
        after = [m for _, m in notify.messages[unhealthy:] if m.get("WATCHDOG") == "1"]
        assert len(before) >= 2 and after == []  # pings while healthy, none once unhealthy
        t_unhealthy = notify.messages[unhealthy][0]
        t_stop = notify.messages[notify.first("STOPPING")][0]
        assert 0.9 <= t_stop - t_unhealthy <= 3.0  # unhealthy_exit_s = 1
        final = retained(broker.port)
        assert final["online"] is False and final["message"].startswith("unhealthy for 1 s: the locator failed")
        assert final["counters"]["locate_error"] >= 2 and final["counters"]["poses"] == 3
    finally:
        proc.kill()
        proc.wait()
        notify.close()


def test_startup_failure_reports_and_exits_1_without_ready(tmp_path, broker):
    notify = NotifySocket(tmp_path / "notify.sock")
    config = write_config(tmp_path, broker.port, bundle_dir="missing_bundle")
    proc = start(config, notify)
    try:
        assert notify.read_until(lambda n: proc.poll() is not None, 20)
        assert proc.returncode == 1
        notify.read_until(lambda n: False, 0.2)
        assert notify.first("READY") is None
        statuses = [m["STATUS"] for _, m in notify.messages if "STATUS" in m]
        assert statuses[-1] == f"failed: bundle_dir {tmp_path / 'missing_bundle'} does not exist"
        final = retained(broker.port)
        assert (final["online"], final["state"], final["event"]) == (False, "failed", "failed")
        assert "missing_bundle" in final["message"]
    finally:
        proc.kill()
        proc.wait()
        notify.close()


def test_invalid_config_exits_2_naming_the_key(tmp_path, broker):
    config = write_config(tmp_path, broker.port, queue={"maxsize": 2, "policy": "latest"})
    proc = start(config, None, watchdog=False)
    assert proc.wait(20) == 2
    err = proc.stderr.read()
    assert f"invalid config: {config}: queue.policy: unknown key" in err
    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "tests" / "service_double.py"), "--config",
                               str(write_config(tmp_path, broker.port)), "--check"], capture_output=True, text=True,
                              env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")}, timeout=30)

    empty = check()  # --check also names the files the service could not open at start
    assert empty.returncode == 2
    assert "bundle_dir: no manifest.json in" in empty.stderr and "cache_dir: no manifest.json in" in empty.stderr
    for name in ("bundle", "cache"):
        (tmp_path / name / "manifest.json").write_text("{}")  # contents are verified at start, not by --check
    ok = check()
    assert ok.returncode == 0 and "OK (vehicle p1, source image_folder" in ok.stdout
