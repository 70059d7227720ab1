"""MAVLink transports (UDP, TCP, serial) and a counting packet parser.

The transports move bytes only; :class:`PacketParser` turns them into pymavlink messages and counts what it throws
away. UDP is parsed datagram by datagram with a fresh parser each time, so a truncated or corrupt datagram can never
swallow the start of the next one (a byte-stream parser would wait for the missing bytes and eat the next packet);
TCP and serial are byte streams parsed continuously, resynchronising on the next start marker.

pymavlink is imported lazily (:func:`load_dialect`) so that ``edge_runtime`` works without the ``mavlink`` extra.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.mavlink.config import Endpoint

logger = logging.getLogger(__name__)

#: pymavlink dialect used to decode and encode: ``all`` is a superset of common, ardupilotmega and development, so
#: autopilot-specific messages decode instead of being counted as unknown. GLOBAL_POSITION_SENSOR (296) and GPS_INPUT
#: (232) are in MAVLink common (pymavlink 2.4.50) with the same CRC extras in ``all``.
DIALECT = "all"


class TransportError(OSError):
    """The transport is broken (closed by the peer, device gone); the bridge reopens it later."""


def load_dialect() -> Any:
    """The pymavlink MAVLink 2 dialect module (``pymavlink.dialects.v20.all``).

    Raises:
        ImportError: pymavlink is not installed, with the install hint.
    """
    try:
        from pymavlink.dialects.v20 import all as dialect
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the MAVLink bridge needs pymavlink: pip install 'topicgeo-edge[mavlink]' "
                          "(or pip install pymavlink)") from exc
    return dialect


# -------------------------------------------------------------------------------------------------- parser
@dataclass
class ParserCounts:
    """What the parser saw. ``bad_packets``: corrupt (CRC, bad prefix / garbage run, bad flags) or truncated;
    ``bad_datagrams``: UDP datagrams that held at least one bad packet; ``unknown_messages``: well-framed packets
    with a message id the dialect does not know (their CRC cannot be checked)."""

    packets: int = 0
    bad_packets: int = 0
    bad_datagrams: int = 0
    truncated: int = 0
    unknown_messages: int = 0
    bytes_received: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready copy."""
        return dict(self.__dict__)


@dataclass
class PacketParser:
    """Decodes MAVLink 1/2 bytes with pymavlink's robust parser and counts the rejects.

    Args:
        dialect: the pymavlink dialect module (:func:`load_dialect`).
        datagram: parse each :meth:`feed` on its own (UDP) instead of as a continuous stream.
    """

    dialect: Any
    datagram: bool
    counts: ParserCounts = field(default_factory=ParserCounts)
    _stream: Any = None

    def _new(self) -> Any:
        mav = self.dialect.MAVLink(None)
        mav.robust_parsing = True
        return mav

    def feed(self, data: bytes) -> list[Any]:
        """Decode ``data``; returns the good messages in order (bad and unknown ones are only counted)."""
        self.counts.bytes_received += len(data)
        if self.datagram:
            mav = self._new()
        else:
            if self._stream is None:
                self._stream = self._new()
            mav = self._stream
        out: list[Any] = []
        bad_before = self.counts.bad_packets
        msgs = mav.parse_buffer(bytearray(data)) or []
        for m in msgs:
            kind = m.get_type()
            if kind == "BAD_DATA":
                self.counts.bad_packets += 1
                continue
            if kind.startswith("UNKNOWN_"):  # pymavlink's MAVLink_unknown: framed, id not in the dialect
                self.counts.unknown_messages += 1
                continue
            self.counts.packets += 1
            out.append(m)
        if self.datagram:
            if mav.buf_len() > 0:  # a packet cut short by the end of the datagram
                self.counts.truncated += 1
                self.counts.bad_packets += 1
            if self.counts.bad_packets > bad_before:
                self.counts.bad_datagrams += 1
        return out

    def reset_stream(self) -> None:
        """Forget a partial stream packet (after the transport reopened)."""
        self._stream = None


# ---------------------------------------------------------------------------------------------- transports
class Transport:
    """Non-blocking byte transport. ``read`` returns ``[(bytes, source_address)]`` (empty when nothing waits)."""

    datagram = False

    def open(self) -> None:
        """Open (or reopen) the transport. Raises OSError when it cannot."""
        raise NotImplementedError

    def close(self) -> None:
        """Close; safe to call twice."""
        raise NotImplementedError

    def fileno(self) -> int:
        """File descriptor for ``select`` (-1 when closed)."""
        raise NotImplementedError

    def read(self) -> list[tuple[bytes, Any]]:
        """All chunks waiting now. Raises TransportError when the transport broke."""
        raise NotImplementedError

    def write(self, data: bytes) -> bool:
        """Send ``data``; False when there is no destination yet or the send failed."""
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        """Whether the transport is open."""
        return self.fileno() >= 0

    @property
    def has_destination(self) -> bool:
        """Whether :meth:`write` has somewhere to send to."""
        return self.is_open

    def describe(self) -> str:
        """Human-readable endpoint for logs and status."""
        raise NotImplementedError


class _SocketTransport(Transport):
    """A transport over one socket (``_sock``, None when closed)."""

    _sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1


