"""Throw-away MQTT brokers on a loopback port, for tests, benchmarks and the demo.

* :class:`LocalMosquitto`: a mosquitto process (MQTT 5 and 3.1.1). When running as root, mosquitto would switch to
  the ``mosquitto`` user and could not read a private work folder, so it is told to stay root (``user root``); as any
  other user the option does not apply and is left out.
* :class:`LocalAmqtt`: the pure-Python `amqtt <https://pypi.org/project/amqtt/>`_ broker (``pip install
  amqtt==0.12.1``), for machines without mosquitto. It speaks MQTT 3.1.1 only, so its clients must use protocol
  ``v311`` (:attr:`LocalAmqtt.protocol`). It runs as a subprocess of the same interpreter (its ``amqtt`` command line,
  ``python -m amqtt.scripts.broker_script``), so it never shares an event loop or the GIL with the caller; this
  module never imports amqtt.
* :func:`start_local_broker`: mosquitto when it is installed, otherwise amqtt, saying (in the log) which and why.

Both listen on ``127.0.0.1`` only, keep no persistence, accept anonymous clients by default and write their config
and log into their work folder; both have the same interface (``start`` / ``stop`` / ``restart`` / ``running`` /
``port`` / ``protocol``, usable as a context manager) and raise :class:`BrokerError` with the tail of the log when
they cannot start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

import yaml

logger = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "amqtt"]
_B = TypeVar("_B", bound="_LocalBroker")


class BrokerError(RuntimeError):
    """The broker is missing or did not start (the message includes the tail of its log)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_executable() -> str | None:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin), or None."""
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


def amqtt_command() -> list[str] | None:
    """The command line that runs the amqtt broker with this interpreter, or None when amqtt is not installed.

    Looks the package up without importing it (``importlib.util.find_spec``); falls back to an ``amqtt`` script on
    the PATH (another environment's install).
    """
    if importlib.util.find_spec("amqtt") is not None:
        return [sys.executable, "-m", "amqtt.scripts.broker_script"]
    script = shutil.which("amqtt")
    return [script] if script else None


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def mqtt_handshake(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an MQTT 3.1.1 CONNECT to ``host:port`` is accepted (CONNACK return code 0); the session is closed
    with DISCONNECT. A readiness probe that, unlike a bare TCP connect, the broker does not log as a bad client."""
    client_id = b"topicgeo-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4 (3.1.1), clean session, keep-alive 10 s
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            sock.sendall(b"\xe0\x00")
            return connack[0] == 0x20 and connack[3] == 0
    except OSError:
        return False


class _LocalBroker:
    """A broker subprocess on ``127.0.0.1:<port>`` (the shared part of :class:`LocalMosquitto` and
    :class:`LocalAmqtt`). Subclasses set ``name``, ``protocol``, ``log_path`` and implement :meth:`_spawn`."""

    name = "broker"
    #: the MQTT protocol clients must use (the ``mqtt.protocol`` value of the service config)
    protocol: Literal["v5", "v311"] = "v5"
    start_timeout_s = 10.0

    def __init__(self, port: int | None, workdir: str | os.PathLike[str] | None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return port_open(self.host, self.port)

    def _startup_error(self) -> str | None:
        """A start-up failure the process reported without exiting (None: none seen)."""
        return None

    def start(self: _B, timeout: float | None = None) -> _B:
        """Start the broker and wait until its port accepts connections.

        Args:
            timeout: seconds to wait (default :attr:`start_timeout_s`).

        Raises:
            BrokerError: the process exited or the port did not open within ``timeout`` seconds.
        """
        if self.process is not None and self.process.poll() is None:
            return self
        timeout = self.start_timeout_s if timeout is None else timeout
        self.process = self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                code = self.process.returncode
                self.stop()
                raise BrokerError(f"{self.name} exited with {code}: {err.strip()} {self._log_tail()}")
            error = self._startup_error()
            if error is not None:
                self.stop()
                raise BrokerError(f"{self.name} failed to start on {self.host}:{self.port}: {error} {self._log_tail()}")
            if self._ready():
                logger.info("%s on %s:%d (pid %d, MQTT %s)", self.name, self.host, self.port, self.process.pid,
                            "5 and 3.1.1" if self.protocol == "v5" else "3.1.1 only")
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"{self.name} did not open {self.host}:{self.port} within {timeout} s {self._log_tail()}")

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

    def __enter__(self: _B) -> _B:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LocalMosquitto(_LocalBroker):
    """A mosquitto process bound to ``127.0.0.1:<port>`` (MQTT 5 and 3.1.1).

    Args:
        port: default a free port.
        workdir: where the config and log go (default a new temporary folder).
        allow_anonymous: accept clients without credentials.
        password_file: a ``mosquitto_passwd`` file.
        listener_options: extra lines for the listener (``cafile``, ``certfile``, ``keyfile``, ...).

    Raises:
        BrokerError: mosquitto is not installed.
    """

    name = "mosquitto"
    protocol: Literal["v5", "v311"] = "v5"

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
        super().__init__(port, workdir)
        self.executable = exe
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

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([self.executable, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)


class LocalAmqtt(_LocalBroker):
    """The amqtt broker (pure Python, MQTT 3.1.1 only) as a subprocess bound to ``127.0.0.1:<port>``.

    Anonymous clients, no authentication, no persistence (retained messages live in the broker's memory, so a restart
    forgets them, as with :class:`LocalMosquitto`), no ``$SYS`` topics. Its config (``amqtt.yaml``) and log
    (``amqtt.log``, stdout and stderr of the process) go into ``workdir``.

    Args:
        port: default a free port.
        workdir: where the config and log go (default a new temporary folder).

    Raises:
        BrokerError: amqtt is not installed.
    """

    name = "amqtt"
    protocol: Literal["v5", "v311"] = "v311"
    start_timeout_s = 30.0  # the interpreter and amqtt's imports take a few seconds on a small, busy machine

    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None) -> None:
        command = amqtt_command()
        if command is None:
            raise BrokerError(f"amqtt is not installed for {sys.executable} (pip install amqtt==0.12.1)")
        super().__init__(port, workdir)
        self.command = command
        self.conf_path = self.workdir / "amqtt.yaml"
        self._log_offset = 0
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 64}},
            "timeout_disconnect_delay": 0,
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self.conf_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def _ready(self) -> bool:
        return mqtt_handshake(self.host, self.port)

    def _startup_error(self) -> str | None:
        # amqtt logs a failed listener start (port taken, ...) and keeps its event loop running without a listener
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return None
        if "Broker startup failed" not in text and "Traceback (most recent call last)" not in text:
            return None
        last = [line.strip() for line in text.splitlines() if line.strip()]
        return last[-1] if last else "see the log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            return subprocess.Popen([*self.command, "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start_local_broker(
    workdir: str | os.PathLike[str] | None = None,
    prefer: Literal["auto", "mosquitto", "amqtt"] = "auto",
    port: int | None = None,
) -> tuple[LocalMosquitto | LocalAmqtt, BrokerKind]:
    """Start a loopback broker: mosquitto when it is installed, otherwise the embedded amqtt.

    The choice and its reason are logged (INFO for mosquitto, WARNING when falling back to amqtt, which only speaks
    MQTT 3.1.1: clients must use ``broker.protocol``). With ``prefer="auto"`` a mosquitto that is installed but fails
    to start is reported (WARNING, with its error) and amqtt is tried.

    Args:
        workdir: the broker's config and log folder (default a new temporary folder).
        prefer: ``auto``, or ``mosquitto`` / ``amqtt`` to use only that one.
        port: default a free port.

    Returns:
        The started broker and its kind (``"mosquitto"`` or ``"amqtt"``).

    Raises:
        ValueError: ``prefer`` is not one of the three values.
        BrokerError: the requested broker (``auto``: neither broker) is missing or does not start.
    """
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"prefer must be 'auto', 'mosquitto' or 'amqtt', got {prefer!r}")
    mosquitto_error: str | None = None
    if prefer in ("auto", "mosquitto"):
        exe = mosquitto_executable()
        if exe is not None:
            logger.info("broker: mosquitto (%s)%s", exe, " (requested)" if prefer == "mosquitto" else
                        ", it is installed")
            try:
                return LocalMosquitto(port, workdir).start(), "mosquitto"
            except BrokerError as exc:
                if prefer == "mosquitto":
                    raise
                mosquitto_error = f"mosquitto ({exe}) did not start: {exc}"
        elif prefer == "mosquitto":
            raise BrokerError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        else:
            mosquitto_error = "mosquitto is not installed"
    if amqtt_command() is None:
        raise BrokerError(f"no MQTT broker: {mosquitto_error + ' and ' if mosquitto_error else ''}amqtt is not "
                          f"installed for {sys.executable} (apt-get install mosquitto, or pip install amqtt==0.12.1)")
    if mosquitto_error:
        logger.warning("broker: %s; using the embedded amqtt broker instead (MQTT 3.1.1 only)", mosquitto_error)
    else:
        logger.info("broker: amqtt (requested), MQTT 3.1.1 only")
    return LocalAmqtt(port, workdir).start(), "amqtt"
