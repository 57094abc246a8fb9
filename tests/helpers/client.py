"""Helpers for tests of the client side in one process: a console that records events, and
the server's end of the operator's socketpair, spoken by hand from docs/protocol.md.

The operator's connection is a plain socketpair by design (both ends are in the server's
own process), so these tests use one too: no TLS is being stood in for.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

from securechat.ui.console import Console
from securechat.wire import frames

TIMEOUT = 10.0


class RecordingConsole(Console):
    """A --json console whose events (and errors) are kept, in order, as dicts."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        super().__init__(json_mode=True, out=self.buffer, err=io.StringIO())

    @property
    def events(self) -> list[dict]:
        with self._lock:
            text = self.buffer.getvalue()
        return [json.loads(line) for line in text.splitlines()]

    def named(self, event: str, **match) -> list[dict]:
        return [e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, event: str, timeout: float = TIMEOUT, **match) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = self.named(event, **match)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} {match} within {timeout} s; events: {self.events[-10:]}")
            time.sleep(0.01)


class ServerEnd:
    """The server's end of a socketpair: send frames, read the member's frames one by one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)
        self._decoder = frames.FrameDecoder()
        self._lock = threading.Lock()

    def send(self, *messages: frames.Message | frames.Chunk) -> None:
        for message in messages:
            if isinstance(message, frames.Chunk):
                self.sock.sendall(frames.encode_chunk(message.id, bytes(message.data)))
            else:
                self.sock.sendall(frames.encode(message))

    def next_frame(self) -> frames.Frame | None:
        """The member's next frame; None when it closed the connection."""
        with self._lock:
            while True:
                frame = self._decoder.next_frame()
                if frame is not None:
                    return frame
                data = self.sock.recv(65536)
                if not data:
                    return None
                self._decoder.feed(data)

    def next_of(self, kind: type) -> frames.Frame:
        """The member's next frame of `kind`, skipping others; AssertionError if it closes first."""
        while True:
            frame = self.next_frame()
            assert frame is not None, f"closed before a {kind.__name__}"
            if isinstance(frame, kind):
                return frame

    def close(self) -> None:
        self.sock.close()
