"""Issue 7: survive the network. A receiver killed at half, a connection cut, a corrupted
partial, a file changed in between: each ends with the right file, verified by SHA-256,
and the bytes sent again are measured. Real processes, real TLS, on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from helpers.files import MiB, file_sha256, partial_files, random_file, wait_for_temp_file
from securechat.files.partials import CHECKPOINT_EVERY


def kill_when_received(proc, folder: Path, at_least: int) -> tuple[int, Path]:
    """SIGKILL `proc` once its partial in `folder` holds `at_least` bytes: (bytes it had written, the partial)."""
    part = wait_for_temp_file(folder, timeout=60, at_least=at_least)
    proc.popen.kill()
    proc.popen.wait(10)
    return part.stat().st_size, part


def bob_killed_halfway(room, path: Path, size: int):
    """alice sends a new random file at `path` to bob, who is SIGKILLed at half of it:
    (alice, the killed bob, its SHA-256, bytes bob had written, bob's partial)."""
    alice, bob = room.join("alice"), room.join("bob")
    digest = random_file(path, size)
    alice.send(f"/send @bob {path}")
    written, part = kill_when_received(bob, path.parent / "bob-downloads", size // 2)
    return alice, bob, digest, written, part


def notices(proc) -> list[str]:
    return [e["text"] for e in proc.events if e.get("event") == "notice"]


def test_receiver_killed_at_half_resumes_and_resends_at_most_one_block(room, tmp_path):
    size = 256 * MiB
    alice, bob, digest, written, _ = bob_killed_halfway(room, tmp_path / "archive.bin", size)
    bob_dl = tmp_path / "bob-downloads"
    assert "bob left" in alice.wait_event("file_interrupted", to="bob")["reason"]
    assert not (bob_dl / "archive.bin").exists()

    mark = alice.mark()
    bob = room.join("bob")  # a new process, the same downloads folder
    offset = bob.wait_event("file_incoming", name="archive.bin")["offset"]
    assert size * 0.4 < offset <= written
    assert written - offset <= CHECKPOINT_EVERY  # re-sent: at most one block beyond what was lost
    assert alice.wait_event("file_resuming", name="archive.bin", after=mark)["offset"] == offset
    received = bob.wait_event("file_received", name="archive.bin", timeout=60)
    assert received["sha256"] == digest == file_sha256(bob_dl / "archive.bin")
    assert alice.wait_event("file_delivered", to="bob", after=mark, timeout=60)["sha256"] == digest
    assert partial_files(bob_dl) == []


def test_sender_connection_cut_reconnects_by_itself_and_resumes(room, procs, pki, tmp_path, cutting_proxy):
    size = 256 * MiB
    bob = room.join("bob")
    proxy = cutting_proxy(room.port)
    alice = procs(["join", "127.0.0.1", "--port", str(proxy.port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(tmp_path / "alice-downloads"), "--json"], tmp_path)
    alice.wait_event("connected")
    digest = random_file(tmp_path / "photos.tar", size)
    alice.send(f"/send @bob {tmp_path / 'photos.tar'}")
    bob_dl = tmp_path / "bob-downloads"
    wait_for_temp_file(bob_dl, timeout=60, at_least=size // 2)
    mark, bob_mark = alice.mark(), bob.mark()
    proxy.cut()
    assert alice.wait_event("disconnected", after=mark)["reconnecting"] is True
    kept = bob.wait_event("file_rejected", name="photos.tar", after=bob_mark)
    assert "kept to resume" in kept["reason"]
    alice.wait_event("connected", after=mark, timeout=40)
    offset = bob.wait_event("file_incoming", name="photos.tar", after=bob_mark)["offset"]
    assert offset >= size // 2 - CHECKPOINT_EVERY
    assert bob.wait_event("file_received", name="photos.tar", timeout=60)["sha256"] == digest
    assert file_sha256(bob_dl / "photos.tar") == digest
    alice.wait_event("file_delivered", to="bob", after=mark, timeout=60)
    assert proxy.connections == 2 and alice.popen.poll() is None


def test_corrupted_partial_restarts_from_zero_and_still_verifies(room, tmp_path):
    size = 64 * MiB
    alice, bob, digest, _, part = bob_killed_halfway(room, tmp_path / "data.bin", size)
    bob_dl = tmp_path / "bob-downloads"
    with open(part, "r+b") as f:  # one flipped bit, early in the kept prefix
        f.seek(1000)
        byte = f.read(1)[0]
        f.seek(1000)
        f.write(bytes([byte ^ 0x01]))

    bob = room.join("bob")
    assert bob.wait_event("file_incoming", name="data.bin")["offset"] == 0
    assert any("failed its SHA-256 check" in n for n in notices(bob))
    assert bob.wait_event("file_received", name="data.bin", timeout=60)["sha256"] == digest
    assert file_sha256(bob_dl / "data.bin") == digest


def test_sender_file_changed_meanwhile_is_detected_and_sent_afresh(room, tmp_path):
    size = 64 * MiB
    path = tmp_path / "report.bin"
    alice, bob, _, _, _ = bob_killed_halfway(room, path, size)
    bob_dl = tmp_path / "bob-downloads"
    alice.wait_event("file_interrupted", to="bob")
    new_digest = random_file(path, size)  # edited while bob was away

    bob = room.join("bob")
    assert bob.wait_event("file_incoming", name="report.bin")["offset"] == 0
    assert bob.wait_event("file_received", name="report.bin", timeout=60)["sha256"] == new_digest
    assert file_sha256(bob_dl / "report.bin") == new_digest
    assert any("changed since it was interrupted" in n for n in notices(alice))
    assert any("other content" in n for n in notices(bob))
    assert partial_files(bob_dl) == []  # the stale partial went with the fresh start


def test_lines_typed_while_disconnected_are_sent_in_order_after_reconnect(room, procs, pki, tmp_path,
                                                                           cutting_proxy):
    bob = room.join("bob")
    proxy = cutting_proxy(room.port)
    alice = procs(["join", "127.0.0.1", "--port", str(proxy.port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(tmp_path / "alice-downloads"), "--json"], tmp_path)
    alice.wait_event("connected")
    mark = alice.mark()
    proxy.refuse.set()
    proxy.cut()
    alice.wait_event("reconnecting", after=mark)
    for i in range(3):
        alice.send(f"while away {i}")
    alice.wait_event("queued", waiting=3)
    assert bob.count("message", **{"from": "alice"}) == 0
    proxy.refuse.clear()
    alice.wait_event("connected", after=mark, timeout=40)
    seen = [bob.wait_event("message", text=f"while away {i}")["time"] for i in range(3)]
    assert seen == sorted(seen)


def test_no_reconnect_flag_ends_the_session_with_one_line(room, procs, pki, tmp_path, cutting_proxy):
    proxy = cutting_proxy(room.port)
    alice = procs(["join", "127.0.0.1", "--port", str(proxy.port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(tmp_path / "alice-downloads"), "--json", "--no-reconnect"], tmp_path)
    alice.wait_event("connected")
    proxy.cut()
    assert alice.wait_exit() == 1
    assert alice.count("reconnecting") == 0
    stderr = "".join(alice.stderr_lines).strip().splitlines()
    assert len(stderr) == 1 and "lost" in stderr[0]
