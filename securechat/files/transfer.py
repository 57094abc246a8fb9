"""Files on disk: reading one to send, and receiving one safely.

Receiving follows magic-wormhole's receive path, tightened: hash while
writing into a partial file in the downloads folder's hidden partial area
(partials.py: O_NOFOLLOW, flock, resumable), and only when size and the
SHA-256 promised in the offer both match, publish it with a
no-clobber hard link (`name (1).ext` when the name is taken), mode 0600,
and record it in SHA256SUMS. Every operation goes through a file descriptor
of the downloads folder opened with O_NOFOLLOW, so neither a planted symlink
at the final name nor a downloads folder swapped for a symlink redirects a
write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator

from securechat.errors import TransferError, UsageError
from securechat.files.checksums import append_sum
from securechat.files.filenames import numbered_alternative, safe_filename
from securechat.files.partials import CHECKPOINT_EVERY, PartialStore, bytes_per_sender_setting
from securechat.wire import frames

FREE_SPACE_RESERVE = 64 * 1024 * 1024  # never fill the disk to the last byte
MAX_NAME_ATTEMPTS = 10_000


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """`500MB`, `10GiB`, `1234` (bytes) -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"size {text!r} is not like 500MB, 10GiB or 1234 (bytes)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


class Downloads:
    """The folder received files are published into."""

    def __init__(self, path: Path, max_file_size: int | None = None) -> None:
        self.path = path
        self.max_file_size = max_file_size
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
                raise UsageError(f"downloads folder {path} is a symbolic link; give the real folder instead") from exc
            raise UsageError(f"cannot use downloads folder {path}: {exc.strerror}") from exc
        self._publish_lock = threading.Lock()
        self._partials: PartialStore | None = None
        self._partial_bytes_per_sender = bytes_per_sender_setting()  # a bad setting stops us here, not mid-file

    def close(self) -> None:
        if self._partials is not None:
            self._partials.close()
        os.close(self._fd)

    def check_room(self, size: int, kept: int = 0) -> None:
        """Refuse a file of `size` bytes before a single byte is written.

        The size limit is on the whole file, however much of it a kept partial
        holds already; the disk needs room only for the `size - kept` bytes to come.
        """
        if self.max_file_size is not None and size > self.max_file_size:
            raise TransferError(f"file of {human_size(size)} exceeds the limit of {human_size(self.max_file_size)}")
        st = os.fstatvfs(self._fd)
        free = st.f_bavail * st.f_frsize
        if size - kept > free - FREE_SPACE_RESERVE:
            raise TransferError(f"not enough free space for {human_size(size)} "
                                f"({human_size(size - kept)} still to come, {human_size(free)} free)")

    @property
    def partials(self) -> PartialStore:
        """The hidden area files are received into; created when the first file arrives."""
        with self._publish_lock:
            if self._partials is None:
                self._partials = PartialStore(self._fd, self._partial_bytes_per_sender)
            return self._partials

    def publish(self, src_dir_fd: int, src_name: str, wanted: str, sha256: str) -> Path:
        """Give a verified file its final name without ever replacing a file."""
        with self._publish_lock:
            for n in range(MAX_NAME_ATTEMPTS):
                final = wanted if n == 0 else numbered_alternative(wanted, n)
                try:
                    # link() fails with EEXIST on any existing entry, a symlink included.
                    os.link(src_name, final, src_dir_fd=src_dir_fd, dst_dir_fd=self._fd, follow_symlinks=False)
                except FileExistsError:
                    continue
                break
            else:
                raise TransferError(f"{MAX_NAME_ATTEMPTS} files named like {wanted!r} exist already")
            append_sum(self._fd, final, sha256)
        return self.path / final


