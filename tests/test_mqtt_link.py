"""The MQTT link against a real mosquitto on a free loopback port: birth / Last Will / offline, MQTT 5 and 3.1.1
properties, the bounded outbox across a network outage, message expiry, TLS with username and password."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_double import RecordingSubscriber, TcpProxy

from edge_runtime.service.broker import LocalMosquitto, free_port, mosquitto_executable
from edge_runtime.service.config import MqttConfig, QosConfig, TlsConfig
from edge_runtime.service.mqtt import MqttConfigError, MqttLink

pytestmark = pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed "
                                "(scripts/ci_system_deps.sh installs it)")

STATUS = "topicgeo/v1/t1/status"
POSE = "topicgeo/v1/t1/pose"


@pytest.fixture
def broker(tmp_path):
    with LocalMosquitto(workdir=tmp_path / "broker") as b:
        yield b


def make_link(port: int, protocol: str = "v5", **kw) -> MqttLink:
    config = MqttConfig(port=port, protocol=protocol, reconnect_min_s=0.2, reconnect_max_s=0.5, **kw)
    will = json.dumps({"online": False, "event": "will"}).encode()
    births = iter(range(1, 1000))
    return MqttLink(config, f"link-{protocol}", STATUS, will,
                    lambda: json.dumps({"online": True, "event": "birth", "n": next(births)}).encode())


def retained_status(port: int) -> dict:
    """What a subscriber arriving now gets on the status topic: the retained message, or {} when the first message it
    gets is a live one (published after it subscribed, e.g. a birth still in flight: nothing was retained yet)."""
    sub = RecordingSubscriber(port, [STATUS], client_id=f"late-{time.monotonic_ns()}")
    try:
        assert sub.wait_for(lambda s: s.json(STATUS), 5), "no retained status"
        return sub.json(STATUS)[0] if sub.messages[0].retain else {}
    finally:
        sub.close()


def wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("protocol", ["v5", "v311"])
def test_birth_is_retained_and_clean_stop_leaves_offline(broker, protocol):
    link = make_link(broker.port, protocol)
    link.start()
    assert link.wait_connected(5)
    assert wait(lambda: link.counters["published"] == 0 and retained_status(broker.port).get("event") == "birth")
    sub = RecordingSubscriber(broker.port, [POSE], protocol=protocol, client_id=f"rec-{protocol}")
    assert link.publish(POSE, b'{"seq":1}', qos=0, expiry_s=2)
    assert link.publish(POSE, b'{"seq":2}', qos=1)
    assert sub.wait_for(lambda s: len(s.messages) == 2, 5)
    first, second = sub.messages
    assert [json.loads(m.payload)["seq"] for m in sub.messages] == [1, 2]
    if protocol == "v5":
        assert first.properties.ContentType == "application/json"
        assert 1 <= first.properties.MessageExpiryInterval <= 2
        assert not hasattr(second.properties, "MessageExpiryInterval")
    else:
        assert first.properties is None
    sub.close()
    link.stop(json.dumps({"online": False, "event": "offline"}).encode())
    assert retained_status(broker.port) == {"online": False, "event": "offline"}  # not the will: a clean stop


@pytest.mark.parametrize("protocol", ["v5", "v311"])
def test_last_will_when_the_process_dies(broker, tmp_path, protocol):
    code = f"""
import json, sys, time
from edge_runtime.service.config import MqttConfig
from edge_runtime.service.mqtt import MqttLink
link = MqttLink(MqttConfig(port={broker.port}, protocol="{protocol}"), "doomed", "{STATUS}",
                json.dumps({{"online": False, "event": "will"}}).encode(),
                lambda: json.dumps({{"online": True, "event": "birth"}}).encode())
