"""The wire format: whole, byte by byte, with trailing bytes, and against random input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.network import control_frame
from securechat.errors import LocalProtocolError, RemoteProtocolError
from securechat.wire import frames

SAMPLES = [
    frames.Hello(version=2, software="x"),
    frames.Welcome(you="alice", server="server", members=["alice", "server"]),
    frames.Chat(text="héllo ✓ 你好 🎉"),
    frames.Chat(text="psst", to="bob", sender="alice"),
    frames.Offer(id=7, name="photo.jpg", size=123456, sha256="c" * 64, sender="alice"),
    frames.Accept(id=7, offset=4 * 1024 * 1024),
    frames.End(id=7, sha256="a" * 64),
    frames.Abort(id=7, reason="gone"),
    frames.Cancel(id=7),
    frames.Recipients(id=7, names=["bob", "carol"]),
    frames.Result(id=7, ok=True, sha256="b" * 64, sender="bob"),
    frames.Result(id=7, ok=False, reason="SHA-256 mismatch"),
    frames.Result(id=7, ok=False, reason="bob left", interrupted=True, sender="bob"),
    frames.Who(),
    frames.Who(names=["a", "b"]),
    frames.Presence(joined=["bob"], left=[]),
    frames.Presence(joined=["carol", "bob"], left=[{"name": "bob", "reason": "timeout"}, {"name": "dave"}]),
    frames.Notice(text="nobody named 'x' is here"),
    frames.Bye(reason="left"),
]


def decode_all(data: bytes) -> list:
    decoder = frames.FrameDecoder()
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def test_round_trip_whole_stream():
    stream = b"".join(frames.encode(m) for m in SAMPLES) + frames.encode_chunk(3, b"data")
    assert decode_all(stream) == [*SAMPLES, frames.Chunk(3, b"data")]


def test_byte_by_byte():
    stream = b"".join(frames.encode(m) for m in SAMPLES) + frames.encode_chunk(9, bytes(range(256)))
    decoder = frames.FrameDecoder()
    out = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == [*SAMPLES, frames.Chunk(9, bytes(range(256)))]


def test_trailing_partial_frame_waits():
    whole = frames.encode(SAMPLES[2])
    decoder = frames.FrameDecoder()
    decoder.feed(whole + whole[:7])
    assert decoder.next_frame() == SAMPLES[2]
    assert decoder.next_frame() is None
    decoder.feed(whole[7:])
    assert decoder.next_frame() == SAMPLES[2]


def test_oversized_length_is_refused_from_the_header_alone():
    decoder = frames.FrameDecoder()
    decoder.feed(frames.HEADER.pack(frames.KIND_CHUNK, 0xFFFFFFFF))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()
    assert decoder.buffered == 0  # nothing kept, nothing allocated for the claimed length


@pytest.mark.parametrize(
    "kind,length",
    [
        (frames.KIND_CONTROL, frames.MAX_CONTROL_PAYLOAD + 1),
        (frames.KIND_CHUNK, frames.MAX_CHUNK_PAYLOAD + 1),
    ],
)
def test_just_over_each_limit(kind, length):
    decoder = frames.FrameDecoder()
    decoder.feed(frames.HEADER.pack(kind, length))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_exactly_at_the_limit_is_accepted():
    data = b"x" * frames.MAX_CHUNK_DATA
    assert decode_all(frames.encode_chunk(1, data)) == [frames.Chunk(1, data)]


@pytest.mark.parametrize(
    "data,reason",
    [
        (frames.HEADER.pack(frames.KIND_CONTROL, 0), "not valid JSON"),
        (frames.HEADER.pack(frames.KIND_CHUNK, 0), "no data"),
        (frames.HEADER.pack(frames.KIND_CHUNK, 4) + b"\0\0\0\1", "no data"),
        (frames.HEADER.pack(0x7F, 1) + b"x", "unknown frame kind"),
        (frames.HEADER.pack(frames.KIND_CONTROL, 2) + b"\xff\xfe", "UTF-8"),
        (control_frame({"type": "chat"}), "lacks 'text'"),
        (control_frame({"type": "nonsense"}), "unknown message type"),
        (control_frame([1, 2]), "not a JSON object"),
        (control_frame({"type": "chat", "text": 5}), "not valid"),
        (control_frame({"type": "offer", "id": -1, "name": "x", "size": 1}), "not valid"),
        (control_frame({"type": "offer", "id": 1, "name": "x", "size": True}), "not valid"),
        (control_frame({"type": "offer", "id": 1, "name": "x", "size": 1.5}), "not valid"),
        (control_frame({"type": "offer", "id": 2**32, "name": "x", "size": 1}), "not valid"),
        (control_frame({"type": "end", "id": 1, "sha256": "A" * 64}), "not valid"),
        (control_frame({"type": "chat", "text": "x" * (frames.MAX_TEXT_BYTES + 1)}), "not valid"),
        (control_frame({"type": "offer", "id": 1, "name": "x", "size": float("nan")}), "JSON does not allow"),
    ],
)
def test_malformed_input_raises_only_protocol_errors(data, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_all(data)


def test_duplicate_keys_are_refused():
    payload = b'{"type":"chat","text":"a","text":"b"}'
    with pytest.raises(RemoteProtocolError, match="duplicate"):
        decode_all(frames.HEADER.pack(frames.KIND_CONTROL, len(payload)) + payload)


def test_deep_nesting_is_refused_not_crashing():
    payload = b"[" * (frames.MAX_CONTROL_PAYLOAD - 10)
    with pytest.raises(RemoteProtocolError):
        decode_all(frames.HEADER.pack(frames.KIND_CONTROL, len(payload)) + payload)


def test_huge_integer_literal_is_refused():
    payload = b'{"type":"offer","id":1,"name":"x","size":' + b"9" * 5000 + b"}"
    with pytest.raises(RemoteProtocolError):
        decode_all(frames.HEADER.pack(frames.KIND_CONTROL, len(payload)) + payload)


def test_decoder_stays_failed():
    decoder = frames.FrameDecoder()
    decoder.feed(frames.HEADER.pack(0x7F, 0))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    decoder.feed(frames.encode(frames.Who()))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert decode_all(control_frame({"type": "who", "future": 1})) == [frames.Who()]


def test_encoder_refuses_invalid_messages():
    with pytest.raises(LocalProtocolError):
        frames.encode(frames.Chat(text="x" * (frames.MAX_TEXT_BYTES + 1)))
    with pytest.raises(LocalProtocolError):
        frames.encode(frames.End(id=1, sha256="nothex"))
    with pytest.raises(LocalProtocolError):
        frames.chunk_header(1, 0)


names = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 64)
messages = st.one_of(
    st.builds(frames.Chat, text=st.text(max_size=200), to=st.none() | names, sender=st.none() | names),
    st.builds(frames.Offer, id=st.integers(0, frames.MAX_TRANSFER_ID), name=st.text(max_size=100),
              size=st.integers(0, frames.MAX_FILE_SIZE), sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
              to=st.none() | names, sender=st.none() | names),
    st.builds(frames.Accept, id=st.integers(0, frames.MAX_TRANSFER_ID), offset=st.integers(0, frames.MAX_FILE_SIZE)),
    st.builds(frames.End, id=st.integers(0, frames.MAX_TRANSFER_ID),
              sha256=st.text("0123456789abcdef", min_size=64, max_size=64)),
    st.builds(frames.Result, id=st.integers(0, 2**32 - 1), ok=st.booleans(), reason=st.text(max_size=50)),
    st.builds(frames.Who, names=st.none() | st.lists(names, max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(messages, st.builds(frames.Chunk, id=st.integers(0, 2**32 - 1),
                                               data=st.binary(min_size=1, max_size=300))), max_size=8),
       st.integers(1, 50))
def test_round_trip_property(items, step):
    stream = b"".join(
        frames.encode_chunk(i.id, i.data) if isinstance(i, frames.Chunk) else frames.encode(i) for i in items
    )
    decoder = frames.FrameDecoder()
    out = []
    for start in range(0, len(stream), step):
        decoder.feed(stream[start : start + step])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == items


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_protocol_error(data):
    try:
        decode_all(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=10),
       st.sampled_from(sorted(frames.MESSAGE_TYPES)))
def test_random_json_of_any_type_parses_or_raises_protocol_error(value, kind):
    obj = {"type": kind, "id": value, "text": value, "name": value, "names": value, "size": value, "ok": value}
    try:
        decode_all(control_frame(obj))
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6), st.integers(1, 5000))
def test_direct_chunk_reads_match_feeding(chunks, step):
    """Receiving into chunk_buffer() (as the connection does) yields the same frames as feed()."""
    stream = b"".join(frames.encode(frames.Who()) + frames.encode_chunk(i, c) for i, c in enumerate(chunks))
    decoder = frames.FrameDecoder()
    out, pos = [], 0
    while pos < len(stream):
        target = decoder.chunk_buffer()
        if target is not None:
            n = min(len(target), step, len(stream) - pos)
            target[:n] = stream[pos : pos + n]
            decoder.chunk_filled(n)
        else:
            n = min(step, len(stream) - pos)
            decoder.feed(stream[pos : pos + n])
        pos += n
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    expected = [f for i, c in enumerate(chunks) for f in (frames.Who(), frames.Chunk(i, c))]
    assert out == expected


@pytest.mark.parametrize("raw", [
    b'{"type":"chat","text":"s\\udcff.txt"}',
    b'{"type":"offer","id":1,"name":"\\ud800","size":1,"sha256":"' + b"a" * 64 + b'"}',
    b'{"type":"chat","text":"x","to":"b\\udfffb"}',
    b'{"type":"who","names":["ok","\\udcff"]}',
])
def test_lone_surrogates_are_not_text(raw):
    with pytest.raises(RemoteProtocolError, match="not valid"):
        frames.parse_control(raw)


def test_escaped_surrogate_pairs_are_text():
    message = frames.parse_control(b'{"type":"chat","text":"\\ud83d\\ude00"}')
    assert message.text == "\U0001F600"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12),
       st.sampled_from(["chat", "offer", "who"]))
def test_everything_the_decoder_accepts_re_encodes(text, kind):
    """Strings with lone surrogates included (spelled as JSON escapes): accepted means encodable."""
    obj = {"chat": {"type": "chat", "text": text, "to": text or None},
           "offer": {"type": "offer", "id": 1, "name": text, "size": 1, "sha256": "a" * 64},
           "who": {"type": "who", "names": [text]}}[kind]
    payload = json.dumps({k: v for k, v in obj.items() if v is not None}).encode()  # ASCII, \u escapes
    try:
        message = frames.parse_control(payload)
    except RemoteProtocolError:
        return
    assert frames.parse_control(frames.encode(message)[frames.HEADER.size:]) == message


def test_null_for_a_member_with_a_default_means_absent():
    """docs/protocol.md: a `?` member may be absent or null."""
    hello = frames.parse_control(b'{"type":"hello","version":2,"software":null,"receive_files":null,"session":null}')
    assert hello.software == "" and hello.receive_files is True and hello.session is None
    result = frames.parse_control(b'{"type":"result","id":1,"ok":false,"reason":null,"interrupted":null}')
    assert result.reason == "" and result.interrupted is False
    with pytest.raises(RemoteProtocolError):
        frames.parse_control(b'{"type":"chat","text":null}')  # required members stay required
