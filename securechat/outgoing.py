"""Files we are sending, tracked until every recipient has given its verdict.

The server answers each offer with the list of recipients, then relays one
Result per recipient. A transfer is finished when every named recipient has
answered (or the connection is gone); `wait_idle` lets `exit` wait for that.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import frames
from .console import Console
from .errors import UsageError
from .transfer import FileSource


@dataclass
class Sending:
    transfer_id: int
    name: str
    size: int
    pending: set[str] | None = None  # None until the server says who receives it
    cancelled: bool = False
    source: object | None = None  # the FileSource, whose `sent` a progress bar reads
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str | None, str]] = field(default_factory=list)


MAX_PARALLEL_SENDS = 4  # more files wait for a slot, so a server's per-member cap is never hit


class Outgoing:
    def __init__(self, console: Console) -> None:
        self._console = console
        self.slots = threading.BoundedSemaphore(MAX_PARALLEL_SENDS)  # held by each send_file
        self._cond = threading.Condition()
        self._transfers: dict[int, Sending] = {}
        self._ids = itertools.count(1)
        self.finished: list[Sending] = []

    def new(self, name: str, size: int, source: object | None = None) -> int:
        with self._cond:
            transfer_id = next(self._ids) % (frames.MAX_TRANSFER_ID + 1)
            self._transfers[transfer_id] = Sending(transfer_id, name, size, source=source)
            return transfer_id

    def start(self, path: Path) -> tuple[FileSource, int] | None:
        """Open a file to send and give it an id; a file that cannot be read is reported, None."""
        try:
            source = FileSource(path)
        except UsageError as exc:
            self._console.error(str(exc))
            return None
        return source, self.new(source.name, source.size, source)

    def progress(self) -> list[tuple[int, str, list[str], int, int]]:
        """(id, name, recipients still waiting, bytes read so far, size) of every file being sent."""
        with self._cond:
            return [(s.transfer_id, s.name, sorted(s.pending or ()), getattr(s.source, "sent", 0), s.size)
                    for s in self._transfers.values()]

    def _finish_if_done(self, sending: Sending) -> None:
        if sending.pending is not None and not sending.pending:
            self._transfers.pop(sending.transfer_id, None)
            self.finished.append(sending)
            self._cond.notify_all()

    def handle(self, message: frames.Frame) -> bool:
        """Take the server's answers about our own transfers; False for any other message."""
        match message:
            case frames.Recipients():
                self.recipients(message)
            case frames.Result():
                self.result(message)
            case frames.Cancel():
                self.stop(message.id)
            case _:
                return False
        return True

    def recipients(self, message: frames.Recipients) -> None:
        with self._cond:
            sending = self._transfers.get(message.id)
            if sending is None or sending.pending is not None:
                return
            sending.pending = set(message.names)
            self._console.event("file_sending", name=sending.name, size=sending.size, to=message.names)
            if not message.names:
                sending.cancelled = True
                sending.failed.append((None, "nobody else is here to receive it"))
                self._console.event("file_failed", to=None, name=sending.name, reason="nobody else is here to receive it")
            self._finish_if_done(sending)

    def result(self, message: frames.Result) -> None:
        with self._cond:
            sending = self._transfers.get(message.id)
            who = message.sender or "the server"
            if sending is None or (sending.pending is not None and who not in sending.pending):
                return  # a late or repeated verdict: nothing left to decide
            if sending.pending is not None:
                sending.pending.discard(who)
            if message.ok:
                sending.delivered.append(who)
                self._console.event("file_delivered", to=who, name=sending.name, size=sending.size,
                                    sha256=message.sha256)
            else:
                sending.failed.append((who, message.reason))
                self._console.event("file_failed", to=who, name=sending.name, reason=message.reason)
            self._finish_if_done(sending)

    def stop(self, transfer_id: int) -> None:
        """The server asked us to stop sending (nobody is receiving any more)."""
        with self._cond:
            sending = self._transfers.get(transfer_id)
            if sending is not None:
                sending.cancelled = True

    def cancelled(self, transfer_id: int) -> bool:
        with self._cond:
            sending = self._transfers.get(transfer_id)
            return sending is None or sending.cancelled

    def fail(self, transfer_id: int, reason: str) -> None:
        """The transfer cannot go on at our end: every recipient still waiting gets `reason`."""
        with self._cond:
            sending = self._transfers.get(transfer_id)
            if sending is None:
                return
            waiting = sorted(sending.pending) if sending.pending else [None]
            for who in waiting:
                sending.failed.append((who, reason))
                self._console.event("file_failed", to=who, name=sending.name, reason=reason)
            sending.pending = set()
            self._finish_if_done(sending)

    def fail_all(self, reason: str) -> None:
        with self._cond:
            ids = list(self._transfers)
        for transfer_id in ids:
            self.fail(transfer_id, reason)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no transfer is waiting for a verdict."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._transfers, timeout)
