"""One local member of a room: what `join` and the server's operator share.

A person (or a script) with one connection at a time: commands, files sent
(send slots, OutgoingFiles) and received (IncomingFiles), presence, and files
offered again when a recipient, or we, come back. `join` connects over TLS and
reconnects (client.py); the operator is attached to its own room in-process
over a plain socketpair with the same wire protocol: both run this code.

Every frame in either direction passes through one ClientProtocol per
connection (client_protocol.py), which decides every protocol error; this
module only acts on what it lets through. Nothing here words an event: the
console does (Console.event / Console.report).

Threads: the connection's I/O thread delivers frames and the close; each file
sent has its own thread (the send queue blocking it paces it); each file
received has a writer thread (transfer.IncomingFile). `_lock` guards the
current connection, its protocol (not thread-safe) and client.py's backlog.

The operator's contract (what a server calls; keep it exactly):

    from securechat.member.local import attach_operator
    handle = attach_operator(sock, name, console, downloads)  # sock: our end of a socketpair
    handle.handle(command) -> bool      # what the operator typed; False on /quit or exit
    handle.wait_idle(timeout: float | None) -> None   # every file asked for is settled (for `exit`)
    handle.close(reason: str) -> None   # shutdown: unfinished incoming files reported failed, conn closed

The operator sends `hello` (its name, a session id, receive_files true) at
once; lines typed before the welcome follow it on the socket. The handle also
has `name`, `incoming`, `outgoing` (progress bars) and `welcomed` (an Event).
"""

from __future__ import annotations

import secrets
import socket
import threading
from pathlib import Path
from typing import Any, Protocol

from securechat.errors import ConnectionLost, TransferError
from securechat.files.transfer import Downloads
from securechat.member.connection import HELLO_TIMEOUT, Connection
from securechat.member.incoming import IncomingFiles, Verdict, incoming_events, verdict_event
from securechat.member.outgoing import OutgoingFiles, Retry
from securechat.ui.commands import HELP, Command, Help, PrivateMessage, Quit, Say, SendFile, Who
from securechat.wire import frames
from securechat.wire.client_protocol import ClientProtocol

SOFTWARE = "securechat-client/0.1"
Event = tuple[str, dict[str, Any]]


class EventSink(Protocol):
    """Where a member's events go: the console (console.py), which alone turns them into text."""

    def event(self, event: str, **fields: Any) -> None: ...
    def report(self, event: str, **fields: Any) -> None: ...


def room_events(message: frames.Frame) -> list[Event] | None:
    """The events a room message (chat, arrivals, departures...) makes; None if it is not one."""
    match message:
        case frames.Chat():
            return [("message", {"from": message.sender, "text": message.text, "to": message.to})]
        case frames.Presence():
            # Left first: one who dropped and came back is in both.
            return ([("left", {"name": d["name"], "reason": d.get("reason", "")}) for d in message.left]
                    + [("joined", {"name": name}) for name in message.joined])
        case frames.Who(names=names) if names is not None:
            return [("who", {"names": names})]
        case frames.Notice():
            return [("notice", {"text": message.text})]
    return None


class Member:
    mark_private = True  # events about a file relayed to us alone say so (`to`)

    def __init__(self, name: str, console: EventSink, downloads: Downloads, receive_files: bool = True) -> None:
        self.name = name  # from our own certificate: a server that calls us otherwise is lying
        self.console = console
        self.incoming = IncomingFiles(downloads)
        self.outgoing = OutgoingFiles(console.report)
        # Named again in every hello: a reconnect replaces only this session's old connection,
        # never another of ours (a chat and a one-shot send share a certificate).
        self.session_id = secrets.token_urlsafe(16)
        self.receive_files = receive_files
        self.conn: Connection | None = None
        self._protocol: ClientProtocol | None = None
        self._lock = threading.Lock()
        self._presence = threading.Condition()
        self.present: set[str] = set()  # everyone else in the room, from welcome and presence
        self.online = threading.Event()  # lines and files may go out on the current connection
        self.welcomed = threading.Event()  # the server's welcome came (on the latest connection)
        self.ended = threading.Event()  # over for good
        self._private_offers: dict[int, str] = {}  # transfer id -> `to` of offers relayed to us alone
        self._bye: frames.Bye | None = None  # the server's, on the current connection

    # ------------------------------------------------ the connection

    def _open(self, sock: socket.socket, peer: str, first_frame_timeout: float | None = HELLO_TIMEOUT) -> Connection:
        """Start a connection on `sock` (TLS done, or a plain socketpair) and say hello on it."""
        protocol = ClientProtocol(self.name)
        conn = Connection(sock, peer, lambda c, frame: self._on_frame(c, protocol, frame),
                          lambda c, reason, clean: self._on_close(c, reason, clean), first_frame_timeout)
        hello = frames.Hello(version=frames.PROTOCOL_VERSION, software=SOFTWARE, name=self.name,
                             session=self.session_id, receive_files=self.receive_files)
        with self._lock:
            self._bye = None
            self.conn, self._protocol = conn, protocol
            conn.outbox.put_control(protocol.send(hello))
        conn.start()
        return conn

    def _send(self, conn: Connection, protocol: ClientProtocol, message: frames.Message, stream: bool = False) -> None:
        """Through the protocol, onto `conn`: `stream` keeps it in order with file data (offer, end, abort)."""
        with self._lock:
            (conn.outbox.put_data_nowait if stream else conn.outbox.put_control)(protocol.send(message))

    def _put(self, message: frames.Message) -> bool:
        """Queue on the current connection; False while there is none (or it just failed). Hold _lock."""
        conn, protocol = self.conn, self._protocol
        if not self.online.is_set() or conn is None or protocol is None:
            return False
        return conn.outbox.put_control(protocol.send(message))

    # ------------------------------------------------ frames from the server (the I/O thread)

    def _on_frame(self, conn: Connection, protocol: ClientProtocol, frame: frames.Frame) -> None:
        with self._lock:
            checked = protocol.receive(frame)  # RemoteProtocolError closes this connection
        match checked:
            case None | frames.Hello():
                pass
            case frames.Bye():
                self._bye = checked  # its code says whether to come back
            case frames.Welcome():
                self._welcomed(conn, checked)
            case frames.Presence():
                self._presence_changed(checked)
            case frames.Recipients() | frames.Accept() | frames.Result() | frames.Cancel():
                self.outgoing.handle(checked)
                if isinstance(checked, frames.Result) and checked.interrupted:
                    # Cut off on one connection while another of its is here (no `left` came first): no
                    # `joined` will say it is back, so offer it again now (to its newest connection).
                    self._resend(self.outgoing.due(sorted(self.present)))
            case frames.Offer():
                self._offered(conn, protocol, checked)
            case frames.Chunk():
                self._answer(conn, protocol, self.incoming.chunk(checked.id, checked.data))
            case frames.End():
                self._answer(conn, protocol, self.incoming.end(checked.id, checked.sha256))
            case frames.Abort():
                verdict = self.incoming.abort(checked.id, checked.reason)
                if verdict is not None:
                    self._report(verdict)
                    self._private_offers.pop(checked.id, None)
            case _:
                self._emit(room_events(checked) or [])

    def _welcomed(self, conn: Connection, welcome: frames.Welcome) -> None:
        others = sorted({*welcome.members, welcome.server} - {self.name})
        with self._presence:
            self.present = set(others)
            self._presence.notify_all()
        self.welcomed.set()
        self._greeted(conn, others, welcome.server)
        self._resend(self.outgoing.due(welcome.members, reconnected=True))

    def _greeted(self, conn: Connection, others: list[str], server: str) -> None:
        """The welcome came: lines and files may go out (client.py also says so, and sends its backlog)."""
        self.online.set()

    def _presence_changed(self, presence: frames.Presence) -> None:
        """Idempotent: only real changes are shown (a replaced session may be `joined` again, and
        welcome may list someone a following presence announces); any `joined` may resume a file."""
        with self._presence:
            left = [d for d in presence.left if d["name"] in self.present]
            self.present.difference_update(d["name"] for d in presence.left)
            joined = [name for name in presence.joined if name not in self.present]
            self.present.update(presence.joined)
            self._presence.notify_all()
        self._resend(self.outgoing.due(presence.joined))
        self._emit(room_events(frames.Presence(joined=joined, left=left)) or [])

    def _emit(self, events: list[Event]) -> None:
        for event, fields in events:
            self.console.event(event, **fields)

    def _privacy(self, transfer_id: int) -> dict:
        """`to` for an event about a file the server relayed to us alone."""
        to = self._private_offers.get(transfer_id)
        return {"to": to} if to else {}

    def _report(self, verdict: Verdict) -> None:
        event, fields = verdict_event(verdict, **self._privacy(verdict.transfer_id))
        self.console.event(event, **fields)

    def _offered(self, conn: Connection, protocol: ClientProtocol, offer: frames.Offer) -> None:
        sender = offer.sender or "server"
        if offer.to and self.mark_private:
            self._private_offers[offer.id] = offer.to
        private = self._privacy(offer.id)

        def ready(offset: int, note: str) -> None:  # on the file's writer thread
            self._emit(incoming_events(sender, offer.name, offer.size, offset, note, **private))
            with self._lock:
                if protocol.awaits_accept(offer.id):  # not refused meanwhile (data before our accept)
                    conn.outbox.put_control(protocol.send(frames.Accept(id=offer.id, offset=offset)))

        self._answer(conn, protocol, self.incoming.offer(offer.id, sender, offer.name, offer.size, offer.sha256,
                                                         ready))

    def _answer(self, conn: Connection, protocol: ClientProtocol, verdict: Verdict | None) -> None:
        """Report a decided incoming transfer and tell the sender (through the server)."""
        if verdict is None:
            return
        self._report(verdict)
        self._private_offers.pop(verdict.transfer_id, None)
        self._send(conn, protocol, frames.Result(id=verdict.transfer_id, ok=verdict.ok, reason=verdict.reason[:900],
                                                 sha256=verdict.sha256 if verdict.ok else None))

    def _on_close(self, conn: Connection, reason: str, clean: bool) -> None:
        with self._lock:
            if self.conn is not conn:
                return  # an old connection's last word, after a new one took over
            was_online = self.online.is_set()
            self.online.clear()
            self.welcomed.clear()
        self._closed(conn, reason, clean, was_online)

    def _closed(self, conn: Connection, reason: str, clean: bool, was_online: bool) -> None:
        """The current connection ended (its I/O thread, last): client.py decides about reconnecting."""
        self._forget_connection()
        self.ended.set()

    def _forget_connection(self) -> None:
        self._private_offers.clear()  # the next connection numbers its transfers afresh
        with self._presence:
            self.present.clear()
            self._presence.notify_all()

    def _drop_incoming(self, reason: str) -> None:
        """Every file still arriving stops (its kept part makes a later offer a resume)."""
        for verdict in self.incoming.close(reason):
            self._report(verdict)

    # ------------------------------------------------ what the person types

    def handle(self, command: Command) -> bool:
        match command:
            case Say(text=text):
                self._say(frames.Chat(text=text))
            case PrivateMessage(to=to, text=text):
                self._say(frames.Chat(text=text, to=to))
            case SendFile(path=path, to=to):
                if to is not None and to == self.name:
                    self.console.report("send_to_self", to=to)
                    return True
                # Asked for from now on: end of input or `exit` waits for it, although it is
                # hashed (and offered) only later, on its own thread.
                ticket = self.outgoing.ask(path)
                threading.Thread(target=self.send_file, args=(path, to, None, ticket), name="send-file",
                                 daemon=True).start()
            case Who():
                if not self._say(frames.Who()):
                    self.console.report("who_offline")
            case Help():
                self.console.event("help", text=HELP)
            case Quit():
                return False
        return True

    def _say(self, message: frames.Chat | frames.Who) -> bool:
        """Send a line (or a /who) now; a line that cannot go is kept or refused, visibly."""
        with self._lock:
            if self._put(message):
                return True
            if not isinstance(message, frames.Chat):
                return False
            event, fields = self._keep_unsent(message)
        self.console.report(event, **fields)
        return False

    def _keep_unsent(self, message: frames.Chat) -> tuple[str, dict]:
        """A line typed with no connection (hold _lock): what to tell the person (client.py keeps it)."""
        return "line_not_sent", {}

    def _resend(self, retries: list[Retry]) -> None:
        for retry in retries:
            threading.Thread(target=self.send_file, args=(retry.path, retry.to, retry), name="resend", daemon=True).start()

    def send_file(self, path: Path, to: str | None = None, previous: Retry | None = None,
                  ticket: int | None = None) -> None:
        """Offer `path` and stream it; `ticket` is from outgoing.ask() when the command was handled."""
        if ticket is None and previous is None:
            ticket = self.outgoing.ask(path)
        try:
            with self.outgoing.slots:
                if not self.online.is_set():
                    self.console.report("send_waits", name=path.name)
                    while not self.online.wait(0.5):
                        if self.ended.is_set():
                            self.console.event("file_failed", to=to, name=path.name, reason="not connected")
                            self.outgoing.drop_ask(ticket, "not connected")
                            if previous is not None:
                                self.outgoing.unclaim()
                            return
                self._send_file(path, to, previous, ticket)
        finally:
            self.outgoing.drop_ask(ticket, "not sent")  # nothing, if start() registered it

    def _send_file(self, path: Path, to: str | None, previous: Retry | None, ticket: int | None) -> None:
        started = self.outgoing.start(path, to, previous, ticket)
        if started is None:
            return
        source, transfer_id = started
        with self._lock:
            conn, protocol = self.conn, self._protocol
        assert conn is not None and protocol is not None
        try:
            self._send(conn, protocol, frames.Offer(id=transfer_id, name=source.name, size=source.size,
                                                    sha256=source.sha256, to=to), stream=True)
            offset = self.outgoing.wait_accept(transfer_id)
            if offset is not None:
                for frame in source.chunk_frames(transfer_id, offset):
                    if self.outgoing.cancelled(transfer_id):
                        break
                    conn.outbox.put_data(frame)
                else:
                    self._send(conn, protocol, frames.End(id=transfer_id, sha256=source.sha256), stream=True)
                    return
            # Cancelled after its accept: the server keeps it open until end or abort (protocol.md 4).
            self._abort(conn, protocol, transfer_id, "nobody is receiving it any more")
        except TransferError as exc:
            self._abort(conn, protocol, transfer_id, str(exc))
            self.outgoing.fail(transfer_id, str(exc))
        except ConnectionLost:
            pass  # _closed decides: offered again after a reconnect, or failed
        finally:
            source.close()

    def _abort(self, conn: Connection, protocol: ClientProtocol, transfer_id: int, reason: str) -> None:
        with self._lock:
            if not protocol.may_send_data(transfer_id):
                return  # never accepted: nothing is open at the server
            conn.outbox.put_data_nowait(protocol.send(frames.Abort(id=transfer_id, reason=reason)))

