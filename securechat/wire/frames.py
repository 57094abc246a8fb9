"""The securechat wire format: pure bytes in, messages out; no I/O here.

Like h11 and wsproto, this module never touches a socket, a thread or a file,
so it can be fed whole buffers, single bytes or random garbage in tests. The
only exception it raises for bad input is RemoteProtocolError (from the
decoder) and LocalProtocolError (from the encoders, for our own mistakes).

A frame is a 5-byte header, `kind:u8 length:u32 big-endian`, then `length`
bytes of payload. Two kinds exist:

* CONTROL (0x01): a UTF-8 JSON object with a "type" key, at most 64 KiB.
* CHUNK (0x02): `transfer_id:u32` then up to 1 MiB of file data.

The length is checked against the kind's maximum as soon as the header has
arrived, before any payload is buffered, so a hostile length costs nothing.
docs/protocol.md is the contract this module implements.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Union

from securechat.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 3  # 2: offers carry the SHA-256 and wait for accept (resume); 3: presence in batches
ALPN_PROTOCOL = "securechat/1"

HEADER = struct.Struct(">BI")
CHUNK_ID = struct.Struct(">I")
KIND_CONTROL = 0x01
KIND_CHUNK = 0x02

MAX_CONTROL_PAYLOAD = 64 * 1024
MAX_CHUNK_DATA = 1024 * 1024
MAX_CHUNK_PAYLOAD = CHUNK_ID.size + MAX_CHUNK_DATA
CHUNK_HEADER_SIZE = HEADER.size + CHUNK_ID.size

MAX_TEXT_BYTES = 8 * 1024  # one chat line, UTF-8 encoded
MAX_NAME_BYTES = 1024  # a file name as offered; the receiver sanitises it to <= 255
MAX_IDENTITY_BYTES = 64  # a certificate identity (user name)
MAX_REASON_BYTES = 1024
MAX_MEMBERS = 10_000  # names in one "who" or "recipients" list
MAX_TRANSFER_ID = 2**32 - 1
MAX_FILE_SIZE = 2**63 - 1

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[a-z_]{1,32}")


# --------------------------------------------------------------------------- #
# Field validation. Each message field names a check; the decoder runs it on
# every value, so a message object that exists is a message that is valid.


def _text(limit: int):
    def check(value: Any) -> bool:
        # JSON may spell a lone surrogate ("\udcff"); that is not text, cannot be
        # re-encoded, and must fail here, for its sender alone (issue 11 item 3).
        if not isinstance(value, str):
            return False
        try:
            return len(value.encode("utf-8")) <= limit
        except UnicodeEncodeError:
            return False

    return check


def _uint(limit: int):
    def check(value: Any) -> bool:
        # bool is an int in Python; the wire says number, so refuse true/false.
        return type(value) is int and 0 <= value <= limit

    return check


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_code(value: Any) -> bool:
    return isinstance(value, str) and _CODE.fullmatch(value) is not None


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def _names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_MEMBERS
        and all(_text(MAX_IDENTITY_BYTES)(v) for v in value)
    )


def _optional(check):
    def optional(value: Any) -> bool:
        return value is None or check(value)

    return optional


def _f(check, default: Any = MISSING, wire: str | None = None):
    """A message field: its validity check, default, and its JSON key if not its name."""
    return field(default=default, metadata={"check": check, "wire": wire})


_identity = _text(MAX_IDENTITY_BYTES)
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def _session_id(value: Any) -> bool:
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None

_reason = _text(MAX_REASON_BYTES)
_tid = _uint(MAX_TRANSFER_ID)


# --------------------------------------------------------------------------- #
# Messages. `sender` travels as "from": only the server sets it, from the
# author's certificate; the server ignores it in anything a client sends.


@dataclass(frozen=True)
class Hello:
    """First frame in each direction."""

    TYPE: ClassVar[str] = "hello"
    version: int = _f(_uint(2**16))
    software: str = _f(_text(256), "")
    name: str | None = _f(_optional(_identity), None)  # if sent, must match the certificate
    # C->S: which of this identity's sessions this is; a reconnect names the same one and
    # replaces only it. Without it, the connection is a session of its own.
    session: str | None = _f(_optional(_session_id), None)
    receive_files: bool = _f(_is_bool, True)  # False: a one-shot `send`, never offered files


@dataclass(frozen=True)
class Welcome:
    """Server to client, right after the server's hello: who you are, who is here."""

    TYPE: ClassVar[str] = "welcome"
    you: str = _f(_identity)
    server: str = _f(_identity)
    members: list = _f(_names)


