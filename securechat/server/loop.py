"""The server's one I/O loop: every socket, every handshake, every write, on one thread.

OpenSSL forbids two threads in one connection's SSL_read/SSL_write at once, and a
thread per member costs a core at 500 members (80-145 µs of CPU per delivered
line, measured). So one thread owns every socket (selectors, non-blocking
SSLSockets), drives TLS handshakes with a deadline, hands each decoded frame
to the connection's ServerProtocol and then the pure Room, and carries out the
room's actions. Frames queued for one connection during a turn leave in one
write at its end. Nothing here waits: the operator's disk I/O and hashing run
in the operator's own threads, on the far side of a socketpair (member/local.py).

Flow control: a chunk relayed to a recipient whose data lane is full stops
reading from the sender until that lane drains; a recipient that stays full and
reads nothing for STALL_TIMEOUT is dropped ("too slow").
"""

from __future__ import annotations

import selectors
import socket
import time
from typing import Callable

from securechat.errors import ConnectionLost, LocalProtocolError, RemoteProtocolError
from securechat.rooms.actions import Action, Close, Fanout, PauseReading, Send, SendData
from securechat.rooms.room import Room
from securechat.server.admission import Admissions, CrlInForce
from securechat.server.admitting import LOGIN_GRACE, Admitting
from securechat.server.ending import Ending
from securechat.server.links import Link, State
from securechat.server.writequeue import STALL_TIMEOUT
from securechat.wire import frames

CRL_POLL_INTERVAL = 0.5  # seconds between checks for a changed CRL, to drop revoked members
HOUSEKEEPING_INTERVAL = 0.25  # deadlines of handshakes, hellos, closes and stalls are checked this often
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

Report = Callable[..., None]  # console.event-like: report("refused", peer=..., reason=...)


