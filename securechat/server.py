"""`securechat serve`: the listener, one Session per client, and the operator.

Threads: one accept loop; a short-lived admission thread per incoming
socket (TLS handshake with an overall deadline, so a silent or dribbling
client costs one thread for at most 10 s and never blocks the accept loop);
then each client's Connection I/O thread. The operator is a member like any
other (member.py), attached in-process over a plain socketpair that a Session
serves: its stdin loop and its files run on its own threads.

Admission (admission.py, identity.py): handshake slots are capped per source
address and in total; after the handshake, and before a Session exists, the
peer's serial is checked against the CRL as it is on disk at that moment, and
its certificate profile and name against the rules in identity.py.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from pathlib import Path

from . import frames
from .admission import (BYE_REVOKED, REVOKED_REASON, Admissions, CrlInForce, Refusal, check_peer, close_gently,
                        send_refusal, source_key)
from .certfiles import CertsLayout, common_name
from .connection import Connection, tls_handshake, tune_socket
from .console import Console
from .errors import ConnectionLost, PeerTooSlow, RemoteProtocolError, SecureChatError, UsageError
from .member import attach_operator
from .outbox import STALL_TIMEOUT
from .ratelimit import TokenBucket
from .room import Participant, Pause, Relay, Room
from .transfer import Downloads

LISTEN_BACKLOG = 512
CRL_POLL_INTERVAL = 0.5  # seconds between checks for a changed CRL, to drop revoked members
MAX_UPLOADS = 16  # files one member may be sending at once (our clients send 4 at a time)
CHAT_RATE = 20.0  # lines per second a member may send, on average
CHAT_BURST = 60  # lines a member may send at once
# Offers a member may make per second, and at once. Each offer puts a line on every
# screen and a partial on every disk: a flood (70/s measured) is slowed to this by not
# reading the member's connection until the bucket is out of debt; nothing is refused.
OFFER_RATE = 2.0
OFFER_BURST = 16
SHUTDOWN_TIMEOUT = 10.0
OPERATOR_WELCOME_TIMEOUT = 10.0
SOFTWARE = "securechat-server/0.1"


class Session(Participant):
    """One connected client, as the room sees it."""

    def __init__(self, server: "Server", sock, name: str, operator: bool = False) -> None:
        self.name = name
        # The operator's socketpair has no certificate: its identity is given, never revoked.
        self.operator = operator
        self.serial = None if operator else int(sock.getpeercert()["serialNumber"], 16)
        self.server = server
        self.room = server.room
        self.conn = Connection(sock, name, self._on_frame, self._on_close)
        self.session: str | None = None
        self.receives_files = True
        self._greeted = False
        self._member = False  # the room took us in; a refused connection is closing and says nothing
        self._uploads: dict[int, Relay] = {}
        # Per member, not per connection: 32 connections must not buy 32 times the budget.
        self._chat_bucket, self._offer_bucket = server.budgets(name)
        self._warned_at = 0.0

    def _may_chat(self) -> bool:
        """A flood of lines from one member is refused; nobody else notices."""
        now = time.monotonic()
        if self.operator or self._chat_bucket.allow(now):
            return True
        if now - self._warned_at > 1.0:
            self._warned_at = now
            self.deliver(frames.Notice(text=f"too many lines (limit {CHAT_RATE:.0f} per second): lines dropped, slow down"))
        return False

    def _pace_offers(self) -> None:
        """A flood of offers is slowed: this connection is not read again until the bucket allows."""
        if self.operator:
            return
        now = time.monotonic()
        self._offer_bucket.take(now)
        ready_at = self._offer_bucket.ready_at(now)
        if ready_at > now:
            self.conn.pause_reading_until(ready_at)

    # ------------------------------------------------ Participant

    def greet(self, members: list[str]) -> None:
        self.conn.send(frames.Welcome(you=self.name, server=self.room.operator_name, members=members))

    def deliver(self, message: frames.Message, encoded: bytes | None = None) -> None:
        self.conn.outbox.put_control(encoded or frames.encode(message))

    def offer(self, relay: Relay) -> None:
        self.conn.send_stream(frames.Offer(id=relay.id, name=relay.name, size=relay.size, sha256=relay.sha256,
                                           to=self.name if relay.private else None, sender=relay.sender.name))

    def start_sending(self, relay: Relay) -> None:
        assert relay.start is not None
        self.deliver(frames.Accept(id=relay.sender_id, offset=relay.start))

    def chunk(self, relay: Relay, frame: bytes, data: memoryview, pause: Pause) -> bool:
        outbox = self.conn.outbox
        if pause is None:
            try:
                outbox.put_data(frame, STALL_TIMEOUT)
            except (ConnectionLost, PeerTooSlow):
                return False
        elif not outbox.put_data_nowait(frame):
            pause(outbox)
        return outbox.failure is None

    def end(self, relay: Relay, sha256: str) -> None:
        self.conn.send_stream(frames.End(id=relay.id, sha256=sha256))

    def abort(self, relay: Relay, reason: str) -> None:
        self.conn.send_stream(frames.Abort(id=relay.id, reason=reason[:900]))

    def kick(self, reason: str) -> None:
        self.conn.close(reason)

    # ------------------------------------------------ frames from the client

    def _on_frame(self, conn: Connection, frame: frames.Frame) -> None:
        if not self._greeted:
            self._greet(frame)
            return
        if not self._member:
            return  # refused by the room (its kick is on the way): frames read with its hello are dropped
        match frame:
            case frames.Chunk():
                relay = self._uploads.get(frame.id)
                if relay is None:
                    raise RemoteProtocolError(f"data for transfer {frame.id}, which was never offered")
                if not relay.ready.is_set():
                    raise RemoteProtocolError(f"data for transfer {frame.id} before it was accepted")
                if not relay.finished:
                    self.room.relay_chunk(relay, memoryview(frame.data), conn.wait_for)
            case frames.Chat():
                if not self._may_chat():
                    return
                problem = self.room.chat(self, frame.text, frame.to)
                if problem:
                    self.deliver(frames.Notice(text=f"/msg {frame.to}: {problem}"))
            case frames.Offer():
                self._forget_refused_uploads()  # first: an id cancelled before its accept is not open
                if frame.id in self._uploads:
                    raise RemoteProtocolError(f"transfer id {frame.id} offered twice")
                if len(self._uploads) >= MAX_UPLOADS:
                    raise RemoteProtocolError(f"more than {MAX_UPLOADS} files sent at once")
                self._pace_offers()
                relay = self.room.start_relay(self, frame.id, frame.name, frame.size, frame.sha256, frame.to)
                if relay is not None:  # None: nobody receives it, and nothing more comes for its id
                    self._uploads[frame.id] = relay
            case frames.Accept():
                if not self.room.accepted(frame.id, self, frame.offset):
                    raise RemoteProtocolError(f"accept for transfer {frame.id} is past the end of the file")
            case frames.End():
                relay = self._upload(frame.id, "end")
                if not relay.finished:
                    self.room.end_relay(relay, frame.sha256)
            case frames.Abort():
                self.room.sender_aborted(self._upload(frame.id, "abort"), frame.reason or f"{self.name} stopped sending")
            case frames.Result():
                problem = self.room.verdict(frame.id, self, frame.ok, frame.reason, frame.sha256 if frame.ok else None)
                if problem:
                    raise RemoteProtocolError(problem)
            case frames.Who():
                self.deliver(frames.Who(names=self.room.names()))
            case frames.Bye():
                pass
            case _:
                raise RemoteProtocolError(f"a client may not send {frame.TYPE!r} here")

    def _forget_refused_uploads(self) -> None:
        """Transfers refused before their accept never get an end or abort from their sender
        (it was told `cancel`): kept, they would count against MAX_UPLOADS for good. Dropped
        only here, at the next offer, so stray chunks sent right after a refusal stay harmless."""
        for transfer_id, relay in list(self._uploads.items()):
            if relay.finished and relay.start is None:
                del self._uploads[transfer_id]

    def _upload(self, transfer_id: int, what: str) -> Relay:
        relay = self._uploads.pop(transfer_id, None)
        if relay is None:
            raise RemoteProtocolError(f"{what} for transfer {transfer_id}, which was never offered")
        return relay

    def _greet(self, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.Hello):
            raise RemoteProtocolError("the first message must be hello")
        if frame.version != frames.PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {frame.version} is not supported; this server speaks {frames.PROTOCOL_VERSION}"
            )
        if frame.name is not None and frame.name != self.name:
            raise RemoteProtocolError(f"hello claims to be {frame.name!r}, but the certificate says {self.name!r}")
        self._greeted = True
        self.session, self.receives_files = frame.session, frame.receive_files
        self.conn.send(frames.Hello(version=frames.PROTOCOL_VERSION, software=SOFTWARE))
        self._member = self.room.join(self)  # sends welcome: the member list and joining are one step

    def _on_close(self, conn: Connection, reason: str, clean: bool) -> None:
        if conn.internal_error is not None:  # for the operator only: the room is told "internal error"
            self.server.console.error(f"internal error on {self.name}'s connection: {conn.internal_error!r}")
        if self._member:
            self.room.leave(self, "" if clean else reason, interrupted=not clean)
        self.server.forget(self)


def _raise_open_file_limit() -> None:
    """Each client costs three descriptors (its socket and a wake-up socketpair);
    the common default soft limit of 1024 would cap a room near 340 people."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


