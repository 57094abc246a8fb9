"""`securechat join` and `send`: a Member (local.py) that connects over TLS,
reconnects, and keeps a backlog.

Everything a member does (commands, files both ways, presence, resending)
is local.py's; this module only opens connections, re-opens them, and keeps
the lines typed meanwhile. A connection that drops without a goodbye is
re-opened (exponential backoff with jitter, capped at RECONNECT_MAX) unless
reconnecting is off. Lines typed meanwhile wait in a bounded backlog and go
out first on the new connection; files that were in flight are offered again,
and the receivers' kept parts make that a resume. A goodbye from the server
(shutdown, revoked, replaced by another connection with our certificate) is
final: reconnecting would only fight it.

Our name is our certificate's common name, read from our own file (a welcome
that calls us anything else is the protocol's error: client_protocol.py).
Leaving (exit, end of input, the first Ctrl-C) waits for every file asked
for, saying what it waits for; abandon() is the second Ctrl-C.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque

from securechat.errors import REVOKED_MESSAGE, ConnectionFailed, ConnectionLost, FailureKind, RemoteProtocolError
from securechat.files.transfer import Downloads
from securechat.member.connection import HELLO_TIMEOUT, Connection, connect
from securechat.member.local import Member
from securechat.pki.certfiles import common_name
from securechat.pki.tls import ClientFiles, client_context, peer_identity
from securechat.ui.console import Console, describe_waiting
from securechat.wire import frames

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


class Client(Member):
    def __init__(self, host: str, port: int, files: ClientFiles, downloads: Downloads, console: Console,
                 reconnect: bool = True, give_up_after: float | None = None, receive_files: bool = True) -> None:
        super().__init__(common_name(files.cert), console, downloads, receive_files)
        self.host, self.port = host, port
        self.context = client_context(files)
        self.reconnect = reconnect
        self.give_up_after = give_up_after  # seconds of failed reconnecting before giving up; None: never
        self._backlog: deque[frames.Chat] = deque()  # guarded by _lock, like the current connection
        self._leaving = threading.Event()
        self.end_reason = ""
        self.ended_cleanly = False
        self.failure: ConnectionFailed | None = None  # ended by a refusal retrying cannot fix

    # ------------------------------------------------ connecting

    def connect(self) -> None:
        """Open a connection and wait for the server's welcome; ConnectionFailed says why not."""
        sock = connect(self.host, self.port, self.context)
        conn = self._open(sock, peer_identity(sock))
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

    def _greeted(self, conn: Connection, others: list[str], server: str) -> None:
        self.console.event("connected", peer=f"{self.host}:{self.port}", name=self.name, server=server,
                           members=others)
        with self._lock:
            while self._backlog:  # typed while we were away: first, in order
                self._put_now(conn, self._backlog.popleft())
            self.online.set()

    def _put_now(self, conn: Connection, message: frames.Chat) -> None:
        assert self._protocol is not None
        conn.outbox.put_control(self._protocol.send(message))

    def _keep_unsent(self, message: frames.Chat) -> tuple[str, dict]:
        if len(self._backlog) >= MAX_BACKLOG:
            return "backlog_full", {"limit": MAX_BACKLOG}
        self._backlog.append(message)
        return "queued", {"waiting": len(self._backlog)}

    def _closed(self, conn: Connection, reason: str, clean: bool, was_online: bool) -> None:
        self.end_reason = reason
        self.ended_cleanly = clean
        with self._lock:
            # Chat lines still queued were never written: they go out again after a reconnect.
            self._backlog.extendleft(reversed(_unsent_chats(conn)))
        self._drop_incoming(f"connection closed: {reason}")
        self._forget_connection()
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

    # ------------------------------------------------ leaving

    def leave(self, hint: str = "Ctrl-C to stop it; it resumes when you send it again") -> None:
        """Let every transfer asked for finish, saying what we wait for; say goodbye, close.

        A KeyboardInterrupt while waiting is the person's second thought: see abandon().
        """
        if self.online.is_set() and not self.outgoing.wait_idle(timeout=0.5):
            while True:
                waiting = self.outgoing.waiting_for()
                if waiting:
                    self.console.event("waiting", text=describe_waiting(waiting, hint))
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



def _unsent_chats(conn: Connection) -> list[frames.Chat]:
    """The chat lines still queued on a connection that ended: never written, so not lost."""
    chats = []
    for encoded in conn.outbox.unsent_control:
        try:
            message = frames.parse_control(bytes(encoded[frames.HEADER.size:]))
        except RemoteProtocolError:
            continue
        if isinstance(message, frames.Chat):
            chats.append(message)
    return chats