class Loop(Admitting, Ending):
    def __init__(self, room: Room, crl: CrlInForce, software: str, report: Report, log_error: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, grace: float = LOGIN_GRACE) -> None:
        self.room = room
        self.grace = grace  # seconds for the TLS handshake, and again for the hello after it
        self.crl = crl
        self.software = software
        self._report = report
        self._log_error = log_error
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._admissions = Admissions()
        self._links: set[Link] = set()
        # Only these have deadlines (not yet open, or closing) or may stall: housekeeping
        # looks at them alone, not at all 5,000 links four times a second.
        self._unsettled: set[Link] = set()
        self._holding: set[Link] = set()  # links whose full data lane holds a sender
        self._dirty: set[Link] = set()  # frames queued this turn, not yet written
        self._again: set[Link] = set()  # to be served without waiting for the selector
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._stop_reason: str | None = None
        self._operator_attached = False
        self._buffer = memoryview(bytearray(256 * 1024))
        self._next_housekeeping = 0.0
        self._timed_pauses: set[Link] = set()  # links not read until their paused_until
        self._next_crl_poll = 0.0

    # ------------------------------------------------------------ set-up, from any thread before run()

    def listen(self, listener: socket.socket) -> None:
        """Accept on `listener` once the operator (if one is attached) is in the room, so every
        member's welcome lists the operator."""
        listener.setblocking(False)
        self._listener = listener
        if not self._operator_attached:
            self._selector.register(listener, _READ, "listener")

    def attach_local(self, sock: socket.socket, name: str) -> None:
        """The operator: a member over a socketpair, in this process, with the operator's identity."""
        sock.setblocking(False)
        link = Link(sock, "local", None, State.GREETING, None, self._clock())
        link.operator = True
        self._operator_attached = True
        self._open(link, name)

    def stop(self, reason: str) -> None:
        """From any thread: say `reason` to everyone, flush, close, and let run() return."""
        self._stop_reason = reason
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        while self._stop_reason is None:
            try:
                self._turn()
            except Exception as exc:  # a bug must not end the room for everyone: log it, go on
                self._log_error(f"internal error in the server loop: {exc!r}")
        self._shutdown(self._stop_reason)

    def _turn(self) -> None:
        now = self._clock()
        timeout = 0.0 if self._again else self._timeout(now)
        accept = False
        for key, mask in self._selector.select(timeout):
            link = key.data
            if link is None:
                self._drain_wake()
            elif link == "listener":
                accept = True
            else:
                self._serve(link, mask)
        if accept:  # last: handshakes under way finish first and free their admission slots
            self._accept()
        for link in [link for link in self._timed_pauses if link.paused_until <= now]:
            self._timed_pauses.discard(link)
            self._again.add(link)
        for link in list(self._again):
            self._again.discard(link)
            if link.state is not State.CLOSED:
                self._serve(link, _READ)
        now = self._clock()
        self._act(self.room.tick(now))
        if now >= self._next_housekeeping:
            self._housekeeping(now)
        self._write_dirty()

    def _timeout(self, now: float) -> float:
        deadlines = [self._next_crl_poll, self._next_housekeeping]
        room_deadline = self.room.next_deadline()
        if room_deadline is not None:
            deadlines.append(room_deadline)
        deadlines += [link.paused_until for link in self._timed_pauses]
        return max(0.0, min(deadlines) - now)

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    # ------------------------------------------------------------ serving one socket

    def _serve(self, link: Link, mask: int) -> None:
        try:
            if link.state is State.HANDSHAKE:
                self._handshake(link)
            elif link.state is State.LINGER:
                if not link.drain_raw():
                    self._finish(link)
            else:
                if mask & _WRITE:
                    self._dirty.add(link)
                if mask & _READ and link.state in (State.GREETING, State.OPEN):
                    self._read(link)
        except RemoteProtocolError as exc:
            self._drop(link, f"protocol error: {exc}", send_bye=True)
        except ConnectionLost as exc:
            self._drop(link, str(exc), send_bye=False)
        except Exception as exc:  # a bug must not take the room down: this connection alone ends
            self._log_error(f"internal error on {link!r}: {exc!r}")
            self._drop(link, "internal error", send_bye=True)

    def _read(self, link: Link) -> None:
        now = self._clock()
        if link.paused(now):
            self._watch(link, link.events & ~_READ)
            return
        self._watch(link, link.events | _READ)
        alive = link.read(self._buffer)
        self._handle_frames(link)
        if not alive and link.state in (State.GREETING, State.OPEN):
            self._drop(link, "connection closed without a goodbye", send_bye=False)
        elif link.state in (State.GREETING, State.OPEN) and not link.paused(self._clock()) and link.pending():
            self._again.add(link)

    def _handle_frames(self, link: Link) -> None:
        protocol = link.protocol
        assert protocol is not None and link.member is not None
        while link.state in (State.GREETING, State.OPEN):
            now = self._clock()
            if link.paused(now):
                self._watch(link, link.events & ~_READ)
                return
            frame = link.decoder.next_frame()
            if frame is None:
                return
            frame = protocol.receive(frame)
            if frame is None:
                continue
            if isinstance(frame, frames.Hello):
                self._greeted(link, frame, now)
            elif isinstance(frame, frames.Bye):
                self._drop(link, "", send_bye=False, clean=True)
            else:
                self._act(self.room.handle(link.member, frame, now), sender=link)

    def _greeted(self, link: Link, hello: frames.Hello, now: float) -> None:
        assert link.member is not None and link.protocol is not None
        link.state, link.deadline = State.OPEN, None
        self._unsettled.discard(link)
        link.member.session, link.member.receives_files = hello.session, hello.receive_files
        self._queue_control(link, link.protocol.welcome_hello())
        self._act(self.room.join(link.member, now))
        if link.operator and self._listener is not None:
            self._selector.register(self._listener, _READ, "listener")

    # ------------------------------------------------------------ the room's actions

    def _act(self, actions: list[Action], sender: Link | None = None) -> None:
        """Carry out the room's actions; `sender`: the link whose frame caused them, held back
        (not read) while a recipient's data lane it fed is full."""
        now = self._clock()
        for action in actions:
            kind = type(action)
            if kind is Fanout:
                frame = action.frame
                skip = action.skip
                for member in action.to:
                    if member is not skip:
                        self._queue_control(member.link, frame)
            elif kind is SendData:
                self._queue_data(action.to.link, action.frame, now, sender)
            elif kind is Send:
                link = action.to.link
                if link.state is State.CLOSED or link.protocol is None:
                    continue
                try:
                    encoded = link.protocol.send(action.message)
                except LocalProtocolError as exc:  # ours: a bug, for the log
                    self._log_error(f"internal error sending to {link!r}: {exc}")
                    self._drop(link, "internal error", send_bye=True)
                    continue
                if action.stream:
                    self._queue_data(link, encoded, now, sender)
                else:
                    self._queue_control(link, encoded)
            elif kind is PauseReading:
                link = action.member.link
                link.paused_until = max(link.paused_until, action.until)
                self._timed_pauses.add(link)
            elif kind is Close:
                self._close(action.member.link, action.reason, action.code)

    def _queue_control(self, link: Link, frame: bytes) -> None:
        if link.state not in (State.GREETING, State.OPEN):
            return
        # The operator is this process: its queue is never a reason to end the server's own member.
        if not link.queue.put_control(frame) and not link.operator:
            self._drop(link, "too slow: 4096 KiB of messages waiting unread", send_bye=False)
            return
        self._dirty.add(link)

    def _queue_data(self, link: Link, frame: bytes, now: float, sender: Link | None) -> None:
        if link.state not in (State.GREETING, State.OPEN):
            return
        self._dirty.add(link)
        if not link.queue.put_data(frame, now):
            if sender is not None and sender is not link:
                sender.waiting_on.add(link)
                link.blocking.add(sender)
                self._holding.add(link)

    # ------------------------------------------------------------ writing

    def _write_dirty(self) -> None:
        now = self._clock()
        dirty, self._dirty = self._dirty, set()
        for link in dirty:
            if link.state in (State.CLOSED, State.HANDSHAKE, State.LINGER):
                continue
            try:
                blocked = link.flush(now)
            except ConnectionLost as exc:
                if link.state is State.CLOSING:
                    self._finish(link)
                else:
                    self._drop(link, str(exc), send_bye=False)
                continue
            if link.blocking and link.queue.has_room:
                self._release(link)
            if link.state is State.CLOSING and not blocked:
                self._linger(link)
                continue
            wanted = (link.events | _WRITE) if blocked else (link.events & ~_WRITE)
            self._watch(link, wanted)

    def _release(self, link: Link) -> None:
        """`link`'s data lane has room again: the senders it held may be read again."""
        for sender in link.blocking:
            sender.waiting_on.discard(link)
            if not sender.waiting_on and sender.state is State.OPEN:
                self._again.add(sender)
        link.blocking.clear()
        self._holding.discard(link)

    def _watch(self, link: Link, events: int) -> None:
        if link.state is State.CLOSED or events == link.events:
            return
        if link.events == 0:
            self._selector.register(link.sock, events, link)
        elif events == 0:
            self._selector.unregister(link.sock)
        else:
            self._selector.modify(link.sock, events, link)
        link.events = events

    # ------------------------------------------------------------ time

    def _housekeeping(self, now: float) -> None:
        """Deadlines: handshakes, hellos, closes, lingers; frozen recipients; the CRL."""
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        for link in list(self._unsettled | self._holding):
            if link.deadline is not None and now >= link.deadline:
                if link.state is State.HANDSHAKE:
                    self._refused(link, "?", f"no TLS handshake within {self.grace:g} s")
                elif link.state is State.GREETING:
                    self._drop(link, f"protocol error: no hello within {self.grace:g} s", send_bye=True)
                elif link.state is State.CLOSING:
                    self._linger(link)
                else:
                    self._finish(link)
            elif link.blocking and not link.operator and link.queue.stalled(now):
                self._drop(link, f"too slow: read nothing of a file for {STALL_TIMEOUT:.0f} s", send_bye=False)
        if now >= self._next_crl_poll:
            self._next_crl_poll = now + CRL_POLL_INTERVAL
            self._reload_crl()
