"""The room's membership and verdict rules, with in-memory participants (no sockets, no threads)."""

from __future__ import annotations

import pytest

from members import Member, presence
from securechat import frames
from securechat.ratelimit import TokenBucket
from securechat.identity import same_name
from securechat.room import Room

SHA = "ab" * 32


@pytest.fixture
def room():
    room = Room("server")
    room.operator = Member("server")
    assert room.join(room.operator)
    return room


def test_welcome_lists_everyone_else_once(room):
    alice, bob = Member("alice", "s-alice-1"), Member("bob", "s-bob-111")
    room.join(alice)
    room.join(bob)
    assert bob.welcome == ["alice", "server"]
    second_alice = Member("alice", "s-alice-2")
    room.join(second_alice)
    assert second_alice.welcome == ["bob", "server"]  # never yourself, even with another connection
    assert room.names() == ["alice", "bob", "server"]


def test_an_identity_is_announced_once_and_leaves_with_its_last_connection(room):
    bob = Member("bob", "s-bob-111")
    room.join(bob)
    laptop, phone = Member("alice", "laptop-1"), Member("alice", "phone-22")
    room.join(laptop)
    room.join(phone)
    assert presence(bob.got) == [("joined", "alice")]
    room.leave(laptop, "")
    assert presence(bob.got) == [("joined", "alice")]
    room.leave(phone, "")
    assert presence(bob.got) == [("joined", "alice"), ("left", "alice")]
    assert room.names() == ["bob", "server"]


def test_a_reconnect_replaces_only_its_own_session(room):
    chat, script = Member("alice", "chat-sess"), Member("alice", "script-s", receives_files=False)
    room.join(chat)
    room.join(script)
    again = Member("alice", "chat-sess")
    room.join(again)
    assert chat.kicked and "same session" in chat.kicked
    assert script.kicked is None
    assert len([m for m in room.members() if m.name == "alice"]) == 2


def test_connections_without_a_session_never_replace_each_other(room):
    first, second = Member("dave"), Member("dave")
    room.join(first)
    room.join(second)
    assert first.kicked is None and second.kicked is None


@pytest.mark.parametrize("name", ["server", "SERVER", "ｓｅｒｖｅｒ", "Server"])
def test_nobody_takes_the_operators_name(room, name):
    impostor = Member(name, "impostor1")
    assert not room.join(impostor)
    assert impostor.kicked
    room.leave(impostor, "gone")  # its connection closing must not remove the operator
    assert "server" in room.names()
    bob = Member("bob", "s-bob-111")
    room.join(bob)
    room.chat(bob, "hi", to="server")
    assert room.operator.of(frames.Chat)[-1].text == "hi"


def test_same_name_folds_case_and_width():
    assert same_name("ｓｅｒｖｅｒ", "server") and same_name("SERVER", "server")
    assert not same_name("serve", "server")


def test_chat_to_a_name_reaches_all_its_connections(room):
    bob = Member("bob", "s-bob-111")
    laptop, phone = Member("alice", "laptop-1"), Member("alice", "phone-22")
    for m in (bob, laptop, phone):
        room.join(m)
    assert room.chat(bob, "psst", to="alice") is None
    assert laptop.of(frames.Chat)[-1].text == phone.of(frames.Chat)[-1].text == "psst"
    room.chat(laptop, "to the room")
    assert phone.of(frames.Chat)[-1].text == "to the room"  # your other devices see what you said
    assert not laptop.of(frames.Chat) or laptop.of(frames.Chat)[-1].text != "to the room"
    assert room.chat(bob, "x", to="bob") == "that is you"


def test_a_file_goes_to_one_receiving_connection_per_name(room):
    bob = Member("bob", "s-bob-111")
    chat, script = Member("alice", "chat-sess"), Member("alice", "script-s", receives_files=False)
    for m in (bob, chat, script):
        room.join(m)
    relay = room.start_relay(bob, 7, "a.txt", 3, SHA, None)
    assert sorted(relay.pending) == ["alice", "server"]
    assert relay.pending["alice"] is chat
    assert [x for x in script.got if isinstance(x, tuple)] == []  # a one-shot send is never offered files


def test_a_file_to_nobody_or_to_yourself_says_why(room):
    bob = Member("bob", "s-bob-111")
    script = Member("alice", "script-s", receives_files=False)
    room.join(bob)
    room.join(script)
    for to, why in (("carol", "nobody named 'carol'"), ("bob", "yourself"), ("alice", "only to send")):
        assert room.start_relay(bob, 1, "a.txt", 3, SHA, to) is None
        answer = bob.of(frames.Recipients)[-1]
        assert answer.names == [] and why in answer.reason


def test_a_private_file_is_marked_private(room):
    bob, carol = Member("bob", "s-bob-111"), Member("carol", "s-carol-1")
    room.join(bob)
    room.join(carol)
    assert room.start_relay(bob, 1, "a.txt", 3, SHA, "carol").private
    assert not room.start_relay(bob, 2, "b.txt", 3, SHA, None).private


def test_a_verified_verdict_before_the_end_is_a_protocol_error(room):
    bob, carol = Member("bob", "s-bob-111"), Member("carol", "s-carol-1")
    room.join(bob)
    room.join(carol)
    relay = room.start_relay(bob, 1, "a.txt", 3, SHA, "carol")
    assert "before its end" in room.verdict(relay.id, carol, True, "", SHA)
    room.accepted(relay.id, carol, 0)
    room.relay_chunk(relay, memoryview(b"abc"), None)
    room.end_relay(relay, SHA)
    assert "another SHA-256" in room.verdict(relay.id, carol, True, "", "cd" * 32)
    assert bob.of(frames.Result) == []  # nothing was passed on to the sender
    assert room.verdict(relay.id, carol, True, "", SHA) is None
    assert bob.of(frames.Result)[-1].ok


def test_a_refusal_before_the_end_is_fine(room):
    bob, carol = Member("bob", "s-bob-111"), Member("carol", "s-carol-1")
    room.join(bob)
    room.join(carol)
    relay = room.start_relay(bob, 1, "a.txt", 3, SHA, "carol")
    assert room.verdict(relay.id, carol, False, "no room", None) is None
    assert not bob.of(frames.Result)[-1].ok
    assert bob.of(frames.Cancel)  # nobody left: the sender stops


def test_an_abort_reaches_only_those_offered_the_file(room):
    class Broken(Member):
        def offer(self, relay):
            raise RuntimeError("cannot offer")

    bob, broken, carol = Member("bob", "s-bob-111"), Broken("bert", "s-bert-11"), Member("carol", "s-carol-1")
    for m in (bob, broken, carol):
        room.join(m)
    with pytest.raises(RuntimeError):
        room.start_relay(bob, 1, "a.txt", 3, SHA, None)
    room.leave(bob, "gone", interrupted=True)  # the sender's connection closes over the error
    # carol comes after bert in the offer order and was never offered it: she hears nothing of it
    assert [x for x in carol.got if isinstance(x, tuple)] == []


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.4)
    assert bucket.allow(0.5)


def test_token_bucket_debt_says_when_to_read_again():
    bucket = TokenBucket(rate=2.0, burst=2, now=10.0)
    for _ in range(2):
        bucket.take(10.0)
    assert bucket.ready_at(10.0) == 10.0
    bucket.take(10.0)
    bucket.take(10.0)
    assert bucket.ready_at(10.0) == pytest.approx(11.0)  # two tokens of debt at 2 per second
    assert bucket.ready_at(11.0) == 11.0
