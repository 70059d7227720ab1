"""A secured broker: TLS with a test CA generated here (openssl), client certificates (``require_certificate``),
username/password (``mosquitto_passwd``) and an ACL that confines each vehicle to ``topicgeo/v1/<its user>/#``
(``pattern readwrite topicgeo/v1/%u/#``; the ground station ``ops`` reads everything).

Asserted: the vehicle service publishes over mutual TLS with its password; a vehicle cannot publish to (or read)
another vehicle's topics while its own work; a link configured for TLS never sends a byte of plaintext MQTT (the
first byte on the wire is a TLS handshake record, the password never appears on the wire), does not connect to a
plaintext broker, nor to a broker whose certificate another CA signed or names another host; the password never
appears in the service's logs (DEBUG level, including paho's), in its status messages or on the wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from service_double import wait_until

from edge_runtime.service.broker import LocalMosquitto, free_port, mosquitto_executable
from edge_runtime.service.config import MqttConfig, TlsConfig
from edge_runtime.service.mqtt import MqttLink

pytestmark = pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")

REPO = Path(__file__).resolve().parent.parent
FRAMES = Path(__file__).parent / "data" / "service" / "frames"
PASSWORDS = {"uav01": "Zq7-s3cr3t-uav01!", "uav02": "Wd4-s3cr3t-uav02!", "ops": "Pk2-s3cr3t-ops!"}
PW_ENV = "TOPICGEO_TEST_MQTT_PASSWORD"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _sign(name: str, cn: str, ca: str, cwd: Path, san: str | None = None) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)
    extra = []
    if san:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", *extra, cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """CA, server certificate for 127.0.0.1, client certificates, a rogue CA, passwords and the ACL."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue_ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj",
                 f"/CN=topicgeo test {ca}", cwd=d)
    _sign("server", "127.0.0.1", "ca", d, san="IP:127.0.0.1")
    _sign("rogue", "127.0.0.1", "rogue_ca", d, san="IP:127.0.0.1")  # right name, wrong CA
    _sign("wronghost", "wrong.example", "ca", d, san="DNS:wrong.example")  # right CA, wrong name
    for user in PASSWORDS:
        _sign(user, user, "ca", d)
    first = True
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", *(["-c"] if first else []), "-b", "passwd", user, password], cwd=d,
                       check=True, capture_output=True, timeout=30)
        first = False
    (d / "acl").write_text("pattern readwrite topicgeo/v1/%u/#\nuser ops\ntopic read topicgeo/v1/#\n")
    return d


def _broker(pki: Path, workdir: Path, cert: str = "server", secure: bool = True) -> LocalMosquitto:
    options = [f"certfile {pki / cert}.crt", f"keyfile {pki / cert}.key"]
    if secure:
        options += [f"cafile {pki / 'ca.crt'}", "require_certificate true", f"acl_file {pki / 'acl'}"]
    return LocalMosquitto(workdir=workdir, allow_anonymous=not secure,
                          password_file=pki / "passwd" if secure else None, listener_options=options)


@pytest.fixture(scope="module")
def secure_broker(pki, tmp_path_factory):
    with _broker(pki, tmp_path_factory.mktemp("secure_broker")) as broker:
        yield broker


class TlsClient:
    """A paho client with a client certificate and password, recording messages and publish acknowledgements."""

    def __init__(self, pki: Path, port: int, user: str, subscribe: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.tls_set(ca_certs=str(pki / "ca.crt"), certfile=str(pki / f"{user}.crt"),
                            keyfile=str(pki / f"{user}.key"))
        self.client.username_pw_set(user, PASSWORDS[user])
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, str] = {}
        self.ready = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, str(rc))
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(subscribe, 1) if subscribe else self.ready.set())
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert self.ready.wait(10), f"{user} did not connect/subscribe"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> str | None:
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return None
        deadline = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(info.mid)

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _link(pki: Path, port: int, user: str = "uav01", **tls: Any) -> MqttLink:
    tls_config = TlsConfig(enabled=True, ca_certs=pki / "ca.crt", certfile=pki / f"{user}.crt",
                           keyfile=pki / f"{user}.key", **tls)
    config = MqttConfig(port=port, username=user, password_env=PW_ENV, tls=tls_config, reconnect_min_s=0.2,
                        reconnect_max_s=0.5)
    return MqttLink(config, f"link-{user}", f"topicgeo/v1/{user}/status", b'{"online": false}',
                    lambda: b'{"online": true}')


