"""ServerProtocol alone: every rule a client can break, decided in memory (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechat.errors import LocalProtocolError, RemoteProtocolError
from securechat.wire import frames
from securechat.wire.server_protocol import MAX_UPLOADS, ServerProtocol

SHA = "ab" * 32
HELLO = frames.Hello(version=frames.PROTOCOL_VERSION)


def greeted() -> ServerProtocol:
    protocol = ServerProtocol("dave", "test")
    protocol.receive(HELLO)
    return protocol


@pytest.mark.parametrize("first,reason", [
    (frames.Chat(text="hi"), "first message must be hello"),
    (frames.Hello(version=2), "version 2 is not supported"),
    (frames.Hello(version=frames.PROTOCOL_VERSION, name="alice"), "certificate says 'dave'"),
])
def test_the_first_frame_must_be_a_fitting_hello(first, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        ServerProtocol("dave", "test").receive(first)


def test_a_second_hello_and_server_only_messages_are_errors():
    for message in (HELLO, frames.Welcome(you="a", server="b", members=[]), frames.Presence(joined=[], left=[]),
                    frames.Notice(text="x"), frames.Recipients(id=1, names=[]), frames.Cancel(id=1)):
        with pytest.raises(RemoteProtocolError):
            greeted().receive(message)


def test_data_needs_an_offer_and_its_accept():
    protocol = greeted()
    with pytest.raises(RemoteProtocolError, match="never offered"):
        protocol.receive(frames.Chunk(1, b"x"))
    protocol = greeted()
    protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="before it was accepted"):
        protocol.receive(frames.Chunk(1, b"x"))
    protocol = greeted()
    protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    protocol.send(frames.Accept(id=1, offset=0))
    assert protocol.receive(frames.Chunk(1, b"x")) is not None


def test_an_id_is_open_once_and_uploads_are_bounded():
    protocol = greeted()
    protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="offered twice"):
        protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    protocol = greeted()
    for i in range(MAX_UPLOADS):
        protocol.receive(frames.Offer(id=i, name="a", size=3, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="at once"):
        protocol.receive(frames.Offer(id=MAX_UPLOADS, name="a", size=3, sha256=SHA))


def test_an_end_must_name_its_offers_hash():
    protocol = greeted()
    protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="another SHA-256"):
        protocol.receive(frames.End(id=1, sha256="cd" * 32))


def test_refused_ids_drop_their_data_and_may_be_offered_again():
    protocol = greeted()
    protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    protocol.send(frames.Recipients(id=1, names=[], reason="nobody here"))
    assert protocol.receive(frames.Chunk(1, b"x")) is None
    assert protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA)) is not None
    for _ in range(MAX_UPLOADS * 2):  # refused ones do not count against the open uploads
        protocol.send(frames.Recipients(id=1, names=[]))
        protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))


def test_cancelled_ids_drop_their_data_until_their_end():
    protocol = greeted()
    protocol.receive(frames.Offer(id=1, name="a", size=3, sha256=SHA))
    protocol.send(frames.Accept(id=1, offset=0))
    protocol.send(frames.Cancel(id=1, reason="no recipient left"))
    protocol.receive(frames.Offer(id=2, name="b", size=3, sha256=SHA))  # data of 1 may still follow
    assert protocol.receive(frames.Chunk(1, b"x")) is None
    assert protocol.receive(frames.End(id=1, sha256=SHA)) is None
    with pytest.raises(RemoteProtocolError, match="never offered"):
        protocol.receive(frames.Chunk(1, b"x"))


def test_answers_to_our_offers():
    protocol = greeted()
    protocol.send(frames.Offer(id=9, name="a", size=3, sha256=SHA, sender="bob"))
    with pytest.raises(RemoteProtocolError, match="past the end"):
        protocol.receive(frames.Accept(id=9, offset=4))
    protocol = greeted()
    protocol.send(frames.Offer(id=9, name="a", size=3, sha256=SHA, sender="bob"))
    assert protocol.receive(frames.Accept(id=9, offset=3)) is not None
    assert protocol.receive(frames.Accept(id=9, offset=0)) is None  # repeated: ignored
    with pytest.raises(RemoteProtocolError, match="before its end"):
        protocol.receive(frames.Result(id=9, ok=True, sha256=SHA))
    protocol.send(frames.End(id=9, sha256=SHA))
    with pytest.raises(RemoteProtocolError, match="another SHA-256"):
        protocol.receive(frames.Result(id=9, ok=True, sha256="cd" * 32))


def test_late_answers_are_ignored():
    protocol = greeted()
    protocol.send(frames.Offer(id=9, name="a", size=3, sha256=SHA, sender="bob"))
    protocol.send(frames.Abort(id=9, reason="sender left"))
    assert protocol.receive(frames.Accept(id=9, offset=0)) is None
    assert protocol.receive(frames.Result(id=9, ok=False, reason="x")) is None
    assert protocol.receive(frames.Result(id=12345, ok=True, sha256=SHA)) is None


def test_our_own_mistakes_are_local_errors():
    with pytest.raises(LocalProtocolError):
        ServerProtocol("dave", "test").send(frames.Chat(text="before hello"))
    with pytest.raises(LocalProtocolError):
        greeted().send(frames.Accept(id=5, offset=0))  # nothing offered under 5


_ids = st.integers(0, 3)
_client_frames = st.one_of(
    st.builds(frames.Offer, id=_ids, name=st.just("a"), size=st.integers(0, 8), sha256=st.sampled_from([SHA, "cd" * 32])),
    st.builds(frames.Chunk, _ids, st.binary(min_size=1, max_size=4)),
    st.builds(frames.End, id=_ids, sha256=st.sampled_from([SHA, "cd" * 32])),
    st.builds(frames.Abort, id=_ids),
    st.builds(frames.Accept, id=_ids, offset=st.integers(0, 10)),
    st.builds(frames.Result, id=_ids, ok=st.booleans(), sha256=st.sampled_from([SHA, None])),
    st.builds(frames.Chat, text=st.text(max_size=5)),
    st.just(frames.Who()),
    st.just(HELLO),
    st.just(frames.Presence(joined=[], left=[])),
)
_server_frames = st.one_of(
    st.builds(frames.Offer, id=_ids, name=st.just("a"), size=st.integers(0, 8), sha256=st.just(SHA)),
    st.builds(frames.End, id=_ids, sha256=st.just(SHA)),
    st.builds(frames.Abort, id=_ids),
    st.builds(frames.Cancel, id=_ids),
    st.builds(frames.Recipients, id=_ids, names=st.just([])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _client_frames, _server_frames), max_size=30))
def test_any_sequence_is_accepted_or_a_remote_protocol_error(steps):
    protocol = ServerProtocol("dave", "test")
    for from_client, theirs, ours in steps:
        if from_client:
            try:
                protocol.receive(theirs)
            except RemoteProtocolError:
                return  # the connection ends here; nothing else may ever be raised
        else:
            try:
                protocol.send(ours)
            except LocalProtocolError:
                pass  # the room never does this; the protocol refuses it without breaking