link.start()
assert link.wait_connected(5)
print("connected", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout.readline().strip() == "connected"
        assert wait(lambda: retained_status(broker.port).get("event") == "birth", 5)
        proc.kill()  # SIGKILL: no offline message, no DISCONNECT
        proc.wait(5)
        assert wait(lambda: retained_status(broker.port) == {"online": False, "event": "will"}, 5)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("protocol", ["v5", "v311"])
def test_outbox_is_bounded_and_flushed_after_an_outage(broker, protocol):
    proxy = TcpProxy(broker.port, free_port()).up()
    sub = RecordingSubscriber(broker.port, [POSE, STATUS], client_id="watcher")
    link = make_link(proxy.port, protocol, outbox_max=4)
    link.start()
    try:
        assert link.wait_connected(5)
        assert sub.wait_for(lambda s: [m for m in s.json(STATUS) if m["event"] == "birth"], 5)
        proxy.down()
        assert wait(lambda: not link.connected, 5)
        assert sub.wait_for(lambda s: {"online": False, "event": "will"} in s.json(STATUS), 5)
        for i in range(10):
            assert link.publish(POSE, json.dumps({"seq": i}).encode(), qos=0)
        assert link.outbox_len == 4
        assert link.counters["outbox_dropped"] == 6
        time.sleep(0.6)  # several reconnect attempts fail while the network is down
        assert link.counters["connect_failures"] >= 1 and not link.connected
        proxy.up()
        assert link.wait_connected(5)
        assert sub.wait_for(lambda s: len(s.json(POSE)) == 4, 5)
        assert [m["seq"] for m in sub.json(POSE)] == [6, 7, 8, 9]  # the newest four, in order
        births = [m["n"] for m in sub.json(STATUS) if m["event"] == "birth"]
        assert births == [1, 2]  # a new birth message on reconnect
        assert link.counters["connects"] == 2 and link.counters["disconnects"] == 1
        assert link.outbox_len == 0
    finally:
        link.stop(None)
        sub.close()
        proxy.down()


def test_poses_still_waiting_for_a_broker_at_stop_are_counted_and_said(caplog):
    """No broker ever answers: the queued poses are not dropped silently at the stop."""
    link = make_link(free_port(), outbox_max=8)  # nothing listens there
    link.start()
    try:
        for i in range(3):
            assert link.publish(POSE, json.dumps({"seq": i}).encode(), qos=1)
        assert link.outbox_len == 3 and link.undelivered.get(POSE, 0) == 0
    finally:
        with caplog.at_level("WARNING", logger="edge_runtime.service.mqtt"):
            link.stop(b"{}")
    assert link.undelivered[POSE] == 3 and link.outbox_len == 0
    assert "3 message(s) never reached the MQTT broker" in caplog.text and f"3 on {POSE}" in caplog.text


def test_expired_poses_are_not_sent_after_reconnect(broker):
    proxy = TcpProxy(broker.port, free_port()).up()
    sub = RecordingSubscriber(broker.port, [POSE], client_id="watcher2")
    link = make_link(proxy.port)
    link.start()
    try:
        assert link.wait_connected(5)
        proxy.down()
        assert wait(lambda: not link.connected, 5)
        link.publish(POSE, b'{"seq":1}', qos=0, expiry_s=1)
        link.publish(POSE, b'{"seq":2}', qos=0, expiry_s=1)
        time.sleep(1.1)
        link.publish(POSE, b'{"seq":3}', qos=0, expiry_s=1)
        link.publish(POSE, b'{"seq":4}', qos=0)  # no expiry
        proxy.up()
        assert sub.wait_for(lambda s: len(s.json(POSE)) == 2, 5)
        time.sleep(0.2)
        assert [m["seq"] for m in sub.json(POSE)] == [3, 4]
        assert link.counters["outbox_expired"] == 2
    finally:
        link.stop(None)
        sub.close()
        proxy.down()


def _run(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
         "/CN=topicgeo test CA", cwd=pki)
    _run("openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=pki)
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=pki)
    _run("mosquitto_passwd", "-c", "-b", "passwd", "uav01", "s3cret pass", cwd=pki)
    broker = LocalMosquitto(workdir=tmp_path / "broker", allow_anonymous=False, password_file=pki / "passwd",
                            listener_options=[f"cafile {pki / 'ca.crt'}", f"certfile {pki / 'server.crt'}",
                                              f"keyfile {pki / 'server.key'}"])
    with broker:
        yield broker, pki


def test_tls_with_username_and_password(tls_broker, monkeypatch):
    broker, pki = tls_broker
    tls = TlsConfig(enabled=True, ca_certs=pki / "ca.crt")
    monkeypatch.setenv("TOPICGEO_TEST_MQTT_PASSWORD", "s3cret pass")
    sub = RecordingSubscriber(broker.port, [POSE], ca_certs=str(pki / "ca.crt"), username="uav01",
                              password="s3cret pass", client_id="tls-watcher")
    link = make_link(broker.port, tls=tls, username="uav01", password_env="TOPICGEO_TEST_MQTT_PASSWORD")
    link.start()
    try:
        assert link.wait_connected(5), link.last_error
        link.publish(POSE, b'{"seq":1}', qos=1)
        assert sub.wait_for(lambda s: s.json(POSE) == [{"seq": 1}], 5)
    finally:
        link.stop(None)
        sub.close()

    monkeypatch.setenv("TOPICGEO_TEST_MQTT_PASSWORD", "wrong")
    bad = make_link(broker.port, tls=tls, username="uav01", password_env="TOPICGEO_TEST_MQTT_PASSWORD")
    bad.start()
    try:
        assert wait(lambda: bad.counters["connect_failures"] >= 1, 5)
        assert not bad.connected
        assert "refused" in (bad.last_error or "")
    finally:
        bad.stop(None)

    plain = make_link(broker.port, username="uav01", password_env="TOPICGEO_TEST_MQTT_PASSWORD")  # no TLS
    plain.start()
    try:
        time.sleep(0.5)
        assert not plain.connected
    finally:
        plain.stop(None)


def test_missing_password_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TOPICGEO_TEST_UNSET_PASSWORD", raising=False)
    with pytest.raises(MqttConfigError, match=r"mqtt\.password_env: environment variable TOPICGEO_TEST_UNSET_PASSWORD"):
        make_link(1883, username="u", password_env="TOPICGEO_TEST_UNSET_PASSWORD")


@pytest.mark.parametrize("status_qos", [0, 2])
def test_qos_per_topic_is_used(broker, status_qos):
    """The birth (and the Last Will) go out at the configured status QoS, not the default 1: a subscriber granted
    QoS 2 receives them at exactly that QoS."""
    link = make_link(broker.port, qos=QosConfig(status=status_qos))
    sub = RecordingSubscriber(broker.port, [STATUS], client_id="qos-watcher", qos=2)
    link.start()
    try:
        assert link.wait_connected(5)
        assert sub.wait_for(lambda s: s.messages, 5)
        assert sub.messages[0].qos == status_qos  # the birth
    finally:
        link.stop(None)
        sub.close()