# ----------------------------------------------------------------------------------------------------------- ACL
def test_the_acl_confines_a_vehicle_to_its_own_topics(pki, secure_broker):
    port = secure_broker.port
    ops = TlsClient(pki, port, "ops", subscribe="topicgeo/v1/#")
    uav01 = TlsClient(pki, port, "uav01", subscribe="topicgeo/v1/uav02/#")  # granted, but nothing is delivered
    uav02 = TlsClient(pki, port, "uav02")
    try:
        assert uav01.publish("topicgeo/v1/uav01/pose", b"own") == "Success"
        assert uav01.publish("topicgeo/v1/uav02/pose", b"forged qos1") == "Not authorized"
        uav01.publish("topicgeo/v1/uav02/status", b"forged qos0", qos=0)
        assert uav01.publish("topicgeo/v1/fleet/cmd", b"outside the vehicle's tree") == "Not authorized"
        assert uav02.publish("topicgeo/v1/uav02/pose", b"uav02 own") == "Success"
        assert wait_until(lambda: "topicgeo/v1/uav02/pose" in ops.topics(), 10.0)
        time.sleep(0.3)  # anything forged would have arrived by now
        assert sorted(ops.messages) == [("topicgeo/v1/uav01/pose", b"own"), ("topicgeo/v1/uav02/pose", b"uav02 own")]
        assert uav01.messages == []  # may not read another vehicle's topics either
    finally:
        for c in (ops, uav01, uav02):
            c.close()


def test_the_vehicle_service_runs_over_mutual_tls_and_its_own_topics_only(pki, secure_broker, tmp_path, monkeypatch):
    from service_double import DoubleLocator, DoubleLocatorConfig

    from edge_runtime.service.config import load_config
    from edge_runtime.service.sdnotify import Notifier
    from edge_runtime.service.service import Service

    monkeypatch.setenv(PW_ENV, PASSWORDS["uav01"])
    ops = TlsClient(pki, secure_broker.port, "ops", subscribe="topicgeo/v1/#")
    for name in ("bundle", "cache"):
        (tmp_path / name).mkdir()
    results = {}
    try:
        for vehicle in ("uav01", "uav02"):  # uav02 = a service misconfigured with uav01's credentials
            raw = {"vehicle_id": vehicle, "bundle_dir": "bundle", "cache_dir": "cache",
                   "source": {"kind": "image_folder", "path": str(FRAMES)}, "queue": {"maxsize": 2, "mode": "block"},
                   "mqtt": {"port": secure_broker.port, "username": "uav01", "password_env": PW_ENV,
                            "tls": {"enabled": True, "ca_certs": str(pki / "ca.crt"),
                                    "certfile": str(pki / "uav01.crt"), "keyfile": str(pki / "uav01.key")}}}
            (tmp_path / "vehicle.yaml").write_text(yaml.safe_dump(raw))
            service = Service(load_config(tmp_path / "vehicle.yaml"), DoubleLocator, DoubleLocatorConfig(),
                              notifier=Notifier(""))
            service.start()
            connected = service.link.wait_connected(10)
            code = service.run()  # the 3-frame replay ends by itself
            service.close()
            results[vehicle] = (connected, code, service.counters_snapshot()["poses"], service.link.last_error)
        time.sleep(0.3)
        print("service results (connected, exit code, poses, last error):", results)
        assert results["uav01"][:3] == (True, 0, 3)
        assert ops.topics().count("topicgeo/v1/uav01/pose") == 3
        assert "topicgeo/v1/uav01/status" in ops.topics()
        # the misconfigured one ran (its problem is visible to the operator as missing data), but the broker let
        # nothing of it through: no pose, no status on uav02's topics
        assert results["uav02"][2] == 3
        assert not [t for t in ops.topics() if t.startswith("topicgeo/v1/uav02/")]
    finally:
        ops.close()


