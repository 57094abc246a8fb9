"""The server's side of one connection, sans I/O (like h11's Connection).

`receive(frame)` checks a decoded frame against everything this connection has
said and been told, and returns it for the room (or None: harmless, dropped);
`send(message)` records what the room tells the client and encodes it. No
sockets, threads, clocks or files: every protocol rule a client can break is
decided here, once, and raises RemoteProtocolError for this connection alone.
Bugs of ours (sending what the protocol does not allow) raise LocalProtocolError.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from securechat.errors import LocalProtocolError, RemoteProtocolError
from securechat.wire import frames

MAX_UPLOADS = 16  # files one member may be sending at once (our clients send 4 at a time)
# Transfer ids the server closed (refused, cancelled) whose chunks may still be on
# the way: remembered so those chunks are dropped rather than called a protocol error.
MAX_CLOSED_IDS = 256
_CLIENT_SENDS = (frames.Hello, frames.Chat, frames.Offer, frames.Accept, frames.End, frames.Abort, frames.Result,
                 frames.Who, frames.Bye)


@dataclass
class _Upload:
    """A file this client offered (its own id)."""

    size: int
    sha256: str
    accepted: bool = False  # the server sent accept: chunks may flow


@dataclass
class _Download:
    """A file the server offered this client (the server's id)."""

    size: int
    sha256: str
    answered: bool = False  # the client sent its accept
    ended: bool = False  # the server sent end: only now may the client report it verified


class ServerProtocol:
    def __init__(self, identity: str, software: str) -> None:
        self.identity = identity  # from the certificate, never from a frame
        self.software = software
        self.hello: frames.Hello | None = None  # the client's, once received
        self._uploads: dict[int, _Upload] = {}
        self._closed: OrderedDict[int, bool] = OrderedDict()  # id -> was it ever accepted
        self._downloads: dict[int, _Download] = {}

    # ------------------------------------------------------------ from the client

    def receive(self, frame: frames.Frame) -> frames.Frame | None:
        if self.hello is None:
            return self._greeting(frame)
        match frame:
            case frames.Chunk():
                upload = self._uploads.get(frame.id)
                if upload is None:
                    if frame.id in self._closed:
                        return None  # sent before the client heard of the refusal or cancel
                    raise RemoteProtocolError(f"data for transfer {frame.id}, which was never offered")
                if not upload.accepted:
                    raise RemoteProtocolError(f"data for transfer {frame.id} before it was accepted")
                return frame
            case frames.Offer():
                self._forget_refused()
                if frame.id in self._uploads:
                    raise RemoteProtocolError(f"transfer id {frame.id} offered twice")
                if len(self._uploads) >= MAX_UPLOADS:
                    raise RemoteProtocolError(f"more than {MAX_UPLOADS} files sent at once")
                self._closed.pop(frame.id, None)
                self._uploads[frame.id] = _Upload(frame.size, frame.sha256)
                return frame
            case frames.End() | frames.Abort():
                what = frame.TYPE
                upload = self._uploads.pop(frame.id, None)
                if upload is None:
                    if self._closed.pop(frame.id, None) is not None:
                        return None
                    raise RemoteProtocolError(f"{what} for transfer {frame.id}, which was never offered")
                if isinstance(frame, frames.End) and frame.sha256 != upload.sha256:
                    raise RemoteProtocolError(f"end for transfer {frame.id} names another SHA-256 than its offer")
                return frame
            case frames.Accept():
                download = self._downloads.get(frame.id)
                if download is None or download.answered:
                    return None  # late (aborted meanwhile) or repeated
                if frame.offset > download.size:
                    raise RemoteProtocolError(f"accept for transfer {frame.id} is past the end of the file")
                download.answered = True
                return frame
            case frames.Result():
                download = self._downloads.get(frame.id)
                if download is None:
                    return None  # late: the transfer was settled without it
                if frame.ok and not download.ended:
                    raise RemoteProtocolError(f"result ok for transfer {frame.id} before its end")
                if frame.ok and frame.sha256 != download.sha256:
                    raise RemoteProtocolError(f"result ok for transfer {frame.id} names another SHA-256 than the offer's")
                del self._downloads[frame.id]
                return frame
            case frames.Hello():
                raise RemoteProtocolError("a client may not send 'hello' twice")
            case _ if isinstance(frame, _CLIENT_SENDS):
                return frame
        raise RemoteProtocolError(f"a client may not send {frame.TYPE!r}")

    def _greeting(self, frame: frames.Frame) -> frames.Hello:
        if not isinstance(frame, frames.Hello):
            raise RemoteProtocolError("the first message must be hello")
        if frame.version != frames.PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {frame.version} is not supported; this server speaks {frames.PROTOCOL_VERSION}"
            )
        if frame.name is not None and frame.name != self.identity:
            raise RemoteProtocolError(f"hello claims to be {frame.name!r}, but the certificate says {self.identity!r}")
        self.hello = frame
        return frame

    def _forget_refused(self) -> None:
        """Ids refused before their accept can carry no chunk: forgotten at the next offer, so
        an id may be offered again. Cancelled ids may still have chunks on the way: kept (bounded)."""
        for transfer_id in [i for i, accepted in self._closed.items() if not accepted]:
            del self._closed[transfer_id]

    def _close_upload(self, transfer_id: int) -> None:
        upload = self._uploads.pop(transfer_id, None)
        if upload is not None:
            self._closed[transfer_id] = upload.accepted
            while len(self._closed) > MAX_CLOSED_IDS:
                self._closed.popitem(last=False)

    # ------------------------------------------------------------ to the client

    def send(self, message: frames.Message) -> bytes:
        if self.hello is None and not isinstance(message, (frames.Hello, frames.Bye)):
            raise LocalProtocolError(f"{message.TYPE} before the client's hello")
        match message:
            case frames.Offer():
                self._downloads[message.id] = _Download(message.size, message.sha256)
            case frames.End():
                download = self._downloads.get(message.id)
                if download is not None:
                    download.ended = True
            case frames.Abort():
                self._downloads.pop(message.id, None)
            case frames.Accept():
                upload = self._uploads.get(message.id)
                if upload is None:
                    raise LocalProtocolError(f"accept for transfer {message.id}, which is not open")
                upload.accepted = True
            case frames.Recipients(names=[]) | frames.Cancel():
                self._close_upload(message.id)
        return frames.encode(message)

    def welcome_hello(self) -> bytes:
        """The server's hello, the answer to the client's."""
        return frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION, software=self.software))
