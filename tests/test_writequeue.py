"""The server loop's per-connection queue, alone: lanes, coalescing, bounds and the stall rule, with a fake clock."""

from __future__ import annotations

from securechat.server.writequeue import (
    COALESCE_LIMIT,
    CONTROL_LIMIT,
    DATA_HIGH_WATER,
    DATA_LOW_WATER,
    STALL_TIMEOUT,
    WriteQueue,
)

MiB = 1024 * 1024


def drain(queue: WriteQueue, now: float = 0.0) -> list[bytes]:
    writes = []
    while (view := queue.next_write()) is not None:
        writes.append(bytes(view))
        queue.wrote(len(view), now)
    return writes


def test_control_lines_overtake_file_data_and_leave_together():
    queue = WriteQueue(0.0)
    queue.put_data(b"offer", 0.0)
    queue.put_control(b"line 1")
    queue.put_control(b"line 2")
    assert drain(queue) == [b"line 1line 2", b"offer"]  # one write for the lines queued in one turn


def test_a_short_write_is_retried_with_the_same_bytes():
    queue = WriteQueue(0.0)
    queue.put_control(b"abcdef")
    first = queue.next_write()
    queue.wrote(2, 0.0)
    assert bytes(queue.next_write()) == b"cdef" and bytes(first) == b"abcdef"
    queue.put_control(b"later")  # does not jump into the middle of a frame
    assert drain(queue) == [b"cdef", b"later"]


def test_big_frames_are_not_copied_into_a_join_and_joins_are_bounded():
    queue = WriteQueue(0.0)
    chunk = b"x" * MiB
    queue.put_data(chunk, 0.0)
    queue.put_data(b"end", 0.0)
    assert queue.next_write() is chunk
    queue = WriteQueue(0.0)
    for _ in range(40):
        queue.put_control(b"y" * 10_000)
    assert all(len(w) <= COALESCE_LIMIT + 10_000 for w in drain(queue))


def test_a_full_data_lane_says_so_and_has_room_again_below_the_low_mark():
    queue = WriteQueue(0.0)
    frames_needed = DATA_HIGH_WATER // MiB
    assert all(queue.put_data(b"x" * MiB, 0.0) for _ in range(frames_needed - 1))
    assert not queue.put_data(b"x" * MiB, 0.0) and queue.full
    while not queue.has_room:
        queue.wrote(len(queue.next_write()), 0.0)
    assert queue._data_bytes < DATA_LOW_WATER


def test_too_many_unread_lines_is_reported():
    queue = WriteQueue(0.0)
    assert all(queue.put_control(b"z" * 1024) for _ in range(CONTROL_LIMIT // 1024))
    assert not queue.put_control(b"z")


def test_a_peer_that_reads_nothing_for_the_stall_limit_is_stalled_and_one_that_reads_is_not():
    queue = WriteQueue(100.0)
    for _ in range(DATA_HIGH_WATER // MiB):
        queue.put_data(b"x" * MiB, 100.0)
    assert not queue.stalled(100.0 + STALL_TIMEOUT - 0.001)
    assert queue.stalled(100.0 + STALL_TIMEOUT)
    slow = WriteQueue(100.0)
    for _ in range(DATA_HIGH_WATER // MiB):
        slow.put_data(b"x" * MiB, 100.0)
    view = slow.next_write()
    slow.wrote(len(view) // 2, 100.0 + STALL_TIMEOUT - 1)  # slow, but reading
    assert not slow.stalled(100.0 + STALL_TIMEOUT + 1)
