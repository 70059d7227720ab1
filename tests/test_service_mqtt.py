"""The service end to end over a real mosquitto, with a locator double: poses validate against the schema, EXIF and
MQTT telemetry reach the locator and the pose, bad input becomes status errors while the service carries on, a broker
restart mid-run does not stop publishing, and a lagging pipeline drops (and counts) old frames."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from datetime import datetime, timezone
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
from service_double import DoubleLocator, DoubleLocatorConfig, RecordingSubscriber

from edge_runtime.service import payloads
from edge_runtime.service.broker import LocalMosquitto, mosquitto_executable
from edge_runtime.service.config import MqttConfig, load_config
from edge_runtime.service.mqtt import MqttLink
from edge_runtime.service.sdnotify import Notifier
from edge_runtime.service.service import Service

pytestmark = pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")

FRAMES = Path(__file__).parent / "data" / "service" / "frames"
NAMES = ["DJI_0030.JPG", "DJI_0031.JPG", "DJI_0033.JPG"]
PREFIX = "topicgeo/v1/t1"
POSE, STATUS, FRAME, TELEMETRY = (f"{PREFIX}/{leaf}" for leaf in ("pose", "status", "frame", "telemetry"))
DOUBLE = DoubleLocatorConfig()


@pytest.fixture(scope="module")
def validators():
    return {name: jsonschema.Draft202012Validator(payloads.load_schema(name)) for name in ("pose", "status")}


@pytest.fixture
def broker(tmp_path):
    with LocalMosquitto(workdir=tmp_path / "broker") as b:
        yield b


def make_config(tmp_path: Path, port: int, **sections):
    (tmp_path / "bundle").mkdir(exist_ok=True)
    (tmp_path / "cache").mkdir(exist_ok=True)
    data = {"vehicle_id": "t1", "bundle_dir": "bundle", "cache_dir": "cache",
            "mqtt": {"port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5, "status_interval_s": 0.5}}
    for key, value in sections.items():
        data[key] = {**data[key], **value} if key == "mqtt" else value
    path = tmp_path / "vehicle.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@contextlib.contextmanager
def running(config, locator_config=DOUBLE):
    service = Service(config, DoubleLocator, locator_config, notifier=Notifier(""))
    service.start()
    assert service.link.wait_subscribed(5), "the service did not connect and subscribe within 5 s"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", service.run()), daemon=True)
    thread.start()
    try:
        yield service, thread, result
    finally:
        service.request_stop("test over")
        thread.join(10)
        service.close()


def publisher(port: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="camera", protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def send(client: paho.Client, topic: str, payload: bytes, **props: str) -> None:
    properties = None
    if props:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = list(props.items())
    client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)


def events(sub: RecordingSubscriber, event: str) -> list[dict]:
    return [m for m in sub.json(STATUS) if m["event"] == event]


def test_folder_replay_publishes_valid_poses_with_exif_priors(tmp_path, broker, validators):
    config = make_config(tmp_path, broker.port,
                         source={"kind": "image_folder", "path": str(FRAMES)},
                         telemetry={"kind": "exif", "exif_utc_offset_h": -5},
                         camera={"from_exif": True, "sensor_width_mm": 6.17},
                         queue={"maxsize": 2, "mode": "block"})
    sub = RecordingSubscriber(broker.port, [POSE, STATUS])
    with running(config, DoubleLocatorConfig(delay_s=0.05)) as (service, thread, result):
        thread.join(15)
        assert result.get("code") == 0  # the replay ended: clean exit
        locator = service.locator
    assert sub.wait_for(lambda s: [m for m in s.json(STATUS) if m["event"] == "offline"], 5)
    poses = sub.json(POSE)
    assert [p["frame"]["name"] for p in poses] == NAMES
    assert [p["seq"] for p in poses] == [1, 2, 3]
    for pose in poses:
        validators["pose"].validate(pose)
        assert pose["run_id"] == service.run_id and pose["vehicle_id"] == "t1"
        assert (pose["position"]["lat"], pose["position"]["lon"]) == (DOUBLE.lat, DOUBLE.lon)
        assert pose["latency_ms"]["end_to_end"] >= pose["latency_ms"]["locator"]["total"] >= 50.0
        assert pose["frame"]["width"] == 512 and pose["frame"]["height"] == 288
    # EXIF/XMP of the real frames: DateTimeOriginal (local CDT), RelativeAltitude and gimbal yaw reach the pose
    assert [p["t_capture"] for p in poses] == ["2016-06-23T21:33:27.000000Z", "2016-06-23T21:33:34.000000Z",
                                               "2016-06-23T21:33:49.000000Z"]
    assert all(p["t_capture_source"] == "exif" for p in poses)
    assert [p["position"]["alt_m"] for p in poses] == [40.1, 40.2, 40.1]
    assert [p["heading_deg"] for p in poses] == pytest.approx([44.2, 41.4, 42.9], abs=1e-3)
    # what the locator received: RGB frames of the stated size and EXIF intrinsics scaled to 512 px
    assert [c.shape for c in locator.calls] == [(288, 512, 3)] * 3
    raw = cv2.imread(str(FRAMES / NAMES[0]))
    assert locator.calls[0].mean_rgb == pytest.approx(tuple(raw.reshape(-1, 3).mean(axis=0)[::-1]), abs=1e-6)
    assert locator.calls[0].camera.fx == pytest.approx(3.61 / 6.17 * 4000 * 512 / 4000, rel=1e-9)
    for status in sub.json(STATUS):
        validators["status"].validate(status)
    final = [m for m in sub.json(STATUS) if m["event"] == "offline"][-1]
    assert final["online"] is False and final["counters"]["poses"] == 3 and final["counters"]["frames_dropped"] == 0
    sub.close()


def test_poses_and_statuses_go_out_at_their_configured_qos(tmp_path, broker):
    """``mqtt.qos`` per topic reaches what the service publishes: poses at 2 and statuses at 0 (both not the
    defaults 0 / 1), seen by a subscriber granted QoS 2; the final offline status stays at least QoS 1."""
    config = make_config(tmp_path, broker.port, source={"kind": "image_folder", "path": str(FRAMES)},
                         queue={"maxsize": 2, "mode": "block"}, mqtt={"qos": {"pose": 2, "status": 0}})
    sub = RecordingSubscriber(broker.port, [POSE, STATUS], client_id="qos-watcher", qos=2)
    with running(config) as (_, thread, result):
        thread.join(15)
        assert result.get("code") == 0
    assert sub.wait_for(lambda s: [m for m in s.json(STATUS) if m["event"] == "offline"], 5)
    poses = [m for m in sub.messages if m.topic == POSE]
    statuses = [(json.loads(m.payload)["event"], m.qos) for m in sub.messages if m.topic == STATUS and m.payload]
    sub.close()
    assert len(poses) == len(NAMES) and {m.qos for m in poses} == {2}
    assert ("birth", 0) in statuses and ("offline", 1) in statuses
    assert {qos for event, qos in statuses if event != "offline"} == {0}


def test_bad_input_is_a_status_error_and_the_service_carries_on(tmp_path, broker, validators):
    config = make_config(tmp_path, broker.port, source={"kind": "mqtt", "frame_size": [512, 288]},
                         telemetry={"kind": "exif", "exif_utc_offset_h": -5})
    good = (FRAMES / NAMES[1]).read_bytes()
    small = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(FRAMES / NAMES[0])), (320, 180)))[1].tobytes()
    gray = cv2.imencode(".jpg", np.full((288, 512, 3), 128, np.uint8))[1].tobytes()
    sub = RecordingSubscriber(broker.port, [POSE, STATUS])
    cam = publisher(broker.port)
    with running(config) as (service, thread, _):
        def outcome(payload: bytes) -> dict:
            n = len(sub.messages)
            send(cam, FRAME, payload)
            assert sub.wait_for(lambda s: any(m.topic == POSE or json.loads(m.payload)["event"] not in
                                              ("heartbeat", "birth") for m in s.messages[n:]), 5)
            m = next(m for m in sub.messages[n:] if m.topic == POSE or json.loads(m.payload)["event"] not in
                     ("heartbeat", "birth"))
            return {"topic": m.topic, **json.loads(m.payload)}

        first = outcome(good)
        assert first["topic"] == POSE and first["priors"]["altitude_agl_m"] == 40.2
        checks = [
            (b"", "frame_error", "empty payload on topicgeo/v1/t1/frame"),
            (good[: len(good) // 2], "frame_error", "truncated JPEG"),
            (b"GIF89a" + good[6:], "frame_error", "not a JPEG"),
            (small, "frame_error", "unexpected frame size 320x180, expected 512x288"),
            (gray, "no_fix", "no texture in the frame"),
        ]
        for payload, event, fragment in checks:
            msg = outcome(payload)
            assert msg["topic"] == STATUS and msg["event"] == event and fragment in msg["message"], msg
            assert msg["online"] is True and msg["state"] == "running"
            validators["status"].validate({k: v for k, v in msg.items() if k != "topic"})
        last = outcome(good)
        assert last["topic"] == POSE and last["seq"] > first["seq"]
        assert thread.is_alive()
        deadline = time.monotonic() + 2  # the counter is bumped right after the publish call returns
        while service.counters_snapshot()["poses"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        counters = service.counters_snapshot()
        assert (counters["frame_error"], counters["no_fix"], counters["poses"]) == (4, 1, 2)
        assert service.consecutive_errors == 0 and service.unhealthy_reason is None
    assert len(sub.json(POSE)) == 2  # the textureless frame was never published as a pose
    cam.loop_stop()
    sub.close()


def test_mqtt_telemetry_and_capture_time_property(tmp_path, broker, validators):
    config = make_config(tmp_path, broker.port, source={"kind": "mqtt"},
                         telemetry={"kind": "mqtt", "max_age_s": 0.5})
    frame = (FRAMES / NAMES[2]).read_bytes()
    sub = RecordingSubscriber(broker.port, [POSE, STATUS])
    cam = publisher(broker.port)
    with running(config) as (service, _, _):
        send(cam, TELEMETRY, json.dumps({"altitude_agl_m": 55.5, "yaw_deg": 10.0, "t": time.time()}).encode())
        send(cam, FRAME, frame, t_capture="1700000000.25")
        assert sub.wait_for(lambda s: len(s.json(POSE)) == 1, 5)
        pose = sub.json(POSE)[0]
        validators["pose"].validate(pose)
        assert pose["priors"] == {"source": "mqtt", "altitude_agl_m": 55.5, "yaw_deg": 10.0}
        assert pose["position"]["alt_m"] == 55.5 and pose["heading_deg"] == 10.0
        assert pose["t_capture"] == "2023-11-14T22:13:20.250000Z" and pose["t_capture_source"] == "mqtt"
        assert service.locator.calls[0].priors.capture_time == 1700000000.25

        send(cam, TELEMETRY, b'{"altitude_agl_m": "high"}')
        assert sub.wait_for(lambda s: events(s, "telemetry_error"), 5)
        assert "finite number" in events(sub, "telemetry_error")[0]["message"]

        time.sleep(0.6)  # the last good sample is now older than max_age_s
        send(cam, FRAME, frame)
        assert sub.wait_for(lambda s: len(s.json(POSE)) == 2, 5)
        assert sub.json(POSE)[1]["priors"] == {"source": "none"}
        assert sub.json(POSE)[1]["t_capture_source"] == "arrival"
        assert any("no telemetry sample newer than 0.5 s" in m["message"] for m in events(sub, "telemetry_error"))
    cam.loop_stop()
    sub.close()


def test_retained_telemetry_is_not_used_as_priors(tmp_path, broker):
    config = make_config(tmp_path, broker.port, source={"kind": "mqtt"},
                         telemetry={"kind": "mqtt", "max_age_s": 5.0})
    frame = (FRAMES / NAMES[2]).read_bytes()
    sub = RecordingSubscriber(broker.port, [POSE, STATUS])
    cam = publisher(broker.port)
    stale = json.dumps({"altitude_agl_m": 99.0, "yaw_deg": 45.0}).encode()  # e.g. from hours before the reboot
    cam.publish(TELEMETRY, stale, qos=1, retain=True).wait_for_publish(5)
    with running(config) as (service, _, _):
        deadline = time.monotonic() + 5  # the broker delivers the retained sample right after the subscription
        while service.link.counters["received"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.link.counters["received"] == 1
        send(cam, FRAME, frame)
        assert sub.wait_for(lambda s: len(s.json(POSE)) == 1, 5)
        assert sub.json(POSE)[0]["priors"] == {"source": "none"}
        send(cam, TELEMETRY, json.dumps({"altitude_agl_m": 55.5, "t": time.time()}).encode())  # a live sample
        send(cam, FRAME, frame)
        assert sub.wait_for(lambda s: len(s.json(POSE)) == 2, 5)
        assert sub.json(POSE)[1]["priors"] == {"source": "mqtt", "altitude_agl_m": 55.5}
    cam.loop_stop()
    sub.close()


def test_birth_after_a_half_open_link_and_expired_qos1_poses_are_not_resent(tmp_path, broker):
    config = MqttConfig(port=broker.port, outbox_max=3, reconnect_min_s=0.2, reconnect_max_s=0.5)
    births: list[float] = []

    def birth() -> bytes:
        births.append(time.time())
        return json.dumps({"event": "birth", "n": len(births)}).encode()

    link = MqttLink(config, "half-open", STATUS, b'{"event": "will"}', birth)
    link.start()
    try:
        assert link.wait_connected(5)
        first = RecordingSubscriber(broker.port, [STATUS], client_id="first")
        assert first.wait_for(lambda s: s.json(STATUS) == [{"event": "birth", "n": 1}], 5)
        first.close()
        time.sleep(0.2)  # the birth's PUBACK is back: paho's queue is empty
        os.kill(broker.process.pid, signal.SIGSTOP)  # hung broker: TCP stays open, no PUBACK ever comes
        assert link.publish(POSE, b'{"seq": 1}', qos=1, expiry_s=1)
        for i in range(2):
            assert link.publish(STATUS, json.dumps({"event": "no_fix", "i": i}).encode(), qos=1)
        assert not link.publish(STATUS, b'{"event": "no_fix", "i": 2}', qos=1)  # outbox_max unacknowledged
        assert link.counters["queue_full"] == 1
        time.sleep(1.2)  # the pose expires while the link hangs
        os.kill(broker.process.pid, signal.SIGKILL)
        broker.process.wait(5)
        broker.process = None
        broker.start()
        deadline = time.monotonic() + 10
        while link.counters["connects"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.counters["connects"] == 2 and len(births) == 2
        late = RecordingSubscriber(broker.port, [STATUS], client_id="late")
        assert late.wait_for(lambda s: s.messages, 5), "no retained birth after the reconnect"
        assert late.messages[0].retain and late.json(STATUS)[0] == {"event": "birth", "n": 2}
        late.close()
        assert link.counters["birth_failed"] == 0
        assert link.counters["outbox_expired"] == 1 and link.undelivered == {POSE: 1, STATUS: 1}
    finally:
        if broker.process is not None:
            os.kill(broker.process.pid, signal.SIGCONT)
        link.stop(None)


def test_broker_restart_mid_run_publishing_resumes(tmp_path, broker):
    config = make_config(tmp_path, broker.port, source={"kind": "image_folder", "path": str(FRAMES),
                                                        "rate_fps": 8.0, "loop": True})
    sub = RecordingSubscriber(broker.port, [POSE, STATUS])
    with running(config) as (service, thread, _):
        assert sub.wait_for(lambda s: len(s.json(POSE)) >= 3, 5)
        broker.restart(down_s=1.0)
        restarted = time.time()
        assert sub.wait_for(lambda s: len([p for p in s.json(POSE) if iso(p["t_publish"]) > restarted]) >= 3, 10)
        assert thread.is_alive() and service.link.connected
        assert service.link.counters["connects"] >= 2 and service.link.counters["disconnects"] >= 1
        seqs = [p["seq"] for p in sub.json(POSE)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    sub.close()
    # the restarted broker kept nothing (no persistence): the service announced itself again (birth / heartbeat)
    late = RecordingSubscriber(broker.port, [STATUS], client_id="late")
    assert late.wait_for(lambda s: s.messages, 5) and late.messages[0].retain
    retained = late.json(STATUS)[0]
    assert iso(retained["t"]) > restarted and retained["event"] in ("birth", "heartbeat", "offline")
    late.close()


def iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def test_lagging_pipeline_drops_old_frames_and_counts_them(tmp_path, broker):
    config = make_config(tmp_path, broker.port, source={"kind": "image_folder", "path": str(FRAMES),
                                                        "rate_fps": 40.0, "loop": True},
                         queue={"maxsize": 1, "mode": "latest"}, mqtt={"status_interval_s": 0.3})
    sub = RecordingSubscriber(broker.port, [POSE, STATUS])
    with running(config, DoubleLocatorConfig(delay_s=0.1)) as (service, _, _):
        time.sleep(1.5)
        service.request_stop("enough")
    counters = service.counters_snapshot()
    poses = sub.json(POSE)
    indices = [p["frame"]["index"] for p in poses]
    assert 5 <= len(poses) <= 20  # ~10 fps of processing
    assert counters["frames_dropped"] >= 2 * len(poses)  # 40 fps in, ~10 fps out
    assert counters["frames_in"] - counters["frames_dropped"] - counters["processed"] in (0, 1)  # one may be queued
    assert indices == sorted(indices) and max(np.diff(indices)) >= 2  # newest frames, with gaps
    beats = [m for m in sub.json(STATUS) if m["event"] == "heartbeat" and m.get("counters")]
    assert beats and beats[-1]["counters"]["frames_dropped"] > 0
    assert beats[-1]["counters"]["e2e_ms_median"] >= 100.0
    sub.close()
