"""A bounded, thread-safe frame queue between a frame source and the processing loop.

``latest`` mode (live sources): ``put`` never blocks; when the queue is full the oldest frame is dropped and
counted, so the processing loop always works on the newest frames and latency does not grow when it lags.
``block`` mode (lossless replay of a folder or a video file): ``put`` waits for room.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


class QueueClosed(RuntimeError):
    """``put`` on a closed queue."""


class LatestFrameQueue(Generic[T]):
    """Bounded FIFO that drops its oldest item when full (``latest``) or blocks the producer (``block``).

    Args:
        maxsize: capacity (>= 1).
        mode: ``latest`` or ``block``.
    """

    def __init__(self, maxsize: int = 1, mode: Literal["latest", "block"] = "latest") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if mode not in ("latest", "block"):
            raise ValueError(f"mode must be 'latest' or 'block', got {mode!r}")
        self.maxsize = maxsize
        self.mode = mode
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add an item.

        Returns:
            True when queued; False in ``block`` mode when ``timeout`` passed without room.

        Raises:
            QueueClosed: the queue was closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._closed:
                raise QueueClosed("the frame queue is closed")
            if self.mode == "block":
                while len(self._items) >= self.maxsize and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                if self._closed:
                    raise QueueClosed("the frame queue is closed")
            elif len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest queued item, waiting up to ``timeout`` seconds; None on timeout or when closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        """Refuse further puts and wake every waiter (queued items can still be taken)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed
