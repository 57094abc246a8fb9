"""Fuzzing the server's frame handling over real TLS (bounded: it runs in CI).

Hypothesis builds sequences of frames (well-formed, ill-formed and raw garbage),
sends them on a fresh authenticated connection, then asks `who`. Every
connection must either answer or end with a `bye` that gives a reason; the
server must never die, and a bystander in the room must keep chatting.
"""

from __future__ import annotations

import hashlib
import socket
import ssl

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechat.wire import frames

ids = st.integers(0, 3)
small_text = st.text(max_size=30)
frame_bytes = st.one_of(
    st.builds(lambda i, n, d: frames.encode(frames.Offer(id=i, name=n, size=len(d), sha256=hashlib.sha256(d).hexdigest())),
              ids, small_text, st.binary(max_size=64)),
    st.builds(lambda i, o: frames.encode(frames.Accept(id=i, offset=o)), ids, st.integers(0, 100)),
    st.builds(lambda i, d: frames.encode_chunk(i, d), ids, st.binary(min_size=1, max_size=64)),
    st.builds(lambda i, d: frames.encode(frames.End(id=i, sha256=hashlib.sha256(d).hexdigest())), ids, st.binary(max_size=64)),
    st.builds(lambda i: frames.encode(frames.Abort(id=i, reason="fuzz")), ids),
    st.builds(lambda i, ok: frames.encode(frames.Result(id=i, ok=ok)), st.integers(0, 10), st.booleans()),
    st.builds(lambda t, to: frames.encode(frames.Chat(text=t, to=to)), small_text, st.sampled_from([None, "bob", "nobody"])),
    st.just(frames.encode(frames.Who())),
    st.just(frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION))),
    st.just(frames.encode(frames.Welcome(you="x", server="y", members=[]))),
    st.builds(lambda b: frames.HEADER.pack(frames.KIND_CONTROL, len(b)) + b, st.binary(max_size=40)),
    st.binary(min_size=1, max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(greet=st.booleans(), payload=st.lists(frame_bytes, max_size=12))
def run_one(room, raw_client, greet, payload):
    raw = raw_client(room.port)
    try:
        if greet:
            raw.send(frames.Hello(version=frames.PROTOCOL_VERSION))
        raw.send_bytes(b"".join(payload) + frames.encode(frames.Who()))
        while True:
            frame = raw.next_frame(timeout=15)  # a protocol error here would be the server's bug
            if frame is None:
                raise AssertionError("the server closed the connection without a bye")
            if isinstance(frame, frames.Who) and frame.names is not None:
                return  # still open and answering
            if isinstance(frame, frames.Bye):
                assert frame.reason, "a bye must say why"
                return
    except (ssl.SSLError, socket.timeout, ConnectionError) as exc:
        raise AssertionError(f"connection failed instead of closing with a reason: {exc!r}")
    finally:
        raw.close()


def test_server_survives_random_frame_sequences(room, raw_client):
    bob = room.join("bob")
    run_one(room, raw_client)
    assert room.server.popen.poll() is None
    bob.send("still alive")
    room.server.wait_event("message", text="still alive")
