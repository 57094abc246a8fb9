"""How the server's loop ends a connection: a bye after what is queued, then lingering, then closed.

Part of the loop (a mixin of srv.loop.Loop, sharing its state). Closing a socket
with unread input makes the kernel send a reset, which can destroy a bye the peer
has not read yet; so our half is shut first and the peer's FIN awaited, bounded.
"""

from __future__ import annotations

import selectors

from securechat.server.links import Link, State
from securechat.wire import frames

CLOSE_FLUSH_TIMEOUT = 10.0
LINGER_TIMEOUT = 5.0
SHUTDOWN_FLUSH_TIMEOUT = 8.0  # the whole of a shutdown's goodbyes: flushing, then lingering
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Ending:
    def _drop(self, link: Link, reason: str, send_bye: bool, clean: bool = False) -> None:
        """End `link`: the room lets go of its member first, so nobody waits on it."""
        if link.state in (State.CLOSING, State.LINGER, State.CLOSED):
            return
        member = link.member
        if member is not None and member.in_room:
            self._act(self.room.leave(member, "" if clean else reason, interrupted=not clean, now=self._clock()))
        if send_bye:
            self._close(link, reason, None)
        else:
            self._finish(link)

    def _close(self, link: Link, reason: str, code: str | None) -> None:
        """Say bye after what is queued (control lines first, then the data lane, as always), then linger."""
        if link.state in (State.CLOSING, State.LINGER, State.CLOSED):
            return
        member = link.member
        if member is not None and member.in_room:
            self._act(self.room.leave(member, reason, interrupted=True, now=self._clock()))
        link.queue.put_data(frames.encode(frames.Bye(reason=reason[: frames.MAX_REASON_BYTES // 4], code=code)),
                            self._clock())
        link.state, link.why = State.CLOSING, reason
        link.deadline = self._clock() + CLOSE_FLUSH_TIMEOUT
        self._unsettled.add(link)
        self._release(link)
        self._forget_waits(link)
        self._watch(link, _WRITE)
        self._dirty.add(link)

    def _linger(self, link: Link) -> None:
        if link.source is not None:
            self._admissions.leave(link.source)
            link.source = None
        link.shut_our_half()
        link.state, link.deadline = State.LINGER, self._clock() + LINGER_TIMEOUT
        self._links.add(link)
        self._unsettled.add(link)
        self._watch(link, _READ)

    def _finish(self, link: Link) -> None:
        if link.state is State.CLOSED:
            return
        if link.source is not None:
            self._admissions.leave(link.source)
            link.source = None
        if link.events:
            self._selector.unregister(link.sock)
            link.events = 0
        self._release(link)
        self._forget_waits(link)
        self._links.discard(link)
        self._unsettled.discard(link)
        self._holding.discard(link)
        self._timed_pauses.discard(link)
        self._again.discard(link)
        link.close()

    def _forget_waits(self, link: Link) -> None:
        for recipient in link.waiting_on:
            recipient.blocking.discard(link)
        link.waiting_on.clear()

    def _shutdown(self, reason: str) -> None:
        """Tell everyone, give their queues CLOSE_FLUSH_TIMEOUT to drain, close."""
        if self._listener is not None:
            if self._listener.fileno() in (key.fd for key in self._selector.get_map().values()):
                self._selector.unregister(self._listener)
            self._listener.close()
        for link in list(self._links):
            if link.operator or link.state is State.HANDSHAKE:
                self._finish(link)  # the operator is told by Server.shutdown, in this process
            elif link.state in (State.GREETING, State.OPEN):
                self._close(link, reason, None)
        # Flushing and lingering, bounded: a reset from closing with unread input could
        # destroy the bye before a client reads it.
        deadline = self._clock() + SHUTDOWN_FLUSH_TIMEOUT
        while self._unsettled and self._clock() < deadline:
            for key, mask in self._selector.select(0.1):
                if isinstance(key.data, Link):
                    self._serve(key.data, mask)
            self._write_dirty()
            now = self._clock()
            for link in list(self._unsettled):
                if link.deadline is not None and now >= link.deadline:
                    self._linger(link) if link.state is State.CLOSING else self._finish(link)
        for link in list(self._links):
            self._finish(link)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
