"""The partial area: checkpoints, the prefix check, locking, and clean-up of what is never resumed."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import pytest

from securechat.errors import TransferError
from securechat.partials import KEEP_FOR, MAX_PER_SENDER, PARTIAL_DIR, Sidecar
from securechat.transfer import Downloads

from test_transfer import incoming_file

DATA = bytes(range(256)) * 40_000  # ~10 MB: two checkpoints and a tail
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def downloads(tmp_path):
    d = Downloads(tmp_path / "dl")
    yield d
    d.close()


def partial_area(downloads: Downloads) -> set[str]:
    return set(os.listdir(downloads.path / PARTIAL_DIR))


def interrupted_at(downloads: Downloads, received: int, sender: str = "alice", name: str = "f.bin") -> None:
    incoming, offset, _ = incoming_file(downloads, name, len(DATA), SHA, sender)
    assert offset == 0
    incoming.write(DATA[:received])
    assert incoming.suspend() == received


def test_suspended_file_resumes_exactly_where_it_stopped(downloads):
    interrupted_at(downloads, 5_000_000)
    incoming, offset, note = incoming_file(downloads, "f.bin", len(DATA), SHA)
    assert (offset, note) == (5_000_000, "")
    incoming.write(DATA[offset:])
    assert incoming.finish(SHA).read_bytes() == DATA
    assert partial_area(downloads) == set()


def test_other_sender_or_content_does_not_find_the_partial(downloads):
    interrupted_at(downloads, 5_000_000)
    _, offset, _ = incoming_file(downloads, "f.bin", len(DATA), SHA, sender="mallory")
    assert offset == 0


def test_same_name_with_other_content_replaces_the_partial(downloads):
    interrupted_at(downloads, 5_000_000)
    other = hashlib.sha256(b"other").hexdigest()
    incoming, offset, note = incoming_file(downloads, "f.bin", 5, other)
    assert offset == 0 and "other content" in note
    incoming.suspend()
    assert len([n for n in partial_area(downloads) if n.endswith(".part")]) == 1


def test_truncated_partial_restarts_from_zero(downloads):
    interrupted_at(downloads, 5_000_000)
    part = next((downloads.path / PARTIAL_DIR).glob("*.part"))
    os.truncate(part, 1000)
    _, offset, note = incoming_file(downloads, "f.bin", len(DATA), SHA)
    assert offset == 0 and "failed its SHA-256 check" in note


@pytest.mark.parametrize("garbage", [b"", b"{", b'{"format": 1}', b'{"format": 1, "sender": 3}', b"\xff" * 5000])
def test_broken_sidecar_means_start_from_zero(downloads, garbage):
    interrupted_at(downloads, 5_000_000)
    sidecar = next((downloads.path / PARTIAL_DIR).glob("*.json"))
    sidecar.write_bytes(garbage)
    _, offset, _ = incoming_file(downloads, "f.bin", len(DATA), SHA)
    assert offset == 0


def test_a_file_being_received_is_not_received_twice(downloads):
    first, _, _ = incoming_file(downloads, "f.bin", len(DATA), SHA)
    with pytest.raises(TransferError, match="arriving already"):
        incoming_file(downloads, "f.bin", len(DATA), SHA)
    first.discard()


def _age(downloads: Downloads, seconds: float) -> None:
    for sidecar_path in (downloads.path / PARTIAL_DIR).glob("*.json"):
        sidecar = Sidecar.from_json(sidecar_path.read_bytes())
        assert sidecar is not None
        sidecar_path.write_bytes(dataclasses.replace(sidecar, updated=time.time() - seconds).to_json())


def test_partials_never_resumed_are_deleted_after_keep_for(downloads):
    interrupted_at(downloads, 5_000_000)
    _age(downloads, KEEP_FOR - 60)
    downloads.partials.sweep()
    assert len(partial_area(downloads)) == 2  # .part and .json, still within the time
    _age(downloads, KEEP_FOR + 60)
    downloads.partials.sweep()
    assert partial_area(downloads) == set()


def test_one_sender_keeps_at_most_max_per_sender_partials(downloads):
    for i in range(MAX_PER_SENDER + 3):
        data = DATA[: 1000 + i]
        incoming, _, _ = incoming_file(downloads, f"f{i}.bin", len(data), hashlib.sha256(data).hexdigest())
        incoming.write(data[:10])
        incoming.suspend()
    interrupted_at(downloads, 1000, sender="bob")
    parts = [n for n in partial_area(downloads) if n.endswith(".part")]
    assert len(parts) == MAX_PER_SENDER + 1  # alice's newest, plus bob's


def test_symlinked_partial_area_is_refused(tmp_path):
    (tmp_path / "dl").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "dl" / PARTIAL_DIR)
    downloads = Downloads(tmp_path / "dl")
    with pytest.raises(TransferError, match="partial-file folder"):
        incoming_file(downloads, "f.bin", len(DATA), SHA)
    assert os.listdir(tmp_path / "elsewhere") == []
    downloads.close()
