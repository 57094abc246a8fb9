from __future__ import annotations

import threading
import time

import pytest

from securechat.errors import ConnectionLost, PeerTooSlow
from securechat.member.outbox import CONTROL_LIMIT, DATA_HIGH_WATER, DATA_LOW_WATER, SendQueue


def make() -> tuple[SendQueue, list]:
    wakes: list = []
    return SendQueue(lambda: wakes.append(1)), wakes


def test_control_overtakes_data_but_data_keeps_its_order():
    box, wakes = make()
    box.put_data_nowait(b"d1")
    box.put_data_nowait(b"d2")
    box.put_control(b"c1")
    assert [box.pop(), box.pop(), box.pop(), box.pop()] == [b"c1", b"d1", b"d2", None]
    assert wakes


def test_control_overflow_fails_the_outbox():
    box, _ = make()
    piece = b"x" * 65536
    for _ in range(CONTROL_LIMIT // len(piece) + 1):
        box.put_control(piece)
    assert box.failure and "too slow" in box.failure
    assert box.pop() is None


def test_nowait_reports_full_and_drain_notifies():
    box, _ = make()
    frame = b"x" * (1024 * 1024)
    results = [box.put_data_nowait(frame) for _ in range(DATA_HIGH_WATER // len(frame))]
    assert results[-1] is False and all(results[:-1])
    drained = threading.Event()
    box.notify_when_drained(drained.set)
    while not drained.is_set():
        assert box.pop() is not None
    assert box.has_room()


def test_blocking_put_waits_for_the_writer():
    box, _ = make()
    frame = b"x" * DATA_HIGH_WATER
    box.put_data(frame)
    done = threading.Event()

    def second() -> None:
        box.put_data(b"y")
        done.set()

    threading.Thread(target=second, daemon=True).start()
    assert not done.wait(0.2)
    assert box.pop() == frame
    assert done.wait(5)


def test_blocking_put_gives_up_on_a_stalled_reader():
    box, _ = make()
    box.put_data(b"x" * DATA_HIGH_WATER)
    started = time.monotonic()
    with pytest.raises(PeerTooSlow):
        box.put_data(b"y", stall_timeout=0.2)
    assert time.monotonic() - started < 5
    assert box.failure
    with pytest.raises(ConnectionLost):
        box.put_data(b"z")


def test_low_water_is_below_high_water():
    assert 0 < DATA_LOW_WATER < DATA_HIGH_WATER


def test_stall_clock_runs_while_a_paused_source_still_waits():
    """Between the low and high marks a source stays paused, so a frozen peer must still count as stalled."""
    box, _ = make()
    frame = b"x" * (1024 * 1024)
    while box.put_data_nowait(frame):
        pass
    assert box.pop() is not None  # one frame drains: below high water, above low water
    assert not box.has_room()
    time.sleep(0.05)
    assert box.stalled_for() >= 0.05
