"""The only code that touches a TLS socket.

Threading rule (DESIGN.md section 2): OpenSSL forbids two threads inside
SSL_read and SSL_write on one connection at once, and Python programs that
did it got corrupted TLS state. So each Connection has exactly one I/O
thread, and that thread alone calls recv/send on the socket. The socket is
non-blocking; the thread polls it together with a wake-up socketpair. Every
other thread (stdin reader, file readers, other connections relaying to
this one) only puts frames into this connection's SendQueue and wakes it.
tests/test_stress.py streams both ways while chatting to prove it.

Frames that arrive are decoded here and handed to `on_frame`, on the I/O
thread. A handler relaying a file to a slow peer calls `wait_for(outbox)`:
this connection then stops reading its own socket until that outbox drains,
which pushes back on the sender through TCP instead of buffering in memory.

OSError and ssl.SSLError are turned into our errors here and nowhere else.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import threading
import time
from typing import Callable

from securechat.errors import (
    ConnectionFailed,
    ConnectionLost,
    FailureKind,
    PeerTooSlow,
    RemoteProtocolError,
    SecureChatError,
)
from securechat.member.outbox import STALL_TIMEOUT, SendQueue
from securechat.pki.identity import server_certificate_problem
from securechat.pki.tls import HANDSHAKE_TIMEOUT, describe_tls_failure, tls_failure_kind
from securechat.wire import frames

READ_BUFFER = 256 * 1024
READ_BUDGET = 4 * 1024 * 1024  # bytes read per turn before writes get a go
CLOSE_FLUSH_TIMEOUT = 10.0
LINGER_TIMEOUT = 2.0
HELLO_TIMEOUT = 10.0

_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_OUT = select.POLLOUT
_POLL_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


def _wait(sock: socket.socket, events: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    poller = select.poll()
    poller.register(sock, events)
    if not poller.poll(remaining * 1000):
        raise TimeoutError


def tls_handshake(sock: ssl.SSLSocket, timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Finish the handshake within `timeout` overall, however slowly bytes dribble in."""
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                _wait(sock, _POLL_IN, deadline)
            except ssl.SSLWantWriteError:
                _wait(sock, _POLL_OUT, deadline)
    except TimeoutError as exc:
        raise ConnectionFailed(f"TLS handshake did not finish within {timeout:.0f} s", FailureKind.TIMEOUT) from exc
    except ssl.SSLError as exc:
        raise ConnectionFailed(describe_tls_failure(exc), tls_failure_kind(exc)) from exc
    except OSError as exc:
        raise ConnectionFailed(f"connection lost during the TLS handshake ({exc.strerror or exc})") from exc
    if sock.selected_alpn_protocol() != frames.ALPN_PROTOCOL:
        raise ConnectionFailed("the other side is not a securechat peer (no ALPN securechat/1)", FailureKind.PROTOCOL)