class _Operator(Member):
    """The person at the server's terminal, attached to its own room over a socketpair."""

    mark_private = False  # every file relayed to the operator is to the operator: said as before

    def _closed(self, conn: Connection, reason: str, clean: bool, was_online: bool) -> None:
        # The server ends this connection when it shuts down; the files still arriving are
        # reported by close(), with the server's reason, not as a lost connection.
        self._forget_connection()


class OperatorHandle:
    """What the server holds of its operator (the contract in this module's docstring)."""

    def __init__(self, member: _Operator) -> None:
        self._member = member
        self.name = member.name
        self.incoming = member.incoming
        self.outgoing = member.outgoing
        self.welcomed = member.welcomed  # for a server that wants the operator in the room before it listens

    def handle(self, command: Command) -> bool:
        return self._member.handle(command)

    def wait_idle(self, timeout: float | None = None) -> None:
        self._member.outgoing.wait_idle(timeout=timeout)

    def close(self, reason: str) -> None:
        member = self._member
        member.ended.set()
        member._drop_incoming(reason)
        with member._lock:
            conn = member.conn
        if conn is not None:
            conn.close(reason)
            conn.join(5.0)


def attach_operator(sock: socket.socket, name: str, console: EventSink, downloads: Downloads) -> OperatorHandle:
    """The operator as a member of its own room: `sock` is our end of a socketpair the server serves."""
    member = _Operator(name, console, downloads)
    member._open(sock, "server", first_frame_timeout=None)
    member.online.set()  # nothing can be lost between two ends in one process: lines follow the hello
    return OperatorHandle(member)
