"""`securechat join`: one connection to the server, plus the local person's input.

Threads, as in the seed: one receives (the Connection's I/O thread, which
also does all sending on the socket), one reads what the person types. Each
/send gets a thread that reads the file and queues its chunks; it blocks
when the outbox is full, which is how a big file is paced without memory
growing.

A connection that drops without a goodbye is re-opened (exponential backoff
with jitter, capped at RECONNECT_MAX) unless reconnecting is off. Lines typed
meanwhile wait in a bounded backlog and go out first on the new connection;
files that were in flight are offered again, and the receivers' kept parts
make that a resume. A goodbye from the server (shutdown, revoked, replaced
by another connection with our certificate) is final: reconnecting would
only fight it.

Our name is our certificate's common name, read from our own file: a
welcome that calls us anything else is a protocol error. Who else is here is
tracked from welcome, joined and left, so `send --to NAME` can wait for NAME.
Leaving (exit, end of input, the first Ctrl-C) waits for every file asked
for, saying what it waits for; abandon() is the second Ctrl-C.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from . import frames
from .certfiles import common_name
from .commands import HELP, Command, Help, PrivateMessage, Quit, Say, SendFile, Who
from .connection import HELLO_TIMEOUT, Connection, connect
from .console import Console, show_message
from .errors import REVOKED_MESSAGE, ConnectionFailed, ConnectionLost, FailureKind, RemoteProtocolError, TransferError
from .inbox import Inbox, Verdict, announce_incoming
from .outgoing import Outgoing, Retry
from .tls import ClientFiles, client_context, peer_identity
from .transfer import Downloads

SOFTWARE = "securechat-client/0.1"
RECONNECT_FIRST = 0.5  # seconds before the first attempt; doubled after each failure
RECONNECT_MAX = 30.0
MAX_BACKLOG = 100  # lines typed while disconnected; more are refused, visibly


def _is_final(failure: ConnectionFailed) -> bool:
    """Failures that retrying cannot fix: the server refuses our certificate or our protocol."""
    return failure.kind.final


_BYE_KINDS = {"revoked": FailureKind.REVOKED, "certificate": FailureKind.CERTIFICATE}


def _end_kind(conn: Connection, bye: frames.Bye | None) -> FailureKind:
    """Why a connection ended, as a kind: the server's bye code, else what broke it."""
    if bye is not None:
        return _BYE_KINDS.get(bye.code or "", FailureKind.LOST)
    if isinstance(conn.failure, RemoteProtocolError):
        return FailureKind.PROTOCOL
    if isinstance(conn.failure, (ConnectionLost, ConnectionFailed)):
        return conn.failure.kind
    return FailureKind.LOST


def _failure(kind: FailureKind, where: str, reason: str) -> ConnectionFailed:
    if kind is FailureKind.REVOKED:
        return ConnectionFailed(REVOKED_MESSAGE, kind)
    return ConnectionFailed(f"cannot join {where}: {reason}", kind)