def connect(host: str, port: int, context: ssl.SSLContext, timeout: float = HANDSHAKE_TIMEOUT) -> ssl.SSLSocket:
    """A TCP connection to host:port with the TLS handshake done and the server's certificate checked."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot find host {host!r}: {exc.strerror}", FailureKind.UNREACHABLE) from exc
    except ConnectionRefusedError as exc:
        raise ConnectionFailed(f"cannot connect to {where}: connection refused — is 'securechat serve' running there?",
                               FailureKind.REFUSED) from exc
    except TimeoutError as exc:
        raise ConnectionFailed(f"cannot connect to {where}: no answer within {timeout:.0f} s", FailureKind.TIMEOUT) from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {where}: {exc.strerror or exc}", FailureKind.UNREACHABLE) from exc
    tune_socket(raw)
    sock = context.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)  # takes over raw's fd
    try:
        tls_handshake(sock, timeout)
    except ConnectionFailed as exc:
        sock.close()
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _NAME_MISMATCH:
            # Only the server's operator holds the CA key that can fix this.
            raise ConnectionFailed(
                f"the server's certificate is not valid for {host!r}; the server's operator must reissue it "
                f"with: securechat gen-certs --server-name {host} --force (and restart serve), "
                f"or connect by a name it already has", FailureKind.CERTIFICATE,
            ) from exc
        text = str(exc)
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _UNTRUSTED_ISSUER:
            text += " — is the CA file the ca.pem from this server's certs folder?"
        raise ConnectionFailed(f"cannot connect to {where}: {text}", exc.kind) from exc
    problem = server_certificate_problem(sock.getpeercert(binary_form=True) or b"")
    if problem is not None:
        sock.close()
        raise ConnectionFailed(f"cannot connect to {where}: {problem}; ask the server's operator to reissue it "
                               f"with: securechat gen-certs --force", FailureKind.CERTIFICATE)
    return sock


# X509_V_ERR_* codes from OpenSSL's x509_vfy.h.
_NAME_MISMATCH = (62, 64)  # host name, IP address
_UNTRUSTED_ISSUER = (18, 19, 20, 21)  # self-signed in chain, unable to get local issuer, unable to verify leaf


SOCKET_BUFFER = 1024 * 1024


def _is_eof(exc: ssl.SSLError) -> bool:
    """The peer closed without TLS's close_notify: an end of input like any other (checked by kind,
    never by message text; OpenSSL 3 reports it as UNEXPECTED_EOF_WHILE_READING)."""
    return isinstance(exc, ssl.SSLEOFError) or exc.reason == "UNEXPECTED_EOF_WHILE_READING"


def tune_socket(sock: socket.socket) -> None:
    """Keepalive finds a peer that vanished without a FIN; NODELAY keeps chat prompt.

    Fixed buffers: Linux autotunes a receive buffer up to tcp_rmem's maximum
    (32 MiB here), and every byte of file data queued in the kernel is a byte a
    chat line must wait behind (94 ms p99 measured with autotuning). The
    kernel doubles the value; 2 MiB each way still fills loopback and a LAN.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class Connection:
    """One connection (TLS, or a plain socketpair inside our own process) and the single
    thread that reads and writes it.

    `on_frame(conn, frame)` runs on the I/O thread for every frame; raising
    RemoteProtocolError from it closes the connection with that reason.
    `on_close(conn, reason, clean)` runs once, last, on the I/O thread.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        on_frame: Callable[["Connection", frames.Frame], None],
        on_close: Callable[["Connection", str, bool], None],
        first_frame_timeout: float | None = HELLO_TIMEOUT,
    ) -> None:
        sock.setblocking(False)  # a TLS socket is already (tls_handshake); a socketpair is not
        self.sock = sock
        # A plain socket (the operator's socketpair, in-process) has no TLS layer holding bytes.
        self._pending = getattr(sock, "pending", None)
        self.peer = peer
        self._on_frame = on_frame
        self._on_close = on_close
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self.outbox = SendQueue(self._wake)
        self._decoder = frames.FrameDecoder()
        self._read_buffer = bytearray(READ_BUFFER)
        self._write_view: memoryview | None = None
        self._first_frame_deadline = None if first_frame_timeout is None else time.monotonic() + first_frame_timeout
        self._waiting_on: list[SendQueue] = []
        self._resume_reading_at = 0.0  # monotonic time before which nothing is read (rate limits)
        self.internal_error: BaseException | None = None  # a bug met on this connection, for the log only
        self._close_request: tuple[str, bool] | None = None
        self._bye_reason: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"conn-{peer}", daemon=True)
        self.finished = threading.Event()
        self.failure: SecureChatError | None = None  # what ended it, when not a clean close: its kind counts

    # ---------------------------------------------------- any thread

    def start(self) -> None:
        self._thread.start()

    def send(self, message: frames.Message) -> None:
        """Queue a control message (chat, result, notice...)."""
        self.outbox.put_control(frames.encode(message))

    def send_stream(self, message: frames.Message) -> None:
        """Queue a message that must stay in order with file data (offer, end, abort)."""
        self.outbox.put_data_nowait(frames.encode(message))

    def close(self, reason: str, send_bye: bool = True) -> None:
        """Flush what is queued (with a bye after it) and close. Returns at once."""
        with self._wake_lock:
            if self._close_request is None:
                self._close_request = (reason, send_bye)
        self._wake()

    def join(self, timeout: float | None = None) -> None:
        self.finished.wait(timeout)

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # closed already, or full: the I/O thread is awake either way

    # ---------------------------------------------------- the I/O thread only

    def wait_for(self, outbox: SendQueue) -> None:
        """Stop reading until `outbox` (another connection's) has room again."""
        self._waiting_on.append(outbox)
        outbox.notify_when_drained(self._wake)

    def pause_reading_until(self, when: float) -> None:
        """Read nothing more (frames already decoded wait too) until monotonic time `when`."""
        self._resume_reading_at = max(self._resume_reading_at, when)

    def _paused(self) -> bool:
        if self._waiting_on:
            self._waiting_on = [o for o in self._waiting_on if not o.has_room()]
        if self._resume_reading_at:
            if time.monotonic() < self._resume_reading_at:
                return True
            self._resume_reading_at = 0.0  # passed: the per-frame check costs nothing again
        return bool(self._waiting_on)

    def _run(self) -> None:
        reason, clean = "closed", True
        try:
            reason = self._serve()
        except RemoteProtocolError as exc:
            reason, clean, self.failure = f"protocol error: {exc}", False, exc
            self._goodbye(reason)
        except PeerTooSlow as exc:
            reason, clean = str(exc), False
        except SecureChatError as exc:
            reason, clean, self.failure = str(exc), False, exc
        except Exception as exc:  # a bug must not kill the process silently
            # Its text may carry anything (a peer's bytes): it goes to the log, not to the room.
            self.internal_error = exc
            reason, clean = "internal error", False
        finally:
            self.outbox.fail(reason)
            self._release()
            try:
                self._on_close(self, reason, clean)
            finally:
                self.finished.set()

    def _serve(self) -> str:
        poller = select.poll()
        wake_fd, sock_fd = self._wake_r.fileno(), self.sock.fileno()
        poller.register(wake_fd, _POLL_IN)
        poller.register(sock_fd, _POLL_IN)
        registered = _POLL_IN
        while True:
            if self.outbox.failure is not None:
                raise PeerTooSlow(self.outbox.failure)
            if self._close_request is not None:
                reason, send_bye = self._close_request
                if send_bye:
                    self._goodbye(reason)
                else:
                    self._flush_until(time.monotonic() + CLOSE_FLUSH_TIMEOUT)
                return reason
            self._deliver_frames()
            if self._bye_reason is not None:
                return self._bye_reason or "peer left"
            write_blocked = self._flush()
            paused = self._paused()
            events = (0 if paused else _POLL_IN) | (_POLL_OUT if write_blocked else 0)
            if events != registered:  # a syscall saved on most turns of a busy room
                poller.modify(sock_fd, events)
                registered = events
            if not paused and self._pending is not None and self._pending():
                ready = [(sock_fd, _POLL_IN)]  # decrypted bytes already wait inside OpenSSL
            else:
                timeout = self._poll_timeout()
                ready = poller.poll(None if timeout is None else timeout * 1000)
            readable = broken = False
            for fd, happened in ready:
                if fd == wake_fd:
                    self._drain_wake()
                else:
                    readable = bool(happened & _POLL_IN)
                    broken = bool(happened & _POLL_ERR)
            # Only read when the socket said so: a wake-up alone would cost a
            # failed SSL read (a syscall and an exception) per queued frame.
            # A hang-up is read even while paused: poll reports it whatever we
            # ask for, so ignoring it would spin; reading finds the EOF.
            if (readable and not paused) or broken:
                self._read()

    def _poll_timeout(self) -> float | None:
        now = time.monotonic()
        deadlines = []
        if self._first_frame_deadline is not None:
            if now >= self._first_frame_deadline:
                raise RemoteProtocolError(f"no hello within {HELLO_TIMEOUT:.0f} s")
            deadlines.append(self._first_frame_deadline - now)
        if self._resume_reading_at > now:
            deadlines.append(self._resume_reading_at - now)
        for outbox in self._waiting_on:
            stalled_for = outbox.stalled_for()
            if stalled_for >= STALL_TIMEOUT:
                outbox.fail(f"too slow: read nothing of a file for {STALL_TIMEOUT:.0f} s")
                return 0.0
            deadlines.append(STALL_TIMEOUT - stalled_for)
        return min(deadlines) if deadlines else None

    def _drain_wake(self) -> None:
        # Drain first, then clear the flag: cleared first, a wake landing in
        # between would be read away while the flag stayed set, and every
        # later wake would be skipped. This order costs one spurious wake.
        try:
            self._wake_r.recv(4096)  # wakers write one byte at a time, rarely two: one read empties it
        except (BlockingIOError, InterruptedError):
            pass
        with self._wake_lock:
            self._wake_pending = False

    def _deliver_frames(self) -> None:
        while self._bye_reason is None and not self._paused():
            frame = self._decoder.next_frame()
            if frame is None:
                return
            self._first_frame_deadline = None
            if isinstance(frame, frames.Bye):
                self._bye_reason = frame.reason
            self._on_frame(self, frame)

    def _read(self) -> None:
        view = memoryview(self._read_buffer)
        budget = READ_BUDGET
        while budget > 0:
            # File data goes straight into its frame's buffer; the rest via feed().
            direct = self._decoder.chunk_buffer()
            try:
                n = self.sock.recv_into(direct if direct is not None else view)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as exc:
                if _is_eof(exc):
                    n = 0
                else:
                    raise ConnectionLost(f"connection broken: {describe_tls_failure(exc)}", tls_failure_kind(exc)) from exc
            except OSError as exc:
                raise ConnectionLost(f"connection broken: {exc.strerror or exc}") from exc
            if n == 0:
                self._deliver_frames()  # whatever arrived before the EOF still counts
                if self._bye_reason is not None:
                    return
                raise ConnectionLost("connection closed without a goodbye")
            if direct is not None:
                self._decoder.chunk_filled(n)
                if n == len(direct):
                    return  # a whole chunk is in: hand it on before reading more
            else:
                self._decoder.feed(view[:n])
            budget -= n

    def _flush(self) -> bool:
        """Write until the outbox is empty (False) or the socket is full (True)."""
        while True:
            if self._write_view is None:
                frame = self.outbox.pop()
                if frame is None:
                    return False
                self._write_view = memoryview(frame)
            try:
                # Without SSL_MODE_ENABLE_PARTIAL_WRITE, send() writes all or raises
                # WantWrite; the retry must offer the same bytes, which we keep.
                n = self.sock.send(self._write_view)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return True
            except ssl.SSLError as exc:
                raise ConnectionLost(f"connection broken: {describe_tls_failure(exc)}") from exc
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise ConnectionLost("connection closed by the other side") from exc
                raise ConnectionLost(f"connection broken: {exc.strerror or exc}") from exc
            rest = self._write_view[n:]
            self._write_view = rest if len(rest) else None

    def _flush_until(self, deadline: float) -> None:
        try:
            while self._flush():
                _wait(self.sock, _POLL_OUT, deadline)
        except (TimeoutError, SecureChatError):
            pass

    def _goodbye(self, reason: str) -> None:
        """Send a bye after everything queued, then close our half and linger.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy data the peer has not read yet; shutting down our sending half
        and reading until the peer's FIN avoids that.
        """
        self.outbox.put_data_nowait(frames.encode(frames.Bye(reason=reason[: frames.MAX_REASON_BYTES // 4])))
        self._flush_until(time.monotonic() + CLOSE_FLUSH_TIMEOUT)
        try:
            self.sock.shutdown(socket.SHUT_WR)  # drops the TLS layer; reads below are raw
            deadline = time.monotonic() + LINGER_TIMEOUT
            while True:
                _wait(self.sock, _POLL_IN, deadline)
                if not self.sock.recv(65536):
                    break
        except (OSError, TimeoutError, ValueError):
            pass

    def _release(self) -> None:
        for s in (self.sock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
