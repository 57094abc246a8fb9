"""The room's rules, in memory with a fake clock: Room + ServerProtocol per connection, no sockets or timers."""

from __future__ import annotations

import pytest

from helpers.hall import Hall, presence
from securechat.errors import RemoteProtocolError
from securechat.pki.identity import same_name
from securechat.rooms.presence import PRESENCE_INTERVAL
from securechat.rooms.ratelimit import CHAT_BURST, OFFER_BURST, OFFER_RATE, TokenBucket
from securechat.rooms.room import ACCEPT_TIMEOUT, MAX_CONNECTIONS_PER_IDENTITY
from securechat.wire import frames

SHA = "ab" * 32


@pytest.fixture
def hall():
    return Hall()


def offer(seat, transfer_id=1, size=3, to=None, sha256=SHA):
    seat.send(frames.Offer(id=transfer_id, name="a.txt", size=size, sha256=sha256, to=to))
    return seat.last(frames.Recipients)


def test_welcome_lists_everyone_else_once(hall):
    hall.connect("alice", "s-alice-1")
    bob = hall.connect("bob", "s-bob-111")
    assert bob.last(frames.Welcome).members == ["alice", "server"]
    second_alice = hall.connect("alice", "s-alice-2")
    assert second_alice.last(frames.Welcome).members == ["bob", "server"]  # never yourself
    assert hall.room.names() == ["alice", "bob", "server"]


def test_an_identity_is_announced_once_and_leaves_with_its_last_connection(hall):
    bob = hall.connect("bob", "s-bob-111")
    hall.advance(PRESENCE_INTERVAL)
    laptop = hall.connect("alice", "laptop-1")
    phone = hall.connect("alice", "phone-22")
    hall.advance(PRESENCE_INTERVAL)
    assert [c for c in presence(bob.got) if c[1] == "alice"] == [("joined", "alice")]
    hall.leave(laptop)
    hall.advance(PRESENCE_INTERVAL)
    assert [c for c in presence(bob.got) if c[1] == "alice"] == [("joined", "alice")]
    hall.leave(phone)
    hall.advance(PRESENCE_INTERVAL)
    assert [c for c in presence(bob.got) if c[1] == "alice"] == [("joined", "alice"), ("left", "alice")]
    assert hall.room.names() == ["bob", "server"]


def test_presence_is_batched_within_the_interval(hall):
    hall.advance(PRESENCE_INTERVAL)
    bob = hall.connect("bob", "s-bob-111")  # sent at once: nothing went out for a while
    assert presence(bob.got) == [("joined", "bob")]
    for i in range(50):  # a storm: each costs bob nothing until the batch is due
        hall.connect(f"m{i:02}")
    assert len(bob.of(frames.Presence)) == 1
    hall.advance(PRESENCE_INTERVAL - 0.001)
    assert len(bob.of(frames.Presence)) == 1
    hall.advance(0.001)
    assert len(bob.of(frames.Presence)) == 2
    assert bob.of(frames.Presence)[-1].joined == [f"m{i:02}" for i in range(50)]


def test_a_batch_is_sent_before_a_line_from_someone_in_it(hall):
    hall.advance(PRESENCE_INTERVAL)
    bob = hall.connect("bob", "s-bob-111")
    carol = hall.connect("carol", "s-carol-1")  # within the interval: waits
    carol.send(frames.Chat(text="hi"))
    kinds = [type(f).__name__ for f in bob.got if isinstance(f, (frames.Presence, frames.Chat))]
    assert kinds[-2:] == ["Presence", "Chat"] and ("joined", "carol") in presence(bob.got)


def test_in_and_out_within_a_batch_is_not_announced_and_out_and_in_is_both(hall):
    bob = hall.connect("bob", "s-bob-111")
    hall.advance(PRESENCE_INTERVAL)
    hall.leave(hall.connect("eve"))  # came and went unseen
    hall.advance(PRESENCE_INTERVAL)
    assert not [c for c in presence(bob.got) if c[1] == "eve"]
    carol = hall.connect("carol")
    hall.advance(PRESENCE_INTERVAL)
    hall.leave(carol, "network down", clean=False)
    hall.connect("carol")
    hall.advance(PRESENCE_INTERVAL)
    assert bob.of(frames.Presence)[-1].left == [{"name": "carol", "reason": "network down"}]
    assert bob.of(frames.Presence)[-1].joined == ["carol"]