class Server:
    def __init__(self, certs: Path, host: str, port: int, downloads: Downloads, console: Console) -> None:
        self.certs = certs
        self._crl = CrlInForce(certs)
        name = common_name(CertsLayout(certs).server_cert)
        self.host, self.port = host, port
        self.console = console
        self.room = Room(name)
        self._sessions: set[Session] = set()
        self._budgets: dict[str, tuple[TokenBucket, TokenBucket]] = {}  # identity -> (chat, offers)
        self._lock = threading.Lock()
        self._admissions = Admissions()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self.address: tuple[str, int] = (host, port)
        ours, theirs = socket.socketpair()
        operator_session = Session(self, theirs, name, operator=True)
        self._sessions.add(operator_session)
        operator_session.conn.start()
        self.operator = attach_operator(ours, name, console, downloads)

    def bind(self) -> tuple[str, int]:
        _raise_open_file_limit()
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise UsageError(f"cannot listen on {self.host!r}: {exc.strerror}") from exc
        family, _, _, _, address = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
            listener.listen(LISTEN_BACKLOG)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {self.port} on {self.host} is already in use — choose another with --port") from exc
            if exc.errno == errno.EACCES:
                raise UsageError(f"no permission to listen on port {self.port}; use a port above 1023") from exc
            raise UsageError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        listener.settimeout(CRL_POLL_INTERVAL)  # so the accept loop notices shutdown and CRL changes
        self._listener = listener
        self.address = listener.getsockname()[:2]
        return self.address

    def start(self) -> None:
        # In the room before anyone else: a client's welcome lists the operator.
        self.operator.welcomed.wait(OPERATOR_WELCOME_TIMEOUT)
        threading.Thread(target=self._accept_loop, name="accept", daemon=True).start()

    def _reload_crl_if_changed(self) -> frozenset[int]:
        """The revoked serials as the CRL on disk says now; on a change, drop the revoked members.

        Called after every handshake (so admission never races a `revoke`) and by
        the accept loop between connections (so a connected member is dropped).
        """
        try:
            changed = self._crl.refresh()
        except SecureChatError as exc:
            self.console.error(f"keeping the previous CRL: {exc}")
            return self._crl.revoked
        revoked = self._crl.revoked
        if changed:
            with self._lock:
                sessions = [s for s in self._sessions if s.serial in revoked]
            for session in sessions:
                # A bye with a code first, so the client knows not to reconnect; the plain bye
                # kick() adds after it is never read by our client.
                session.conn.outbox.put_control(frames.encode(frames.Bye(reason=REVOKED_REASON, code=BYE_REVOKED)))
                session.kick(REVOKED_REASON)
        return revoked

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            self._reload_crl_if_changed()
            try:
                raw, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. EMFILE: keep serving those already in
            source = source_key(addr[0])
            refusal = self._admissions.enter(source)
            if refusal is not None:
                raw.close()
                if self._admissions.should_report(source, time.monotonic()):
                    self.console.event("refused", peer=addr[0], reason=refusal)
                continue
            threading.Thread(target=self._admit, args=(raw, addr, source), name="admit", daemon=True).start()

    def _admit(self, raw: socket.socket, addr, source: str) -> None:
        try:
            admitted = self._handshake(raw)
        except (SecureChatError, OSError) as exc:
            raw.close()
            self.console.event("refused", peer=addr[0], reason=str(exc))
            return
        finally:
            self._admissions.leave(source)
        if isinstance(admitted, Refusal):
            self.console.event("refused", peer=addr[0], name=admitted.name, reason=f"{admitted.name}: {admitted.reason}")
            return
        sock, name = admitted
        session = Session(self, sock, name)
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            self._sessions.add(session)
        session.conn.start()

    def _handshake(self, raw: socket.socket) -> tuple[ssl.SSLSocket, str] | Refusal:
        """The TLS handshake and the checks after it: (sock, name) to admit, or a Refusal (already sent)."""
        tune_socket(raw)
        sock = self._crl.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            tls_handshake(sock)
            # The CRL on disk now, not the one this context was made with: it may be older.
            name, problem, code = check_peer(sock, self._reload_crl_if_changed(), self.operator.name)
        except (SecureChatError, OSError):
            close_gently(sock)  # so the TLS alert OpenSSL sent is read, not lost to a reset
            raise
        if problem is None:
            return sock, name
        send_refusal(sock, problem, code, SOFTWARE)
        return Refusal(name, problem)

    def budgets(self, name: str) -> tuple[TokenBucket, TokenBucket]:
        """The chat and offer buckets of identity `name`, shared by all its connections (and
        kept when they go, so reconnecting does not refill them; one pair per certificate name)."""
        with self._lock:
            if name not in self._budgets:
                now = time.monotonic()
                self._budgets[name] = (TokenBucket(CHAT_RATE, CHAT_BURST, now), TokenBucket(OFFER_RATE, OFFER_BURST, now))
            return self._budgets[name]

    def forget(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def shutdown(self, reason: str = "server shutting down", wait_for_transfers: bool = False) -> None:
        """Stop accepting, tell every client, close. `exit` first lets the operator's sends finish."""
        if wait_for_transfers:
            self.operator.wait_idle(None)
        self._stopping.set()
        self.console.event("shutdown", reason=reason)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.conn.close(reason)
        for session in sessions:
            session.conn.join(SHUTDOWN_TIMEOUT)
        self.operator.close("server shut down")
