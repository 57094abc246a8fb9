"""SendQueue: the bounded queue of frames waiting to be written to one connection.

Two lanes. The control lane (chat, results, notices) is always written
first, so a line typed during a 4 GiB transfer overtakes the file data. The
data lane (offers, chunks, end, abort, bye) keeps its order, so an `end`
can never overtake the chunks before it.

Both lanes are bounded. A peer that stops reading fills its own outbox and
is then dropped ("too slow"); it never blocks anyone else:

* control lane over CONTROL_LIMIT bytes: the outbox fails at once;
* data lane: writers either block (`put_data`, for worker threads) or
  enqueue and learn the lane is full (`put_data_nowait`, for I/O threads
  relaying a file, which then pause reading their own socket until this
  lane drains below half of DATA_HIGH_WATER). Either way, if the lane is
  full and nothing at all has been written for STALL_TIMEOUT, the peer is
  frozen (a stopped process, a dead network) and the outbox fails. Progress,
  not speed, is what counts: a slow reader that keeps reading is waited for.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from securechat.errors import ConnectionLost, PeerTooSlow

CONTROL_LIMIT = 4 * 1024 * 1024
DATA_HIGH_WATER = 4 * 1024 * 1024
DATA_LOW_WATER = DATA_HIGH_WATER // 2
STALL_TIMEOUT = 10.0  # seconds with a full queue and not one frame written

Buffer = bytes | bytearray


class SendQueue:
    def __init__(self, wake_writer: Callable[[], None]) -> None:
        self._wake_writer = wake_writer
        self._cond = threading.Condition()
        self._control: deque[Buffer] = deque()
        self._control_bytes = 0
        self._data: deque[Buffer] = deque()
        self._data_bytes = 0
        self._drain_waiters: list[Callable[[], None]] = []
        self._last_progress = time.monotonic()  # last pop, or when the data lane last became non-empty
        self.failure: str | None = None  # set once: the reason this outbox stopped
        self.unsent_control: list[Buffer] = []  # control frames never written, kept when it stopped

    # ------------------------------------------------------------ producers

    def put_control(self, frame: Buffer) -> bool:
        """Enqueue a control frame; False if this outbox has stopped (the frame is not queued)."""
        with self._cond:
            if self.failure is not None:
                return False
            self._control.append(frame)
            self._control_bytes += len(frame)
            overflow = self._control_bytes > CONTROL_LIMIT
        if overflow:
            self.fail(f"too slow: {CONTROL_LIMIT // 1024} KiB of messages waiting unread")
        self._wake_writer()
        return True

    def put_data(self, frame: Buffer, stall_timeout: float | None = None) -> None:
        """Enqueue, blocking while the data lane is full. Not for I/O threads.

        With `stall_timeout`, give up (and fail the outbox) once the lane has
        been full with no frame written for that long.
        """
        with self._cond:
            while self.failure is None and self._data_bytes >= DATA_HIGH_WATER:
                if stall_timeout is None:
                    self._cond.wait()
                    continue
                idle = time.monotonic() - self._last_progress
                if idle >= stall_timeout:
                    break
                self._cond.wait(stall_timeout - idle)
            if self.failure is not None:
                raise ConnectionLost(self.failure)
            stalled = self._data_bytes >= DATA_HIGH_WATER
            if not stalled:
                self._append_data(frame)
        if stalled:
            reason = f"too slow: read nothing for {stall_timeout:.0f} s"
            self.fail(reason)
            raise PeerTooSlow(reason)
        self._wake_writer()

    def _append_data(self, frame: Buffer) -> None:
        if not self._data:
            self._last_progress = time.monotonic()
        self._data.append(frame)
        self._data_bytes += len(frame)

    def put_data_nowait(self, frame: Buffer) -> bool:
        """Enqueue without blocking; False means the lane is now full (pause the source)."""
        with self._cond:
            if self.failure is not None:
                return True
            self._append_data(frame)
            has_room = self._data_bytes < DATA_HIGH_WATER
        self._wake_writer()
        return has_room

    def stalled_for(self) -> float:
        """Seconds without a frame written while a paused source waits on this lane.

        Measured against DATA_LOW_WATER, the mark `has_room` waits for: between
        the two marks a source is still paused, so the clock must keep running.
        """
        with self._cond:
            if self.failure is not None or self._data_bytes < DATA_LOW_WATER:
                return 0.0
            return time.monotonic() - self._last_progress

    def has_room(self) -> bool:
        with self._cond:
            return self.failure is not None or self._data_bytes < DATA_LOW_WATER

    def notify_when_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when the data lane drains (or the outbox fails)."""
        with self._cond:
            if self.failure is None and self._data_bytes >= DATA_LOW_WATER:
                self._drain_waiters.append(callback)
                return
        callback()

    def fail(self, reason: str) -> None:
        """Stop this outbox for good; its connection's I/O thread will close."""
        with self._cond:
            if self.failure is not None:
                return
            self.failure = reason
            self.unsent_control = list(self._control)
            self._control.clear()
            self._data.clear()
            self._control_bytes = self._data_bytes = 0
            waiters, self._drain_waiters = self._drain_waiters, []
            self._cond.notify_all()
        for callback in waiters:
            callback()
        self._wake_writer()

    # ------------------------------------------------------------ the writer

    def pop(self) -> Buffer | None:
        """The next frame to write: control first. Only the I/O thread calls this."""
        waiters: list[Callable[[], None]] = []
        with self._cond:
            if self._control:
                frame = self._control.popleft()
                self._control_bytes -= len(frame)
                return frame
            if not self._data:
                return None
            frame = self._data.popleft()
            self._last_progress = time.monotonic()
            before = self._data_bytes
            self._data_bytes -= len(frame)
            if before >= DATA_LOW_WATER > self._data_bytes:
                waiters, self._drain_waiters = self._drain_waiters, []
            if before >= DATA_HIGH_WATER > self._data_bytes or not self._data:
                self._cond.notify_all()
        for callback in waiters:
            callback()
        return frame

    def empty(self) -> bool:
        with self._cond:
            return not self._control and not self._data