class UdpTransport(_SocketTransport):
    """UDP: ``listen`` binds HOST:PORT and answers the peer set with :meth:`set_peer`; otherwise sends to HOST:PORT
    from an ephemeral port."""

    datagram = True

    def __init__(self, host: str, port: int, listen: bool) -> None:
        self.host, self.port, self.listen = host, port, listen
        self._sock: socket.socket | None = None
        self.peer: tuple[str, int] | None = None if listen else (host, port)

    def open(self) -> None:
        self.close()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self.listen:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
                self.port = sock.getsockname()[1]  # keep the port an ephemeral bind picked across reopens
                self.peer = None
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock


    @property
    def local_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the socket is bound to (None before the first send of a udpout socket)."""
        if self._sock is None:
            return None
        try:
            return self._sock.getsockname()[:2]
        except OSError:
            return None

    @property
    def has_destination(self) -> bool:
        return self._sock is not None and self.peer is not None

    def set_peer(self, address: tuple[str, int]) -> None:
        """Where a listening socket sends (the autopilot's address)."""
        if self.listen:
            self.peer = (address[0], address[1])

    def read(self) -> list[tuple[bytes, Any]]:
        out: list[tuple[bytes, Any]] = []
        if self._sock is None:
            return out
        while True:
            try:
                data, addr = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return out
            except ConnectionRefusedError:  # ICMP port unreachable of an earlier send (udpout, nobody listening)
                continue
            except OSError as exc:
                raise TransportError(f"UDP receive on {self.describe()} failed: {exc}") from exc
            out.append((data, addr))

    def write(self, data: bytes) -> bool:
        if self._sock is None or self.peer is None:
            return False
        try:
            self._sock.sendto(data, self.peer)
        except OSError as exc:
            logger.debug("UDP send to %s failed: %s", self.peer, exc)
            return False
        return True

    def describe(self) -> str:
        return f"{'udpin' if self.listen else 'udpout'}:{self.host}:{self.port}"


class TcpTransport(_SocketTransport):
    """A TCP client (ArduPilot SITL and mavlink-router serve MAVLink on TCP)."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 2.0) -> None:
        self.host, self.port, self.connect_timeout_s = host, port, connect_timeout_s
        self._sock: socket.socket | None = None

    def open(self) -> None:
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        sock.settimeout(0.5)  # bounds a blocked send; reads happen only after select() says readable
        self._sock = sock


    def read(self) -> list[tuple[bytes, Any]]:
        if self._sock is None:
            return []
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return []
        except OSError as exc:
            raise TransportError(f"TCP receive from {self.describe()} failed: {exc}") from exc
        if not data:
            raise TransportError(f"TCP connection {self.describe()} closed by the peer")
        return [(data, (self.host, self.port))]

    def write(self, data: bytes) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendall(data)
        except OSError as exc:
            logger.debug("TCP send to %s failed: %s", self.describe(), exc)
            return False
        return True

    def describe(self) -> str:
        return f"tcp:{self.host}:{self.port}"


class SerialTransport(Transport):
    """A UART in raw 8N1 mode without flow control, through POSIX termios (Linux companion computers)."""

    def __init__(self, device: str, baud: int) -> None:
        self.device, self.baud = device, baud
        self._fd = -1

    def open(self) -> None:
        import termios

        self.close()
        speed = getattr(termios, f"B{self.baud}", None)
        if speed is None:
            raise OSError(errno.EINVAL, f"baud {self.baud} is not supported by this system's termios")
        fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(fd)
            iflag = 0  # no parity check, no CR/LF translation, no software flow control
            oflag = 0
            cflag = (cflag & ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | getattr(termios, "CRTSCTS", 0))
                     | termios.CS8 | termios.CREAD | termios.CLOCAL)
            lflag = 0  # raw: no echo, no canonical mode, no signals
            cc[termios.VMIN] = 0
            cc[termios.VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])
            termios.tcflush(fd, termios.TCIOFLUSH)
        except (OSError, termios.error) as exc:
            os.close(fd)
            raise OSError(f"cannot configure serial port {self.device}: {exc}") from exc
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[tuple[bytes, Any]]:
        if self._fd < 0:
            return []
        chunks: list[tuple[bytes, Any]] = []
        while True:
            try:
                data = os.read(self._fd, 4096)
            except (BlockingIOError, InterruptedError):
                return chunks
            except OSError as exc:  # EIO: the USB adapter went away
                raise TransportError(f"serial read from {self.device} failed: {exc}") from exc
            if not data:
                if chunks:
                    return chunks
                raise TransportError(f"serial port {self.device} hung up")
            chunks.append((data, self.device))

    def write(self, data: bytes) -> bool:
        if self._fd < 0:
            return False
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                _, writable, _ = select.select([], [self._fd], [], 0.5)
                if not writable:
                    logger.debug("serial write to %s timed out", self.device)
                    return False
                continue
            except OSError as exc:
                logger.debug("serial write to %s failed: %s", self.device, exc)
                return False
            view = view[n:]
        return True

    def describe(self) -> str:
        return f"serial:{self.device}@{self.baud}"


def make_transport(endpoint: Endpoint, baud: int) -> Transport:
    """The transport for a parsed ``connection``."""
    if endpoint.transport in ("udpin", "udpout"):
        assert endpoint.host is not None and endpoint.port is not None
        return UdpTransport(endpoint.host, endpoint.port, listen=endpoint.transport == "udpin")
    if endpoint.transport == "tcp":
        assert endpoint.host is not None and endpoint.port is not None
        return TcpTransport(endpoint.host, endpoint.port)
    assert endpoint.device is not None
    return SerialTransport(endpoint.device, baud)
