"""The vendored sd_notify: datagrams on a socket the test binds (path and abstract), no-op when unset."""

from __future__ import annotations

import os
import socket

import pytest

from edge_runtime.service.sdnotify import (
    MAX_VALUE_BYTES,
    Notifier,
    NotifyError,
    notify_address,
    watchdog_interval_s,
)


def bound_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def test_ready_status_watchdog_stopping_on_a_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with bound_socket(path) as server:
        notifier = Notifier(path)
        assert notifier.enabled
        assert notifier.ready("running: onnxruntime fp32")
        assert server.recv(4096) == b"READY=1\nSTATUS=running: onnxruntime fp32\n"
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1\n"
        assert notifier.extend_timeout(1.5, "warming up")
        assert server.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000\nSTATUS=warming up\n"
        assert notifier.stopping("stopping: SIGTERM")
        assert server.recv(4096) == b"STOPPING=1\nSTATUS=stopping: SIGTERM\n"
        notifier.close()


def test_abstract_socket_name_with_at_sign():
    name = f"topicgeo-test-{os.getpid()}"
    with bound_socket("\0" + name) as server:
        notifier = Notifier("@" + name)
        assert notifier.address == "\0" + name
        assert notifier.status("hello")
        assert server.recv(4096) == b"STATUS=hello\n"


def test_environment_variable_is_used_and_unset_is_a_noop(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    silent = Notifier()
    assert not silent.enabled
    assert silent.ready("x") is False and silent.watchdog() is False
    path = str(tmp_path / "env.sock")
    with bound_socket(path) as server:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert Notifier().watchdog()
        assert server.recv(4096) == b"WATCHDOG=1\n"


def test_bad_addresses_and_field_names_are_refused():
    with pytest.raises(NotifyError, match="neither an absolute path"):
        notify_address("relative/notify.sock")
    for name in ("STATUS\nREADY", "A=B", ""):
        with pytest.raises(ValueError, match="field name"):
            Notifier("/nonexistent/notify.sock").send(**{name: "x"})


def test_values_are_sent_as_one_line_of_bounded_length(tmp_path):
    path = str(tmp_path / "notify.sock")
    with bound_socket(path) as server:
        notifier = Notifier(path)
        assert notifier.status("OpenCV(4.9) error: (-215)\n in function 'warp'\n")  # cv2.error texts end in \n
        assert server.recv(4096) == b"STATUS=OpenCV(4.9) error: (-215) in function 'warp'\n"
        assert notifier.stopping("a\r\nb\x00c\td")
        assert server.recv(4096) == b"STOPPING=1\nSTATUS=a b c d\n"
        assert notifier.status("\u00e9" * 5000)  # 10000 UTF-8 bytes
        data = server.recv(65536)
        assert data.startswith(b"STATUS=\xc3\xa9") and data.endswith(b"...\n") and data.count(b"\n") == 1
        assert len(data) <= len(b"STATUS=\n") + MAX_VALUE_BYTES
        data.decode("utf-8")  # not cut inside a character


def test_send_to_a_missing_socket_fails_softly(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.watchdog() is False
    assert "sd_notify" in caplog.text


def test_watchdog_interval_from_the_environment():
    pid = os.getpid()
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == pytest.approx(20.0)
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid)}) == pytest.approx(0.5)
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid + 1)}) is None
    with pytest.raises(NotifyError):
        watchdog_interval_s({"WATCHDOG_USEC": "soon"})
    with pytest.raises(NotifyError):
        watchdog_interval_s({"WATCHDOG_USEC": "0"})


def test_a_receiver_that_stops_reading_cannot_block_the_loop(tmp_path):
    import time

    from edge_runtime.service import sdnotify

    path = str(tmp_path / "stuck.sock")
    with bound_socket(path):  # bound, never read: its datagram queue fills up
        notifier = Notifier(path)
        for _ in range(2000):
            t0 = time.monotonic()
            if not notifier.watchdog():
                break
        else:
            pytest.fail("the receive queue never filled")
        elapsed = time.monotonic() - t0
        assert sdnotify.SEND_TIMEOUT_S * 0.8 <= elapsed < sdnotify.SEND_TIMEOUT_S + 1.0
