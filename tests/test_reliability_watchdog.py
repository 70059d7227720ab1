"""A stalled inference backend stops the watchdog pings, so systemd kills and restarts the service.

``edge-runtime`` runs as its own process (the real CLI with a locator double whose ``locate`` hangs at a chosen call:
an injected delay) under a small stand-in for systemd's watchdog: the test binds the ``NOTIFY_SOCKET``, exports
``WATCHDOG_USEC`` (0.4 s) and, like systemd, sends ``SIGABRT`` (the default ``WatchdogSignal=``) when no
``WATCHDOG=1`` arrived for a whole interval after ``READY=1``; then it starts the service again, as ``Restart=``
would. A slow frame that stays within the interval must not trigger it.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
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
WATCHDOG_S = 0.4
POSE, STATUS = "topicgeo/v1/w1/pose", "topicgeo/v1/w1/status"

RUNNER = f"""
import sys, time
from dataclasses import dataclass
sys.path.insert(0, {str(REPO / "tests")!r})
from service_double import DoubleLocator, DoubleLocatorConfig
from edge_runtime.service.cli import run

@dataclass(frozen=True)
class StallConfig(DoubleLocatorConfig):
    stall_at: int = 0       # the locate call that stalls (0 = none)
    stall_s: float = 0.0    # for how long

class StallingLocator(DoubleLocator):
    def locate(self, image_rgb, priors, camera=None):
        if len(self.calls) + 1 == self.config.stall_at:
            time.sleep(self.config.stall_s)
        return super().locate(image_rgb, priors, camera)

sys.exit(run(sys.argv[1:], StallingLocator, StallConfig))
"""


class Supervisor:
    """The notify socket plus systemd's watchdog rule: no ``WATCHDOG=1`` for ``WATCHDOG_S`` after READY -> SIGABRT."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.02)
        self.path = path

    def watch(self, proc: subprocess.Popen, timeout: float, after_ready: float | None = None) -> dict:
        """Run until the process exits, ``timeout`` passed, or ``after_ready`` seconds passed since READY.

        Returns:
            ``ready`` (time of READY=1), ``pings`` (times of WATCHDOG=1) and ``fired`` (when SIGABRT was sent).
        """
        out: dict = {"ready": None, "pings": [], "fired": None}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if after_ready is not None and out["ready"] is not None and time.monotonic() > out["ready"] + after_ready:
                break
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                data = b""
            now = time.monotonic()
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()) if data else {}
            if fields.get("READY") == "1":
                out["ready"] = now
            if fields.get("WATCHDOG") == "1":
                out["pings"].append(now)
            last = out["pings"][-1] if out["pings"] else out["ready"]
            if out["ready"] is not None and out["fired"] is None and now - last > WATCHDOG_S:
                out["fired"] = now
                proc.send_signal(signal.SIGABRT)  # what systemd does when the watchdog expires
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def broker(tmp_path):
    with LocalMosquitto(workdir=tmp_path / "broker") as b:
        yield b


def launch(tmp_path: Path, port: int, notify: Path, stall_at: int, stall_s: float) -> subprocess.Popen:
    for name in ("bundle", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    config = {"vehicle_id": "w1", "bundle_dir": "bundle", "cache_dir": "cache",
              "source": {"kind": "image_folder", "path": str(FRAMES), "rate_fps": 10.0, "loop": True},
              "queue": {"maxsize": 2, "mode": "block"}, "mqtt": {"port": port, "status_interval_s": 60},
              "locator": {"stall_at": stall_at, "stall_s": stall_s}}
    (tmp_path / "vehicle.yaml").write_text(yaml.safe_dump(config))
    runner = tmp_path / "stalling_runtime.py"
    runner.write_text(RUNNER)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
           "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    return subprocess.Popen([sys.executable, str(runner), "--config", str(tmp_path / "vehicle.yaml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))


def test_a_hung_backend_stops_the_pings_systemd_kills_and_the_restart_recovers(tmp_path, broker):
    sub = RecordingSubscriber(broker.port, [POSE, STATUS], client_id="watchdog-watcher")
    supervisor = Supervisor(tmp_path / "notify.sock")
    procs = []
    try:
        proc = launch(tmp_path, broker.port, supervisor.path, stall_at=12, stall_s=60.0)
        procs.append(proc)
        seen = supervisor.watch(proc, timeout=40)
        assert seen["ready"] is not None, "never READY"
        assert seen["fired"] is not None, "the watchdog never fired although locate() hung"
        assert proc.wait(10) == -signal.SIGABRT
        pings = [t for t in seen["pings"] if t < seen["fired"]]
        gaps = [b - a for a, b in itertools.pairwise([seen["ready"], *pings])]
        assert len(pings) >= 8 and max(gaps) < WATCHDOG_S * 0.75, gaps  # regular while healthy (every ~0.1 s)
        assert WATCHDOG_S < seen["fired"] - pings[-1] < WATCHDOG_S + 0.3  # silence from the hang on
        # the hang is the cause: exactly the 11 frames before the stalled call were published, and the broker
        # published the Last Will for the killed process
        assert sub.wait_for(lambda s: [m for m in s.json(STATUS) if m.get("event") == "will"], 10)
        run1 = {p["run_id"] for p in sub.json(POSE)}
        assert [p["seq"] for p in sub.json(POSE)] == list(range(1, 12)) and len(run1) == 1

        restarted = launch(tmp_path, broker.port, supervisor.path, stall_at=0, stall_s=0.0)  # Restart=
        procs.append(restarted)
        again = supervisor.watch(restarted, timeout=40, after_ready=2.0)
        assert again["ready"] is not None and again["fired"] is None and len(again["pings"]) >= 10
        assert sub.wait_for(lambda s: len({p["run_id"] for p in s.json(POSE)} - run1) == 1, 5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        supervisor.close()
        sub.close()


def test_a_slow_frame_within_the_interval_keeps_the_pings(tmp_path, broker):
    supervisor = Supervisor(tmp_path / "notify.sock")
    proc = launch(tmp_path, broker.port, supervisor.path, stall_at=5, stall_s=0.15)
    try:
        seen = supervisor.watch(proc, timeout=40, after_ready=2.0)  # the stall comes ~0.5 s after READY
        assert seen["ready"] is not None and seen["fired"] is None
        assert proc.poll() is None
        gaps = [b - a for a, b in itertools.pairwise(seen["pings"])]
        assert 0.12 < max(gaps) < WATCHDOG_S  # the slow frame shows, but within the interval
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            supervisor.close()
    print(json.dumps({"max_ping_gap_s": round(max(gaps), 3)}))