def test_a_reconnect_replaces_only_its_own_session_and_is_announced_as_joined(hall):
    bob = hall.connect("bob", "s-bob-111")
    chat = hall.connect("alice", "chat-sess")
    hall.advance(PRESENCE_INTERVAL)
    again = hall.connect("alice", "chat-sess")
    hall.advance(PRESENCE_INTERVAL)
    assert chat.closed and "same session" in chat.closed[0]
    assert again.closed is None
    assert [c for c in presence(bob.got) if c[1] == "alice"] == [("joined", "alice")] * 2  # no left
    script = hall.connect("alice", "script-s", receive_files=False)
    hall.connect("alice", "chat-sess")
    assert script.closed is None and again.closed


def test_connections_without_a_session_never_replace_each_other(hall):
    first, second = hall.connect("dave"), hall.connect("dave")
    assert first.closed is None and second.closed is None


def test_one_identity_holds_a_bounded_number_of_connections(hall):
    seats = [hall.connect("dave") for _ in range(MAX_CONNECTIONS_PER_IDENTITY + 1)]
    assert [s.closed is not None for s in seats].count(True) == 1 and seats[-1].closed
    assert "connections here already" in seats[-1].closed[0]


@pytest.mark.parametrize("name", ["server", "SERVER", "ｓｅｒｖｅｒ", "Server"])
def test_nobody_takes_the_operators_name(hall, name):
    impostor = hall.connect(name, "impostor1")
    assert impostor.closed and "operator" in impostor.closed[0]
    assert not impostor.of(frames.Welcome)
    hall.leave(impostor, "gone", clean=False)  # its connection closing must not remove the operator
    assert "server" in hall.room.names()
    bob = hall.connect("bob", "s-bob-111")
    bob.send(frames.Chat(text="hi", to="server"))
    assert hall.operator.last(frames.Chat).text == "hi"


def test_same_name_folds_case_and_width():
    assert same_name("ｓｅｒｖｅｒ", "server") and same_name("SERVER", "server")
    assert not same_name("serve", "server")


def test_chat_to_a_name_reaches_all_its_connections(hall):
    bob = hall.connect("bob", "s-bob-111")
    laptop, phone = hall.connect("alice", "laptop-1"), hall.connect("alice", "phone-22")
    bob.send(frames.Chat(text="psst", to="alice"))
    assert laptop.last(frames.Chat).text == phone.last(frames.Chat).text == "psst"
    assert laptop.last(frames.Chat).sender == "bob"
    laptop.send(frames.Chat(text="to the room"))
    assert phone.last(frames.Chat).text == "to the room"  # your other devices see what you said
    assert laptop.last(frames.Chat).text != "to the room"
    bob.send(frames.Chat(text="x", to="bob"))
    assert bob.last(frames.Notice).text == "/msg bob: that is you"
    bob.send(frames.Chat(text="x", to="nobody"))
    assert "nobody named 'nobody'" in bob.last(frames.Notice).text


def test_a_chat_flood_is_dropped_with_one_notice_a_second(hall):
    bob, carol = hall.connect("bob"), hall.connect("carol")
    for i in range(CHAT_BURST + 10):
        bob.send(frames.Chat(text=f"{i}"))
    assert len(carol.of(frames.Chat)) == CHAT_BURST
    assert len(bob.of(frames.Notice)) == 1 and "too many lines" in bob.last(frames.Notice).text
    hall.advance(1.0)
    bob.send(frames.Chat(text="later"))
    assert carol.last(frames.Chat).text == "later"


def test_offers_past_the_burst_pause_reading_and_the_budget_is_per_identity(hall):
    laptop, phone = hall.connect("bob", "laptop-1"), hall.connect("bob", "phone-22")
    hall.connect("carol")
    for i in range(OFFER_BURST):
        offer(laptop if i % 2 else phone, transfer_id=i + 1)
    assert laptop.paused_until == phone.paused_until == 0.0
    offer(laptop, transfer_id=100)
    assert laptop.paused_until == pytest.approx(hall.now + 1 / OFFER_RATE)  # slowed, nothing refused
    assert laptop.last(frames.Recipients).names == ["carol", "server"]


def test_a_file_goes_to_one_receiving_connection_per_name(hall):
    bob = hall.connect("bob", "s-bob-111")
    chat = hall.connect("alice", "chat-sess")
    script = hall.connect("alice", "script-s", receive_files=False)
    assert offer(bob).names == ["alice", "server"]
    assert chat.of(frames.Offer) and not script.of(frames.Offer)  # a one-shot send is never offered files


