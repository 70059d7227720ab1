"""A throw-away mosquitto broker on a loopback port, for tests, benchmarks and the demo.

The broker listens on ``127.0.0.1`` only, keeps no persistence and writes its log into its work folder. When running
as root, mosquitto would switch to the ``mosquitto`` user and could not read a private work folder, so it is told to
stay root (``user root``); as any other user the option does not apply and is left out.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start (the message includes the tail of its log)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_executable() -> str | None:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin), or None."""
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalMosquitto:
    """A mosquitto process bound to ``127.0.0.1:<port>``.

    Args:
        port: default a free port.
        workdir: where the config and log go (default a new temporary folder).
        allow_anonymous: accept clients without credentials.
        password_file: a ``mosquitto_passwd`` file.
        listener_options: extra lines for the listener (``cafile``, ``certfile``, ``keyfile``, ...).
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        allow_anonymous: bool = True,
        password_file: str | os.PathLike[str] | None = None,
        listener_options: Sequence[str] = (),
    ) -> None:
        exe = mosquitto_executable()
        if exe is None:
            raise BrokerError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        self.executable = exe
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} {self.host}", *listener_options,
                 f"allow_anonymous {'true' if allow_anonymous else 'false'}", "persistence false",
                 f"log_dest file {self.log_path}", "log_type all" if os.environ.get("MOSQUITTO_DEBUG") else
                 "log_type error"]
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> LocalMosquitto:
        """Start the broker and wait until its port accepts connections.

        Raises:
            BrokerError: the process exited or the port did not open within ``timeout`` seconds.
        """
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen([self.executable, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {err.strip()} {self._log_tail()}")
            if port_open(self.host, self.port):
                logger.info("mosquitto on %s:%d (pid %d)", self.host, self.port, self.process.pid)
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not open {self.host}:{self.port} within {timeout} s {self._log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def _log_tail(self) -> str:
        try:
            return "(log: " + " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:]) + ")"
        except OSError:
            return ""

    def __enter__(self) -> LocalMosquitto:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
