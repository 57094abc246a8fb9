"""The receive path: temp file, hash while writing, verify, no-clobber publish."""

from __future__ import annotations

import hashlib
import os

import pytest

from securechat import frames
from securechat.checksums import read_sums
from securechat.errors import TransferError, UsageError
from securechat.transfer import TEMP_PREFIX, Downloads, FileSource, IncomingFile


def receive(downloads: Downloads, name: str, data: bytes, sha: str | None = None):
    incoming = IncomingFile(downloads, name, len(data))
    for i in range(0, len(data), 1000):
        incoming.write(data[i : i + 1000])
    return incoming.finish(sha or hashlib.sha256(data).hexdigest())


def leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]


@pytest.fixture
def downloads(tmp_path):
    d = Downloads(tmp_path / "dl")
    yield d
    d.close()


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
    assert os.listdir(downloads.path) == []


def test_truncated_file_is_refused(downloads):
    incoming = IncomingFile(downloads, "t.bin", 10)
    incoming.write(b"12345")
    with pytest.raises(TransferError, match="truncated"):
        incoming.finish(hashlib.sha256(b"12345").hexdigest())
    assert os.listdir(downloads.path) == []


def test_more_bytes_than_declared_is_refused(downloads):
    incoming = IncomingFile(downloads, "t.bin", 3)
    with pytest.raises(TransferError, match="more than"):
        incoming.write(b"1234")
    incoming.discard()
    assert os.listdir(downloads.path) == []


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
        IncomingFile(limited, "big", 101)
    with pytest.raises(TransferError, match="free space"):
        IncomingFile(Downloads(tmp_path / "dl2"), "huge", 2**50)
    assert os.listdir(tmp_path / "dl") == []


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


def test_file_source_detects_growth(tmp_path):
    path = tmp_path / "grow.bin"
    path.write_bytes(b"a" * 10)
    source = FileSource(path)
    with open(path, "ab") as f:
        f.write(b"more")
    with pytest.raises(TransferError, match="grew"):
        list(source.chunk_frames(1))
    source.close()


def test_file_source_refuses_missing_and_folders(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        FileSource(tmp_path / "nope")
    with pytest.raises(UsageError, match="folder"):
        FileSource(tmp_path)