def test_a_file_to_nobody_or_to_yourself_says_why(hall):
    bob = hall.connect("bob", "s-bob-111")
    hall.connect("alice", "script-s", receive_files=False)
    for i, (to, why) in enumerate((("carol", "nobody named 'carol'"), ("bob", "yourself"), ("alice", "only to send"))):
        answer = offer(bob, transfer_id=i + 1, to=to)
        assert answer.names == [] and why in answer.reason
    bob.send(frames.Chunk(3, b"abc"))  # data already on the way for a refused id is dropped


def test_a_private_file_is_marked_private(hall):
    bob, carol = hall.connect("bob"), hall.connect("carol")
    offer(bob, 1, to="carol")
    offer(bob, 2)
    assert [o.to for o in carol.of(frames.Offer)] == ["carol", None]


def relay_to_carol(hall, size=3):
    bob, carol = hall.connect("bob"), hall.connect("carol")
    offer(bob, 1, size=size, to="carol")
    return bob, carol, carol.last(frames.Offer)


def test_a_whole_relay_from_offer_to_verified(hall):
    bob, carol, relayed = relay_to_carol(hall)
    assert relayed.sender == "bob" and relayed.sha256 == SHA
    carol.send(frames.Accept(id=relayed.id, offset=0))
    assert bob.last(frames.Accept).offset == 0 and bob.last(frames.Accept).id == 1
    bob.send(frames.Chunk(1, b"abc"))
    bob.send(frames.End(id=1, sha256=SHA))
    assert [bytes(c.data) for c in carol.of(frames.Chunk)] == [b"abc"] and carol.of(frames.End)
    carol.send(frames.Result(id=relayed.id, ok=True, sha256=SHA))
    assert bob.last(frames.Result).ok and bob.last(frames.Result).sender == "carol"


def test_the_sender_starts_at_the_smallest_offset_and_each_gets_only_what_it_lacks(hall):
    bob, carol, dave = hall.connect("bob"), hall.connect("carol"), hall.connect("dave")
    offer(bob, 1, size=6)
    offers = {s.name: s.last(frames.Offer) for s in (carol, dave, hall.operator)}
    carol.send(frames.Accept(id=offers["carol"].id, offset=4))
    dave.send(frames.Accept(id=offers["dave"].id, offset=2))
    assert not bob.of(frames.Accept)  # the operator has not answered yet
    hall.operator.send(frames.Accept(id=offers["server"].id, offset=5))
    assert bob.last(frames.Accept).offset == 2
    bob.send(frames.Chunk(1, b"cd"))
    bob.send(frames.Chunk(1, b"ef"))
    assert b"".join(bytes(c.data) for c in carol.of(frames.Chunk)) == b"ef"
    assert b"".join(bytes(c.data) for c in dave.of(frames.Chunk)) == b"cdef"
    assert b"".join(bytes(c.data) for c in hall.operator.of(frames.Chunk)) == b"f"


def test_a_recipient_that_does_not_answer_in_time_is_left_out(hall):
    bob, carol, relayed = relay_to_carol(hall)
    hall.advance(ACCEPT_TIMEOUT - 0.001)
    assert not bob.of(frames.Result)
    hall.advance(0.001)
    assert not bob.last(frames.Result).ok and "did not answer" in bob.last(frames.Result).reason
    assert carol.last(frames.Abort).id == relayed.id
    assert bob.last(frames.Cancel).id == 1  # nobody left to receive it


def test_a_recipient_slow_to_answer_never_gets_abort_after_end(hall):
    bob, carol, relayed = relay_to_carol(hall)
    bob.send(frames.End(id=1, sha256=SHA))  # a sender may end before the accept
    hall.advance(ACCEPT_TIMEOUT)
    assert carol.of(frames.End) and not carol.of(frames.Abort)
    assert not bob.last(frames.Result).ok


def test_a_verified_verdict_before_the_end_is_a_protocol_error(hall):
    bob, carol, relayed = relay_to_carol(hall)
    with pytest.raises(RemoteProtocolError, match="before its end"):
        carol.send(frames.Result(id=relayed.id, ok=True, sha256=SHA))
    assert not bob.of(frames.Result)  # nothing was passed on to the sender


