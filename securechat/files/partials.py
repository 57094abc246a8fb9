"""Partly received files, kept so that an interrupted transfer resumes where it stopped.

Every incoming file is written into `<downloads>/.securechat-partial/`:

    <key>.part   the bytes received so far (never under its final name)
    <key>.json   the sidecar: sender, name, size, final SHA-256, `done`, and
                 `prefix_sha256`, the SHA-256 of exactly the first `done` bytes

`key` is derived from (sender identity, size, final SHA-256), so only the same
sender offering the same content finds a partial; another sender cannot learn
what we hold. The sidecar is rewritten (atomically, by rename) at every 4 MiB
boundary by the file's writer thread and once more when a transfer stops, so a
killed receiver loses at most one block.

Resuming re-reads the kept prefix once. That read is not extra work: the final
SHA-256 needs the running hash of those bytes anyway (hashlib cannot save its
state), and checking it against `prefix_sha256` on the way costs nothing more.
A prefix that fails the check is thrown away and the transfer starts at zero.

Each .part holds an exclusive flock while a transfer writes it, so two
transfers (or two processes sharing a downloads folder) never write one file.

Limits on what one sender leaves behind (a member that starts and aborts files
must not fill a receiver's disk):

- at most MAX_PER_SENDER (8) kept partials per sender, and
- at most `byte cap` bytes of them: MAX_BYTES_PER_SENDER (4 GiB; the
  environment variable SECURECHAT_PARTIAL_BYTES_PER_SENDER, in bytes, sets
  another) or a tenth of the free space (counting that sender's kept partials
  as free), whichever is smaller;
- none untouched for KEEP_FOR (7 days).

Both per-sender caps are enforced the moment a partial is kept (`release`:
the transfer was aborted or its connection lost), oldest first, the one just
kept included: a partial bigger than the byte cap on its own is not kept.
Partials being written (flock held) are not "kept" yet and are never deleted.
The caps and the age limit are swept again whenever a new file starts
arriving, which also catches what a killed receiver left.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import time

from securechat.errors import TransferError, UsageError

PARTIAL_DIR = ".securechat-partial"
CHECKPOINT_EVERY = 4 * 1024 * 1024  # a killed receiver re-fetches at most this much
KEEP_FOR = 7 * 24 * 3600  # seconds an untouched partial is kept
MAX_PER_SENDER = 8  # partials kept per sender; the oldest go first
MAX_BYTES_PER_SENDER = 4 * 1024**3  # bytes of partials kept per sender, unless the environment says otherwise
FREE_SPACE_SHARE = 10  # and never more than a tenth of the free space
BYTES_PER_SENDER_ENV = "SECURECHAT_PARTIAL_BYTES_PER_SENDER"
MAX_SIDECAR_BYTES = 4096
ORPHAN_AGE = 3600  # seconds before a .part without sidecar (or a torn sidecar write) is deleted
_READ_SIZE = 1024 * 1024
_LOCK_ATTEMPTS = 20  # 10 ms apart: a sweep's look at a partial ends long before
_SIDECAR_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Sidecar:
    sender: str
    name: str
    size: int
    sha256: str
    done: int
    prefix_sha256: str
    updated: float

    def to_json(self) -> bytes:
        return json.dumps({"format": _SIDECAR_FORMAT, **self.__dict__}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Sidecar | None":
        """The sidecar, or None for anything that is not one we wrote (treated as absent)."""
        try:
            raw = json.loads(data)
            if raw.pop("format") != _SIDECAR_FORMAT:
                return None
            sidecar = cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        ok = (
            isinstance(sidecar.sender, str) and isinstance(sidecar.name, str)
            and type(sidecar.size) is int and type(sidecar.done) is int and 0 <= sidecar.done <= sidecar.size
            and isinstance(sidecar.sha256, str) and isinstance(sidecar.prefix_sha256, str)
            and isinstance(sidecar.updated, (int, float))
        )
        return sidecar if ok else None


def bytes_per_sender_setting() -> int:
    """The byte cap on one sender's kept partials before the free-space share: the default or the environment's."""
    text = os.environ.get(BYTES_PER_SENDER_ENV, "").strip()
    if not text:
        return MAX_BYTES_PER_SENDER
    if not text.isdigit():
        raise UsageError(f"{BYTES_PER_SENDER_ENV}={text!r}: give a number of bytes, e.g. 1073741824")
    return int(text)


def partial_key(sender: str, size: int, sha256: str) -> str:
    return hashlib.sha256(f"{sender}\0{size}\0{sha256}".encode("utf-8", "surrogatepass")).hexdigest()[:40]


class PartialStore:
    """The hidden partial area of one downloads folder."""

    def __init__(self, downloads_fd: int, max_bytes_per_sender: int = MAX_BYTES_PER_SENDER) -> None:
        self.max_bytes_per_sender = max_bytes_per_sender
        try:
            os.mkdir(PARTIAL_DIR, 0o700, dir_fd=downloads_fd)
        except FileExistsError:
            pass
        try:
            self.fd = os.open(PARTIAL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=downloads_fd)
        except OSError as exc:
            raise TransferError(f"cannot use the partial-file folder {PARTIAL_DIR}: {exc.strerror}") from exc

    def close(self) -> None:
        os.close(self.fd)

    def open(self, sender: str, name: str, size: int, sha256: str) -> "Partial":
        """The partial for this file, locked for writing: resumable if a matching sidecar exists."""
        key = partial_key(sender, size, sha256)
        replaced = self.sweep(sender, name, keep=key)
        fd = self._open_locked(key)
        sidecar = self._read_sidecar(key)
        if sidecar is None or (sidecar.sender, sidecar.size, sidecar.sha256) != (sender, size, sha256):
            sidecar = Sidecar(sender, name, size, sha256, 0, hashlib.sha256().hexdigest(), time.time())
        sidecar = dataclasses.replace(sidecar, name=name)
        partial = Partial(self, key, fd, sidecar)
        partial.replaced = replaced
        partial.checkpoint(sidecar.done, sidecar.prefix_sha256)  # a .part never exists without its sidecar
        return partial

    def _open_locked(self, key: str) -> int:
        """`key`.part, created if need be, with its exclusive flock."""
        for attempt in range(_LOCK_ATTEMPTS):
            try:
                fd = os.open(f"{key}.part", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=self.fd)
            except OSError as exc:
                raise TransferError(f"cannot create a file to receive into: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # A sweep (another transfer stopping) holds it for a moment; a transfer, for long.
                os.close(fd)
                time.sleep(0.01)
                continue
            if os.fstat(fd).st_nlink:
                return fd
            os.close(fd)  # a sweep deleted it while we waited for the lock: make a new one
        raise TransferError("the same file from the same sender is arriving already")

    def _read_sidecar(self, key: str) -> Sidecar | None:
        try:
            fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        try:
            return Sidecar.from_json(os.read(fd, MAX_SIDECAR_BYTES + 1)[:MAX_SIDECAR_BYTES])
        except OSError:
            return None
        finally:
            os.close(fd)

    def remove(self, key: str) -> None:
        for name in (f"{key}.json", f"{key}.part"):
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass

    def _remove_if_idle(self, key: str) -> bool:
        """Delete a partial that no transfer is writing (its flock is free)."""
        try:
            fd = os.open(f"{key}.part", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            self.remove(key)
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.remove(key)  # while holding the lock: whoever opens the name next gets a new file
        os.close(fd)
        return True

    def sweep(self, sender: str | None = None, name: str | None = None, keep: str | None = None,
              now: float | None = None) -> list[Sidecar]:
        """Delete partials that expired, that `sender` keeps beyond its caps (see the module
        docstring), and that `sender` has for `name` under another key than `keep` (the same
        name offered with other content: the file changed). Returns the sidecars deleted for
        that last reason."""
        now = time.time() if now is None else now
        mine: list[tuple[float, str]] = []
        changed: list[Sidecar] = []
        for entry in os.listdir(self.fd):
            key, _, ext = entry.partition(".")
            if key == keep:
                continue
            if ext == "json":
                sidecar = self._read_sidecar(key)
                if sidecar is None or now - sidecar.updated > KEEP_FOR:
                    self._remove_if_idle(key)
                elif sender is not None and sidecar.sender == sender:
                    if sidecar.name == name and self._remove_if_idle(key):
                        changed.append(sidecar)
                    else:
                        mine.append((sidecar.updated, key))
            elif self._age(entry, now) > ORPHAN_AGE:
                # A sidecar rewrite cut short by a crash, or a .part whose sidecar is gone:
                # nothing can resume from either.
                if ext.startswith("json."):
                    _unlink(entry, self.fd)
                elif ext == "part" and self._age(f"{key}.json", now) < 0:
                    self._remove_if_idle(key)
        self._enforce_caps(mine)
        return changed

    def _enforce_caps(self, partials: list[tuple[float, str]]) -> None:
        """Keep the newest of one sender's (updated, key) partials within both caps; delete the rest."""
        kept = [(updated, key, self._part_size(key)) for updated, key in partials if not self._busy(key)]
        kept.sort(reverse=True)
        cap = self.byte_cap(sum(size for _, _, size in kept))
        count = total = 0
        full = False
        for _, key, size in kept:
            # Once one does not fit, everything older goes too (even what would fit): oldest first.
            full = full or count == MAX_PER_SENDER or total + size > cap
            if full:
                self._remove_if_idle(key)
            else:
                count += 1
                total += size

    def byte_cap(self, kept_bytes: int = 0) -> int:
        """Bytes one sender may keep here: the setting, or a tenth of the free space counting
        `kept_bytes` (that sender's partials) as free, so a partial does not shrink its own cap."""
        return min(self.max_bytes_per_sender, (self.free_bytes() + kept_bytes) // FREE_SPACE_SHARE)

    def free_bytes(self) -> int:
        st = os.fstatvfs(self.fd)
        return st.f_bavail * st.f_frsize

    def _part_size(self, key: str) -> int:
        try:
            return os.stat(f"{key}.part", dir_fd=self.fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return 0

    def _busy(self, key: str) -> bool:
        """Whether a transfer is writing this partial now (it holds the flock)."""
        try:
            fd = os.open(f"{key}.part", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock
        return False

    def keep(self, partial: "Partial") -> bool:
        """A transfer stopped and `partial` (closed) is kept: apply its sender's caps now,
        counting it. Whether it is still there (False: alone it is over the byte cap)."""
        self.sweep(partial.sidecar.sender)
        return self._read_sidecar(partial.key) is not None

    def _age(self, entry: str, now: float) -> float:
        """Seconds since `entry` changed; -1 if it does not exist."""
        try:
            return now - os.stat(entry, dir_fd=self.fd, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return -1.0


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


class Partial:
    """One locked partial file and its sidecar."""

    def __init__(self, store: PartialStore, key: str, fd: int, sidecar: Sidecar) -> None:
        self.store = store
        self.key = key
        self.fd = fd
        self.sidecar = sidecar
        self.replaced: list[Sidecar] = []  # this sender's partials of the same name, other content: deleted

    @property
    def part_name(self) -> str:
        return f"{self.key}.part"

    def resume(self) -> tuple[int, "hashlib._Hash", str]:
        """Check the kept prefix: (offset to continue at, running hash of bytes before it, note)."""
        done, running = self.sidecar.done, hashlib.sha256()
        note = ""
        if done:
            buffer = bytearray(_READ_SIZE)
            view = memoryview(buffer)
            position = 0
            while position < done:
                n = os.preadv(self.fd, [view[: min(_READ_SIZE, done - position)]], position)
                if n == 0:
                    break
                running.update(view[:n])
                position += n
            if position != done or running.hexdigest() != self.sidecar.prefix_sha256:
                note = "the kept part failed its SHA-256 check; starting again from zero"
                done, running = 0, hashlib.sha256()
                self.checkpoint(0, running.hexdigest())
        os.ftruncate(self.fd, done)
        os.lseek(self.fd, done, os.SEEK_SET)
        return done, running, note

    def checkpoint(self, done: int, prefix_sha256: str) -> None:
        """Record that the first `done` bytes are written and hash to `prefix_sha256`."""
        self.sidecar = Sidecar(self.sidecar.sender, self.sidecar.name, self.sidecar.size, self.sidecar.sha256,
                               done, prefix_sha256, time.time())
        temp = f"{self.key}.json.{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.store.fd)
        try:
            os.write(fd, self.sidecar.to_json())
        finally:
            os.close(fd)
        os.replace(temp, f"{self.key}.json", src_dir_fd=self.store.fd, dst_dir_fd=self.store.fd)

    def release(self) -> bool:
        """Stop writing and keep the partial for a later resume, within its sender's caps
        (enforced now, this one counted). Whether it was kept."""
        if self.fd < 0:
            return False
        self._close()
        return self.store.keep(self)

    def remove(self) -> None:
        """Delete the partial (it was published, or it cannot be trusted)."""
        if self.fd >= 0:
            self.store.remove(self.key)
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

