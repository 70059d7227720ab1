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
import re
import socket
import threading
from collections.abc import Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.5

#: a value longer than this (UTF-8 bytes) is cut: systemd reads notify datagrams into a PIPE_BUF (4096 bytes) buffer
#: and ignores a message that does not fit, so two long fields must still leave room for the rest
MAX_VALUE_BYTES = 1024

_CONTROL_RUN = re.compile(r"\s*[\x00-\x1f\x7f]+\s*")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_]+")


def one_line(value: object, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """``value`` as one notify line: control characters (newlines, tabs, NUL) become one space each run, the ends are
    trimmed and the text is cut to ``max_bytes`` UTF-8 bytes (ending in ``...``).

    Exception texts (OpenCV's end in a newline) reach ``STATUS=``; a newline would start a new ``KEY=VALUE`` field.
    """
    text = _CONTROL_RUN.sub(" ", str(value)).strip()
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."


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


def _datagram(fields: Mapping[str, str | int]) -> bytes:
    """``KEY=VALUE\\n`` lines of a notify message."""
    if not fields:
        raise ValueError("a notify message needs at least one field")
    lines = []
    for key, value in fields.items():
        if not _FIELD_NAME.fullmatch(key):
            raise ValueError(f"notify field name {key!r} must be [A-Za-z0-9_]+")
        lines.append(f"{key}={one_line(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


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

        Values are made one line (:func:`one_line`): a status text is never a reason to fail.

        Returns:
            True when the datagram was sent; False when disabled or the send failed (logged).

        Raises:
            ValueError: no field, or a field name that is not ``[A-Za-z0-9_]+`` (a programming error).
        """
        if self.address is None:
            return False
        data = _datagram(fields)
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
