"""The one place TLS settings live: SSLContext factories and peer identity.

Both sides: TLS 1.3 only, certificates required and checked against our CA
only, X.509 strict mode, no compression, no renegotiation, no session tickets
(so a revoked or replaced certificate bites on the very next connection),
ALPN `securechat/1`. We build SSLContext directly instead of calling
ssl.create_default_context(), because that one also honours SSLKEYLOGFILE
and loads the system's CAs, neither of which we want.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from securechat.errors import CertificateError, FailureKind, UsageError
from securechat.pki.certfiles import CertsLayout
from securechat.pki.der import DERError, pem_blocks
from securechat.pki.identity import client_certificate_problem
from securechat.wire.frames import ALPN_PROTOCOL

HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClientFiles:
    """The three files a client needs: the CA to trust, its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_certs_dir(cls, certs: Path, name: str | None) -> "ClientFiles":
        layout = CertsLayout(certs)
        if not certs.is_dir():
            raise UsageError(f"certs folder {certs} not found; pass --certs, or create it with: securechat gen-certs")
        if name is None:
            names = layout.client_names()
            if len(names) != 1:
                found = ", ".join(names) if names else "none"
                raise UsageError(
                    f"say which client certificate to use with --name (found in {layout.clients}: {found})"
                )
            name = names[0]
        cert, key = layout.client_cert(name), layout.client_key(name)
        if not cert.is_file() or not key.is_file():
            found = ", ".join(layout.client_names()) or "none"
            missing = cert if not cert.is_file() else key
            # A client cannot make itself a certificate: only the CA key's holder can.
            raise UsageError(
                f"no certificate for {name!r} here ({missing} not found; clients in {layout.clients}: {found}); "
                f"ask the server's operator for one (they run: securechat gen-certs --client {name})"
            )
        return cls(layout.ca_cert, cert, key)


def _base_context(protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols([ALPN_PROTOCOL])
    context.keylog_filename = None
    return context


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, missing_hint: str) -> None:
    for path, what in ((cert, "certificate"), (key, "private key")):
        if not path.is_file():
            raise CertificateError(f"{what} {path} not found; {missing_hint}")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise CertificateError(f"{cert} and {key} do not form a usable certificate and key ({exc.reason})") from exc


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    if not ca.is_file():
        raise CertificateError(f"CA certificate {ca} not found; copy ca.pem from the server's certs folder")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise CertificateError(f"{ca} is not a usable CA certificate ({exc.reason})") from exc


def server_context(certs: Path) -> ssl.SSLContext:
    layout = CertsLayout(certs)
    context = _base_context(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.3 sends resumption tickets unless told to send none.
    context.num_tickets = 0
    _load_chain(context, layout.server_cert, layout.server_key, "create it with: securechat gen-certs")
    _load_ca(context, layout.ca_cert)
    if not layout.crl.is_file():
        raise CertificateError(f"{layout.crl} not found; run securechat gen-certs --out {certs} to create it")
    try:
        context.load_verify_locations(cafile=layout.crl)
    except ssl.SSLError as exc:
        raise CertificateError(f"{layout.crl} is not a usable CRL ({exc.reason})") from exc
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_context(files: ClientFiles) -> ssl.SSLContext:
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.hostname_checks_common_name = False
    _load_chain(context, files.cert, files.key, "ask the server's operator for your certificate and key")
    _check_own_certificate(files.cert)
    _load_ca(context, files.ca)
    return context


def _check_own_certificate(cert: Path) -> None:
    """Refuse here, with the file's name, what the server would refuse with a bare TLS alert."""
    try:
        blocks = pem_blocks(cert.read_text(encoding="ascii", errors="replace"), "CERTIFICATE")
    except (OSError, DERError) as exc:
        raise CertificateError(f"{cert} is not a readable PEM certificate ({exc})") from exc
    problem = client_certificate_problem(blocks[0]) if blocks else "it holds no certificate"
    if problem is not None:
        raise CertificateError(
            f"{cert} cannot be used to join: {problem}; use your client certificate, "
            f"clients/NAME.pem from the certs folder the server's operator gave you"
        )


def peer_identity(sock: ssl.SSLSocket) -> str:
    """The peer's name: the one common name of the certificate the handshake verified."""
    cert = sock.getpeercert()
    if not cert:
        raise CertificateError("peer presented no certificate")
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if not names:
        raise CertificateError("peer certificate has no common name")
    if len(names) > 1:
        raise CertificateError("peer certificate has more than one common name: which one is it?")
    return names[0]


# OpenSSL's reason codes (exc.reason), not its prose: they are stable identifiers.
_ALERT_KINDS = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": FailureKind.REVOKED,
    "TLSV1_ALERT_PROTOCOL_VERSION": FailureKind.PROTOCOL,
    "UNSUPPORTED_PROTOCOL": FailureKind.PROTOCOL,
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": FailureKind.PROTOCOL,
    "WRONG_VERSION_NUMBER": FailureKind.PROTOCOL,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": FailureKind.CERTIFICATE,
    "SSLV3_ALERT_BAD_CERTIFICATE": FailureKind.CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": FailureKind.CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": FailureKind.CERTIFICATE,
    "TLSV1_ALERT_UNKNOWN_CA": FailureKind.CERTIFICATE,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": FailureKind.CERTIFICATE,
}


def tls_failure_kind(exc: ssl.SSLError) -> FailureKind:
    """What kind of failure an SSLError from a handshake or a read is."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FailureKind.CERTIFICATE
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
        return FailureKind.LOST
    return _ALERT_KINDS.get(str(exc.reason or "").upper(), FailureKind.LOST)


def describe_tls_failure(exc: ssl.SSLError) -> str:
    """A sentence for a person, from what OpenSSL said."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message}"
    reason = (exc.reason or str(exc)).lower()
    hints = {
        "certificate_required": "the other side requires a client certificate",
        "peer_did_not_return_a_certificate": "the client presented no certificate",
        "unknown_ca": "the other side does not trust our certificate's CA",
        "bad_certificate": "the other side rejected our certificate",
        "certificate_unknown": "the other side rejected our certificate",
        "certificate_expired": "the other side says our certificate has expired",
        "certificate_revoked": "the other side says our certificate was revoked",
        "unsupported_protocol": "the other side does not speak TLS 1.3",
        "protocol_version": "the other side does not speak TLS 1.3",
        "no_application_protocol": "the other side is not a securechat peer (ALPN mismatch)",
        "wrong_version_number": "the other side is not speaking TLS",
    }
    for key, text in hints.items():
        if key in reason:
            return f"{text} ({exc.reason})"
    return f"TLS failed: {exc.reason or exc}"
