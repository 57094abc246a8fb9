"""Files arriving at one participant: offer, chunks, end (or abort), verdict.

Used by `join` (files from the server) and by the server's operator (files
relayed from clients). Each call returns a Verdict when the transfer is
decided, which the caller reports to the console and sends back as a
Result; a Verdict for a refused offer comes back at once, and the chunks
that still follow it are dropped until its end. A file cut short (sender
stopped, connection gone) keeps its partial, so offering it again resumes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .console import Console
from .errors import RemoteProtocolError, TransferError
from .images import extension_mismatch, sniff
from .transfer import Downloads, IncomingFile, human_size

MAX_OPEN_FILES = 64  # files being written at once; more are refused, each with a reason
MAX_REFUSED_OPEN = 1024  # refused offers whose chunks are still coming: past this, a flood


@dataclass(frozen=True)
class Verdict:
    transfer_id: int
    sender: str
    name: str
    ok: bool
    reason: str = ""
    path: Path | None = None
    size: int = 0
    sha256: str | None = None

    def report(self, console: Console, **extra_fields) -> None:
        """`extra_fields` (e.g. `to` for a file sent to us alone) go into the event as they are."""
        if self.ok:
            assert self.path is not None
            info = sniff(self.path)  # by content: the name is the sender's claim
            extra = dict(extra_fields)
            if info is not None:
                extra["image"] = {"type": info.kind, "width": info.width, "height": info.height}
            warning = extension_mismatch(self.name, info)
            if warning:
                extra["warning"] = warning
            console.event("file_received", **{"from": self.sender}, name=self.name, path=str(self.path),
                          size=self.size, sha256=self.sha256, **extra)
        else:
            console.event("file_rejected", **{"from": self.sender}, name=self.name, reason=self.reason, **extra_fields)


def announce_incoming(console: Console, sender: str, name: str, size: int, offset: int, note: str,
                      **extra_fields) -> None:
    """A file starts arriving (or resumes, from `offset`)."""
    if note:
        console.event("notice", text=note)
    console.event("file_incoming", **{"from": sender}, name=name, size=size, offset=offset, **extra_fields)


class Inbox:
    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads
        self._lock = threading.Lock()
        self._active: dict[int, tuple[IncomingFile, str]] = {}
        self._dropping: dict[int, str] = {}  # refused transfers whose chunks still come

    def offer(self, transfer_id: int, sender: str, name: str, size: int, sha256: str,
              on_ready: Callable[[int, str], None]) -> Verdict | None:
        """Start receiving; `on_ready(offset, note)` follows from another thread once the
        kept part (if any) is checked, and the sender should then be told to go on from offset."""
        with self._lock:
            if transfer_id in self._active or transfer_id in self._dropping:
                raise RemoteProtocolError(f"transfer id {transfer_id} offered twice")
            if len(self._dropping) >= MAX_REFUSED_OPEN:
                raise RemoteProtocolError(f"more than {MAX_REFUSED_OPEN} refused transfers still open")
            try:
                if len(self._active) >= MAX_OPEN_FILES:
                    raise TransferError(f"more than {MAX_OPEN_FILES} files arriving at once; send it again later")
                incoming = IncomingFile(self.downloads, name, size, sha256, sender, on_ready)
                self._active[transfer_id] = (incoming, sender)
            except TransferError as exc:
                self._dropping[transfer_id] = sender
                return Verdict(transfer_id, sender, name, False, str(exc))
        return None

    def _entry(self, transfer_id: int, what: str) -> tuple[IncomingFile, str] | None:
        entry = self._active.get(transfer_id)
        if entry is None and transfer_id not in self._dropping:
            raise RemoteProtocolError(f"{what} for transfer {transfer_id}, which was never offered")
        return entry

    def chunk(self, transfer_id: int, data: bytes | memoryview) -> Verdict | None:
        # No lock around the write itself: one transfer's chunks come from one thread.
        with self._lock:
            entry = self._entry(transfer_id, "data")
        if entry is None:
            return None
        incoming, sender = entry
        try:
            incoming.write(data)
        except TransferError as exc:
            incoming.discard()
            with self._lock:
                del self._active[transfer_id]
                self._dropping[transfer_id] = sender
            return Verdict(transfer_id, sender, incoming.name, False, str(exc))
        return None

    def end(self, transfer_id: int, sha256: str) -> Verdict | None:
        with self._lock:
            entry = self._entry(transfer_id, "end")
            if entry is None:
                del self._dropping[transfer_id]
                return None
            del self._active[transfer_id]
        incoming, sender = entry
        try:
            path = incoming.finish(sha256)
        except TransferError as exc:
            return Verdict(transfer_id, sender, incoming.name, False, str(exc))
        return Verdict(transfer_id, sender, path.name, True, path=path, size=incoming.size, sha256=sha256)

    def abort(self, transfer_id: int, reason: str) -> Verdict | None:
        with self._lock:
            entry = self._entry(transfer_id, "abort")
            if entry is None:
                del self._dropping[transfer_id]
                return None
            del self._active[transfer_id]
        incoming, sender = entry
        reason = f"sender stopped: {reason}" if reason else "sender stopped"
        return Verdict(transfer_id, sender, incoming.name, False, _kept(reason, incoming.suspend()))

    def progress(self) -> list[tuple[int, str, str, int, int]]:
        """(id, name, sender, bytes received, size) of every file still arriving, for progress bars."""
        with self._lock:
            return [(tid, f.name, sender, f.received, f.size) for tid, (f, sender) in self._active.items()]

    def close(self, reason: str) -> list[Verdict]:
        """Stop every unfinished file, keeping what arrived for a resume (the connection is gone)."""
        with self._lock:
            active, self._active = self._active, {}
            self._dropping.clear()
        verdicts = []
        for transfer_id, (incoming, sender) in active.items():
            verdicts.append(Verdict(transfer_id, sender, incoming.name, False, _kept(reason, incoming.suspend())))
        return verdicts


def _kept(reason: str, kept: int) -> str:
    return f"{reason} ({human_size(kept)} kept to resume from)" if kept else reason
