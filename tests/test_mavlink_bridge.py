"""The MAVLink bridge against a real MAVLink peer on loopback (UDP; plus a pty for serial and a TCP server).

The peer is a pymavlink MAVLink 2 endpoint playing the flight controller: it sends HEARTBEAT, ATTITUDE,
GLOBAL_POSITION_INT and DISTANCE_SENSOR with boot-time stamps, receives the bridge's packets and decodes them. All
loops are bounded by deadlines; every socket is on 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("pymavlink")
from pymavlink.dialects.v20 import all as mavlink

from edge_runtime.mavlink import MavlinkBridge, MavlinkConfig
from edge_runtime.mavlink.encode import gps_week_ms
from edge_runtime.types import LocateResult

MAV_AUTOPILOT_PX4 = 12
MAV_AUTOPILOT_ARDUPILOTMEGA = 3
MAV_TYPE_QUADROTOR = 2


def wait_until(pred: Callable[[], bool], timeout: float = 3.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


class FakeAutopilot:
    """A flight controller on a loopback socket (UDP by default, or any ``send_bytes``/``recv_bytes`` pair)."""

    def __init__(self, bridge_addr=None, sysid: int = 1, compid: int = 1, autopilot: int = MAV_AUTOPILOT_PX4,
                 send_bytes=None, recv_bytes=None) -> None:
        self.autopilot = autopilot
        self.enc = mavlink.MAVLink(None, srcSystem=sysid, srcComponent=compid)
        self.dec = mavlink.MAVLink(None)
        self.dec.robust_parsing = True
        self.boot_unix = time.time() - 250.0  # booted 250 s ago
        self.received: list[tuple[float, object]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hb = threading.Event()
        if send_bytes is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.settimeout(0.05)
            self._send_bytes = lambda b: self.sock.sendto(b, bridge_addr)
            self._recv_bytes = self._udp_recv
        else:
            self.sock = None
            self._send_bytes, self._recv_bytes = send_bytes, recv_bytes
        self._threads = [threading.Thread(target=self._rx_loop, daemon=True),
                         threading.Thread(target=self._hb_loop, daemon=True)]
        for t in self._threads:
            t.start()

    def _udp_recv(self):
        try:
            return self.sock.recvfrom(65535)[0]
        except (TimeoutError, OSError):
            return b""

    def _rx_loop(self):
        while not self._stop.is_set():
            data = self._recv_bytes()
            if not data:
                continue
            now = time.time()
            for m in self.dec.parse_buffer(bytearray(data)) or []:
                if m.get_type() != "BAD_DATA":
                    with self._lock:
                        self.received.append((now, m))

    def _hb_loop(self):
        while not self._stop.is_set():
            if self._hb.is_set():
                self.heartbeat()
            self._stop.wait(0.1)

    def heartbeats(self, on: bool) -> None:
        if on:
            self._hb.set()
        else:
            self._hb.clear()

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        if self.sock is not None:
            self.sock.close()

    # ------------------------------------------------------------------------------------------------ send
    def pack(self, msg) -> bytes:
        buf = msg.pack(self.enc)
        self.enc.seq = (self.enc.seq + 1) % 256
        return bytes(buf)

    def send(self, msg) -> None:
        self._send_bytes(self.pack(msg))

    def boot_ms(self, unix_t: float) -> int:
        return round((unix_t - self.boot_unix) * 1000.0)

    def heartbeat(self):
        self.send(self.enc.heartbeat_encode(MAV_TYPE_QUADROTOR, self.autopilot, 0, 0, 4))

    def attitude(self, t, roll, pitch, yaw):
        return self.enc.attitude_encode(self.boot_ms(t), roll, pitch, yaw, 0.0, 0.0, 0.0)

    def global_position(self, t, relative_alt_m, hdg_deg):
        return self.enc.global_position_int_encode(self.boot_ms(t), 368000000, -1197000000, 500_000,
                                                   round(relative_alt_m * 1000), 0, 0, 0, round(hdg_deg * 100))

    def distance(self, t, cm, orientation=25):
        return self.enc.distance_sensor_encode(self.boot_ms(t), 20, 12000, cm, 0, 0, orientation, 255)

    def messages(self, kind: str) -> list:
        with self._lock:
            return [(t, m) for t, m in self.received if m.get_type() == kind]


@pytest.fixture
def rig():
    """A started bridge (udpin on an ephemeral loopback port) and a fake autopilot talking to it."""
    made = []

    def make(autopilot_kind: int = MAV_AUTOPILOT_PX4, **cfg):
        raw = {"autopilot": "px4", "connection": "udpin:127.0.0.1:0", "link_timeout_s": 0.5,
               "reconnect_interval_s": 0.3, "heartbeat_rate_hz": 5.0, **cfg}
        bridge = MavlinkBridge(MavlinkConfig.from_dict(raw))
        bridge.start()
        fc = FakeAutopilot(bridge.local_address, autopilot=autopilot_kind)
        made.append((bridge, fc))
        fc.heartbeats(True)
        assert wait_until(lambda: bridge.link_status()["up"]), bridge.link_status()
        return bridge, fc

    yield make
    for bridge, fc in made:
        fc.close()
        bridge.stop()


def located(capture_time: float, **kw) -> LocateResult:
    base = {"ok": True, "map_id": "sjer", "lat": 37.1086321, "lon": -119.7332153, "std_m": (1.5, 2.5),
            "altitude_agl_m": 118.0, "capture_time": capture_time}
    base.update(kw)
    return LocateResult(**base)


# -------------------------------------------------------------------------------------------------- tests
def test_px4_fix_fields_units_and_capture_time(rig):
    bridge, fc = rig(fix_altitude="ground_plus_agl", ground_elevation_amsl_m=92.0, ground_elevation_std_m=4.0,
                     sensor_id=3, map_accuracy_m=2.0)
    # Our heartbeat: onboard controller, no autopilot, companion component id.
    assert wait_until(lambda: fc.messages("HEARTBEAT"))
    hb = fc.messages("HEARTBEAT")[0][1]
    assert (hb.type, hb.autopilot, hb.get_srcSystem(), hb.get_srcComponent()) == (18, 8, 1, 191)
    # The priors it needs were requested (MAV_CMD_SET_MESSAGE_INTERVAL, microseconds).
    assert wait_until(lambda: len(fc.messages("COMMAND_LONG")) >= 3)
    asks = {round(m.param1): m.param2 for _, m in fc.messages("COMMAND_LONG") if m.command == 511}
    assert asks == {30: 50_000, 33: 100_000, 132: 100_000}

    capture = time.time() - 0.15
    before = time.time()
    assert bridge.publish_fix(located(capture))
    after = time.time()
    assert wait_until(lambda: fc.messages("GLOBAL_POSITION_SENSOR"))
    (arrival, m), = fc.messages("GLOBAL_POSITION_SENSOR")
    assert (m.lat, m.lon) == (371086321, -1197332153)  # degE7
    assert (m.id, m.source, m.flags, m.target_system, m.target_component) == (3, 2, 0, 1, 1)
    assert m.time_usec - m.processing_time == round(capture * 1e6)  # capture time, exact to the microsecond
    assert before * 1e6 - 1 <= m.time_usec <= after * 1e6 + 1  # transmission time
    assert m.processing_time == pytest.approx(150_000, abs=20_000)  # ~150 ms latency, in microseconds
    assert m.alt == pytest.approx(92.0 + 118.0, abs=1e-4)  # metres AMSL (float32)
    assert math.isnan(m.alt_ellipsoid)
    assert m.eph == pytest.approx(math.hypot(2.5, 2.0), rel=1e-6)  # larger axis (+) map error
    assert m.epv == pytest.approx(math.hypot(4.0, 0.05 * 118.0), rel=1e-6)
    assert arrival - after < 0.5
    st = bridge.link_status()
    assert st["fixes_sent"] == 1 and st["autopilot_detected"] == "px4" and not st["autopilot_mismatch"]
    assert st["last_fix_latency_ms"] == pytest.approx(150.0, abs=20.0)


def test_ardupilot_gps_input(rig):
    bridge, fc = rig(MAV_AUTOPILOT_ARDUPILOTMEGA, autopilot="ardupilot", fix_altitude="ground_plus_agl",
                     ground_elevation_amsl_m=412.5, ground_elevation_std_m=3.0, map_accuracy_m=0.0)
    capture = time.time() - 0.05
    assert bridge.publish_fix(located(capture, std_m=(0.8, 0.6), altitude_agl_m=60.0))
    assert not bridge.publish_fix(located(time.time() - 0.01, altitude_agl_m=None))  # no altitude: not sent
    assert wait_until(lambda: fc.messages("GPS_INPUT"))
    time.sleep(0.1)
    (_, m), = fc.messages("GPS_INPUT")
    assert m.time_usec == round(capture * 1e6)  # capture time, not publish time
    assert (m.time_week, m.time_week_ms) == gps_week_ms(capture, 18)
    assert (m.lat, m.lon, m.fix_type, m.satellites_visible, m.yaw) == (371086321, -1197332153, 3, 0, 0)
    assert m.ignore_flags == 0b0011_1110  # hdop, vdop, horizontal + vertical velocity, speed accuracy
    assert m.alt == pytest.approx(472.5, abs=1e-4)  # AMSL
    assert m.horiz_accuracy == pytest.approx(0.8, rel=1e-6)
    assert m.vert_accuracy == pytest.approx(math.hypot(3.0, 3.0), rel=1e-6)
    assert m.hdop == 65535.0 and m.vdop == 65535.0
    assert bridge.link_status()["fixes_dropped"]["no_altitude"] == 1


def test_no_fix_nothing_sent_and_rate_limit(rig):
    bridge, fc = rig(max_rate_hz=5.0)
    t_start = time.time()
    sent = []
    for k in range(24):  # a 20 Hz camera for 1.2 s; every third frame failed to locate
        capture = time.time()
        result = located(capture) if k % 3 else LocateResult.failure("no match", capture_time=capture)
        if bridge.publish_fix(result):
            sent.append(capture)
        time.sleep(0.05)
    assert not bridge.publish_fix(located(time.time() - 2.0))  # stale
    assert not bridge.publish_fix(located(time.time() + 5.0))  # the clocks disagree
    assert not bridge.publish_fix(located(time.time(), std_m=None))
    assert wait_until(lambda: len(fc.messages("GLOBAL_POSITION_SENSOR")) == len(sent))
    time.sleep(0.1)
    got = fc.messages("GLOBAL_POSITION_SENSOR")
    assert len(got) == len(sent)
    captures = np.array([(m.time_usec - m.processing_time) / 1e6 for _, m in got])
    np.testing.assert_allclose(captures, sent, atol=1e-6)  # exactly the frames accepted, in order
    assert np.all(np.diff(captures) >= 0.9 * 0.2 - 1e-6)  # capture spacing >= the rate limit
    elapsed = time.time() - t_start
    assert 4 <= len(sent) <= 5.0 * elapsed / 0.9 + 1  # about 5 Hz, never more
    arrivals = np.array([t for t, _ in got])
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= 5.0 / 0.9 + 0.5  # wire rate too
    dropped = bridge.link_status()["fixes_dropped"]
    assert dropped["no_fix"] == 8 and dropped["rate"] == 16 - len(sent)
    assert (dropped["stale"], dropped["future"], dropped["no_accuracy"]) == (1, 1, 1)


def test_priors_time_aligned_despite_bursty_arrival(rig):
    bridge, fc = rig(attitude_rate_hz=0.0)
    now = time.time()
    # 1 s of history at 50 Hz arrives in a single burst at the end: arrival time says nothing about sample time.
    # roll ramps at 2 deg/s, yaw crosses south (+-180, wraps), relative_alt climbs at 0.5 m/s.
    roll = lambda t: math.radians(2.0 * (t - now))  # noqa: E731
    yaw = lambda t: math.radians(179.0 + 2.0 * (t - now + 1.0))  # noqa: E731
    alt = lambda t: 50.0 + 0.5 * (t - now + 1.0)  # noqa: E731
    for t in now - 1.0 + 0.02 * np.arange(50):
        fc.send(fc.attitude(t, roll(t), math.radians(3.0), yaw(t)))
        fc.send(fc.global_position(t, alt(t), 0.0))
        fc.send(fc.distance(t, 4000, orientation=24))  # upward-looking: rejected
    # One sample sent live (stamped as it leaves) bounds the boot-clock offset to the loopback latency.
    t = time.time()
    fc.send(fc.attitude(t, roll(t), math.radians(3.0), yaw(t)))
    assert wait_until(lambda: bridge.link_status()["received"]["ATTITUDE"] >= 51)
    for q in (now - 0.901, now - 0.5, now - 0.2345):
        p = bridge.latest_priors(q)
        assert p is not None and p.source == "mavlink" and p.capture_time == q
        # The offset estimate carries the live sample's latency (~1 ms; up to 50 ms on a loaded machine): 0.1 deg at
        # 2 deg/s and 0.025 m at 0.5 m/s. Stamping samples on arrival would be off by up to 2 deg and 0.5 m.
        assert p.roll_deg == pytest.approx(math.degrees(roll(q)), abs=0.1)
        assert p.pitch_deg == pytest.approx(3.0, abs=1e-4)
        yaw_expected = (math.degrees(yaw(q)) + 180.0) % 360.0 - 180.0
        assert abs((p.yaw_deg - yaw_expected + 180.0) % 360.0 - 180.0) < 0.1
        assert p.altitude_agl_m == pytest.approx(alt(q), abs=0.025)
    assert bridge.latest_priors(now - 30.0) is None  # outside the history
    st = bridge.link_status()
    assert st["rangefinder_rejected"] == 50 and st["received"]["DISTANCE_SENSOR"] == 50


def test_rangefinder_tilt_corrected_agl(rig):
    bridge, fc = rig()
    now = time.time()
    for k in range(6):
        t = now - 0.1 * (5 - k)
        fc.send(fc.attitude(t, math.radians(12.0), math.radians(-6.0), 0.3))
        fc.send(fc.global_position(t, 75.0, 17.0))
        fc.send(fc.distance(t, 3550))  # 35.5 m down the body z axis
    assert wait_until(lambda: bridge.link_status()["received"]["DISTANCE_SENSOR"] == 6)
    p = bridge.latest_priors(now - 0.25)
    assert p.altitude_agl_m == pytest.approx(35.5 * math.cos(math.radians(12.0)) * math.cos(math.radians(-6.0)),
                                             abs=1e-6)


def test_bad_and_truncated_packets_are_ignored_and_counted(rig):
    bridge, fc = rig()
    rng = np.random.default_rng(11)
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stray.bind(("127.0.0.1", 0))
    stray.settimeout(0.05)
    try:
        now = time.time()
        bad = 0
        for _ in range(5):  # random bytes, with start markers sprinkled in, from another sender
            junk = bytearray(rng.integers(0, 256, 80, dtype=np.uint8).tobytes())
            junk[0], junk[17], junk[40] = 0xFD, 0xFE, 0xFD
            stray.sendto(bytes(junk), bridge.local_address)
            bad += 1
        good = fc.pack(fc.attitude(now - 0.2, math.radians(7.0), 0.0, 0.0))
        fc._send_bytes(good[:12])  # truncated
        corrupt = bytearray(fc.pack(fc.attitude(now - 0.1, math.radians(45.0), 0.0, 0.0)))
        corrupt[14] ^= 0xFF  # a payload byte: CRC mismatch
        fc._send_bytes(bytes(corrupt))
        bad += 2
        fc.send(fc.attitude(now - 0.1, math.radians(7.0), 0.0, 0.0))  # good packets after the bad ones decode
        fc.send(fc.attitude(now, math.radians(7.0), 0.0, 0.0))
        assert wait_until(lambda: bridge.link_status()["received"]["ATTITUDE"] == 2)
        time.sleep(0.1)
        st = bridge.link_status()
        assert st["parser"]["bad_datagrams"] == bad and st["parser"]["bad_packets"] >= bad
        assert st["parser"]["truncated"] >= 1
        assert st["up"] and st["received"]["ATTITUDE"] == 2
        assert bridge.latest_priors(now - 0.05).roll_deg == pytest.approx(7.0, abs=1e-4)  # 45 deg never got in
        # The stray sender never becomes the destination: nothing is sent to it, the autopilot still hears us.
        n_hb = len(fc.messages("HEARTBEAT"))
        time.sleep(0.5)
        with pytest.raises(TimeoutError):
            stray.recvfrom(65535)
        assert len(fc.messages("HEARTBEAT")) > n_hb
        assert bridge.publish_fix(located(time.time()))
    finally:
        stray.close()


def test_link_loss_detected_and_recovered(rig):
    bridge, fc = rig()
    fc.heartbeats(False)
    assert wait_until(lambda: not bridge.link_status()["up"], timeout=2.0)
    st = bridge.link_status()
    assert st["state"] == "down" and st["link_losses"] == 1 and st["last_heartbeat_age_s"] >= 0.5
    assert not bridge.publish_fix(located(time.time()))
    assert bridge.link_status()["fixes_dropped"]["link_down"] == 1
    time.sleep(0.7)  # down for a while: the transport is reopened every reconnect_interval_s (0.3 s)
    st = bridge.link_status()
    assert st["reconnects"] >= 2 and st["down_for_s"] >= 0.7 and not st["up"]
    fc.heartbeats(True)
    assert wait_until(lambda: bridge.link_status()["up"], timeout=3.0)
    assert bridge.publish_fix(located(time.time()))
    assert wait_until(lambda: fc.messages("GLOBAL_POSITION_SENSOR"))
    st = bridge.link_status()
    assert st["state"] == "up" and st["link_losses"] == 1 and st["down_for_s"] is None


def test_autopilot_mismatch_is_reported(rig):
    bridge, _ = rig(MAV_AUTOPILOT_ARDUPILOTMEGA)  # the config says px4
    st = bridge.link_status()
    assert st["autopilot_detected"] == "ardupilot" and st["autopilot_mismatch"]


def test_serial_link_over_a_pty():
    master, slave = os.openpty()
    path = os.ttyname(slave)
    bridge = MavlinkBridge(MavlinkConfig.from_dict({
        "autopilot": "px4", "connection": f"serial:{path}", "baud": 921600, "heartbeat_rate_hz": 5.0}))

    def recv():
        import select

        r, _, _ = select.select([master], [], [], 0.05)
        return os.read(master, 4096) if r else b""

    fc = FakeAutopilot(send_bytes=lambda b: os.write(master, b), recv_bytes=recv)
    try:
        bridge.start()
        os.write(master, b"\x00garbage\xfe\x01" * 3)  # noise on the line before the first packet
        fc.heartbeats(True)
        assert wait_until(lambda: bridge.link_status()["up"])
        fc.send(fc.attitude(time.time(), math.radians(-4.0), 0.0, 0.0))
        assert wait_until(lambda: bridge.link_status()["received"]["ATTITUDE"] == 1)
        assert bridge.link_status()["parser"]["bad_packets"] >= 1
        assert bridge.latest_priors(None).roll_deg == pytest.approx(-4.0, abs=1e-4)
        assert bridge.publish_fix(located(time.time()))
        assert wait_until(lambda: fc.messages("GLOBAL_POSITION_SENSOR"))
        assert wait_until(lambda: fc.messages("HEARTBEAT"))
    finally:
        fc.close()
        bridge.stop()
        os.close(master)
        os.close(slave)


def test_tcp_link_reconnects_after_the_server_drops_it():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(2)
    server.settimeout(3.0)
    port = server.getsockname()[1]
    bridge = MavlinkBridge(MavlinkConfig.from_dict({
        "autopilot": "ardupilot", "connection": f"tcp:127.0.0.1:{port}", "fix_altitude": "ground_plus_agl",
        "ground_elevation_amsl_m": 0.0, "reconnect_interval_s": 0.2, "link_timeout_s": 0.5}))
    conns = []
    try:
        bridge.start()
        for round_ in range(2):
            conn, _ = server.accept()
            conn.settimeout(0.05)
            conns.append(conn)

            def recv(c=conn):
                try:
                    return c.recv(4096)
                except (TimeoutError, OSError):
                    return b""

            fc = FakeAutopilot(send_bytes=conn.sendall, recv_bytes=recv, autopilot=MAV_AUTOPILOT_ARDUPILOTMEGA)
            fc.heartbeat()
            assert wait_until(lambda: bridge.link_status()["up"])
            assert bridge.publish_fix(located(time.time() + 0.01 * round_))
            assert wait_until(lambda fc=fc: fc.messages("GPS_INPUT"))
            fc.close()
            conn.close()  # the server drops the client: EOF, link down, reopened
            assert wait_until(lambda: not bridge.link_status()["up"], timeout=2.0)
        st = bridge.link_status()
        assert st["fixes_sent"] == 2 and st["transport_errors"] >= 1 and st["reconnects"] >= 1
    finally:
        bridge.stop()
        for c in conns:
            c.close()
        server.close()