class Client:
    def __init__(self, host: str, port: int, files: ClientFiles, downloads: Downloads, console: Console,
                 reconnect: bool = True, give_up_after: float | None = None, receive_files: bool = True) -> None:
        self.host, self.port = host, port
        self.context = client_context(files)
        self.console = console
        self.inbox = Inbox(downloads)
        self.outgoing = Outgoing(console)
        self.reconnect = reconnect
        # Named again in every hello: a reconnect replaces only this session's old connection,
        # never another of ours (a chat and a one-shot send share a certificate).
        self.session_id = secrets.token_urlsafe(16)
        self.receive_files = receive_files
        self.give_up_after = give_up_after  # seconds of failed reconnecting before giving up; None: never
        self.conn: Connection | None = None
        # Who we are comes from our own certificate; a server that names us otherwise is lying.
        self.name = common_name(files.cert)
        self._presence = threading.Condition()
        self.present: set[str] = set()  # everyone else in the room, from welcome, joined and left
        self.online = threading.Event()  # welcomed on the current connection
        self.ended = threading.Event()  # over for good: left, or lost and not reconnecting
        self._lock = threading.Lock()  # the backlog, and which connection is current
        self._backlog: deque[bytes] = deque()
        self._hello_seen = False
        self._private_offers: dict[int, str] = {}  # transfer id -> `to` of offers relayed to us alone
        self._accepted: set[int] = set()  # our transfers the server said `accept` to (they need end or abort)
        self._leaving = threading.Event()
        self.end_reason = ""
        self.ended_cleanly = False
        self.failure: ConnectionFailed | None = None  # ended by a refusal retrying cannot fix
        self._bye: frames.Bye | None = None  # the server's, on the current connection

    # ------------------------------------------------ connecting

    def connect(self) -> None:
        """Open a connection and wait for the server's welcome; ConnectionFailed says why not."""
        sock = connect(self.host, self.port, self.context)
        server_name = peer_identity(sock)
        self._hello_seen = False
        self._bye = None
        conn = Connection(sock, server_name, self._on_frame, self._on_close)
        self.conn = conn
        conn.start()
        conn.send(frames.Hello(version=frames.PROTOCOL_VERSION, software=SOFTWARE, session=self.session_id,
                               receive_files=self.receive_files))
        # TLS 1.3 finishes the client's handshake before the server has checked
        # our certificate; a refusal shows up here, as the connection closing.
        deadline = time.monotonic() + HELLO_TIMEOUT
        while not self.online.wait(0.05):
            if conn.finished.is_set():
                raise _failure(_end_kind(conn, self._bye), f"{self.host}:{self.port}", self.end_reason)
            if time.monotonic() > deadline:
                conn.close("no welcome", send_bye=False)
                raise ConnectionFailed(f"cannot join {self.host}:{self.port}: no answer to hello within {HELLO_TIMEOUT:.0f} s",
                                       FailureKind.TIMEOUT)

    def _reconnect(self, reason: str) -> None:
        delay, attempt, since = RECONNECT_FIRST, 0, time.monotonic()
        while not self._leaving.is_set():
            attempt += 1
            wait = delay * random.uniform(0.5, 1.0)  # jitter: a room that lost its server does not return in step
            self.console.event("reconnecting", attempt=attempt, seconds=round(wait, 1), reason=reason)
            if self._leaving.wait(wait):
                break
            try:
                self.connect()
                return
            except ConnectionFailed as exc:
                reason = str(exc)
                gave_up = self.give_up_after is not None and time.monotonic() - since > self.give_up_after
                if _is_final(exc):
                    self.failure = exc
                if _is_final(exc) or gave_up:
                    self.outgoing.fail_all(f"could not reconnect: {reason}")
                    self.console.event("disconnected", reason=f"gave up reconnecting: {reason}")
                    break
            delay = min(delay * 2, RECONNECT_MAX)
        self.ended.set()

    # ------------------------------------------------ frames from the server

    def _on_frame(self, conn: Connection, frame: frames.Frame) -> None:
        if isinstance(frame, frames.Bye):
            self._bye = frame  # its code says whether to come back
        if not self.online.is_set():
            self._greeting(conn, frame)
            return
        if isinstance(frame, frames.Presence):
            with self._presence:
                self.present.difference_update(d["name"] for d in frame.left)
                self.present.update(frame.joined)
                self._presence.notify_all()
            self._resend(self.outgoing.due(frame.joined))
        if isinstance(frame, frames.Accept):
            self._accepted.add(frame.id)  # before the send thread can see it (outgoing.handle wakes it)
        if show_message(self.console, frame) or self.outgoing.handle(frame):
            if isinstance(frame, frames.Result) and frame.interrupted:
                # Cut off on one connection while another of its is here (no `left` came first): no
                # `joined` will say it is back, so offer it again now (to its newest connection).
                self._resend(self.outgoing.due(sorted(self.present)))  # this thread alone changes present
            return
        match frame:
            case frames.Offer():
                self._offered(conn, frame)
            case frames.Chunk():
                self._answer(conn, self.inbox.chunk(frame.id, frame.data))
            case frames.End():
                self._answer(conn, self.inbox.end(frame.id, frame.sha256))
            case frames.Abort():
                verdict = self.inbox.abort(frame.id, frame.reason)
                if verdict is not None:
                    verdict.report(self.console, **self._privacy(verdict.transfer_id))
            case frames.Bye():
                pass
            case _:
                raise RemoteProtocolError(f"the server may not send {frame.TYPE!r} now")

    def _greeting(self, conn: Connection, frame: frames.Frame) -> None:
        if not self._hello_seen:
            if not isinstance(frame, frames.Hello):
                raise RemoteProtocolError("the server's first message was not hello")
            if frame.version != frames.PROTOCOL_VERSION:
                raise RemoteProtocolError(f"server speaks protocol version {frame.version}, we speak {frames.PROTOCOL_VERSION}")
            self._hello_seen = True
            return
        if isinstance(frame, frames.Bye):
            return
        if not isinstance(frame, frames.Welcome):
            raise RemoteProtocolError("the server did not send welcome after hello")
        if frame.you != self.name:
            raise RemoteProtocolError(f"the server calls us {frame.you!r}, but our certificate says {self.name!r}")
        others = sorted({*frame.members, frame.server} - {self.name})
        with self._presence:
            self.present = set(others)
            self._presence.notify_all()
        self.console.event("connected", peer=f"{self.host}:{self.port}", name=self.name, server=frame.server,
                           members=others)
        with self._lock:
            while self._backlog:  # typed while we were away: first, in order
                conn.outbox.put_control(self._backlog.popleft())
            self.online.set()
        self._resend(self.outgoing.due(frame.members, reconnected=True))

    def _privacy(self, transfer_id: int) -> dict:
        """`to` for an event about a file the server relayed to us alone."""
        to = self._private_offers.get(transfer_id)
        return {"to": to} if to else {}

    def _offered(self, conn: Connection, offer: frames.Offer) -> None:
        sender = offer.sender or "server"
        if offer.to:
            self._private_offers[offer.id] = offer.to

        def ready(offset: int, note: str) -> None:  # on the file's writer thread
            announce_incoming(self.console, sender, offer.name, offer.size, offset, note, **self._privacy(offer.id))
            conn.send(frames.Accept(id=offer.id, offset=offset))

        self._answer(conn, self.inbox.offer(offer.id, sender, offer.name, offer.size, offer.sha256, ready))

    def _answer(self, conn: Connection, verdict: Verdict | None) -> None:
        """Report a decided incoming transfer and tell the sender (through the server)."""
        if verdict is None:
            return
        verdict.report(self.console, **self._privacy(verdict.transfer_id))
        self._private_offers.pop(verdict.transfer_id, None)
        conn.send(frames.Result(id=verdict.transfer_id, ok=verdict.ok, reason=verdict.reason[:900],
                                sha256=verdict.sha256 if verdict.ok else None))

    def _on_close(self, conn: Connection, reason: str, clean: bool) -> None:
        self.end_reason = reason
        self.ended_cleanly = clean
        was_online = self.online.is_set()
        with self._lock:
            self.online.clear()
            # Chat lines still queued were never written: they go out again after a reconnect.
            unsent = [f for f in conn.outbox.unsent_control if _is_chat(f)]
            self._backlog.extendleft(reversed(unsent))
        for verdict in self.inbox.close(f"connection closed: {reason}"):
            verdict.report(self.console, **self._privacy(verdict.transfer_id))
        self._private_offers.clear()  # the next connection numbers its transfers afresh
        with self._presence:
            self.present.clear()
            self._presence.notify_all()
        if not was_online:
            return  # connect() reports it
        kind = _end_kind(conn, self._bye)
        if kind.final and not self._leaving.is_set():
            self.failure = _failure(kind, f"{self.host}:{self.port}", reason)
            self.ended_cleanly = False
            self.outgoing.fail_all(f"connection closed: {self.failure}")
            self.ended.set()  # the command prints self.failure: one line, not a "disconnected" as well
            return
        if self._leaving.is_set() or clean or not self.reconnect:
            self.outgoing.fail_all(f"connection closed: {reason}")
            if not self._leaving.is_set():
                self.console.event("disconnected", reason=reason)
            self.ended.set()
            return
        self.outgoing.interrupt_all(f"connection lost: {reason}")
        self.console.event("disconnected", reason=reason, reconnecting=True)
        threading.Thread(target=self._reconnect, args=(reason,), name="reconnect", daemon=True).start()

    # ------------------------------------------------ what the person types

    def handle(self, command: Command) -> bool:
        match command:
            case Say(text=text):
                self._say(frames.Chat(text=text))
            case PrivateMessage(to=to, text=text):
                self._say(frames.Chat(text=text, to=to))
            case SendFile(path=path, to=to):
                if to is not None and to == self.name:
                    self.console.error(f"{to} is you: /send @NAME sends to someone else in the room")
                    return True
                # Asked for from now on: end of input or `exit` waits for it, although it is
                # hashed (and offered) only later, on its own thread.
                ticket = self.outgoing.ask(path)
                threading.Thread(target=self.send_file, args=(path, to, None, ticket), name="send-file",
                                 daemon=True).start()
            case Who():
                if not self._send_now(frames.encode(frames.Who())):
                    self.console.error("not connected: /who needs the server")
            case Help():
                self.console.event("help", text=HELP)
            case Quit():
                return False
        return True

    def _put(self, encoded: bytes) -> bool:
        """Queue on the current connection; False while there is none (or it just failed). Hold _lock."""
        return self.online.is_set() and self.conn is not None and self.conn.outbox.put_control(encoded)

    def _send_now(self, encoded: bytes) -> bool:
        with self._lock:
            return self._put(encoded)

    def _say(self, message: frames.Chat) -> None:
        encoded = frames.encode(message)
        with self._lock:
            if self._put(encoded):
                return
            kept = len(self._backlog) < MAX_BACKLOG
            if kept:
                self._backlog.append(encoded)
            waiting = len(self._backlog)
        if kept:
            self.console.event("queued", waiting=waiting)
        else:
            self.console.error(f"not connected and {MAX_BACKLOG} lines are waiting already: this line was NOT sent")

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
                    self.console.event("notice", text=f"not connected: {path.name} will be sent when the connection is back")
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
        conn = self.conn
        assert conn is not None
        try:
            conn.send_stream(frames.Offer(id=transfer_id, name=source.name, size=source.size, sha256=source.sha256,
                                          to=to))
            offset = self.outgoing.wait_accept(transfer_id)
            if offset is not None:
                for frame in source.chunk_frames(transfer_id, offset):
                    if self.outgoing.cancelled(transfer_id):
                        break
                    conn.outbox.put_data(frame)
                else:
                    conn.send_stream(frames.End(id=transfer_id, sha256=source.sha256))
                    return
            if transfer_id in self._accepted:
                # Cancelled after its accept: the server keeps it open until end or abort (protocol.md 4).
                conn.send_stream(frames.Abort(id=transfer_id, reason="nobody is receiving it any more"))
        except TransferError as exc:
            conn.send_stream(frames.Abort(id=transfer_id, reason=str(exc)))
            self.outgoing.fail(transfer_id, str(exc))
        except ConnectionLost:
            pass  # _on_close decides: offered again after a reconnect, or failed
        finally:
            self._accepted.discard(transfer_id)
            source.close()

    def wait_for(self, name: str, timeout: float) -> bool:
        """Until `name` is in the room (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        with self._presence:
            while name not in self.present:
                left = deadline - time.monotonic()
                if left <= 0 or self.ended.is_set():
                    return False
                self._presence.wait(min(left, 0.5))
            return True

    def leave(self, hint: str = "Ctrl-C to stop it; it resumes when you send it again") -> None:
        """Let every transfer asked for finish, saying what we wait for; say goodbye, close.

        A KeyboardInterrupt while waiting is the person's second thought: see abandon().
        """
        if self.online.is_set() and not self.outgoing.wait_idle(timeout=0.5):
            while True:
                waiting = self.outgoing.waiting_for()
                if waiting:
                    self.console.event("waiting", text=f"waiting for {'; '.join(waiting)}; {hint}")
                if self.outgoing.wait_idle(timeout=15.0) or not self.online.is_set():
                    break
        self.outgoing.fail_all("you left before it could resume; it resumes when you send it again")
        self._leaving.set()
        with self._lock:
            conn = self.conn if self.online.is_set() else None
            lost = len(self._backlog)
        if lost:
            self.console.error(f"{lost} line(s) typed while disconnected were not sent")
        if conn is not None:
            conn.close("left")
            conn.join(15.0)
        self.ended.set()

    def abandon(self) -> None:
        """Stop now (the second Ctrl-C): every unfinished file fails, and resumes when sent again."""
        self._leaving.set()
        self.outgoing.fail_all("stopped; it resumes from where it stopped when you send it again")
        with self._lock:
            conn = self.conn if self.online.is_set() else None
        if conn is not None:
            conn.close("left")
            conn.join(5.0)
        self.ended.set()


def _is_chat(encoded) -> bool:
    try:
        return isinstance(frames.parse_control(bytes(encoded[frames.HEADER.size:])), frames.Chat)
    except RemoteProtocolError:
        return False
