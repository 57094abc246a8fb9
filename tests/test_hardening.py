"""Issue 4: hostile peers over real TLS, from raw clients written against docs/protocol.md.

Each test sends what an attacker would and checks what must (not) happen on disk,
on the wire, and for everyone else in the room.
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import threading
import time

import pytest

from helpers.files import files_in
from securechat.files.filenames import safe_filename
from securechat.files.partials import PARTIAL_DIR
from securechat.wire import frames


def results(raw, count: int, timeout: float = 20) -> dict[int, frames.Result]:
    """The next `count` Result frames for our own transfers, by id."""
    got: dict[int, frames.Result] = {}
    deadline = time.monotonic() + timeout
    while len(got) < count:
        frame = raw.next_frame(max(0.1, deadline - time.monotonic()))
        assert frame is not None, f"connection closed; results so far: {got}"
        if isinstance(frame, frames.Result):
            got[frame.id] = frame
    return got


def tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


HOSTILE_NAMES = [
    "../../.ssh/authorized_keys", "/etc/passwd", "..\\..\\x", "a/b", "C:\\x", "\\\\srv\\share\\x",
    ".", "..", "", "nu\0l.txt", "é" * 200 + ".txt", "CON", "nul.txt", "COM1", "trailing.", "trailing ",
    "ｆｏｏ／．．／bar", "invoice\u202efdp.exe", "zero\u200bwidth\u200c.txt", "file..png", "\x1b[2Jansi.png",
]


def test_hostile_file_names_land_as_safe_basenames_inside_downloads(room, raw_client, tmp_path):
    outside_before = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith("server-downloads")}
    raw = raw_client(room.port)
    raw.hello()
    for i, name in enumerate(HOSTILE_NAMES, start=1):
        raw.send_file(i, name, f"content {i}".encode())
    verdicts = results(raw, len(HOSTILE_NAMES))
    assert all(v.ok for v in verdicts.values()), verdicts
    downloads = tmp_path / "server-downloads"
    saved = {e["name"] for e in room.server.events if e["event"] == "file_received"}
    for name in HOSTILE_NAMES:
        expected = safe_filename(name)
        assert any(s == expected or s.startswith(expected.rsplit(".", 1)[0] + " (") for s in saved), (name, saved)
    for entry in set(os.listdir(downloads)) - {PARTIAL_DIR}:
        assert (downloads / entry).resolve().parent == downloads.resolve()
        assert not entry.startswith(".") and "/" not in entry and "\\" not in entry
        assert len(entry.encode()) <= 255
        assert not any(ch in entry for ch in "\0\x1b\u202e\u200b\u200c")
    assert "file..png" in saved  # a legal name is kept as it is
    outside_after = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith("server-downloads")}
    assert outside_after == outside_before
    assert not (tmp_path / ".ssh").exists() and not (tmp_path.parent / ".ssh").exists()


def test_planted_symlink_and_existing_file_are_never_touched(room, raw_client, tmp_path):
    downloads = tmp_path / "server-downloads"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, downloads / "link.txt")
    (downloads / "existing.txt").write_text("mine")
    raw = raw_client(room.port)
    raw.hello()
    raw.send_file(1, "link.txt", b"attack")
    raw.send_file(2, "existing.txt", b"attack")
    assert all(v.ok for v in results(raw, 2).values())
    assert victim.read_text() == "precious" and os.path.islink(downloads / "link.txt")
    assert (downloads / "existing.txt").read_text() == "mine"
    assert (downloads / "link (1).txt").read_bytes() == b"attack"
    assert (downloads / "existing (1).txt").read_bytes() == b"attack"


def test_symlinked_downloads_folder_is_refused(pki, procs, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    server = procs(["serve", "--port", "0", "--certs", str(pki), "--downloads", str(tmp_path / "link")], tmp_path)
    assert server.wait_exit() == 1
    assert "symbolic link" in "".join(server.stderr_lines)
    assert os.listdir(real) == []


@pytest.mark.parametrize(
    "size,send,reason",
    [
        (10, b"12345", "truncated"),
        (4, b"data", "SHA-256 mismatch"),  # the offer and end carry the hash of other bytes
    ],
)
def test_integrity_failures_delete_the_partial_and_tell_the_sender(room, raw_client, tmp_path, size, send, reason):
    raw = raw_client(room.port)
    raw.hello()
    other = hashlib.sha256(b"other").hexdigest()
    assert raw.offer(1, "x.bin", b"?" * size, sha256=other) == 0
    raw.send_bytes(frames.encode_chunk(1, send))
    raw.send(frames.End(id=1, sha256=other))
    verdict = results(raw, 1)[1]
    assert not verdict.ok and reason in verdict.reason and verdict.sender == "server"
    assert files_in(tmp_path / "server-downloads") == []  # no partial kept: its data cannot be trusted
    raw.send(frames.Who())  # the connection survives a bad file
    assert isinstance(raw.next_frame(), frames.Who)


def test_huge_declared_size_is_refused_before_any_byte(room, raw_client, tmp_path):
    raw = raw_client(room.port)
    raw.hello()
    raw.send(frames.Offer(id=1, name="terabyte.bin", size=2**40, sha256="0" * 64))
    verdict = results(raw, 1)[1]
    assert not verdict.ok and "free space" in verdict.reason
    assert files_in(tmp_path / "server-downloads") == []
    raw.send_bytes(frames.encode_chunk(1, b"ignored"))  # chunks after a refusal are dropped quietly
    raw.send(frames.Who())
    got = [raw.next_frame(), raw.next_frame()]
    assert frames.Cancel(id=1, reason="no recipient left") in got  # stop sending: nobody takes it
    assert isinstance(got[-1], frames.Who)


def test_max_file_size_option(make_room, raw_client, tmp_path):
    room = make_room("--max-file-size", "1KB")
    raw = raw_client(room.port)
    raw.hello()
    raw.send_file(1, "big.bin", b"x" * 2000)
    raw.send_file(2, "small.bin", b"x" * 999)
    verdicts = results(raw, 2)
    assert not verdicts[1].ok and "exceeds the limit" in verdicts[1].reason
    assert verdicts[2].ok


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))


def test_disk_full_mid_write_removes_the_partial(make_room, raw_client, tmp_path):
    # RLIMIT_FSIZE makes the server's writes fail with EFBIG past 1 MiB, like a full disk.
    room = make_room(preexec_fn=_limit_file_size)
    raw = raw_client(room.port)
    raw.hello()
    raw.send_file(1, "big.bin", os.urandom(3 * 1024 * 1024))
    verdict = results(raw, 1)[1]
    assert not verdict.ok and "cannot write" in verdict.reason
    assert files_in(tmp_path / "server-downloads") == []
    raw.send_file(2, "small.bin", b"fits")
    assert results(raw, 1)[2].ok


def test_silent_and_dribbling_connections_do_not_lock_out_a_real_client(make_room, raw_client):
    room = make_room("--login-grace", "3")  # the overall deadline, short so the test is
    lurkers, dribblers = [], []
    stop = threading.Event()
    hello = bytes.fromhex("16030100c8010000c40303") + os.urandom(32)  # the start of a ClientHello

    def dribble() -> None:  # one byte a second to each: a per-read timeout would never fire
        for i in range(len(hello)):
            if stop.wait(1.0):
                return
            for s in dribblers:
                try:
                    s.send(hello[i : i + 1])
                except OSError:
                    pass

    try:
        for i in range(200):
            # From another address than the client's: one address's own connections
            # are capped at 16 in the handshake, so it could only lock itself out.
            s = socket.create_connection(("127.0.0.1", room.port), timeout=5, source_address=("127.0.0.2", 0))
            (dribblers if i % 2 else lurkers).append(s)
        threading.Thread(target=dribble, daemon=True).start()
        started = time.monotonic()
        raw = raw_client(room.port)  # a real client still gets in, at once
        raw.hello()
        assert time.monotonic() - started < 5
        for s in lurkers + dribblers:  # all 200 are closed after the 3 s overall handshake deadline
            s.settimeout(max(0.5, started + 20 - time.monotonic()))
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        for s in lurkers + dribblers:
            s.close()


def test_a_flood_is_rate_limited_without_affecting_others(room, raw_client):
    bob = room.join("bob")
    carol = room.join("carol")
    flooder = raw_client(room.port)
    flooder.hello()
    flooder.send_bytes(b"".join(frames.encode(frames.Chat(text=f"spam {i}")) for i in range(1000)))
    carol.send("not delayed by the spam")
    bob.wait_event("message", text="not delayed by the spam")
    notice = None
    while notice is None:
        frame = flooder.next_frame()
        if isinstance(frame, frames.Notice):
            notice = frame
    assert "too many lines" in notice.text
    bob.send("/who")
    bob.wait_event("who")
    assert bob.count("message", **{"from": "dave"}) < 200


def test_hello_claiming_another_identity_is_refused(room, raw_client):
    raw = raw_client(room.port, name="dave")
    raw.send(frames.Hello(version=frames.PROTOCOL_VERSION, name="alice"))
    got = raw.frames_until_closed()
    assert any(isinstance(f, frames.Bye) and "claims to be 'alice'" in f.reason for f in got)
    assert room.server.count("joined", name="alice") == 0


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b'{"type":"chat","text":"a","text":"b"}', "duplicate key"),
        (b"[" * 60_000, "nested too deeply"),
        (b'{"type":"offer","id":1,"name":"x","size":1e999}', "not valid"),
    ],
)
def test_hostile_json_after_hello(room, raw_client, payload, reason):
    bob = room.join("bob")
    raw = raw_client(room.port)
    raw.hello()
    raw.send_bytes(frames.HEADER.pack(frames.KIND_CONTROL, len(payload)) + payload)
    got = raw.frames_until_closed()
    assert any(isinstance(f, frames.Bye) and reason in f.reason for f in got), got
    bob.send("others unaffected")
    room.server.wait_event("message", text="others unaffected")


def test_too_many_open_uploads_drop_only_the_offender(room, raw_client):
    bob = room.join("bob")
    raw = raw_client(room.port)
    raw.hello()
    for i in range(17):  # offers left open, never ended
        raw.send(frames.Offer(id=i, name=f"f{i}.bin", size=10, sha256=f"{i:064x}"))
    got = raw.frames_until_closed()
    assert any(isinstance(f, frames.Bye) and "more than 16 files sent at once" in f.reason for f in got)
    bob.send("bob stays")  # his inbox saw 16 offers, all refused or discarded cleanly: no disconnect
    room.server.wait_event("message", text="bob stays")
    assert room.server.count("left", name="bob") == 0


def test_twenty_files_at_once_from_our_own_client_all_arrive(room, tmp_path):
    alice = room.join("alice")
    bob = room.join("bob")
    paths = []
    for i in range(20):
        path = tmp_path / f"doc{i:02d}.txt"
        path.write_text(f"document {i}")
        paths.append(path)
    for path in paths:
        alice.send(f"/send @bob {path}")
    for path in paths:
        bob.wait_event("file_received", name=path.name)
        alice.wait_event("file_delivered", name=path.name, to="bob")
