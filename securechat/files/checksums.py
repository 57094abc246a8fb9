"""SHA256SUMS: the record of every file we published, and checking files against it.

The format is coreutils' (`<64 hex>  <name>`), so `sha256sum -c SHA256SUMS`
works in the downloads folder too. Names we write never contain a newline or
a backslash (filenames.safe_filename removes both), so no escaping is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

SUMS_FILENAME = "SHA256SUMS"
READ_SIZE = 1024 * 1024

_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    """name -> sha256 for every line of folder/SHA256SUMS (the last line for a name wins)."""
    sums: dict[str, str] = {}
    try:
        text = (folder / SUMS_FILENAME).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return sums
    for line in text.splitlines():
        match = _LINE.fullmatch(line)
        if match:
            sums[match.group(2)] = match.group(1)
    return sums


def append_sum(dir_fd: int, name: str, sha256: str) -> None:
    """Append one record; O_APPEND keeps concurrent writers' lines whole."""
    line = f"{sha256}  {name}\n".encode("utf-8")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(SUMS_FILENAME, flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VerifyOutcome:
    path: Path
    ok: bool
    detail: str  # "verified", "MODIFIED: ...", "unknown: ...", "missing", "no such file"


def _check(path: Path, expected: str | None) -> VerifyOutcome:
    if not path.exists() and not path.is_symlink():
        # Whether or not it was recorded, the first thing to fix is the path.
        return VerifyOutcome(path, False, "no such file" if expected is None else "missing")
    if expected is None:
        return VerifyOutcome(path, False, f"unknown: not recorded in {path.parent / SUMS_FILENAME}")
    try:
        actual = sha256_of(path)
    except FileNotFoundError:
        return VerifyOutcome(path, False, "missing")
    except OSError as exc:
        return VerifyOutcome(path, False, f"unreadable: {exc.strerror}")
    if actual != expected:
        return VerifyOutcome(path, False, f"MODIFIED: sha256 is {actual}, recorded {expected}")
    return VerifyOutcome(path, True, f"verified sha256 {actual}")


def verify_paths(paths: list[Path], downloads: Path | None = None) -> list[VerifyOutcome]:
    """Check files against the SHA256SUMS of their folder (or of `downloads`).

    A folder stands for every file recorded in its own SHA256SUMS.
    """
    cache: dict[Path, dict[str, str]] = {}

    def sums_for(folder: Path) -> dict[str, str]:
        if folder not in cache:
            cache[folder] = read_sums(folder)
        return cache[folder]

    outcomes = []
    for path in paths:
        if path.is_dir():
            recorded = sums_for(path)
            if not recorded:
                outcomes.append(VerifyOutcome(path, False, f"unknown: no {SUMS_FILENAME} records in this folder"))
            for name, digest in recorded.items():
                outcomes.append(_check(path / name, digest))
            continue
        if downloads is not None and not path.exists() and (downloads / path).exists():
            path = downloads / path  # `verify photo.jpg --downloads dl` means dl/photo.jpg
        folder = downloads if downloads is not None else path.parent
        outcomes.append(_check(path, sums_for(folder).get(path.name)))
    return outcomes
