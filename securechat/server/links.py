"""One socket of the server's loop and what the loop knows about it. I/O: reads and writes, never blocks.

A Link goes through these states, each with its own deadline:
HANDSHAKE (TLS, HANDSHAKE_TIMEOUT) -> GREETING (until the client's hello,
HELLO_TIMEOUT) -> OPEN -> CLOSING (flushing what is queued and a bye,
CLOSE_FLUSH_TIMEOUT) -> LINGER (our half shut, reading until the peer's FIN
so a reset cannot destroy the bye before it is read, LINGER_TIMEOUT) -> closed.

OSError and ssl.SSLError become ConnectionLost here, with a kind, and nowhere else.
"""

from __future__ import annotations

import enum
import errno
import socket
import ssl

from securechat.errors import ConnectionLost, FailureKind
from securechat.pki.tls import describe_tls_failure, tls_failure_kind
from securechat.rooms.room import Member
from securechat.server.writequeue import WriteQueue
from securechat.wire import frames
from securechat.wire.server_protocol import ServerProtocol

READ_BUDGET = 1024 * 1024  # bytes read from one socket per turn, so one sender cannot starve the rest


class State(enum.Enum):
    HANDSHAKE = "handshake"
    GREETING = "greeting"
    OPEN = "open"
    CLOSING = "closing"
    LINGER = "linger"
    CLOSED = "closed"


class Link:
    __slots__ = ("sock", "peer", "source", "state", "deadline", "decoder", "protocol", "member", "queue",
                 "paused_until", "waiting_on", "blocking", "events", "why", "operator")

    def __init__(self, sock: socket.socket, peer: str, source: str | None, state: State, deadline: float | None,
                 now: float) -> None:
        self.sock = sock
        self.peer = peer  # address, for the operator's log
        self.source = source  # admission slot held while in HANDSHAKE (None: not counted)
        self.state = state
        self.deadline = deadline
        self.decoder = frames.FrameDecoder()
        self.protocol: ServerProtocol | None = None
        self.member: Member | None = None
        self.queue = WriteQueue(now)
        self.paused_until = 0.0  # read nothing before this time (offer pacing)
        self.waiting_on: set[Link] = set()  # recipients whose full queues hold this sender
        self.blocking: set[Link] = set()  # senders held by this link's full queue
        self.events = 0  # what the selector watches for
        self.why = ""  # the reason it is closing
        self.operator = False

    def __repr__(self) -> str:
        name = self.member.name if self.member else "?"
        return f"<Link {name} {self.peer} {self.state.value}>"

    def paused(self, now: float) -> bool:
        return bool(self.waiting_on) or self.paused_until > now

    def pending(self) -> bool:
        """Decrypted bytes wait inside OpenSSL: the selector will not say so."""
        pending = getattr(self.sock, "pending", None)
        return pending is not None and self.state in (State.GREETING, State.OPEN) and pending() > 0

    # ------------------------------------------------------------ reading

    def read(self, buffer: memoryview) -> bool:
        """Read what is there into the decoder; False at the end of the stream."""
        budget = READ_BUDGET
        while budget > 0:
            direct = self.decoder.chunk_buffer()  # file data goes straight into its frame
            try:
                n = self.sock.recv_into(direct if direct is not None else buffer)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                return True
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return False
            except ssl.SSLError as exc:
                raise ConnectionLost(f"connection broken: {describe_tls_failure(exc)}", tls_failure_kind(exc)) from exc
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                    return False
                raise ConnectionLost(f"connection broken: {exc.strerror or exc}") from exc
            if n == 0:
                return False
            if direct is not None:
                self.decoder.chunk_filled(n)
                if n == len(direct):
                    return True  # a whole chunk is in: hand it on before reading more
            else:
                self.decoder.feed(buffer[:n])
            budget -= n
        return True

    def drain_raw(self) -> bool:
        """LINGER: discard what the peer still sends; False at its FIN."""
        try:
            return bool(socket.socket.recv(self.sock, 65536))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    # ------------------------------------------------------------ writing

    def flush(self, now: float) -> bool:
        """Write until the queue is empty (False) or the socket is full (True)."""
        queue = self.queue
        while True:
            view = queue.next_write()
            if view is None:
                return False
            try:
                n = self.sock.send(view)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return True
            except ssl.SSLError as exc:
                raise ConnectionLost(f"connection broken: {describe_tls_failure(exc)}", FailureKind.LOST) from exc
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise ConnectionLost("connection closed by the other side") from exc
                raise ConnectionLost(f"connection broken: {exc.strerror or exc}") from exc
            queue.wrote(n, now)

    def shut_our_half(self) -> None:
        """Drop the TLS layer and send FIN; the peer reads what is queued, then EOF."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.state = State.CLOSED
        self.queue.clear()
        try:
            self.sock.close()
        except OSError:
            pass
