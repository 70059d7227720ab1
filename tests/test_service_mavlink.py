"""The service with its MAVLink bridge, end to end: a real mosquitto, the locator double, and a pymavlink peer on
loopback UDP playing the PX4 flight controller.

The peer streams HEARTBEAT, ATTITUDE and GLOBAL_POSITION_INT (relative altitude rising at a known rate, so a prior
taken at the wrong time shows as a wrong altitude); JPEG frames (the bundled real DJI frames, and a textureless grey
frame the double cannot locate) arrive on MQTT with a ``t_capture`` 0.3 s in the past. Checked: the poses carry the
autopilot's altitude and attitude at the capture time, each located frame reaches the peer as one
GLOBAL_POSITION_SENSOR with the capture time, the grey frame sends nothing, and silencing the peer yields a retained
``mavlink_down`` status (then ``mavlink_up`` when it speaks again), with frames located without priors meanwhile.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from service_double import DoubleLocator, DoubleLocatorConfig, RecordingSubscriber, wait_until

from edge_runtime.service import payloads
from edge_runtime.service.broker import LocalMosquitto, mosquitto_executable
from edge_runtime.service.config import ConfigError, load_config
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import Service

REPO = Path(__file__).resolve().parents[1]
FRAMES = Path(__file__).parent / "data" / "service" / "frames"
NAMES = ["DJI_0030.JPG", "DJI_0031.JPG", "DJI_0033.JPG"]
PREFIX = "topicgeo/v1/m1"
POSE, STATUS, FRAME = (f"{PREFIX}/{leaf}" for leaf in ("pose", "status", "frame"))
DOUBLE = DoubleLocatorConfig()

#: the peer's vehicle: relative altitude ALT0 + CLIMB * (t - t0) metres, constant attitude (radians)
ALT0, CLIMB = 60.0, 10.0
ROLL, PITCH, YAW = 0.02, -0.03, math.radians(30.0)
CAPTURE_OFFSET_S = 0.3


def write_config(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "bundle").mkdir(exist_ok=True)
    (tmp_path / "cache").mkdir(exist_ok=True)
    path = tmp_path / "vehicle.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def base_config(port: int = 1883) -> dict:
    return {"vehicle_id": "m1", "bundle_dir": "bundle", "cache_dir": "cache",
            "source": {"kind": "mqtt", "frame_size": [512, 288]},
            "telemetry": {"kind": "mavlink"},
            "mqtt": {"port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5, "status_interval_s": 30},
            "mavlink": {"autopilot": "px4", "connection": "udpin:127.0.0.1:0", "link_timeout_s": 0.5,
                        "reconnect_interval_s": 0.3, "heartbeat_rate_hz": 5.0, "max_rate_hz": 50.0,
                        "max_fix_age_s": 2.0, "map_accuracy_m": 0.0}}


# ------------------------------------------------------------------------------------------------- config
def test_mavlink_section_errors_name_the_file_and_the_dotted_key(tmp_path):
    data = base_config()
    data["mavlink"]["baud"] = 12345
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError, match=r"vehicle\.yaml: mavlink\.baud: must be one of"):
        load_config(path)
    data = base_config()
    data["mavlink"]["heartbeat_hz"] = 1.0
    with pytest.raises(ConfigError, match=r"vehicle\.yaml: mavlink\.heartbeat_hz: unknown key"):
        load_config(write_config(tmp_path, data))
    data = base_config()
    del data["mavlink"]["connection"]
    with pytest.raises(ConfigError, match=r"vehicle\.yaml: mavlink\.connection: is required"):
        load_config(write_config(tmp_path, data))
    data = base_config()
    data["mavlink"] = "udpin:127.0.0.1:14540"
    with pytest.raises(ConfigError, match=r"vehicle\.yaml: mavlink: must be a mapping"):
        load_config(write_config(tmp_path, data))
    for section in (None, {**base_config()["mavlink"], "enabled": False}):
        data = base_config()
        data["mavlink"] = section
        with pytest.raises(ConfigError, match=r"vehicle\.yaml: telemetry\.kind: 'mavlink' needs an enabled mavlink"):
            load_config(write_config(tmp_path, data))
    data = base_config()  # the autopilot's position as a prior, but the priors come from elsewhere: said, not ignored
    data["mavlink"]["position_prior_radius_m"] = 300.0
    data["telemetry"] = {"kind": "none"}
    with pytest.raises(ConfigError, match=r"vehicle\.yaml: mavlink\.position_prior_radius_m: is only used with"):
        load_config(write_config(tmp_path, data))


def test_mavlink_section_expands_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPICGEO_MAVLINK", "udpout:127.0.0.1:14555")
    data = base_config()
    data["mavlink"]["connection"] = "${TOPICGEO_MAVLINK}"
    config = load_config(write_config(tmp_path, data))
    assert config.mavlink is not None and config.mavlink.endpoint.port == 14555
    assert config.mavlink.endpoint.transport == "udpout"


def test_example_config_loads_with_the_px4_and_the_commented_ardupilot_section(tmp_path):
    path = REPO / "configs" / "vehicle_mavlink.yaml"
    config = load_config(path)
    assert config.telemetry.kind == "mavlink"
    assert config.mavlink is not None and config.mavlink.autopilot == "px4"
    assert config.mavlink.endpoint.port == 14540 and config.mavlink.max_fix_age_s <= 0.3
    # swap in the commented ArduPilot example
    head, rest = path.read_text().split("\nmavlink:\n", 1)
    _px4, rest = rest.split("\n\n", 1)
    commented, tail = rest.split("# mavlink:\n", 1)[1].split("\n\n", 1)
    ardupilot = "\n".join(line[2:] for line in commented.splitlines())
    (tmp_path / "ardupilot.yaml").write_text(f"{head}\nmavlink:\n{ardupilot}\n\n{tail}")
    config = load_config(tmp_path / "ardupilot.yaml")
    assert config.mavlink is not None and config.mavlink.autopilot == "ardupilot"
    assert config.mavlink.endpoint.device == "/dev/ttyTHS1" and config.mavlink.fix_altitude == "ground_plus_agl"


def test_without_a_mavlink_section_there_is_no_bridge_and_no_pymavlink(tmp_path):
    data = base_config()
    del data["mavlink"]
    data["telemetry"] = {"kind": "none"}
    path = write_config(tmp_path, data)
    code = ("import sys\n"
            "from edge_runtime.service.config import load_config\n"
            "from edge_runtime.service.service import Service\n"
            "from edge_runtime.service.sdnotify import Notifier\n"
            f"service = Service(load_config({str(path)!r}), None, None, notifier=Notifier(''))\n"
            "assert service.bridge is None\n"
            "assert service._status(event='heartbeat').get('mavlink') is None\n"
            "print('pymavlink' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- the peer
class FlightController:
    """A PX4 on a loopback UDP socket: heartbeats at 10 Hz and priors at 25 Hz while ``talking``; records and decodes
    what the bridge sends."""

    def __init__(self, bridge_addr: tuple[str, int]) -> None:
        from pymavlink.dialects.v20 import all as mavlink

        self.enc = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
        self.dec = mavlink.MAVLink(None)
        self.dec.robust_parsing = True
        self.bridge_addr = bridge_addr
        self.boot_unix = time.time() - 120.0
        self.t0 = time.time()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.02)
        self.talking = threading.Event()
        self.received: list[object] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rx, daemon=True), threading.Thread(target=self._tx, daemon=True)]
        for t in self._threads:
            t.start()

    def relative_alt(self, t: float) -> float:
        return ALT0 + CLIMB * (t - self.t0)

    def _send(self, msg: object) -> None:
        buf = msg.pack(self.enc)
        self.enc.seq = (self.enc.seq + 1) % 256
        self.sock.sendto(bytes(buf), self.bridge_addr)

    def _tx(self) -> None:
        n = 0
        while not self._stop.wait(0.04):
            if not self.talking.is_set():
                continue
            t = time.time()
            boot_ms = round((t - self.boot_unix) * 1000.0)
            if n % 2 == 0:
                self._send(self.enc.heartbeat_encode(2, 12, 0, 0, 4))  # quadrotor, MAV_AUTOPILOT_PX4, active
            self._send(self.enc.attitude_encode(boot_ms, ROLL, PITCH, YAW, 0.0, 0.0, 0.0))
            self._send(self.enc.global_position_int_encode(
                boot_ms, 468421000, -919941000, 500_000, round(self.relative_alt(t) * 1000.0), 0, 0, 0, 3000))
            n += 1

    def _rx(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            for msg in self.dec.parse_buffer(bytearray(data)) or []:
                if msg.get_type() != "BAD_DATA":
                    with self._lock:
                        self.received.append(msg)

    def messages(self, kind: str) -> list:
        with self._lock:
            return [m for m in self.received if m.get_type() == kind]

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        self.sock.close()


def iso_to_unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")
def test_service_with_a_px4_peer_priors_fixes_and_link_status(tmp_path):
    pytest.importorskip("pymavlink")
    status_validator = jsonschema.Draft202012Validator(payloads.load_schema("status"))
    pose_validator = jsonschema.Draft202012Validator(payloads.load_schema("pose"))
    with LocalMosquitto(workdir=tmp_path / "broker") as broker:
        data = base_config(broker.port)
        data["mavlink"]["position_prior_radius_m"] = 400.0  # the autopilot's lat / lon as the position prior
        config = load_config(write_config(tmp_path, data))
        sub = RecordingSubscriber(broker.port, [POSE, STATUS])
        cam = paho.Client(CallbackAPIVersion.VERSION2, client_id="camera", protocol=MQTTProtocolVersion.MQTTv5)
        cam.connect("127.0.0.1", broker.port)
        cam.loop_start()
        service = Service(config, DoubleLocator, DOUBLE, notifier=Notifier(""))
        fc = None

        def statuses(event: str) -> list[dict]:
            return [m for m in sub.json(STATUS) if m["event"] == event]

        thread = threading.Thread(target=service.run, daemon=True)
        try:
            service.start()
            assert service.link.wait_subscribed(5)
            thread.start()
            assert service.bridge is not None and service.bridge.local_address is not None
            fc = FlightController(service.bridge.local_address)
            fc.talking.set()
            assert sub.wait_for(lambda s: statuses("mavlink_up"), 5), sub.json(STATUS)
            up = statuses("mavlink_up")[-1]["mavlink"]
            assert up["up"] is True and up["autopilot_detected"] == "px4" and up["last_heartbeat_age_s"] < 0.5
            time.sleep(0.5)  # prior samples on both sides of the first capture time (now - 0.3 s)

            def send_frame(payload: bytes, capture: float) -> dict:
                """Publish one frame; the pose or the no_fix status it produced."""
                n = len(sub.messages)
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("t_capture", repr(capture))]
                cam.publish(FRAME, payload, qos=1, properties=props).wait_for_publish(5)

                def outcome(s: RecordingSubscriber) -> list[dict]:
                    new = [m for m in s.messages[n:] if m.payload]
                    decoded = [{"topic": m.topic, **json.loads(m.payload)} for m in new]
                    return [d for d in decoded if d["topic"] == POSE or d["event"] == "no_fix"]

                assert sub.wait_for(lambda s: outcome(s), 5)
                return outcome(sub)[0]

            # located frames: priors from the autopilot at the capture time, one fix each to the peer
            captures = []
            for name in NAMES:
                capture = time.time() - CAPTURE_OFFSET_S
                pose = send_frame((FRAMES / name).read_bytes(), capture)
                assert pose["topic"] == POSE, pose
                pose.pop("topic")
                pose_validator.validate(pose)
                captures.append(capture)
                assert pose["t_capture_source"] == "mqtt"
                assert iso_to_unix(pose["t_capture"]) == pytest.approx(capture, abs=2e-6)
                priors = pose["priors"]
                assert priors["source"] == "mavlink"
                # relative_alt interpolated at the capture time (mm resolution, 1 ms boot clock, a few ms of loopback
                # delay): 0.1 m; the newest sample would be CLIMB * CAPTURE_OFFSET_S = 3 m higher
                assert priors["altitude_agl_m"] == pytest.approx(fc.relative_alt(capture), abs=0.1)
                assert pose["position"]["alt_m"] == pytest.approx(fc.relative_alt(capture), abs=0.1)
                assert priors["roll_deg"] == pytest.approx(math.degrees(ROLL), abs=1e-3)
                assert priors["pitch_deg"] == pytest.approx(math.degrees(PITCH), abs=1e-3)
                assert priors["yaw_deg"] == pytest.approx(30.0, abs=1e-3)
                assert (priors["near_lat"], priors["near_lon"], priors["near_radius_m"]) == \
                    pytest.approx((46.8421, -91.9941, 400.0), abs=1e-7)  # GLOBAL_POSITION_INT's lat / lon
                assert pose["heading_deg"] == pytest.approx(30.0, abs=1e-3)  # the double echoes the yaw prior
                time.sleep(0.1)  # > 1 / max_rate_hz between capture times
            assert wait_until(lambda: len(fc.messages("GLOBAL_POSITION_SENSOR")) == len(NAMES), 3)
            fixes = fc.messages("GLOBAL_POSITION_SENSOR")
            for msg, capture in zip(fixes, captures, strict=True):
                assert (msg.lat, msg.lon) == (round(DOUBLE.lat * 1e7), round(DOUBLE.lon * 1e7))  # degE7
                assert abs(msg.time_usec - msg.processing_time - capture * 1e6) <= 1.0  # capture time, us
                assert msg.processing_time >= CAPTURE_OFFSET_S * 1e6  # capture -> send latency, us
                assert msg.eph == pytest.approx(2.0, rel=1e-6)  # the double's larger std_m axis, no map error
                assert math.isnan(msg.alt)  # fix_altitude: none (horizontal only)

            # a frame the double cannot locate: a no_fix status, nothing to the autopilot
            grey = cv2.imencode(".jpg", np.full((288, 512, 3), 128, np.uint8))[1].tobytes()
            outcome = send_frame(grey, time.time() - CAPTURE_OFFSET_S)
            assert outcome["topic"] == STATUS and outcome["event"] == "no_fix"
            time.sleep(0.3)
            assert len(fc.messages("GLOBAL_POSITION_SENSOR")) == len(NAMES)
            link = service.bridge.link_status()
            assert link["fixes_sent"] == len(NAMES) and link["fixes_dropped"]["no_fix"] == 1

            # the autopilot falls silent: a retained mavlink_down status, then frames without priors and no fixes
            fc.talking.clear()
            t_silent = time.monotonic()
            assert sub.wait_for(lambda s: statuses("mavlink_down"), 3), sub.json(STATUS)
            assert time.monotonic() - t_silent >= 0.5 - 0.05  # link_timeout_s
            down = statuses("mavlink_down")[-1]
            status_validator.validate(down)
            assert down["online"] is True and down["mavlink"]["up"] is False
            assert down["mavlink"]["state"] == "down" and down["mavlink"]["last_heartbeat_age_s"] >= 0.5
            assert down["mavlink"]["fixes_sent"] == len(NAMES) and down["mavlink"]["link_losses"] == 1
            assert down["mavlink"]["fixes_dropped_by_reason"] == {"no_fix": 1}
            assert down["mavlink"]["bad_packets"] == 0 and down["mavlink"]["packets"] > 10
            late = RecordingSubscriber(broker.port, [STATUS], client_id="late")  # gets the retained status
            assert late.wait_for(lambda s: s.json(STATUS), 5)
            assert late.json(STATUS)[0]["event"] == "mavlink_down" and late.messages[0].retain
            late.close()
            pose = send_frame((FRAMES / NAMES[0]).read_bytes(), time.time())
            assert pose["topic"] == POSE and pose["priors"] == {"source": "none"}
            assert pose["position"]["alt_m"] is None
            assert [m for m in statuses("telemetry_error") if "no MAVLink priors" in m["message"]]
            time.sleep(0.2)
            assert len(fc.messages("GLOBAL_POSITION_SENSOR")) == len(NAMES)
            assert service.bridge.link_status()["fixes_dropped"]["link_down"] == 1
            assert service.counters_snapshot()["telemetry_stale"] == 1

            # it speaks again: mavlink_up
            n_up = len(statuses("mavlink_up"))
            fc.talking.set()
            assert sub.wait_for(lambda s: len(statuses("mavlink_up")) > n_up, 5)
        finally:
            service.request_stop("test over")
            thread.join(10)
            service.close()
            if fc is not None:
                fc.close()
            cam.loop_stop()
            cam.disconnect()
        assert sub.wait_for(lambda s: statuses("offline"), 5)
        offline = statuses("offline")[-1]
        assert offline["mavlink"]["state"] == "stopped" and offline["mavlink"]["fixes_sent"] == len(NAMES)
        births = statuses("birth")
        assert births and births[0]["mavlink"]["up"] is False  # at connect time no autopilot was heard yet
        start = statuses("heartbeat")[0]
        assert "mavlink" in start
        for status in sub.json(STATUS):
            status_validator.validate(status)
        sub.close()
