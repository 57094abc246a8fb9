"""Files on disk: reading one to send, and receiving one safely.

Receiving follows magic-wormhole's receive path, tightened: hash while
writing into a temp file created with O_EXCL|O_NOFOLLOW inside the downloads
folder, and only when size and SHA-256 both match, publish it with a
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
import secrets
import stat
import threading
from pathlib import Path
from typing import Iterator

from . import frames
from .checksums import append_sum
from .errors import TransferError, UsageError
from .filenames import numbered_alternative, safe_filename

TEMP_PREFIX = ".securechat-"
TEMP_SUFFIX = ".part"
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

    def close(self) -> None:
        os.close(self._fd)

    def check_room(self, size: int) -> None:
        """Refuse a declared size before a single byte is written."""
        if self.max_file_size is not None and size > self.max_file_size:
            raise TransferError(f"file of {human_size(size)} exceeds the limit of {human_size(self.max_file_size)}")
        st = os.fstatvfs(self._fd)
        free = st.f_bavail * st.f_frsize
        if size > free - FREE_SPACE_RESERVE:
            raise TransferError(f"not enough free space for {human_size(size)} ({human_size(free)} free)")

    def create_temp(self) -> tuple[int, str]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        name = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        return os.open(name, flags, 0o600, dir_fd=self._fd), name

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._fd)
        except FileNotFoundError:
            pass

    def publish(self, temp_name: str, wanted: str, sha256: str) -> Path:
        """Give the verified temp file its final name without ever replacing a file."""
        with self._publish_lock:
            for n in range(MAX_NAME_ATTEMPTS):
                final = wanted if n == 0 else numbered_alternative(wanted, n)
                try:
                    # link() fails with EEXIST on any existing entry, a symlink included.
                    os.link(temp_name, final, src_dir_fd=self._fd, dst_dir_fd=self._fd, follow_symlinks=False)
                except FileExistsError:
                    continue
                break
            else:
                raise TransferError(f"{MAX_NAME_ATTEMPTS} files named like {wanted!r} exist already")
            self.remove(temp_name)
            append_sum(self._fd, final, sha256)
        return self.path / final


class IncomingFile:
    """One file being received: bytes go to a temp file and into SHA-256 together.

    Hashing and writing happen on a writer thread of this file's own, fed
    through a short queue: both release the GIL, so the connection's I/O
    thread decrypts the next chunk while this one is hashed and written (the
    profile showed them as the I/O thread's largest costs). The queue is
    bounded, so a slow disk slows the sender instead of filling memory.
    """

    WRITE_QUEUE = 2  # chunks (up to 1 MiB each) waiting for the writer thread
    WRITEBACK_EVERY = 32 * 1024 * 1024

    def __init__(self, downloads: Downloads, offered_name: str, size: int) -> None:
        downloads.check_room(size)
        self.downloads = downloads
        self.name = safe_filename(offered_name)
        self.size = size
        self.received = 0
        self._hash = hashlib.sha256()
        fd, self._temp = downloads.create_temp()
        self._file = open(fd, "wb", buffering=0, closefd=True)
        self._done = False
        self._error: TransferError | None = None
        self._queue: queue.Queue = queue.Queue(self.WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_all, name=f"write-{self._temp}", daemon=True)
        self._writer.start()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data` (which must not be changed afterwards) for hashing and writing."""
        if self._error is not None:
            raise self._error
        if self.received + len(data) > self.size:
            raise TransferError(f"sender sent more than the {self.size} bytes it declared")
        self.received += len(data)
        self._queue.put(data)

    def _write_all(self) -> None:
        written = flushed = 0
        fd = self._file.fileno()
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the I/O thread learns of the error at its next call
            self._hash.update(data)
            try:
                view = memoryview(data)
                while view:
                    view = view[self._file.write(view):]
            except OSError as exc:
                self._error = TransferError(f"cannot write {self.name}: {exc.strerror}")
                continue
            written += len(data)
            if written - flushed >= self.WRITEBACK_EVERY:
                # Start writing the finished part to disk now, so the fsync that
                # publishing needs has little left to do (and the page cache stays small).
                os.posix_fadvise(fd, flushed, written - flushed, os.POSIX_FADV_DONTNEED)
                flushed = written

    def _stop_writer(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()

    def finish(self, sha256: str) -> Path:
        """Verify and publish; on any mismatch the temp file is gone and TransferError says why."""
        try:
            self._stop_writer()
            if self._error is not None:
                raise self._error
            if self.received != self.size:
                raise TransferError(f"truncated: got {self.received} of {self.size} bytes")
            actual = self._hash.hexdigest()
            if actual != sha256:
                raise TransferError(f"SHA-256 mismatch: sender says {sha256[:16]}…, received data is {actual[:16]}…")
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise TransferError(f"cannot write {self.name}: {exc.strerror}") from exc
            self._file.close()
            path = self.downloads.publish(self._temp, self.name, actual)
            self._done = True
            return path
        finally:
            if not self._done:
                self.discard()

    def discard(self) -> None:
        """Delete the temp file (safe to call more than once)."""
        self._done = True
        self._error = self._error or TransferError("discarded")
        self._stop_writer()
        self._file.close()
        self.downloads.remove(self._temp)


class FileSource:
    """A local file to send, read in frame-sized pieces and hashed as it goes."""

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
        self.sent = 0
        self._hash = hashlib.sha256()

    def chunk_frames(self, transfer_id: int) -> Iterator[bytearray]:
        """CHUNK frames for the whole file; each is a fresh buffer the caller may queue."""
        data_at = frames.CHUNK_HEADER_SIZE
        while self.sent < self.size:
            want = min(frames.MAX_CHUNK_DATA, self.size - self.sent)
            frame = bytearray(data_at + want)
            view = memoryview(frame)
            n = self._file.readinto(view[data_at:])
            if not n:
                raise TransferError(f"{self.name} shrank while it was being sent")
            if n < want:
                del view
                del frame[data_at + n :]
                view = memoryview(frame)
            frame[:data_at] = frames.chunk_header(transfer_id, n)
            self._hash.update(view[data_at:])
            self.sent += n
            yield frame
        if self._file.read(1):
            raise TransferError(f"{self.name} grew while it was being sent")

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()