def test_a_verified_verdict_under_another_hash_is_a_protocol_error(hall):
    bob, carol, relayed = relay_to_carol(hall)
    carol.send(frames.Accept(id=relayed.id, offset=0))
    bob.send(frames.Chunk(1, b"abc"))
    bob.send(frames.End(id=1, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="another SHA-256"):
        carol.send(frames.Result(id=relayed.id, ok=True, sha256="cd" * 32))
    assert not bob.of(frames.Result)


def test_a_refusal_before_the_end_is_fine_and_cancels_the_sender(hall):
    bob, carol, relayed = relay_to_carol(hall)
    carol.send(frames.Result(id=relayed.id, ok=False, reason="no room"))
    assert not bob.last(frames.Result).ok
    assert bob.of(frames.Cancel)  # nobody left: the sender stops
    bob.send(frames.Chunk(1, b"abc"))  # already on the way: dropped, not an error


def test_a_verdict_while_the_sender_ends_settles_both(hall):
    bob, carol, dave = hall.connect("bob"), hall.connect("carol"), hall.connect("dave")
    offer(bob, 7, size=3, to=None)
    for seat in (carol, dave, hall.operator):
        seat.send(frames.Accept(id=seat.last(frames.Offer).id, offset=0))
    carol.send(frames.Result(id=carol.last(frames.Offer).id, ok=False, reason="disk full"))
    bob.send(frames.Chunk(7, b"abc"))
    bob.send(frames.End(id=7, sha256=SHA))
    assert not carol.of(frames.Chunk) and dave.of(frames.End)
    dave.send(frames.Result(id=dave.last(frames.Offer).id, ok=True, sha256=SHA))
    assert [(r.sender, r.ok) for r in bob.of(frames.Result)] == [("carol", False), ("dave", True)]


def test_more_bytes_than_declared_aborts_the_relay(hall):
    bob, carol, relayed = relay_to_carol(hall, size=2)
    carol.send(frames.Accept(id=relayed.id, offset=0))
    bob.send(frames.Chunk(1, b"abc"))
    assert "more than the 2 bytes" in carol.last(frames.Abort).reason
    assert not carol.of(frames.Chunk)


def test_an_abort_reaches_only_those_offered_the_file(hall):
    bob, carol = hall.connect("bob"), hall.connect("carol")
    offer(bob, 1, to="carol")
    hall.leave(bob, "gone", clean=False)  # the sender's connection drops
    assert carol.last(frames.Abort).reason == "bob left"
    assert not hall.operator.of(frames.Abort)  # never offered it: hears nothing of it


def test_a_recipient_dropping_is_an_interrupted_verdict(hall):
    bob, carol, relayed = relay_to_carol(hall)
    hall.leave(carol, "network down", clean=False)
    result = bob.last(frames.Result)
    assert not result.ok and result.interrupted and result.sender == "carol"


def test_a_replaced_sender_feeds_nobody_afterwards(hall):
    bob = hall.connect("bob", "bob-sess-1")
    carol = hall.connect("carol")
    offer(bob, 1, size=6, to="carol")
    carol.send(frames.Accept(id=carol.last(frames.Offer).id, offset=0))
    bob.send(frames.Chunk(1, b"abc"))
    hall.connect("bob", "bob-sess-1")  # bob's reconnect replaces the connection mid-stream
    assert carol.last(frames.Abort)
    bob.send(frames.Chunk(1, b"def"))  # the old connection's last chunk: the room has let go of it
    assert len(carol.of(frames.Chunk)) == 1 and isinstance(carol.got[-1], (frames.Abort, frames.Presence))


def test_accepts_and_results_for_unknown_ids_change_nothing(hall):
    bob, carol, relayed = relay_to_carol(hall)
    carol.send(frames.Accept(id=relayed.id + 100, offset=0))
    carol.send(frames.Result(id=relayed.id + 100, ok=True, sha256=SHA))
    assert not bob.of(frames.Accept) and not bob.of(frames.Result)


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


def test_a_sender_hears_its_recipient_left_before_the_transfer_was_cut_off(hall):
    bob, carol, relayed = relay_to_carol(hall)  # carol arrived less than a batch ago
    hall.leave(carol, "network down", clean=False)
    told = [f for f in bob.got if isinstance(f, (frames.Presence, frames.Result))]
    assert isinstance(told[-1], frames.Result) and told[-1].interrupted
    assert ("left", "carol") in presence(told[:-1])  # so bob waits for her return to resend
