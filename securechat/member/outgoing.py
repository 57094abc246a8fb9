"""Files we are sending, tracked until every recipient has given its verdict.

The server answers each offer with the list of recipients, then with the
offset to send from (`accept`: recipients may hold part of the file from an
interrupted attempt), then relays one Result per recipient. A transfer is
finished when every named recipient has answered (or the connection is gone);
`wait_idle` lets `exit` wait for that. A file counts from the moment its
command is handled (`ask`), not from when its hash is ready, so a script that
pipes `/send` and ends its input never leaves before its file is offered.

A transfer cut short by a dropped connection, ours or a recipient's, becomes
a Retry: offered again, to that recipient only, when it is back (our own
reconnect, or a `joined` from the room) within RESUME_WAIT. The recipient's
kept part makes that a resume rather than a fresh start.

Whether the server's answers are allowed at all is decided before they get
here (client_protocol.py); nothing here prints: it emits events, which the
console turns into text or --json.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from securechat.errors import TransferError, UsageError
from securechat.files.transfer import FileSource
from securechat.wire import frames

RESUME_WAIT = 600.0  # seconds an interrupted transfer waits for its recipient to come back


@dataclass
class Sending:
    transfer_id: int
    name: str
    size: int
    path: Path | None = None
    to: str | None = None
    sha256: str | None = None
    pending: set[str] | None = None  # None until the server says who receives it
    offset: int | None = None  # None until the server says where to start
    cancelled: bool = False
    source: object | None = None  # the FileSource, whose `sent` a progress bar reads
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str | None, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Retry:
    """An interrupted transfer to offer again when `to` (None: the whole room) is reachable."""

    path: Path
    name: str
    to: str | None
    sha256: str | None
    until: float


class Undelivered(NamedTuple):
    """A file asked for that did not reach `to` (None: anyone) verified; `offered`: it was offered."""

    name: str
    reason: str
    to: str | None = None
    offered: bool = True


class Awaited(NamedTuple):
    """A file `exit` waits for: to reach `recipients` ([]: the room), `percent` read; None: being read."""

    name: str
    recipients: list[str] = []
    percent: int | None = None


MAX_PARALLEL_SENDS = 4  # more files wait for a slot, so a server's per-member cap is never hit


Emit = Callable[..., None]  # emit(event, **fields): what happened; the console words it (Console.report)


class OutgoingFiles:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self.slots = threading.BoundedSemaphore(MAX_PARALLEL_SENDS)  # held by each send_file
        self._cond = threading.Condition()
        self._transfers: dict[int, Sending] = {}
        self._retries: list[Retry] = []
        self._claimed = 0  # retries handed out by due() whose transfer has not started yet
        # Files asked for (a /send was handled) that are still being hashed or wait for a
        # slot: `exit` and end of input must wait for these too, not only registered ones.
        self._asked: dict[int, Path] = {}
        self._asked_ids = itertools.count(1)
        self.unsent: list[tuple[str, str]] = []  # (file, reason) asked for but never offered
        self._ids = itertools.count(1)
        self.finished: list[Sending] = []

    def ask(self, path: Path) -> int:
        """Count a file as asked for the moment its command is handled; pass the ticket to start()."""
        with self._cond:
            ticket = next(self._asked_ids)
            self._asked[ticket] = path
            return ticket

    def drop_ask(self, ticket: int | None, reason: str | None = None) -> None:
        """An asked-for file will not be offered after all (`reason` says why, None: it was)."""
        if ticket is None:
            return
        with self._cond:
            path = self._asked.pop(ticket, None)
            if path is not None and reason is not None:
                self.unsent.append((path.name, reason))
            self._cond.notify_all()

    def start(self, path: Path, to: str | None = None, previous: Retry | None = None,
              ticket: int | None = None) -> tuple[FileSource, int] | None:
        """Open and hash a file to send and give it an id; a file that cannot be read is reported, None."""
        try:
            source = FileSource(path)
            sha256 = source.sha256
        except (UsageError, TransferError) as exc:
            self._emit("error", message=str(exc))
            self.drop_ask(ticket, str(exc))
            if previous is not None:
                self.unclaim()
            return None
        if previous is not None and previous.sha256 not in (None, sha256):
            self._emit("file_changed", name=path.name)
        with self._cond:
            transfer_id = next(self._ids) % (frames.MAX_TRANSFER_ID + 1)
            self._transfers[transfer_id] = Sending(transfer_id, source.name, source.size, path, to, sha256,
                                                   source=source)
            if previous is not None:
                self._claimed -= 1
            self._asked.pop(ticket, None)  # now a registered transfer: counted there
        return source, transfer_id

    def unclaim(self) -> None:
        """A retry from due() will not be sent after all."""
        with self._cond:
            self._claimed -= 1
            self._cond.notify_all()

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
            case frames.Accept():
                self.started(message.id, message.offset)
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
            self._emit("file_sending", name=sending.name, size=sending.size, to=message.names)
            if not message.names:
                why = message.reason or "nobody else is here to receive it"  # the server says why, if it does
                sending.cancelled = True
                sending.failed.append((None, why))
                self._emit("file_failed", to=None, name=sending.name, reason=why)
            self._finish_if_done(sending)

    def started(self, transfer_id: int, offset: int) -> None:
        """Every recipient answered the offer: data goes from `offset` on."""
        with self._cond:
            sending = self._transfers.get(transfer_id)
            if sending is None or sending.offset is not None:
                return
            sending.offset = offset
            if offset:
                self._emit("file_resuming", name=sending.name, offset=offset, size=sending.size)
            self._cond.notify_all()

    def wait_accept(self, transfer_id: int) -> int | None:
        """The offset to send from, once known; None if the transfer ended first."""
        with self._cond:
            self._cond.wait_for(lambda: (s := self._transfers.get(transfer_id)) is None or s.cancelled
                                or s.offset is not None)
            sending = self._transfers.get(transfer_id)
            return None if sending is None or sending.cancelled else sending.offset

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
                self._emit("file_delivered", to=who, name=sending.name, size=sending.size,
                                    sha256=message.sha256)
            elif message.interrupted and sending.path is not None:
                self._retry(sending, who, message.reason)
            else:
                sending.failed.append((who, message.reason))
                self._emit("file_failed", to=who, name=sending.name, reason=message.reason)
            self._finish_if_done(sending)

    def _retry(self, sending: Sending, to: str | None, reason: str) -> None:
        assert sending.path is not None
        self._retries.append(Retry(sending.path, sending.name, to, sending.sha256, time.monotonic() + RESUME_WAIT))
        self._emit("file_interrupted", name=sending.name, to=to, reason=reason)
        self._cond.notify_all()

    def stop(self, transfer_id: int) -> None:
        """The server asked us to stop sending (nobody is receiving any more)."""
        with self._cond:
            sending = self._transfers.get(transfer_id)
            if sending is not None:
                sending.cancelled = True
                self._cond.notify_all()

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
                self._emit("file_failed", to=who, name=sending.name, reason=reason)
            sending.pending = set()
            self._finish_if_done(sending)

    def fail_all(self, reason: str) -> None:
        with self._cond:
            ids = list(self._transfers)
            retries, self._retries = self._retries, []
            for retry in retries:
                self.finished.append(Sending(0, retry.name, 0, retry.path, retry.to, failed=[(retry.to, reason)]))
            self._cond.notify_all()
        for transfer_id in ids:
            self.fail(transfer_id, reason)
        for retry in retries:
            self._emit("file_failed", to=retry.to, name=retry.name, reason=reason)

    def failures(self) -> list[Undelivered]:
        """Every file asked for that did not reach a recipient verified, with the reason."""
        with self._cond:
            failed = [Undelivered(s.name, reason, who) for s in self.finished for who, reason in s.failed]
            # Still asked-for once we stopped waiting: never offered, so certainly not delivered.
            unsent = self.unsent + [(path.name, "not sent") for path in self._asked.values()]
            return failed + [Undelivered(name, reason, offered=False) for name, reason in unsent]

    def waiting_for(self) -> list[Awaited]:
        """What `exit` waits for, one per file (console.describe_waiting words it)."""
        with self._cond:
            out = []
            for s in self._transfers.values():
                sent = getattr(s.source, "sent", 0)
                who = sorted(s.pending) if s.pending else [s.to] if s.to else []
                out.append(Awaited(s.name, who, 100 * sent // s.size if s.size else 100))
            return out + [Awaited(path.name) for path in self._asked.values()]

    def interrupt_all(self, reason: str) -> None:
        """Our connection dropped: every transfer still open waits to be offered again."""
        with self._cond:
            for sending in list(self._transfers.values()):
                self._transfers.pop(sending.transfer_id)
                sending.cancelled = True
                if sending.path is None:
                    continue
                if sending.pending is None:
                    self._retry(sending, sending.to, reason)
                for who in sorted(sending.pending or ()):
                    self._retry(sending, who, reason)
            self._cond.notify_all()

    def due(self, present: list[str], reconnected: bool = False) -> list[Retry]:
        """Retries whose recipient is among `present` (all room-wide ones too after our reconnect)."""
        now = time.monotonic()
        with self._cond:
            due, keep = [], []
            for retry in self._retries:
                if retry.until < now:
                    reason = f"not back within {RESUME_WAIT:.0f} s to resume"
                    self.finished.append(Sending(0, retry.name, 0, retry.path, retry.to, failed=[(retry.to, reason)]))
                    self._emit("file_failed", to=retry.to, name=retry.name, reason=reason)
                elif retry.to in present or (retry.to is None and reconnected):
                    due.append(retry)
                    self._claimed += 1
                else:
                    keep.append(retry)
            self._retries = keep
            self._cond.notify_all()
            return due

    def wait_idle(self, timeout: float | None = None, retries: bool = False) -> bool:
        """Block until no transfer is waiting for a verdict (and, with `retries`, none for a resume)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._transfers or self._asked or (retries and (self._retries or self._claimed)):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(1.0 if left is None else min(1.0, left))
                if retries:
                    self.due([])  # expires the ones that waited too long
            return True
