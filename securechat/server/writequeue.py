"""What waits to be written to one connection of the server's loop. Single-threaded: the loop owns it.

Two lanes, as in the client's outbox: the control lane (chat, results,
notices, presence) is written first, so a line typed during a 4 GiB transfer
overtakes the file data; the data lane (offers, chunks, end, abort, bye) keeps
its order, so an `end` never overtakes the chunks before it. Frames queued
since the last write go out in one TLS write (`next_write` joins them): at
20 lines a second to 500 members the cost per line is mostly the write.

Bounded: over CONTROL_LIMIT the peer is dropped (it stopped reading); a data
lane over DATA_HIGH_WATER pauses whoever feeds it until it is below
DATA_LOW_WATER, and a lane that stays full with nothing written for
STALL_TIMEOUT is a frozen peer, dropped by the loop.
"""

from __future__ import annotations

from collections import deque

CONTROL_LIMIT = 4 * 1024 * 1024
DATA_HIGH_WATER = 4 * 1024 * 1024
DATA_LOW_WATER = DATA_HIGH_WATER // 2
STALL_TIMEOUT = 10.0  # seconds with a full data lane and not one byte written
COALESCE_LIMIT = 256 * 1024  # bytes of small frames joined into one write
_SMALL = 16 * 1024  # frames up to this size are joined with their neighbours


class WriteQueue:
    __slots__ = ("_control", "_control_bytes", "_data", "_data_bytes", "_current", "progress_at")

    def __init__(self, now: float) -> None:
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._data: deque[bytes] = deque()
        self._data_bytes = 0
        self._current: bytes | memoryview | None = None  # being written: the same bytes until all are out
        self.progress_at = now  # when a byte was last written, or the data lane last filled up

    def put_control(self, frame: bytes) -> bool:
        """Queue a control frame; False if the peer has let too much pile up (drop it)."""
        self._control.append(frame)
        self._control_bytes += len(frame)
        return self._control_bytes <= CONTROL_LIMIT

    def put_data(self, frame: bytes, now: float) -> bool:
        """Queue a frame that keeps its order with file data; False if the lane is now full."""
        if self._data_bytes < DATA_HIGH_WATER <= self._data_bytes + len(frame):
            self.progress_at = now  # the stall clock starts when the lane fills
        self._data.append(frame)
        self._data_bytes += len(frame)
        return self._data_bytes < DATA_HIGH_WATER

    @property
    def full(self) -> bool:
        return self._data_bytes >= DATA_HIGH_WATER

    @property
    def has_room(self) -> bool:
        return self._data_bytes < DATA_LOW_WATER

    def __bool__(self) -> bool:
        return self._current is not None or bool(self._control) or bool(self._data)

    def next_write(self) -> bytes | memoryview | None:
        """The bytes to write next (the same ones again after a short write)."""
        if self._current is None:
            if self._control:
                self._current = self._join(self._control, is_data=False)
            elif self._data:
                self._current = self._join(self._data, is_data=True)
        return self._current

    def _join(self, lane: deque[bytes], is_data: bool) -> bytes:
        first = lane.popleft()
        taken = len(first)
        if len(first) > _SMALL or not lane or len(lane[0]) > _SMALL:
            parts = first
        else:
            joined = [first]
            while lane and len(lane[0]) <= _SMALL and taken < COALESCE_LIMIT:
                joined.append(lane.popleft())
                taken += len(joined[-1])
            parts = b"".join(joined)
        if is_data:
            self._data_bytes -= taken
        else:
            self._control_bytes -= taken
        return parts

    def wrote(self, n: int, now: float) -> None:
        """`n` bytes of next_write() went out."""
        current = self._current
        assert current is not None
        self.progress_at = now
        if n >= len(current):
            self._current = None
        else:
            self._current = memoryview(current)[n:]

    def stalled(self, now: float) -> bool:
        return self._data_bytes >= DATA_LOW_WATER and now - self.progress_at >= STALL_TIMEOUT

    def clear(self) -> None:
        self._control.clear()
        self._data.clear()
        self._control_bytes = self._data_bytes = 0
