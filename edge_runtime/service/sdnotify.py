"""The systemd notify protocol, vendored (no libsystemd): newline-separated ``KEY=VALUE`` datagrams to NOTIFY_SOCKET.

Follows systemd's self-contained reference (``man/notify-selfcontained-example.py``, MIT-0) and sd_notify(3):
``NOTIFY_SOCKET`` is an absolute ``AF_UNIX`` path or an abstract socket name written with a leading ``@``; when it
is unset (not started by systemd, or ``Type=`` is not ``notify``) every call is a no-op that returns False.
``WATCHDOG_USEC`` (and ``WATCHDOG_PID`` when set) tell whether and how often ``WATCHDOG=1`` is expected: systemd
asks for a ping about every half interval (sd_watchdog_enabled(3)).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.5


class NotifyError(ValueError):
    """A NOTIFY_SOCKET / WATCHDOG_USEC value this module cannot use (names the variable and the value)."""


def notify_address(value: str) -> str:
    """The ``AF_UNIX`` address for a ``NOTIFY_SOCKET`` value (``@name`` -> ``\\0name``).

    Raises:
        NotifyError: for relative paths and unsupported schemes (``vsock:``).
    """
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifyError(f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an abstract socket ('@name')")


def watchdog_interval_s(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd asked for, in seconds, or None when the watchdog is off or not for this process.

    Raises:
        NotifyError: ``WATCHDOG_USEC`` / ``WATCHDOG_PID`` are not positive integers.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    try:
        value = int(usec)
        owner = int(wpid) if wpid else None
    except ValueError as exc:
        raise NotifyError(f"WATCHDOG_USEC={usec!r} / WATCHDOG_PID={wpid!r} must be integers") from exc
    if value <= 0:
        raise NotifyError(f"WATCHDOG_USEC={usec!r} must be > 0")
    if owner is not None and owner != (os.getpid() if pid is None else pid):
        return None
    return value / 1e6


class Notifier:
    """Sends notify messages; a no-op (every method returns False) when ``NOTIFY_SOCKET`` is unset.

    Args:
        socket_path: overrides ``NOTIFY_SOCKET`` (tests); None reads the environment.

    Raises:
        NotifyError: ``NOTIFY_SOCKET`` is set to something that is not a usable address.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        value = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = notify_address(value) if value else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failures = 0

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keyword names are the keys, e.g. ``send(READY=1, STATUS="ok")``).

        Returns:
            True when the datagram was sent; False when disabled or the send failed (logged).
        """
        if self.address is None:
            return False
        if not fields:
            raise ValueError("a notify message needs at least one field")
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"notify field {key} must be one line, got {text!r}")
            lines.append(f"{key}={text}")
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    # a receiver that stops reading (its queue holds net.unix.max_dgram_qlen datagrams) must not
                    # block the processing loop forever
                    self._sock.settimeout(SEND_TIMEOUT_S)
                    self._sock.connect(self.address)
                self._sock.sendall(data)
            except OSError as exc:
                self._failures += 1
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    logger.warning("sd_notify to %r failed (%d so far): %s", self.address, self._failures, exc)
                return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with a ``STATUS=`` line (what ``systemctl status`` shows)."""
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        """Update ``STATUS=``."""
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: call from the processing loop, only while the pipeline is healthy."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str) -> bool:
        """``STOPPING=1`` with a status line."""
        return self.send(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds: float, status: str) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for more start-up (or stop) time, e.g. while engines build."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1e6), STATUS=status)

    def close(self) -> None:
        """Close the socket (a later send reopens it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
