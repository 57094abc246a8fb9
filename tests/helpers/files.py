"""Files for tests to send (sparse, random, images) and what a downloads folder holds afterwards."""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import time
import zlib
from pathlib import Path

from securechat.files.partials import PARTIAL_DIR
from securechat.files.transfer import Downloads, IncomingFile

MiB = 1024 * 1024
JPEG_MAGIC = b"\xff\xd8\xff\xe0"  # what makes a file look like a JPEG to sniffing, not a decodable image


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` zero bytes that costs no disk: instant to make, seconds to send."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def random_file(path: Path, size: int, prefix: bytes = b"") -> str:
    """A file of `prefix` and then random bytes, `size` bytes after the prefix, no two MiB of which
    are alike (so a resume from the wrong offset cannot match by chance); its SHA-256."""
    digest = hashlib.sha256(prefix)
    block = os.urandom(min(size, MiB))
    with open(path, "wb") as f:
        f.write(prefix)
        for i, start in enumerate(range(0, size, MiB)):
            piece = (i.to_bytes(8, "big") + block[8:])[: size - start] if i else block[: size - start]
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def png(width: int, height: int) -> bytes:
    """A valid, decodable PNG of a red `width` x `height` image, made without Pillow."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\xff\0\0" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def jpeg(width: int, height: int) -> bytes:
    """The headers of a JPEG (JFIF, SOF0) of that size: enough to sniff, nothing to decode."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\0\x02\x11\0\x03\x11\0"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def partial_files(folder: Path) -> list[Path]:
    """The .part files in a downloads folder's hidden partial area."""
    return sorted((folder / PARTIAL_DIR).glob("*.part")) if (folder / PARTIAL_DIR).is_dir() else []


def files_in(folder: Path) -> list[str]:
    """Every file under `folder` (the partial area included), as relative paths; folders are not listed."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def wait_for_temp_file(folder: Path, timeout: float = 20, at_least: int = 1) -> Path:
    """Until a transfer into `folder` has written `at_least` bytes into its partial file; that file."""
    deadline = time.monotonic() + timeout
    while True:
        for part in partial_files(folder):
            try:
                if part.stat().st_size >= at_least:
                    return part
            except FileNotFoundError:
                pass
        assert time.monotonic() < deadline, f"no transfer into {folder} reached {at_least} bytes"
        time.sleep(0.01)


def incoming_file(downloads: Downloads, name: str, size: int, sha: str, sender: str = "alice"):
    """An IncomingFile, once it has said where to continue: (it, offset, note)."""
    ready: queue.Queue = queue.Queue()
    incoming = IncomingFile(downloads, name, size, sha, sender, lambda offset, note: ready.put((offset, note)))
    offset, note = ready.get(timeout=10)
    return incoming, offset, note
