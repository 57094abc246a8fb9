"""The client's side of one connection, sans I/O (like h11's Connection).

`receive(frame)` checks a decoded frame from the server against everything
this connection has said and been told and returns what the member should act
on (or None: late or repeated, harmless, dropped); `send(message)` records what
we tell the server and encodes it. No sockets, threads, clocks or files: every
rule a server can break is decided here, once, and raises RemoteProtocolError
(the connection closes with that reason); our own misuse raises
LocalProtocolError. Not thread-safe: its owner serialises the calls.

What it owns (docs/protocol.md sections 3 and 4):
- the greeting: the server's hello (our version), then welcome naming us as our
  certificate does (or bye, a refusal); nothing else before it;
- what a server may send a client at all;
- transfer ids in both directions. Ours (uploads): recipients, accept, result
  and cancel only for ids we offered on this connection; accept not past the
  size; a verdict `ok` only after our end. Late or repeated answers for ids
  already settled are dropped, as the two sides' messages cross on the wire.
  Theirs (downloads): an id is open once; chunk and end only for open ids;
  end under the offer's SHA-256; abort for an open id (also before our accept:
  the server gives up on a slow recipient). A chunk before our accept is
  returned, not an error (section 6: the member refuses that file).
- presence as the server sends it, with our own name taken out of `joined`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from securechat.errors import LocalProtocolError, RemoteProtocolError
from securechat.wire import frames

MAX_REFUSED_OPEN = 1024  # refused offers whose chunks are still coming: past this, a flood
MAX_SETTLED_IDS = 256  # our closed ids remembered, so a late answer for one is dropped, not an error
_ANYTIME = (frames.Chat, frames.Notice, frames.Presence, frames.Bye)


@dataclass
class _Upload:
    """A file we offered (our id)."""

    size: int
    sha256: str
    recipients: set[str] | None = None  # None until the server names them
    accepted: bool = False
    ended: bool = False  # we sent end: only now may a recipient report it verified
    closed: bool = False  # cancelled or refused: no more answers expected; data may still be on its way


@dataclass
class _Download:
    """A file the server offered us (the server's id)."""

    size: int
    sha256: str
    accepted: bool = False  # we sent accept
    refused: bool = False  # we sent a refusing result: its chunks are dropped until end or abort
    ended: bool = False  # the server sent end
    answered: bool = False  # we sent our result


class ClientProtocol:
    def __init__(self, name: str) -> None:
        self.name = name  # from our own certificate, never from a frame
        self.hello_sent = False
        self.server_hello: frames.Hello | None = None
        self.welcome: frames.Welcome | None = None
        self._uploads: dict[int, _Upload] = {}
        self._settled: OrderedDict[int, None] = OrderedDict()
        self._downloads: dict[int, _Download] = {}

    @property
    def greeted(self) -> bool:
        return self.welcome is not None

    # ------------------------------------------------------------ from the server

    def receive(self, frame: frames.Frame) -> frames.Frame | None:
        if self.welcome is None:
            return self._greeting(frame)
        match frame:
            case frames.Chunk():
                download = self._download(frame.id, "data")
                return None if download.refused else frame
            case frames.End():
                download = self._download(frame.id, "end")
                if frame.sha256 != download.sha256:
                    raise RemoteProtocolError(f"end for transfer {frame.id} names another SHA-256 than its offer")
                if not download.accepted and not download.refused:
                    raise RemoteProtocolError(f"end for transfer {frame.id} before it was accepted")
                download.ended = True
                refused = download.refused
                if refused or download.answered:
                    del self._downloads[frame.id]
                return None if refused else frame
            case frames.Abort():
                download = self._download(frame.id, "abort")
                del self._downloads[frame.id]
                return None if download.refused else frame
            case frames.Offer():
                if frame.id in self._downloads:
                    raise RemoteProtocolError(f"transfer id {frame.id} offered twice")
                if sum(d.refused for d in self._downloads.values()) >= MAX_REFUSED_OPEN:
                    raise RemoteProtocolError(f"more than {MAX_REFUSED_OPEN} refused transfers still open")
                self._downloads[frame.id] = _Download(frame.size, frame.sha256)
                return frame
            case frames.Recipients():
                upload = self._upload(frame.id, "recipients")
                if upload is None:
                    return None
                if upload.recipients is not None:
                    raise RemoteProtocolError(f"recipients for transfer {frame.id} sent twice")
                upload.recipients = set(frame.names)
                if not frame.names:
                    self._settle(frame.id)  # nothing more may be sent for it
                return frame
            case frames.Accept():
                upload = self._upload(frame.id, "accept")
                if upload is None or upload.accepted or upload.closed:
                    return None  # repeated, or crossed a cancel
                if frame.offset > upload.size:
                    raise RemoteProtocolError(f"accept for transfer {frame.id} is past its end "
                                              f"({frame.offset} > {upload.size})")
                upload.accepted = True
                return frame
            case frames.Result():
                upload = self._upload(frame.id, "result")
                who = frame.sender or ""
                if upload is None or upload.recipients is None or who not in upload.recipients:
                    return None  # late or repeated: nothing left to decide
                if frame.ok and not upload.ended:
                    raise RemoteProtocolError(f"{who or 'a recipient'} verified transfer {frame.id} before its end")
                if frame.ok and frame.sha256 != upload.sha256:
                    raise RemoteProtocolError(f"result ok for transfer {frame.id} names another SHA-256 than ours")
                upload.recipients.discard(who)
                if not upload.recipients and (upload.ended or not upload.accepted):
                    self._settle(frame.id)
                return frame
            case frames.Cancel():
                upload = self._upload(frame.id, "cancel")
                if upload is None or upload.closed:
                    return None
                upload.closed = True
                if not upload.accepted or upload.ended:
                    self._settle(frame.id)  # no abort will follow from us
                return frame
            case frames.Who(names=names) if names is not None:
                return frame
            case frames.Presence():
                if self.name in frame.joined:
                    return frames.Presence(joined=[n for n in frame.joined if n != self.name], left=frame.left)
                return frame
            case _ if isinstance(frame, _ANYTIME):
                return frame
        raise RemoteProtocolError(f"the server may not send {frame.TYPE!r} now")

    def _greeting(self, frame: frames.Frame) -> frames.Frame:
        if self.server_hello is None:
            if not isinstance(frame, frames.Hello):
                raise RemoteProtocolError("the server's first message was not hello")
            if frame.version != frames.PROTOCOL_VERSION:
                raise RemoteProtocolError(f"server speaks protocol version {frame.version}, "
                                          f"we speak {frames.PROTOCOL_VERSION}")
            self.server_hello = frame
            return frame
        if isinstance(frame, frames.Bye):
            return frame  # a refusal: its code says whether retrying can help
        if not isinstance(frame, frames.Welcome):
            raise RemoteProtocolError("the server did not send welcome after hello")
        if frame.you != self.name:
            raise RemoteProtocolError(f"the server calls us {frame.you!r}, but our certificate says {self.name!r}")
        self.welcome = frame
        return frame

    def _download(self, transfer_id: int, what: str) -> _Download:
        download = self._downloads.get(transfer_id)
        if download is None:
            raise RemoteProtocolError(f"{what} for transfer {transfer_id}, which was never offered")
        return download

    def _upload(self, transfer_id: int, what: str) -> _Upload | None:
        """The open upload `transfer_id`; None if it is settled (a late answer is dropped)."""
        upload = self._uploads.get(transfer_id)
        if upload is None and transfer_id not in self._settled:
            raise RemoteProtocolError(f"{what} for transfer {transfer_id}, which we never offered")
        return upload

    def _settle(self, transfer_id: int) -> None:
        self._uploads.pop(transfer_id, None)
        self._settled[transfer_id] = None
        self._settled.move_to_end(transfer_id)
        while len(self._settled) > MAX_SETTLED_IDS:
            self._settled.popitem(last=False)

    # ------------------------------------------------------------ to the server

    def send(self, message: frames.Message) -> bytes:
        if not self.hello_sent and not isinstance(message, frames.Hello):
            raise LocalProtocolError(f"{message.TYPE} before our hello")
        match message:
            case frames.Hello():
                if self.hello_sent:
                    raise LocalProtocolError("hello sent twice")
                self.hello_sent = True
            case frames.Offer():
                if message.id in self._uploads:
                    raise LocalProtocolError(f"transfer id {message.id} is still open")
                self._settled.pop(message.id, None)
                self._uploads[message.id] = _Upload(message.size, message.sha256)
            case frames.End() | frames.Abort():
                upload = self._uploads.get(message.id)
                if upload is None or not upload.accepted or upload.ended:
                    raise LocalProtocolError(f"{message.TYPE} for transfer {message.id}, which is not being sent")
                if isinstance(message, frames.End):
                    if message.sha256 != upload.sha256:
                        raise LocalProtocolError(f"end for transfer {message.id} under another SHA-256")
                    upload.ended = True
                    if upload.closed or not upload.recipients:
                        self._settle(message.id)
                else:
                    self._settle(message.id)  # verdicts still coming are late: the server settles them
            case frames.Accept():
                download = self._downloads.get(message.id)
                if download is None or download.accepted or download.refused:
                    raise LocalProtocolError(f"accept for transfer {message.id}, which is not waiting for one")
                if message.offset > download.size:
                    raise LocalProtocolError(f"accept for transfer {message.id} past its end")
                download.accepted = True
            case frames.Result():
                download = self._downloads.get(message.id)
                if download is None or download.answered:
                    raise LocalProtocolError(f"result for transfer {message.id}, which is not open")
                if message.ok and not download.ended:
                    raise LocalProtocolError(f"result ok for transfer {message.id} before its end")
                download.answered = True
                if download.ended:
                    del self._downloads[message.id]
                else:
                    download.refused = True
            case frames.Welcome() | frames.Presence() | frames.Notice() | frames.Recipients() | frames.Cancel():
                raise LocalProtocolError(f"a client may not send {message.TYPE!r}")
        return frames.encode(message)

    def may_send_data(self, transfer_id: int) -> bool:
        """Chunks of `transfer_id` may go out (accepted, not ended); the caller encodes them itself."""
        upload = self._uploads.get(transfer_id)
        return upload is not None and upload.accepted and not upload.ended

    def awaits_accept(self, transfer_id: int) -> bool:
        """We have not answered the server's offer `transfer_id` yet (no accept, no refusal)."""
        download = self._downloads.get(transfer_id)
        return download is not None and not download.accepted and not download.refused