@dataclass(frozen=True)
class Chat:
    TYPE: ClassVar[str] = "chat"
    text: str = _f(_text(MAX_TEXT_BYTES))
    to: str | None = _f(_optional(_identity), None)
    sender: str | None = _f(_optional(_identity), None, wire="from")


@dataclass(frozen=True)
class Offer:
    """Announces a file and its SHA-256. Once Accept answers it, CHUNK frames
    with the same id follow from the accepted offset, then End."""

    TYPE: ClassVar[str] = "offer"
    id: int = _f(_tid)
    name: str = _f(_text(MAX_NAME_BYTES))
    size: int = _f(_uint(MAX_FILE_SIZE))
    sha256: str = _f(_is_sha256)
    to: str | None = _f(_optional(_identity), None)
    sender: str | None = _f(_optional(_identity), None, wire="from")


@dataclass(frozen=True)
class Accept:
    """Answer to an offer: send the bytes from `offset` on (the ones before are here already).

    Recipient to server; then server to sender, with the smallest offset of all recipients."""

    TYPE: ClassVar[str] = "accept"
    id: int = _f(_tid)
    offset: int = _f(_uint(MAX_FILE_SIZE))


@dataclass(frozen=True)
class End:
    """All chunks of a transfer were sent; sha256 (the offer's) covers every byte of the file."""

    TYPE: ClassVar[str] = "end"
    id: int = _f(_tid)
    sha256: str = _f(_is_sha256)


@dataclass(frozen=True)
class Abort:
    """The sender gives up on a transfer (or the server tells a sender to stop)."""

    TYPE: ClassVar[str] = "abort"
    id: int = _f(_tid)
    reason: str = _f(_reason, "")


@dataclass(frozen=True)
class Cancel:
    """Server to sender: stop sending your transfer `id`; nobody is receiving it any more."""

    TYPE: ClassVar[str] = "cancel"
    id: int = _f(_tid)
    reason: str = _f(_reason, "")


@dataclass(frozen=True)
class Recipients:
    """Server to sender: who this transfer goes to; one Result per name follows."""

    TYPE: ClassVar[str] = "recipients"
    id: int = _f(_tid)
    names: list = _f(_names)
    reason: str | None = _f(_optional(_reason), None)  # with names=[]: why nobody receives it


@dataclass(frozen=True)
class Result:
    """A recipient's verdict on a transfer. `sender` names the recipient when relayed.

    `interrupted` (server to sender only): the recipient's connection dropped;
    offering the file again when it is back resumes where it stopped."""

    TYPE: ClassVar[str] = "result"
    id: int = _f(_tid)
    ok: bool = _f(_is_bool)
    sha256: str | None = _f(_optional(_is_sha256), None)
    reason: str = _f(_reason, "")
    interrupted: bool = _f(_is_bool, False)
    sender: str | None = _f(_optional(_identity), None, wire="from")


@dataclass(frozen=True)
class Who:
    """Client asks with names=None; the server answers with the list."""

    TYPE: ClassVar[str] = "who"
    names: list | None = _f(_optional(_names), None)


def _departures(value: Any) -> bool:
    """[{"name": name, "reason": reason}, ...]: who left, and why (empty: a normal leave)."""
    return (
        isinstance(value, list)
        and len(value) <= MAX_MEMBERS
        and all(
            isinstance(v, dict) and set(v) <= {"name", "reason"} and _identity(v.get("name"))
            and _reason(v.get("reason", ""))
            for v in value
        )
    )


