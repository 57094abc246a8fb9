"""The group room end to end: fan-out, private lines, and frozen or vanishing members."""

from __future__ import annotations

import signal

from helpers.files import random_file as make_file
from helpers.files import sparse_file, wait_for_temp_file
from securechat.server.writequeue import STALL_TIMEOUT
from securechat.wire.frames import MAX_TEXT_BYTES


def test_four_people_chat_and_swap_photos(room, tmp_path):
    alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
    alice.send("hello room")
    for member in (bob, carol, room.server):
        member.wait_event("message", **{"from": "alice", "text": "hello room"})

    digest = make_file(tmp_path / "photo.jpg", 500_000)
    alice.send(f"/send {tmp_path / 'photo.jpg'}")
    for member in (bob, carol, room.server):
        got = member.wait_event("file_received", name="photo.jpg")
        assert got["sha256"] == digest and got["from"] == "alice"
    confirmations = {alice.wait_event("file_delivered", to=name)["to"] for name in ("bob", "carol", "server")}
    assert confirmations == {"bob", "carol", "server"}
    assert alice.count("file_received") == 0  # the sender does not get its own file back

    back = make_file(tmp_path / "from-server.png", 100_000)
    room.server.send(f"/send {tmp_path / 'from-server.png'}")
    for member in (alice, bob, carol):
        assert member.wait_event("file_received", name="from-server.png")["sha256"] == back
    assert room.server.wait_event("file_sending", name="from-server.png")["to"] == ["alice", "bob", "carol"]

    bob.send("/msg carol only you")
    carol.wait_event("message", text="only you", to="carol")
    bob.send("/who")
    assert bob.wait_event("who")["names"] == ["alice", "bob", "carol", "server"]
    bob.send("/msg nobody hello?")
    assert "nobody named 'nobody'" in bob.wait_event("notice")["text"]
    bob.send("public again")
    for member in (alice, carol, room.server):
        member.wait_event("message", text="public again")
    assert alice.count("message", text="only you") == 0
    assert room.server.count("message", text="only you") == 0

    carol.send(f"/send @alice {tmp_path / 'photo.jpg'}")
    alice.wait_event("file_received", name="photo.jpg")
    carol.wait_event("file_delivered", to="alice")
    assert bob.count("file_received", **{"from": "carol"}) == 0


def test_long_line_is_refused_not_cut(room):
    alice, bob = room.join("alice"), room.join("bob")
    alice.send("x" * (MAX_TEXT_BYTES + 1))
    alice.send("short")
    bob.wait_event("message", text="short")
    assert "limit" in alice.wait_event("error")["message"]
    assert bob.count("message") == 1


def test_frozen_member_does_not_delay_a_file_and_lines_between_others(room, tmp_path):
    alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
    carol.popen.send_signal(signal.SIGSTOP)
    try:
        digest = make_file(tmp_path / "doc.pdf", 20 * 1024 * 1024)
        alice.send(f"/send @bob {tmp_path / 'doc.pdf'}")
        for i in range(20):
            alice.send(f"line {i}")
        for i in range(20):
            bob.wait_event("message", text=f"line {i}")
        assert bob.wait_event("file_received", name="doc.pdf")["sha256"] == digest
        alice.wait_event("file_delivered", to="bob")
        # Nothing waited for carol: she is still in the room, not dropped as too slow.
        assert room.server.count("left", name="carol") == 0
    finally:
        carol.popen.send_signal(signal.SIGCONT)
    for i in range(20):  # and nothing was lost for her either
        carol.wait_event("message", text=f"line {i}")


def test_recipient_frozen_mid_transfer_is_dropped_after_the_stall_limit(room, tmp_path):
    alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
    digest = make_file(tmp_path / "big.bin", 256 * 1024 * 1024)
    alice.send(f"/send {tmp_path / 'big.bin'}")
    wait_for_temp_file(tmp_path / "carol-downloads")
    carol.popen.send_signal(signal.SIGSTOP)
    try:
        left = room.server.wait_event("left", name="carol", timeout=STALL_TIMEOUT + 30)
        assert "too slow" in left["reason"]
        for member in (bob, room.server):
            assert member.wait_event("file_received", name="big.bin", timeout=60)["sha256"] == digest
    finally:
        carol.popen.send_signal(signal.SIGCONT)


def test_member_crash_mid_fan_out_leaves_the_others_copies_intact(room, tmp_path):
    alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
    sparse_file(tmp_path / "archive.tar", 512 * 1024 * 1024)
    alice.send(f"/send {tmp_path / 'archive.tar'}")
    wait_for_temp_file(tmp_path / "carol-downloads")
    carol.popen.kill()
    carol.popen.wait(10)
    assert "carol left" in alice.wait_event("file_interrupted", to="carol")["reason"]
    for member in (bob, room.server):
        got = member.wait_event("file_received", name="archive.tar", timeout=120)
        assert got["size"] == 512 * 1024 * 1024
    alice.wait_event("file_delivered", to="bob")
    alice.wait_event("file_delivered", to="server")
    for member in (bob, alice):
        member.wait_event("left", name="carol")
