"""Admission to the server before anyone is a member: handshake caps and refusals.

Everything here happens before a peer is authenticated, or just after, when
it is authenticated but not admitted (revoked, off-profile certificate,
unusable name). Server-only; server.Server drives it.

Caps: a connection holds a slot from accept() until its TLS handshake ends
(at most HANDSHAKE_TIMEOUT, overall). Slots are limited per source and in
total, so that one address cannot fill the server with silent connections
and lock members out; a connection over either cap is closed at once.

After the handshake, `check_peer` compares the serial with the CRL as it is on
disk at that moment (CrlInForce: a stat, a re-read when it changed), because
the context the handshake used may hold an older one: a client revoked just
before it connected got in for 20 ms that way (issue 11). Then the profile and
the name (identity.py).

A refused peer that did finish the handshake is told why in the protocol's
own terms, hello then `bye` with a code, because in TLS 1.3 the client's
handshake completes before the server has looked at its certificate: a bare
close would look like a network failure worth retrying.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from securechat.errors import CertificateError
from securechat.pki.certfiles import CertsLayout
from securechat.pki.identity import client_certificate_problem, name_problem
from securechat.pki.tls import peer_identity, server_context
from securechat.server.revocation import revoked_serials
from securechat.wire import frames

MAX_PENDING_HANDSHAKES = 256  # unauthenticated connections at once; more are refused at accept
MAX_HANDSHAKES_PER_SOURCE = 16  # of those, from one address (IPv6: one /64)
REPORT_INTERVAL = 1.0  # seconds between two `refused` events for one source over the cap
LINGER_TIMEOUT = 5.0  # seconds a refused peer gets to read why before the socket closes (slot still held).
# It ends as soon as the peer closes; 1 s was too short on a loaded machine: a client
# that wrote its hello after we had closed got a reset instead of our alert (seen once in 9 runs).


REVOKED_REASON = "certificate revoked"
BYE_REVOKED, BYE_CERTIFICATE = "revoked", "certificate"  # bye codes: refusals a client must not retry
REFUSAL_SEND_TIMEOUT = 2.0


@dataclass(frozen=True)
class Refusal:
    """A peer that finished the TLS handshake but may not enter."""

    name: str
    reason: str


def send_refusal(sock: ssl.SSLSocket, reason: str, code: str, software: str) -> None:
    """hello then bye with a code: the protocol's first frame, then why, so the client stops retrying."""
    try:
        sock.setblocking(True)
        sock.settimeout(REFUSAL_SEND_TIMEOUT)
        sock.sendall(frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION, software=software))
                     + frames.encode(frames.Bye(reason=reason[:900], code=code)))
    except OSError:
        pass  # it hears nothing; it is refused all the same
    close_gently(sock)


def close_gently(sock: ssl.SSLSocket, timeout: float = LINGER_TIMEOUT) -> None:
    """Send FIN, read what the peer still sends until it closes too (bounded), then close.

    Closing with the peer's bytes unread (its hello, sent right after its side of
    the handshake) makes the kernel send a reset, and a reset can overtake our
    TLS alert or bye: the peer would see "connection reset" and retry instead of
    learning that it was refused.
    """
    deadline = time.monotonic() + timeout
    try:
        sock.shutdown(socket.SHUT_WR)  # also drops the TLS layer: what follows reads raw bytes
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0 and poller.poll(remaining * 1000):
            if not sock.recv(65536):
                break
    except (OSError, ValueError):
        pass
    finally:
        sock.close()


def source_key(host: str) -> str:
    """Who counts as one source for the caps: an IPv4 address, or an IPv6 /64 (one host's usual share)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Admissions:
    """Connections still in the TLS handshake: capped per source and in total.

    Without the per-source cap, one address holding all MAX_PENDING_HANDSHAKES
    slots with silent connections locked every member out for as long as it
    kept reopening them (issue 11, item 4).
    """

    def __init__(self, total: int = MAX_PENDING_HANDSHAKES, per_source: int = MAX_HANDSHAKES_PER_SOURCE) -> None:
        self.total, self.per_source = total, per_source
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._count = 0
        self._reported: dict[str, float] = {}

    def enter(self, source: str) -> str | None:
        """Take a slot for `source`; the reason when none is free."""
        with self._lock:
            if self._pending.get(source, 0) >= self.per_source:
                return f"more than {self.per_source} connections from this address in the TLS handshake"
            if self._count >= self.total:
                return f"more than {self.total} connections in the TLS handshake"
            self._pending[source] = self._pending.get(source, 0) + 1
            self._count += 1
            return None

    def pending(self, source: str) -> int:
        with self._lock:
            return self._pending.get(source, 0)

    def leave(self, source: str) -> None:
        with self._lock:
            self._count -= 1
            left = self._pending[source] - 1
            if left:
                self._pending[source] = left
            else:
                del self._pending[source]

    def should_report(self, source: str, now: float) -> bool:
        """One `refused` event per source per second: a flood must not flood the operator's screen too."""
        with self._lock:
            if now - self._reported.get(source, -REPORT_INTERVAL) < REPORT_INTERVAL:
                return False
            if len(self._reported) > 4 * self.total:
                self._reported.clear()
            self._reported[source] = now
            return True


class CrlInForce:
    """The CRL as it is on disk: in OpenSSL's context for new handshakes, and as serials for the check after one.

    `refresh()` costs a stat unless the file changed. The stamp is taken before
    the file is read, so a CRL rewritten while it is read is read again next time.
    """

    def __init__(self, certs: Path) -> None:
        self.crl = CertsLayout(certs).crl
        self.certs = certs
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self.context = server_context(certs)
        self.revoked = revoked_serials(self.crl)

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.crl.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Re-read the CRL if the file changed; True if it did. CertificateError (once per change) if unusable."""
        with self._lock:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # an unusable file is reported once, not at every handshake
            revoked, context = revoked_serials(self.crl), server_context(self.certs)
            self.revoked, self.context = revoked, context
            return True


def check_peer(sock: ssl.SSLSocket, revoked: frozenset[int], operator: str) -> tuple[str, str | None, str]:
    """What OpenSSL does not check: `revoked` (the CRL on disk now), the certificate's profile, the name.

    Returns (name, the reason to refuse or None, the bye code for it)."""
    if int(sock.getpeercert()["serialNumber"], 16) in revoked:
        return _name_or_unknown(sock), REVOKED_REASON, BYE_REVOKED
    try:
        name = peer_identity(sock)
    except CertificateError as exc:
        return "?", str(exc), BYE_CERTIFICATE
    problem = client_certificate_problem(sock.getpeercert(binary_form=True) or b"") or name_problem(name, operator)
    return name, problem, BYE_CERTIFICATE


def _name_or_unknown(sock: ssl.SSLSocket) -> str:
    try:
        return peer_identity(sock)
    except CertificateError:
        return "?"