@dataclass(frozen=True)
class Presence:
    """Server to client: who left and who joined since the last presence message.

    Batched (protocol 3), so a reconnect storm of N members costs N messages per
    member instead of one per arrival (N squared in all). Apply `left` first, then
    `joined`: a member who dropped and came back within one batch appears in both."""

    TYPE: ClassVar[str] = "presence"
    joined: list = _f(_names)
    left: list = _f(_departures)


@dataclass(frozen=True)
class Notice:
    """Server to client: a request of yours could not be done (the connection stays)."""

    TYPE: ClassVar[str] = "notice"
    text: str = _f(_reason)


@dataclass(frozen=True)
class Bye:
    """The sender is closing the connection on purpose; the reason is for people, the code for programs."""

    TYPE: ClassVar[str] = "bye"
    reason: str = _f(_reason, "")
    # "revoked", "certificate": a refusal retrying cannot fix. Unknown codes are
    # allowed (later versions) and mean nothing more than the bye itself.
    code: str | None = _f(_optional(_is_code), None)


@dataclass(frozen=True)
class Chunk:
    """File data of one transfer. Not a JSON message: it has its own frame kind."""

    id: int
    data: bytes | bytearray | memoryview


Message = Union[Hello, Welcome, Chat, Offer, Accept, End, Abort, Cancel, Recipients, Result, Who, Presence, Notice, Bye]
MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Chat, Offer, Accept, End, Abort, Cancel, Recipients, Result, Who, Presence, Notice, Bye)
}
Frame = Union[Message, Chunk]


# --------------------------------------------------------------------------- #
# Encoding


def _wire_name(f) -> str:
    return f.metadata.get("wire") or f.name


def encode(message: Message) -> bytes:
    """One CONTROL frame for `message`; None-valued optional fields are left out."""
    obj: dict[str, Any] = {"type": message.TYPE}
    for f in fields(message):
        value = getattr(message, f.name)
        if value is None:
            continue
        if not f.metadata["check"](value):
            raise LocalProtocolError(f"{message.TYPE}.{_wire_name(f)} is not valid: {value!r:.80}")
        obj[_wire_name(f)] = value
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise LocalProtocolError(f"{message.TYPE} message is {len(payload)} bytes, over the {MAX_CONTROL_PAYLOAD} limit")
    return HEADER.pack(KIND_CONTROL, len(payload)) + payload


def chunk_header(transfer_id: int, data_length: int) -> bytes:
    """The 9 bytes that precede `data_length` bytes of file data in a CHUNK frame.

    Exposed so a sender can read file data straight into a buffer after the
    header instead of concatenating (one copy fewer per MiB on the hot path).
    """
    if not 0 <= transfer_id <= MAX_TRANSFER_ID:
        raise LocalProtocolError(f"transfer id {transfer_id} out of range")
    if not 0 < data_length <= MAX_CHUNK_DATA:
        raise LocalProtocolError(f"chunk of {data_length} bytes is outside 1..{MAX_CHUNK_DATA}")
    return HEADER.pack(KIND_CHUNK, CHUNK_ID.size + data_length) + CHUNK_ID.pack(transfer_id)


def encode_chunk(transfer_id: int, data: bytes | memoryview) -> bytes:
    return chunk_header(transfer_id, len(data)) + data


# --------------------------------------------------------------------------- #
# Decoding


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise RemoteProtocolError("control message has a duplicate key")
    return obj


def _reject_constant(name: str) -> Any:
    raise RemoteProtocolError(f"control message contains {name}, which JSON does not allow")


