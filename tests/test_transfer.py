"""The receive path: partial file, hash while writing, verify, no-clobber publish."""

from __future__ import annotations

import hashlib
import os

import pytest

from helpers.files import files_in, incoming_file
from securechat.errors import TransferError, UsageError
from securechat.files.checksums import read_sums
from securechat.files.transfer import Downloads, FileSource, IncomingFile
from securechat.wire import frames


def receive(downloads: Downloads, name: str, data: bytes, sha: str | None = None):
    sha = sha or hashlib.sha256(data).hexdigest()
    incoming, offset, _ = incoming_file(downloads, name, len(data), sha)
    for i in range(offset, len(data), 1000):
        incoming.write(data[i : i + 1000])
    return incoming.finish(sha)


def leftovers(folder) -> list[str]:
    return [f for f in files_in(folder) if f != "SHA256SUMS" and "/" in f]


def test_publish_verified_file(downloads):
    data = os.urandom(5000)
    path = receive(downloads, "photo.jpg", data)
    assert path == downloads.path / "photo.jpg"
    assert path.read_bytes() == data
    assert (path.stat().st_mode & 0o777) == 0o600
    assert read_sums(downloads.path) == {"photo.jpg": hashlib.sha256(data).hexdigest()}
    assert leftovers(downloads.path) == []


def test_sha256_mismatch_leaves_nothing(downloads):
    with pytest.raises(TransferError, match="SHA-256 mismatch"):
        receive(downloads, "photo.jpg", b"abc", sha="0" * 64)
    assert files_in(downloads.path) == []


def test_truncated_file_is_refused(downloads):
    incoming, _, _ = incoming_file(downloads, "t.bin", 10, hashlib.sha256(b"12345").hexdigest())
    incoming.write(b"12345")
    with pytest.raises(TransferError, match="truncated"):
        incoming.finish(hashlib.sha256(b"12345").hexdigest())
    assert files_in(downloads.path) == []


def test_more_bytes_than_declared_is_refused(downloads):
    incoming, _, _ = incoming_file(downloads, "t.bin", 3, "0" * 64)
    with pytest.raises(TransferError, match="more than"):
        incoming.write(b"1234")
    incoming.discard()
    assert files_in(downloads.path) == []


def test_never_overwrites(downloads):
    (downloads.path / "a.txt").write_text("original")
    first = receive(downloads, "a.txt", b"one")
    second = receive(downloads, "a.txt", b"two")
    assert (downloads.path / "a.txt").read_text() == "original"
    assert first.name == "a (1).txt" and second.name == "a (2).txt"
    assert first.read_bytes() == b"one"


def test_planted_symlink_is_not_followed(downloads, tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    os.symlink(target, downloads.path / "evil.txt")
    path = receive(downloads, "evil.txt", b"payload")
    assert target.read_text() == "precious"
    assert path.name == "evil (1).txt"


def test_symlinked_downloads_folder_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with pytest.raises(UsageError, match="symbolic link"):
        Downloads(tmp_path / "link")


def test_hostile_name_stays_inside(downloads, tmp_path):
    path = receive(downloads, "../../escape.txt", b"x")
    assert path.parent == downloads.path
    assert not (tmp_path / "escape.txt").exists()


def test_size_limits_checked_before_writing(tmp_path):
    limited = Downloads(tmp_path / "dl", max_file_size=100)
    with pytest.raises(TransferError, match="exceeds the limit"):
        IncomingFile(limited, "big", 101, "0" * 64, "alice", lambda *_: None)
    with pytest.raises(TransferError, match="free space"):
        IncomingFile(Downloads(tmp_path / "dl2"), "huge", 2**50, "0" * 64, "alice", lambda *_: None)
    assert files_in(tmp_path / "dl") == []


def test_file_source_frames_and_hash(tmp_path):
    data = os.urandom(frames.MAX_CHUNK_DATA * 2 + 123)
    (tmp_path / "f.bin").write_bytes(data)
    source = FileSource(tmp_path / "f.bin")
    decoder = frames.FrameDecoder()
    for frame in source.chunk_frames(42):
        decoder.feed(frame)
    got = b""
    while (chunk := decoder.next_frame()) is not None:
        assert chunk.id == 42
        got += chunk.data
    assert got == data
    assert source.sha256 == hashlib.sha256(data).hexdigest()
    source.close()


def test_file_source_from_an_offset(tmp_path):
    data = os.urandom(frames.MAX_CHUNK_DATA + 500)
    (tmp_path / "f.bin").write_bytes(data)
    source = FileSource(tmp_path / "f.bin")
    sent = b"".join(bytes(f[frames.CHUNK_HEADER_SIZE:]) for f in source.chunk_frames(1, offset=700))
    assert sent == data[700:]
    source.close()


def test_file_source_detects_a_change_after_hashing(tmp_path):
    path = tmp_path / "grow.bin"
    path.write_bytes(b"a" * 10)
    source = FileSource(path)
    assert source.sha256 == hashlib.sha256(b"a" * 10).hexdigest()
    with open(path, "ab") as f:
        f.write(b"more")
    with pytest.raises(TransferError, match="changed while it was being sent"):
        list(source.chunk_frames(1))
    source.close()


def test_file_source_refuses_missing_and_folders(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        FileSource(tmp_path / "nope")
    with pytest.raises(UsageError, match="folder"):
        FileSource(tmp_path)
