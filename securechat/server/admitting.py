"""How the server's loop lets a connection in: accept, the TLS handshake, the checks after it.

Part of the loop (a mixin of srv.loop.Loop, sharing its state), kept apart so the
loop reads as the turn of frames and writes. Everything unauthenticated is capped
(admission.Admissions: 16 handshakes per address, 256 in all) and has a deadline;
after the handshake, and before a member exists, the peer's serial is checked
against the CRL as it is on disk at that moment, its certificate profile and its
name against identity.py.
"""

from __future__ import annotations

import selectors
import socket
import ssl

from securechat.errors import SecureChatError
from securechat.member.connection import tune_socket
from securechat.pki.tls import describe_tls_failure
from securechat.rooms.room import Member
from securechat.server.admission import BYE_REVOKED, REVOKED_REASON, check_peer, source_key
from securechat.server.links import Link, State
from securechat.wire import frames
from securechat.wire.server_protocol import ServerProtocol

# Seconds a new connection gets for its TLS handshake, and again for its hello (sshd's
# LoginGraceTime): a silent or dribbling peer holds an admission slot no longer.
LOGIN_GRACE = 10.0
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Admitting:
    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):  # a burst of connections, but bounded: others wait their turn too
            try:
                raw, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: keep serving those already in
            source = source_key(addr[0])
            refusal = self._admissions.enter(source)
            if refusal is not None and self._catch_up(source):
                refusal = self._admissions.enter(source)
            if refusal is not None:
                raw.close()
                if self._admissions.should_report(source, self._clock()):
                    self._report("refused", peer=addr[0], reason=refusal)
                continue
            try:
                tune_socket(raw)
                raw.setblocking(False)
                sock = self.crl.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            except OSError:  # reset before we got to it: nothing to say, and to nobody
                raw.close()
                self._admissions.leave(source)
                continue
            now = self._clock()
            link = Link(sock, addr[0], source, State.HANDSHAKE, now + self.grace, now)
            self._links.add(link)
            self._unsettled.add(link)
            self._watch(link, _READ)
            self._handshake(link)

    def _catch_up(self, source: str) -> bool:
        """Advance `source`'s handshakes whose next flight may be waiting unread; True if any ended.

        In TLS 1.3 a client is done once it has sent its Finished; the server still has to read
        it and check the certificate. A client that reconnects at once runs ahead of a busy loop,
        and its finished handshakes would count against its cap of 16 and get it refused."""
        before = self._admissions.pending(source)
        for link in [link for link in self._unsettled if link.state is State.HANDSHAKE and link.source == source]:
            self._handshake(link)
        return self._admissions.pending(source) < before

    def _handshake(self, link: Link) -> None:
        try:
            link.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(link, _READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(link, _WRITE)
            return
        except ssl.SSLError as exc:
            self._refused(link, "?", describe_tls_failure(exc))
            return
        except OSError as exc:
            self._refused(link, "?", f"connection broken during the handshake: {exc.strerror or exc}")
            return
        self._admissions.leave(link.source)
        link.source = None
        # The CRL on disk now, not the one the context was made with: it may be older.
        name, problem, code = check_peer(link.sock, self._reload_crl(), self.room.operator_name)
        if problem is not None:
            self._report("refused", peer=link.peer, name=name, reason=f"{name}: {problem}")
            link.state = State.GREETING  # so the refusal's hello and bye may be written
            link.queue.put_control(frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION, software=self.software)))
            self._close(link, problem, code)
            return
        self._open(link, name)

    def _open(self, link: Link, name: str) -> None:
        link.state = State.GREETING
        link.deadline = None if link.operator else self._clock() + self.grace
        link.protocol = ServerProtocol(name, self.software)
        link.member = Member(name, operator=link.operator, link=link)
        self._links.add(link)
        self._unsettled.add(link)
        self._watch(link, _READ)

    def _refused(self, link: Link, name: str, reason: str) -> None:
        self._report("refused", peer=link.peer, reason=reason)
        self._linger(link)  # so the TLS alert OpenSSL sent is read, not lost to a reset

    def _reload_crl(self) -> frozenset[int]:
        """The revoked serials as the CRL on disk says now; on a change, drop the revoked members.

        Called after every handshake (so admission never races a `revoke`) and twice a second."""
        try:
            changed = self.crl.refresh()
        except SecureChatError as exc:
            self._log_error(f"keeping the previous CRL: {exc}")
            return self.crl.revoked
        revoked = self.crl.revoked
        if changed:
            for link in list(self._links):
                if link.state is State.OPEN and not link.operator and _serial(link.sock) in revoked:
                    self._close(link, REVOKED_REASON, BYE_REVOKED)
        return revoked

def _serial(sock: socket.socket) -> int | None:
    try:
        cert = sock.getpeercert()  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return None
    return int(cert["serialNumber"], 16) if cert else None