def parse_control(payload: bytes) -> Message:
    """Parse and validate one CONTROL payload into its message object."""
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except RemoteProtocolError:
        raise
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("control message is not valid UTF-8") from exc
    except RecursionError as exc:
        raise RemoteProtocolError("control message is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and int() digit limits
        raise RemoteProtocolError(f"control message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError("control message is not a JSON object")
    kind = obj.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {kind!r:.40}")
    values = {}
    for f in fields(cls):
        key = _wire_name(f)
        if key in obj and not (obj[key] is None and f.default is not MISSING):
            value = obj[key]  # null for a member that has a default means "absent" (docs/protocol.md)
        elif f.default is not MISSING:
            value = f.default
        else:
            raise RemoteProtocolError(f"{kind} message lacks {key!r}")
        if not f.metadata["check"](value):
            raise RemoteProtocolError(f"{kind}.{key} is missing or not valid")
        values[f.name] = value
    return cls(**values)


class FrameDecoder:
    """Turns a byte stream into frames. Feed it bytes, then pull frames.

    File data need not pass through `feed`: once a CHUNK header is in,
    `chunk_buffer()` is the rest of that frame's data, so a reader can
    `recv_into` it directly and call `chunk_filled(n)`. That saves two copies
    of every byte received (the profile's largest cost after TLS itself).

    After it has raised RemoteProtocolError once it keeps raising: the stream
    cannot be trusted past the first bad byte.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None
        self._chunk: bytearray | None = None  # data of the CHUNK frame being received
        self._chunk_id = 0
        self._chunk_filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._chunk is not None:
            take = min(len(data), len(self._chunk) - self._chunk_filled)
            self._chunk[self._chunk_filled : self._chunk_filled + take] = data[:take]
            self._chunk_filled += take
            data = data[take:]
        if data:
            self._buffer += data

    def chunk_buffer(self) -> memoryview | None:
        """Where the rest of the current chunk's data may be received directly, if one is open."""
        if self._chunk is None and self._error is None and len(self._buffer) >= CHUNK_HEADER_SIZE:
            kind, length = HEADER.unpack_from(self._buffer)
            if kind == KIND_CHUNK and CHUNK_ID.size < length <= MAX_CHUNK_PAYLOAD:
                self._open_chunk(length)  # invalid headers are left for next_frame() to refuse
        if self._chunk is None or self._buffer or self._chunk_filled == len(self._chunk):
            return None
        return memoryview(self._chunk)[self._chunk_filled :]

    def chunk_filled(self, n: int) -> None:
        self._chunk_filled += n

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._chunk_filled

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            self._chunk = None
            raise

    def _next_frame(self) -> Frame | None:
        if self._chunk is not None:
            if self._chunk_filled < len(self._chunk):
                return None
            frame = Chunk(self._chunk_id, self._chunk)
            self._chunk = None
            return frame
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return None
        kind, length = HEADER.unpack_from(buffer)
        if kind == KIND_CONTROL:
            limit = MAX_CONTROL_PAYLOAD
        elif kind == KIND_CHUNK:
            limit = MAX_CHUNK_PAYLOAD
        else:
            raise RemoteProtocolError(f"unknown frame kind 0x{kind:02x}")
        if length > limit:
            raise RemoteProtocolError(f"frame of {length} bytes exceeds the {limit}-byte limit")
        if kind == KIND_CHUNK:
            if length <= CHUNK_ID.size:
                raise RemoteProtocolError("chunk frame carries no data")
            if len(buffer) < CHUNK_HEADER_SIZE:
                return None
            self._open_chunk(length)
            return self._next_frame()
        end = HEADER.size + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[HEADER.size:end])
        del buffer[:end]
        return parse_control(payload)

    def _open_chunk(self, length: int) -> None:
        """Start receiving a CHUNK whose header (length already checked) leads the buffer."""
        buffer = self._buffer
        (self._chunk_id,) = CHUNK_ID.unpack_from(buffer, HEADER.size)
        self._chunk = bytearray(length - CHUNK_ID.size)
        self._chunk_filled = 0
        with memoryview(buffer) as view:  # released before the del: a bytearray with exports cannot shrink
            head = bytes(view[CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE + len(self._chunk)])
        del buffer[: CHUNK_HEADER_SIZE + len(head)]  # CPython trims a bytearray's front in O(1)
        self.feed(head)