# ---------------------------------------------------------------------------------------------- TLS enforcement
class Recorder:
    """A TCP listener that records every byte a client sends (a stand-in broker that never answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.data = bytearray()
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            with conn, contextlib.suppress(OSError):
                while chunk := conn.recv(4096):
                    self.data += chunk

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def test_a_tls_link_never_sends_plaintext_and_a_plain_one_would(pki, monkeypatch):
    monkeypatch.setenv(PW_ENV, PASSWORDS["uav01"])
    password = PASSWORDS["uav01"].encode()
    recorder = Recorder()
    link = _link(pki, recorder.port)
    try:
        link.start()
        assert wait_until(lambda: recorder.connections >= 1 and len(recorder.data) > 5, 10)
        assert not link.wait_connected(0.5)
        assert recorder.data[0] == 0x16 and recorder.data[1] == 0x03  # a TLS handshake record, not MQTT CONNECT
        assert password not in recorder.data and b"uav01" not in recorder.data[:2]
    finally:
        link.stop(None)
        recorder.close()

    # the same check catches a link without TLS: its first packet is MQTT CONNECT carrying the password in clear
    plain_recorder = Recorder()
    plain = MqttLink(MqttConfig(port=plain_recorder.port, username="uav01", password_env=PW_ENV), "plain",
                     "topicgeo/v1/uav01/status", b"{}", lambda: b"{}")
    try:
        plain.start()
        assert wait_until(lambda: password in plain_recorder.data, 10)
        assert plain_recorder.data[0] == 0x10  # CONNECT
    finally:
        plain.stop(None)
        plain_recorder.close()


@pytest.mark.parametrize(("case", "insecure", "connects"), [
    ("plaintext broker", False, False),
    ("certificate from another CA", False, False),
    ("certificate from another CA", True, False),  # insecure skips the host name, never the chain
    ("certificate for another host", False, False),
    ("certificate for another host", True, True),
])
def test_the_link_only_connects_to_a_verified_tls_broker(pki, tmp_path, monkeypatch, case, insecure, connects):
    monkeypatch.setenv(PW_ENV, PASSWORDS["uav01"])
    if case == "plaintext broker":
        broker = LocalMosquitto(workdir=tmp_path / "b")
    else:
        cert = "rogue" if "another CA" in case else "wronghost"
        broker = _broker(pki, tmp_path / "b", cert=cert, secure=False)
    with broker:
        link = _link(pki, broker.port, insecure=insecure)
        try:
            link.start()
            assert link.wait_connected(3) is connects
            if not connects:
                assert link.counters["connect_failures"] >= 1 and link.counters["connects"] == 0
        finally:
            link.stop(None)


# ------------------------------------------------------------------------------------------------------ secrets
class RecordingProxy:
    """A loopback TCP forwarder that keeps a copy of every byte in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.wire = bytearray()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self.lock:
                    self.wire += data
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def _run_service(tmp_path: Path, port: int, pki: Path, password: str, log: Path, seconds: float) -> None:
    for name in ("bundle", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    raw = {"vehicle_id": "uav01", "bundle_dir": "bundle", "cache_dir": "cache", "log_level": "DEBUG",
           "source": {"kind": "image_folder", "path": str(FRAMES), "rate_fps": 5.0, "loop": True},
           "telemetry": {"kind": "exif"},
           "mqtt": {"port": port, "username": "uav01", "password_env": PW_ENV, "reconnect_min_s": 0.2,
                    "reconnect_max_s": 0.5, "status_interval_s": 0.5,
                    "tls": {"enabled": True, "ca_certs": str(pki / "ca.crt"), "certfile": str(pki / "uav01.crt"),
                            "keyfile": str(pki / "uav01.key")}}}
    config = tmp_path / "vehicle.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), PW_ENV: password}
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "service_double.py"), "--config", str(config),
                                 "--log-level", "DEBUG"], env=env, stdout=err, stderr=err)
        try:
            time.sleep(seconds)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_password_never_appears_in_logs_status_or_on_the_wire(pki, secure_broker, tmp_path):
    log = tmp_path / "service.log"
    ops = TlsClient(pki, secure_broker.port, "ops", subscribe="topicgeo/v1/#")
    proxy = RecordingProxy(secure_broker.port)
    try:
        # a wrong password first (refused connections are logged as errors), then the right one through a recorder
        _run_service(tmp_path, secure_broker.port, pki, "not-the-" + PASSWORDS["uav01"], log, seconds=4.0)
        _run_service(tmp_path, proxy.port, pki, PASSWORDS["uav01"], log, seconds=5.0)
        assert wait_until(lambda: any(t == "topicgeo/v1/uav01/pose" for t in ops.topics()), 5)
    finally:
        proxy.close()
        ops.close()
    text = log.read_text(errors="replace")
    assert "refused the connection" in text and "Not authorized" in text  # the first run's failures were logged
    assert " DEBUG " in text and "MQTT connected" in text  # the second run logged at DEBUG and connected
    statuses = [json.loads(p) for t, p in ops.messages if t == "topicgeo/v1/uav01/status" and p]
    assert any(s["event"] == "offline" for s in statuses)
    for secret in (PASSWORDS["uav01"], "not-the-" + PASSWORDS["uav01"]):
        assert secret not in text
        assert secret.encode() not in proxy.wire  # TLS: the CONNECT with the password went encrypted
        for _, payload in ops.messages:
            assert secret.encode() not in payload


def test_tls_client_context_requires_verification(pki, monkeypatch):
    """The link's TLS context verifies the chain and (unless ``insecure``) the host name, TLS 1.2 or newer."""
    monkeypatch.setenv(PW_ENV, PASSWORDS["uav01"])
    link = _link(pki, 8883)
    ctx = link.client._ssl_context  # paho's context (no public accessor)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert ctx.minimum_version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
