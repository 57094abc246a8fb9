"""Files arriving at one member: offer, chunks, end (or abort), verdict.

Used by every local member (`join`, the server's operator: local.py). Each
call returns a Verdict when the transfer is decided, which the member reports
(as an event: `verdict_event`) and sends back as a Result; a Verdict for a
refused offer comes back at once. Which frames may arrive for which id is the
protocol's business (client_protocol.py): chunks of a refused file never
reach this class. A file cut short (sender stopped, connection gone) keeps its
partial, so offering it again resumes. Nothing here prints: the console turns
the events into text.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from securechat.errors import TransferError
from securechat.files.images import extension_mismatch, sniff
from securechat.files.transfer import Downloads, IncomingFile, human_size

MAX_OPEN_FILES = 64  # files being written at once; more are refused, each with a reason

Event = tuple[str, dict[str, Any]]  # (event name, fields), as Console.report takes them


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


def verdict_event(verdict: Verdict, **extra_fields: Any) -> Event:
    """`extra_fields` (e.g. `to` for a file sent to us alone) go into the event as they are."""
    if not verdict.ok:
        return "file_rejected", {"from": verdict.sender, "name": verdict.name, "reason": verdict.reason,
                                 **extra_fields}
    assert verdict.path is not None
    info = sniff(verdict.path)  # by content: the name is the sender's claim
    extra = dict(extra_fields)
    if info is not None:
        extra["image"] = {"type": info.kind, "width": info.width, "height": info.height}
    warning = extension_mismatch(verdict.name, info)
    if warning:
        extra["warning"] = warning
    return "file_received", {"from": verdict.sender, "name": verdict.name, "path": str(verdict.path),
                             "size": verdict.size, "sha256": verdict.sha256, **extra}


def incoming_events(sender: str, name: str, size: int, offset: int, note: str, **extra_fields: Any) -> list[Event]:
    """A file starts arriving (or resumes, from `offset`)."""
    events: list[Event] = [("notice", {"text": note})] if note else []
    events.append(("file_incoming", {"from": sender, "name": name, "size": size, "offset": offset, **extra_fields}))
    return events


class IncomingFiles:
    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads
        self._lock = threading.Lock()
        self._active: dict[int, tuple[IncomingFile, str]] = {}

    def offer(self, transfer_id: int, sender: str, name: str, size: int, sha256: str,
              on_ready: Callable[[int, str], None]) -> Verdict | None:
        """Start receiving; `on_ready(offset, note)` follows from another thread once the
        kept part (if any) is checked, and the sender should then be told to go on from offset."""
        with self._lock:
            try:
                if len(self._active) >= MAX_OPEN_FILES:
                    raise TransferError(f"more than {MAX_OPEN_FILES} files arriving at once; send it again later")
                self._active[transfer_id] = (IncomingFile(self.downloads, name, size, sha256, sender, on_ready), sender)
            except TransferError as exc:
                return Verdict(transfer_id, sender, name, False, str(exc))
        return None

    def chunk(self, transfer_id: int, data: bytes | memoryview) -> Verdict | None:
        # No lock around the write itself: one transfer's chunks come from one thread.
        with self._lock:
            entry = self._active.get(transfer_id)
        if entry is None:
            return None
        incoming, sender = entry
        try:
            incoming.write(data)
        except TransferError as exc:
            incoming.discard()
            with self._lock:
                del self._active[transfer_id]
            return Verdict(transfer_id, sender, incoming.name, False, str(exc))
        return None

    def end(self, transfer_id: int, sha256: str) -> Verdict | None:
        with self._lock:
            entry = self._active.pop(transfer_id, None)
        if entry is None:
            return None
        incoming, sender = entry
        try:
            path = incoming.finish(sha256)
        except TransferError as exc:
            return Verdict(transfer_id, sender, incoming.name, False, str(exc))
        return Verdict(transfer_id, sender, path.name, True, path=path, size=incoming.size, sha256=sha256)

    def abort(self, transfer_id: int, reason: str) -> Verdict | None:
        with self._lock:
            entry = self._active.pop(transfer_id, None)
        if entry is None:
            return None
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
        return [Verdict(transfer_id, sender, incoming.name, False, _kept(reason, incoming.suspend()))
                for transfer_id, (incoming, sender) in active.items()]


def _kept(reason: str, kept: int) -> str:
    return f"{reason} ({human_size(kept)} kept to resume from)" if kept else reason
