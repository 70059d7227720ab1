"""The embedded MQTT broker (amqtt, MQTT 3.1.1) used when mosquitto is not installed: it carries retained and QoS 1
messages, refuses MQTT 5 clients, stops and restarts on its port, reports a failed start with its log; the broker
choice of ``start_local_broker`` is logged; and the real ``edge-runtime`` (subprocess, real locator on a tiny bundle)
publishes schema-valid birth, per-frame and retained offline statuses through it with protocol 3.1.1."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from service_double import RecordingSubscriber

from edge_runtime.service import broker as broker_module
from edge_runtime.service import payloads
from edge_runtime.service.broker import (
    BrokerError,
    LocalAmqtt,
    LocalMosquitto,
    amqtt_command,
    mosquitto_executable,
    port_open,
    start_local_broker,
)

pytestmark = pytest.mark.skipif(amqtt_command() is None, reason="amqtt is not installed (pip install amqtt==0.12.1)")

REPO = Path(__file__).resolve().parent.parent
FRAMES = Path(__file__).parent / "data" / "service" / "frames"
NAMES = ["DJI_0030.JPG", "DJI_0031.JPG", "DJI_0033.JPG"]


@pytest.fixture
def amqtt_broker(tmp_path):
    with LocalAmqtt(workdir=tmp_path / "broker") as b:
        yield b


def v311_client(port: int, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_amqtt_carries_qos1_and_retained_messages_and_restarts_without_persistence(amqtt_broker):
    b = amqtt_broker
    assert b.protocol == "v311" and b.running and port_open("127.0.0.1", b.port)
    assert b.conf_path.read_text().count("127.0.0.1") == 1  # loopback only
    live = RecordingSubscriber(b.port, ["demo/#"], protocol="v311", client_id="live")
    pub = v311_client(b.port, "pub")
    pub.publish("demo/state", b'{"online": true}', qos=1, retain=True).wait_for_publish(5)
    for i in range(5):
        pub.publish("demo/pose", f"pose {i}".encode(), qos=1).wait_for_publish(5)
    assert live.wait_for(lambda s: len(s.messages) == 6, 5)
    assert [m.payload for m in live.messages if m.topic == "demo/pose"] == [f"pose {i}".encode() for i in range(5)]
    # a subscriber that arrives later gets the retained message, flagged as retained
    late = RecordingSubscriber(b.port, ["demo/state"], protocol="v311", client_id="late")
    assert late.wait_for(lambda s: s.messages, 5)
    # QoS 1 is at-least-once: amqtt may hand a subscriber the retained message more than once, every copy retained
    copies = late.json("demo/state")
    assert copies and all(c == {"online": True} for c in copies) and all(m.retain for m in late.messages)
    for client in (live, late):
        client.close()
    pub.loop_stop()
    pub.disconnect()

    b.stop()
    assert not b.running and not port_open("127.0.0.1", b.port)
    b.restart()
    assert b.running and port_open("127.0.0.1", b.port)
    fresh = RecordingSubscriber(b.port, ["demo/#"], protocol="v311", client_id="fresh")
    time.sleep(0.5)
    assert fresh.messages == []  # no persistence: the retained message died with the process
    fresh.close()


def test_amqtt_refuses_mqtt5_clients(amqtt_broker):
    result: dict = {}
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="v5", protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: (result.setdefault("rc", rc), done.set())
    client.connect("127.0.0.1", amqtt_broker.port)
    client.loop_start()
    assert done.wait(5)
    client.loop_stop()
    assert result["rc"].is_failure and "protocol version" in str(result["rc"]).lower()


def test_amqtt_on_a_taken_port_fails_fast_with_its_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        b = LocalAmqtt(port=taken.getsockname()[1], workdir=tmp_path / "broker")
        t0 = time.monotonic()
        with pytest.raises(BrokerError, match="address already in use"):
            b.start()
    assert time.monotonic() - t0 < 15.0  # the error in the log ends the wait (not the 30 s start timeout)
    assert not b.running


@pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")
def test_start_local_broker_picks_an_installed_mosquitto(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_runtime.service.broker")
    b, kind = start_local_broker(tmp_path / "broker")
    try:
        assert kind == "mosquitto" and isinstance(b, LocalMosquitto) and b.protocol == "v5" and b.running
        assert any(r.levelno == logging.INFO and "broker: mosquitto" in r.getMessage() and "installed" in
                   r.getMessage() for r in caplog.records)
    finally:
        b.stop()


def test_start_local_broker_falls_back_to_amqtt_and_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(broker_module, "mosquitto_executable", lambda: None)
    caplog.set_level(logging.INFO, logger="edge_runtime.service.broker")
    b, kind = start_local_broker(tmp_path / "broker")
    try:
        assert kind == "amqtt" and isinstance(b, LocalAmqtt) and b.protocol == "v311" and b.running
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("mosquitto is not installed" in w and "amqtt" in w and "3.1.1" in w for w in warnings), warnings
    finally:
        b.stop()
    with pytest.raises(BrokerError, match="mosquitto is not installed"):
        start_local_broker(tmp_path / "b2", prefer="mosquitto")
    monkeypatch.setattr(broker_module, "amqtt_command", lambda: None)
    with pytest.raises(BrokerError, match="mosquitto is not installed and amqtt is not installed"):
        start_local_broker(tmp_path / "b3")
    with pytest.raises(ValueError, match="prefer must be"):
        start_local_broker(tmp_path / "b4", prefer="rabbitmq")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the real service through amqtt
@pytest.fixture(scope="module")
def brighton_cache(tiny_bundle: Path, map_paths: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The map cache of the real Brighton Beach orthophoto crop (the frames' own site) built with ``tiny_bundle``."""
    from maps.build import BuildConfig, build_cache

    out = tmp_path_factory.mktemp("cache") / "brighton"
    build_cache(tiny_bundle, [map_paths[0]], out, BuildConfig())
    return out


