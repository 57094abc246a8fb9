"""ClientProtocol alone: every rule a server can break, decided in memory (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechat.errors import LocalProtocolError, RemoteProtocolError
from securechat.wire import frames
from securechat.wire.client_protocol import MAX_REFUSED_OPEN, ClientProtocol

SHA = "ab" * 32
OTHER = "cd" * 32
HELLO = frames.Hello(version=frames.PROTOCOL_VERSION)
WELCOME = frames.Welcome(you="alice", server="server", members=["bob"])


def greeted() -> ClientProtocol:
    protocol = ClientProtocol("alice")
    protocol.send(HELLO)
    protocol.receive(HELLO)
    protocol.receive(WELCOME)
    return protocol


def offered(size: int = 3, recipients=("bob",)) -> ClientProtocol:
    """We offered transfer 1 and the server named its recipients."""
    protocol = greeted()
    protocol.send(frames.Offer(id=1, name="a", size=size, sha256=SHA))
    protocol.receive(frames.Recipients(id=1, names=list(recipients)))
    return protocol


def receiving(accept: bool = True) -> ClientProtocol:
    """The server offered us transfer 7 (and we accepted it)."""
    protocol = greeted()
    protocol.receive(frames.Offer(id=7, name="a", size=3, sha256=SHA, sender="bob"))
    if accept:
        protocol.send(frames.Accept(id=7, offset=0))
    return protocol


@pytest.mark.parametrize("frames_in,reason", [
    ([frames.Chat(text="hi")], "first message was not hello"),
    ([frames.Hello(version=2)], "version 2"),
    ([HELLO, frames.Chat(text="hi")], "did not send welcome"),
    ([HELLO, frames.Welcome(you="mallory", server="server", members=[])], "calls us 'mallory'"),
])
def test_the_greeting_is_hello_then_a_welcome_naming_us(frames_in, reason):
    protocol = ClientProtocol("alice")
    protocol.send(HELLO)
    with pytest.raises(RemoteProtocolError, match=reason):
        for frame in frames_in:
            protocol.receive(frame)


def test_a_refusal_may_come_instead_of_the_welcome():
    protocol = ClientProtocol("alice")
    protocol.send(HELLO)
    protocol.receive(HELLO)
    assert protocol.receive(frames.Bye(reason="revoked", code="revoked")) is not None
    assert not protocol.greeted


@pytest.mark.parametrize("frame", [HELLO, WELCOME, frames.Who()])
def test_what_a_server_may_not_send_after_the_greeting(frame):
    with pytest.raises(RemoteProtocolError, match="may not send"):
        greeted().receive(frame)


def test_our_own_name_in_joined_is_ignored():
    presence = greeted().receive(frames.Presence(joined=["alice", "carol"], left=[{"name": "bob"}]))
    assert presence.joined == ["carol"] and presence.left == [{"name": "bob"}]


@pytest.mark.parametrize("frame", [frames.Recipients(id=9, names=[]), frames.Accept(id=9, offset=0),
                                   frames.Result(id=9, ok=False, sender="bob"), frames.Cancel(id=9)])
def test_answers_need_an_id_we_offered(frame):
    with pytest.raises(RemoteProtocolError, match="we never offered"):
        greeted().receive(frame)


def test_answers_to_our_offer():
    protocol = offered()
    with pytest.raises(RemoteProtocolError, match="sent twice"):
        protocol.receive(frames.Recipients(id=1, names=["bob"]))
    with pytest.raises(RemoteProtocolError, match="past its end"):
        offered().receive(frames.Accept(id=1, offset=4))
    protocol = offered()
    protocol.receive(frames.Accept(id=1, offset=3))
    with pytest.raises(RemoteProtocolError, match="before its end"):
        protocol.receive(frames.Result(id=1, ok=True, sha256=SHA, sender="bob"))
    protocol.send(frames.End(id=1, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="another SHA-256"):
        protocol.receive(frames.Result(id=1, ok=True, sha256=OTHER, sender="bob"))
    assert protocol.receive(frames.Result(id=1, ok=True, sha256=SHA, sender="bob")) is not None


def test_late_and_repeated_answers_are_dropped():
    protocol = offered()
    protocol.receive(frames.Accept(id=1, offset=0))
    assert protocol.receive(frames.Accept(id=1, offset=0)) is None
    protocol.send(frames.End(id=1, sha256=SHA))
    assert protocol.receive(frames.Result(id=1, ok=True, sha256=SHA, sender="bob")) is not None
    assert protocol.receive(frames.Result(id=1, ok=True, sha256=SHA, sender="bob")) is None  # settled
    assert protocol.receive(frames.Cancel(id=1)) is None
    assert protocol.receive(frames.Result(id=1, ok=False, sender="carol")) is None
    nobody = greeted()
    nobody.send(frames.Offer(id=2, name="a", size=3, sha256=SHA))
    nobody.receive(frames.Recipients(id=2, names=[], reason="nobody else is here"))
    assert nobody.receive(frames.Accept(id=2, offset=0)) is None


def test_a_cancel_after_the_accept_still_needs_our_abort():
    protocol = offered()
    protocol.receive(frames.Accept(id=1, offset=0))
    assert protocol.receive(frames.Cancel(id=1)) is not None
    assert protocol.may_send_data(1)
    protocol.send(frames.Abort(id=1, reason="nobody is receiving it any more"))
    assert not protocol.may_send_data(1)


def test_files_offered_to_us():
    with pytest.raises(RemoteProtocolError, match="never offered"):
        greeted().receive(frames.Chunk(7, b"x"))
    with pytest.raises(RemoteProtocolError, match="never offered"):
        greeted().receive(frames.End(id=7, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="never offered"):
        greeted().receive(frames.Abort(id=7))
    with pytest.raises(RemoteProtocolError, match="offered twice"):
        receiving().receive(frames.Offer(id=7, name="a", size=3, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="another SHA-256"):
        receiving().receive(frames.End(id=7, sha256=OTHER))
    with pytest.raises(RemoteProtocolError, match="before it was accepted"):
        receiving(accept=False).receive(frames.End(id=7, sha256=SHA))
    protocol = receiving()
    assert protocol.receive(frames.Chunk(7, b"abc")) is not None
    assert protocol.receive(frames.End(id=7, sha256=SHA)) is not None
    protocol.send(frames.Result(id=7, ok=True, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="never offered"):
        protocol.receive(frames.Chunk(7, b"x"))


def test_a_chunk_before_our_accept_is_ours_to_refuse_and_an_abort_may_come_instead():
    protocol = receiving(accept=False)
    assert protocol.receive(frames.Chunk(7, b"x")) is not None  # protocol.md 6: refused with a result
    protocol.send(frames.Result(id=7, ok=False, reason="data before the accept"))
    assert protocol.receive(frames.Chunk(7, b"y")) is None
    assert protocol.receive(frames.End(id=7, sha256=SHA)) is None
    slow = receiving(accept=False)
    assert slow.receive(frames.Abort(id=7, reason="no answer within 10 s")) is not None


def test_refused_offers_left_open_are_bounded():
    protocol = greeted()
    for transfer_id in range(MAX_REFUSED_OPEN):
        protocol.receive(frames.Offer(id=transfer_id, name="a", size=3, sha256=SHA))
        protocol.send(frames.Result(id=transfer_id, ok=False, reason="too many"))
    with pytest.raises(RemoteProtocolError, match="refused transfers"):
        protocol.receive(frames.Offer(id=MAX_REFUSED_OPEN, name="a", size=3, sha256=SHA))


def test_our_own_mistakes_are_local_errors():
    with pytest.raises(LocalProtocolError):
        ClientProtocol("alice").send(frames.Chat(text="hi"))
    with pytest.raises(LocalProtocolError):
        greeted().send(frames.Presence(joined=[], left=[]))
    with pytest.raises(LocalProtocolError):
        offered().send(frames.End(id=1, sha256=SHA))  # not accepted yet
    with pytest.raises(LocalProtocolError):
        receiving().send(frames.Result(id=7, ok=True, sha256=SHA))  # before its end
    with pytest.raises(LocalProtocolError):
        receiving().send(frames.Accept(id=7, offset=0))  # twice


_ids = st.integers(0, 3)
_sha = st.sampled_from([SHA, OTHER])
_names = st.lists(st.sampled_from(["alice", "bob", "carol"]), max_size=3)
_server_frames = st.one_of(
    st.builds(frames.Offer, id=_ids, name=st.just("a"), size=st.integers(0, 8), sha256=_sha,
              sender=st.sampled_from(["bob", None])),
    st.builds(frames.Chunk, _ids, st.binary(min_size=1, max_size=4)),
    st.builds(frames.End, id=_ids, sha256=_sha),
    st.builds(frames.Abort, id=_ids),
    st.builds(frames.Accept, id=_ids, offset=st.integers(0, 10)),
    st.builds(frames.Recipients, id=_ids, names=_names),
    st.builds(frames.Result, id=_ids, ok=st.booleans(), sha256=st.sampled_from([SHA, OTHER, None]),
              interrupted=st.booleans(), sender=st.sampled_from(["bob", "carol", None])),
    st.builds(frames.Cancel, id=_ids),
    st.builds(frames.Chat, text=st.text(max_size=5), sender=st.just("bob")),
    st.builds(frames.Who, names=st.one_of(st.none(), _names)),
    st.builds(frames.Presence, joined=_names, left=st.just([])),
    st.builds(frames.Notice, text=st.text(max_size=5)),
    st.builds(frames.Welcome, you=st.sampled_from(["alice", "bob"]), server=st.just("server"), members=_names),
    st.just(HELLO),
    st.just(frames.Bye()),
)
# What we send in between: offers of our own, and answers to the server's offers.
_our_moves = st.one_of(
    st.builds(frames.Offer, id=_ids, name=st.just("a"), size=st.integers(0, 8), sha256=st.just(SHA)),
    st.builds(frames.Accept, id=_ids, offset=st.integers(0, 8)),
    st.builds(frames.Result, id=_ids, ok=st.booleans(), sha256=st.just(SHA)),
    st.builds(frames.End, id=_ids, sha256=st.just(SHA)),
    st.builds(frames.Abort, id=_ids),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("in"), _server_frames), st.tuples(st.just("out"), _our_moves)),
                max_size=40),
       st.booleans())
def test_any_server_frame_is_accepted_or_a_remote_protocol_error(steps, start_greeted):
    """Random frames in any order: each is taken (a frame or None) or raises RemoteProtocolError,
    never anything else; our own moves are taken or raise LocalProtocolError."""
    protocol = greeted() if start_greeted else ClientProtocol("alice")
    if not start_greeted:
        protocol.send(HELLO)
    for direction, frame in steps:
        if direction == "out":
            try:
                assert isinstance(protocol.send(frame), bytes)
            except LocalProtocolError:
                pass
            continue
        try:
            got = protocol.receive(frame)
        except RemoteProtocolError:
            return  # the connection would close here
        assert got is None or isinstance(got, (frames.Chunk, *frames.Message.__args__))
        if isinstance(got, frames.Presence):
            assert "alice" not in got.joined
