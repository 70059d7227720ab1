"""The bounded latest-frame queue: drops and counts the oldest when full, or blocks the producer."""

from __future__ import annotations

import threading
import time

import pytest

from edge_runtime.service.frame_queue import LatestFrameQueue, QueueClosed


def test_latest_mode_keeps_the_newest_and_counts_drops():
    q = LatestFrameQueue(maxsize=2)
    for i in range(5):
        assert q.put(i)
    assert (q.put_count, q.dropped, len(q)) == (5, 3, 2)
    assert [q.get(0), q.get(0), q.get(0)] == [3, 4, None]


def test_block_mode_waits_for_room_and_times_out():
    q = LatestFrameQueue(maxsize=1, mode="block")
    assert q.put("a")
    t0 = time.monotonic()
    assert q.put("b", timeout=0.2) is False
    assert time.monotonic() - t0 >= 0.19
    assert q.dropped == 0

    def consume_later():
        time.sleep(0.2)
        q.get(1)

    threading.Thread(target=consume_later).start()
    t0 = time.monotonic()
    assert q.put("b", timeout=5)
    assert 0.15 <= time.monotonic() - t0 < 3
    assert q.get(0) == "b"


def test_close_wakes_the_consumer_and_refuses_puts():
    q = LatestFrameQueue(maxsize=1)
    got = []
    t = threading.Thread(target=lambda: got.append(q.get(10)))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert not t.is_alive() and got == [None]
    with pytest.raises(QueueClosed):
        q.put(1)


def test_slow_consumer_sees_increasing_frames_and_accounts_for_every_frame():
    q = LatestFrameQueue(maxsize=1)
    taken = []
    done = threading.Event()

    def consumer():
        while not done.is_set() or len(q):
            item = q.get(0.05)
            if item is not None:
                taken.append(item)
                time.sleep(0.01)  # processing is slower than the producer

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(300):
        q.put(i)
        time.sleep(0.0005)
    done.set()
    t.join(5)
    assert taken == sorted(taken) and len(set(taken)) == len(taken)
    assert taken[-1] == 299  # the newest frame is never the one dropped
    assert q.dropped > 0
    assert len(taken) + q.dropped == 300