@pytest.mark.slow
def test_real_service_publishes_valid_statuses_and_outcomes_through_amqtt(tiny_bundle, brighton_cache, tmp_path):
    validators = {name: jsonschema.Draft202012Validator(payloads.load_schema(name)) for name in ("pose", "status")}
    with LocalAmqtt(workdir=tmp_path / "broker") as b:
        config = {
            "vehicle_id": "amq1", "bundle_dir": str(tiny_bundle), "cache_dir": str(brighton_cache),
            "log_level": "INFO",
            "source": {"kind": "image_folder", "path": str(FRAMES)},
            "telemetry": {"kind": "exif", "exif_utc_offset_h": -5},
            "camera": {"from_exif": True, "sensor_width_mm": 6.17},
            "queue": {"maxsize": 3, "mode": "block"},
            "mqtt": {"port": b.port, "protocol": b.protocol},
        }
        cfg = tmp_path / "vehicle.yaml"
        cfg.write_text(yaml.safe_dump(config))
        sub = RecordingSubscriber(b.port, ["topicgeo/v1/amq1/pose", "topicgeo/v1/amq1/status"], protocol="v311")
        proc = subprocess.run([sys.executable, "-m", "edge_runtime.service.cli", "--config", str(cfg)], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "MQTT v3.1.1 -> 127.0.0.1" in proc.stderr
        statuses = lambda s: s.json("topicgeo/v1/amq1/status")  # noqa: E731
        assert sub.wait_for(lambda s: any(m["event"] == "offline" for m in statuses(s)), 10)
        poses, status = sub.json("topicgeo/v1/amq1/pose"), statuses(sub)
        for message in poses:
            validators["pose"].validate(message)
        for message in status:
            validators["status"].validate(message)
        run_ids = {m["run_id"] for m in poses + status}
        assert len(run_ids) == 1
        assert status[0]["event"] == "birth" and status[0]["state"] == "starting" and status[0]["online"] is True
        # one outcome per frame, in order: a pose or a "no fix" status (a weak checkpoint may locate none)
        outcomes = sorted([(p["seq"], p["frame"]["name"], "pose") for p in poses]
                          + [(m["seq"], m["frame"], m["event"]) for m in status if "seq" in m])
        assert [(seq, name) for seq, name, _ in outcomes] == list(enumerate(NAMES, start=1))
        assert {kind for _, _, kind in outcomes} <= {"pose", "no_fix"}
        final = [m for m in status if m["event"] == "offline"][-1]
        assert final["online"] is False and final["counters"]["processed"] == 3
        assert final["counters"]["poses"] == len(poses) and final["counters"]["no_fix"] == 3 - len(poses)
        sub.close()
        # the broker kept the service's last retained status (the offline message replaced birth / heartbeat)
        late = RecordingSubscriber(b.port, ["topicgeo/v1/amq1/status"], protocol="v311", client_id="late")
        assert late.wait_for(lambda s: s.messages, 5)
        assert late.messages[0].retain and late.json("topicgeo/v1/amq1/status")[0] == final
        late.close()


# --------------------------------------------------------------------------- the demo's footprint picture
@pytest.mark.slow
def test_demo_draws_pose_footprints_from_their_geojson(brighton_cache, demo_script, tmp_path):
    from edge_runtime.map_cache import open_map_cache

    cache = open_map_cache(brighton_cache, verify=False)
    map_id, entry = next(iter(cache.maps.items()))
    w, h = entry.georef.width, entry.georef.height
    quad = np.array([[0.3 * w, 0.2 * h], [0.7 * w, 0.25 * h], [0.65 * w, 0.7 * h], [0.25 * w, 0.6 * h]])
    ring = entry.georef.pixels_to_lonlat(quad)
    cache.close()
    pose = {"map_id": map_id, "frame": {"name": "DJI_0031.JPG"}, "footprint": payloads.footprint_geojson(ring)}
    items = demo_script.pose_footprints_px([json.loads(json.dumps(pose))], brighton_cache)  # as received over MQTT
    assert len(items) == 1 and items[0]["map_id"] == map_id and items[0]["label"] == "DJI_0031.JPG"
    got = np.asarray(items[0]["quad_px"])
    assert got.shape == (4, 2)
    # the GeoJSON ring may run the other way round: every corner comes back to within 0.01 px
    assert max(np.linalg.norm(got - q, axis=1).min() for q in quad) < 0.01
    out = tmp_path / "footprints.png"
    demo_script.draw_footprints(items, brighton_cache, out)
    picture = cv2.imread(str(out))  # BGR
    scale = 600.0 / max(w, h)
    x, y = ((quad[0] + quad[1]) / 2 * scale).round().astype(int)  # middle of the first edge
    patch = picture[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).astype(int)
    assert any(b > 200 and g < 60 and r > 200 for b, g, r in patch)  # the magenta outline