class IncomingFile:
    """One file being received into its partial, hashed as it is written, resumable.

    Hashing and writing happen on a writer thread of this file's own, fed
    through a short queue: both release the GIL, so the connection's I/O
    thread decrypts the next chunk while this one is hashed and written (the
    profile showed them as the I/O thread's largest costs). The queue is
    bounded, so a slow disk slows the sender instead of filling memory.

    The writer thread starts by checking what a previous attempt left (see
    partials.py), then calls `on_ready(offset, note)`: the caller tells the
    sender to continue from `offset`. No data may arrive before that.
    """

    WRITE_QUEUE = 2  # chunks (up to 1 MiB each) waiting for the writer thread
    WRITEBACK_EVERY = 32 * 1024 * 1024

    def __init__(self, downloads: Downloads, offered_name: str, size: int, sha256: str, sender: str,
                 on_ready: Callable[[int, str], None]) -> None:
        self.downloads = downloads
        self.name = safe_filename(offered_name)
        self.size = size
        self.sha256 = sha256
        self.partial = downloads.partials.open(sender, self.name, size, sha256)
        try:
            downloads.check_room(size, kept=self.partial.sidecar.done)
        except TransferError:
            self.partial.release() if self.partial.sidecar.done else self.partial.remove()
            raise
        self.offset: int | None = None  # set by the writer thread once the kept part is checked
        self.received = 0
        self._hash = hashlib.sha256()
        self._on_ready = on_ready
        self._done = False
        self._error: TransferError | None = None
        self._queue: queue.Queue = queue.Queue(self.WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_all, name=f"write-{self.name[:20]}", daemon=True)
        self._writer.start()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data` (which must not be changed afterwards) for hashing and writing."""
        if self._error is not None:
            raise self._error
        if self.offset is None:
            raise TransferError("data arrived before the offer was accepted")
        if self.received + len(data) > self.size:
            raise TransferError(f"sender sent more than the {self.size} bytes it declared")
        self.received += len(data)
        self._queue.put(data)

    def _write_all(self) -> None:
        try:
            offset, self._hash, note = self.partial.resume()
        except OSError as exc:
            self._error = TransferError(f"cannot read the kept part of {self.name}: {exc.strerror}")
            offset, note = 0, str(self._error)
        if self.partial.replaced and not offset:
            note = f"the kept part of {self.name} was of other content (the sender's file changed); starting afresh"
        self.received = self._written = offset
        self.offset = offset
        self._on_ready(offset, note)
        checkpoint = (offset // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY
        flushed = offset
        fd = self.partial.fd
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the I/O thread learns of the error at its next call
            view = memoryview(data)
            try:
                while view:
                    # Split at checkpoint boundaries so each checkpoint hashes an exact prefix.
                    piece = view[: checkpoint - self._written]
                    self._hash.update(piece)
                    while piece:
                        n = os.write(fd, piece)
                        self._written += n
                        piece, view = piece[n:], view[n:]
                    if self._written == checkpoint:
                        self.partial.checkpoint(self._written, self._hash.copy().hexdigest())
                        checkpoint += CHECKPOINT_EVERY
            except OSError as exc:
                self._error = TransferError(f"cannot write {self.name}: {exc.strerror}")
                continue
            if self._written - flushed >= self.WRITEBACK_EVERY:
                # Start writing the finished part to disk now, so the fsync that
                # publishing needs has little left to do (and the page cache stays small).
                os.posix_fadvise(fd, flushed, self._written - flushed, os.POSIX_FADV_DONTNEED)
                flushed = self._written

    def _stop_writer(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()

    def finish(self, sha256: str) -> Path:
        """Verify and publish; on any mismatch the partial is gone and TransferError says why."""
        try:
            self._stop_writer()
            if self._error is not None:
                raise self._error
            if sha256 != self.sha256:
                raise TransferError("the sender's end message names another SHA-256 than its offer")
            if self.received != self.size:
                raise TransferError(f"truncated: got {self.received} of {self.size} bytes")
            actual = self._hash.hexdigest()
            if actual != sha256:
                raise TransferError(f"SHA-256 mismatch: sender says {sha256[:16]}…, received data is {actual[:16]}…")
            try:
                os.fsync(self.partial.fd)
            except OSError as exc:
                raise TransferError(f"cannot write {self.name}: {exc.strerror}") from exc
            path = self.downloads.publish(self.partial.store.fd, self.partial.part_name, self.name, actual)
            self._done = True
            self.partial.remove()
            return path
        finally:
            if not self._done:
                self.discard()

    def suspend(self) -> int:
        """Stop without publishing and keep what arrived for a resume, within the sender's caps
        (partials.py); returns the bytes kept (0 if none could be)."""
        if self._done:
            return 0
        self._done = True
        self._stop_writer()
        kept = self.partial.sidecar.done
        if self._error is None and self.offset is not None:
            try:
                self.partial.checkpoint(self._written, self._hash.hexdigest())
                kept = self._written
            except OSError:
                pass  # the last checkpoint stands
        self._error = self._error or TransferError("suspended")
        # Keeping it applies the sender's caps at once; this partial may be the one they delete.
        return kept if self.partial.release() else 0

    def discard(self) -> None:
        """Delete the partial: what arrived cannot be trusted (safe to call more than once)."""
        self._done = True
        self._error = self._error or TransferError("discarded")
        self._stop_writer()
        self.partial.remove()


class FileSource:
    """A local file to send: hashed whole before it is offered, then read from any offset.

    The offer carries the SHA-256 so that a receiver can find a partial of
    exactly this content. Hashes are remembered per (device, inode, size,
    mtime) for the life of the process, so re-offering after a reconnect does
    not read the file twice; a file that changed gets a new hash, and so a
    fresh transfer.
    """

    _known_hashes: dict[tuple[int, int, int, int], str] = {}
    _known_lock = threading.Lock()
    MAX_KNOWN = 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        try:
            self._file = open(path, "rb", buffering=0)
        except FileNotFoundError as exc:
            raise UsageError(f"no such file: {path}") from exc
        except IsADirectoryError as exc:
            raise UsageError(f"{path} is a folder; send the files in it one by one") from exc
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        st = os.fstat(self._file.fileno())
        if not stat.S_ISREG(st.st_mode):
            self._file.close()
            raise UsageError(f"{path} is not a regular file")
        self.size = st.st_size
        self._identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.sent = 0
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """The SHA-256 of the whole file (read once per version of the file)."""
        if self._sha256 is None:
            with self._known_lock:
                self._sha256 = self._known_hashes.get(self._identity)
        if self._sha256 is None:
            digest = hashlib.sha256()
            buffer = bytearray(frames.MAX_CHUNK_DATA)
            view = memoryview(buffer)
            position = 0
            while n := os.preadv(self._file.fileno(), [view], position):
                digest.update(view[:n])
                position += n
            self._check_unchanged()
            if position != self.size:
                raise TransferError(f"{self.name} changed while it was being read")
            self._sha256 = digest.hexdigest()
            with self._known_lock:
                if len(self._known_hashes) >= self.MAX_KNOWN:
                    self._known_hashes.clear()
                self._known_hashes[self._identity] = self._sha256
        return self._sha256

    def _check_unchanged(self) -> None:
        st = os.fstat(self._file.fileno())
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self._identity:
            raise TransferError(f"{self.name} changed while it was being sent")

    def chunk_frames(self, transfer_id: int, offset: int = 0) -> Iterator[bytearray]:
        """CHUNK frames from `offset` to the end; each is a fresh buffer the caller may queue."""
        data_at = frames.CHUNK_HEADER_SIZE
        fd = self._file.fileno()
        self.sent = offset
        while self.sent < self.size:
            want = min(frames.MAX_CHUNK_DATA, self.size - self.sent)
            frame = bytearray(data_at + want)
            view = memoryview(frame)
            n = os.preadv(fd, [view[data_at:]], self.sent)
            if n < want:
                raise TransferError(f"{self.name} shrank while it was being sent")
            frame[:data_at] = frames.chunk_header(transfer_id, n)
            self.sent += n
            yield frame
        # The offer promised this content: a file edited since it was hashed must not be ended as if it were.
        self._check_unchanged()

    def close(self) -> None:
        self._file.close()
