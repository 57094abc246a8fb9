"""The server against raw clients written from docs/protocol.md: hostile frames close
that one connection with a reason, everyone else keeps chatting."""

from __future__ import annotations

import hashlib
import time

import pytest

from helpers.files import files_in, sparse_file, wait_for_temp_file
from helpers.network import bye_reason
from securechat.files.partials import PARTIAL_DIR
from securechat.wire import frames


@pytest.mark.parametrize(
    "payload,reason",
    [
        (frames.encode(frames.Chat(text="too early")), "first message must be hello"),
        (frames.HEADER.pack(frames.KIND_CHUNK, 0xFFFFFFFF), "exceeds"),
        (frames.HEADER.pack(frames.KIND_CONTROL, frames.MAX_CONTROL_PAYLOAD + 1), "exceeds"),
        (frames.HEADER.pack(0x09, 3) + b"abc", "unknown frame kind"),
        (frames.encode(frames.Hello(version=99)), "version 99 is not supported"),
    ],
)
def test_bad_first_frames_close_with_a_reason(room, raw_client, payload, reason):
    bob = room.join("bob")
    raw = raw_client(room.port)
    raw.send_bytes(payload)
    assert reason in bye_reason(raw.frames_until_closed())
    bob.send("still chatting")
    room.server.wait_event("message", text="still chatting")


@pytest.mark.parametrize(
    "payload,reason",
    [
        (frames.encode_chunk(77, b"x"), "never offered"),
        (frames.encode(frames.End(id=5, sha256="0" * 64)), "never offered"),
        (frames.encode(frames.Welcome(you="x", server="y", members=[])), "may not send 'welcome'"),
        (frames.encode(frames.Hello(version=1)), "may not send 'hello'"),
        (b'\x01\x00\x00\x00\x19{"type":"chat","text":"\xff"}', "UTF-8"),
    ],
)
def test_bad_frames_after_hello_close_only_that_connection(room, raw_client, payload, reason):
    bob = room.join("bob")
    raw = raw_client(room.port)
    raw.hello()
    bob.wait_event("joined", name="dave")
    raw.send_bytes(payload)
    assert reason in bye_reason(raw.frames_until_closed())
    bob.wait_event("left", name="dave")
    bob.send("unaffected")
    room.server.wait_event("message", text="unaffected")


def test_duplicate_offer_id_closes_and_cleans_up(room, raw_client, tmp_path):
    raw = raw_client(room.port)
    raw.hello()
    assert raw.offer(1, "a.bin", b"1234567890") == 0
    raw.send_bytes(frames.encode_chunk(1, b"12345"))
    raw.send(frames.Offer(id=1, name="b.bin", size=10, sha256="0" * 64))
    assert "offered twice" in bye_reason(raw.frames_until_closed())
    room.server.wait_event("file_rejected", name="a.bin")
    # Nothing under a final name; what arrived is kept, hidden, for a resume.
    left = files_in(tmp_path / "server-downloads")
    assert left and all(f.startswith(f"{PARTIAL_DIR}/") for f in left), left


def test_sender_lying_about_the_hash_is_caught_and_told(room, raw_client, tmp_path):
    bob = room.join("bob")
    raw = raw_client(room.port)
    raw.hello()
    raw.send_file(3, "lie.jpg", b"data", sha256=hashlib.sha256(b"DATA").hexdigest())
    results = {}
    deadline = time.monotonic() + 20
    while len(results) < 2 and time.monotonic() < deadline:
        frame = raw.next_frame()
        if isinstance(frame, frames.Result):
            results[frame.sender] = frame
    assert set(results) == {"bob", "server"}
    assert all(not r.ok and "SHA-256 mismatch" in r.reason for r in results.values())
    bob.wait_event("file_rejected", name="lie.jpg")
    assert not (tmp_path / "bob-downloads" / "lie.jpg").exists()
    assert not (tmp_path / "server-downloads" / "lie.jpg").exists()
    raw.send(frames.Chat(text="connection survives"))  # a bad file is not a protocol error
    bob.wait_event("message", text="connection survives")


def test_more_bytes_than_declared_is_refused_through_the_relay(room, raw_client, tmp_path):
    bob = room.join("bob")
    raw = raw_client(room.port)
    raw.hello()
    assert raw.offer(4, "over.bin", b"too") == 0
    raw.send_bytes(frames.encode_chunk(4, b"toolong"))
    raw.send(frames.End(id=4, sha256=hashlib.sha256(b"toolong").hexdigest()))
    bob.wait_event("file_rejected", name="over.bin")
    assert not (tmp_path / "bob-downloads" / "over.bin").exists()


def test_identity_comes_from_the_certificate_not_the_frame(room, raw_client):
    bob = room.join("bob")
    raw = raw_client(room.port, name="dave")
    raw.hello()
    raw.send(frames.Chat(text="I am alice", sender="alice"))
    event = bob.wait_event("message", text="I am alice")
    assert event["from"] == "dave"


def test_silent_connection_is_closed_after_the_hello_timeout(make_room, raw_client):
    room = make_room("--login-grace", "2")
    raw = raw_client(room.port)  # handshake done, then says nothing
    assert "no hello within 2 s" in bye_reason(raw.frames_until_closed(timeout=25))


def test_chat_overtakes_a_large_transfer(room, tmp_path):
    alice = room.join("alice")
    bob = room.join("bob")
    big = sparse_file(tmp_path / "big.bin", 1024 * 1024 * 1024)
    alice.send(f"/send @bob {big}")
    wait_for_temp_file(tmp_path / "bob-downloads")
    alice.send("typed during the transfer")
    bob.wait_event("message", text="typed during the transfer")
    assert bob.count("file_received") == 0, "the line should not wait for the file"
    received = bob.wait_event("file_received", name="big.bin", timeout=120)
    assert received["size"] == 1024 * 1024 * 1024
    alice.wait_event("file_delivered", to="bob", timeout=30)
