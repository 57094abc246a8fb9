"""Revoking a client: the CRL in the certs folder, signed by the CA.

gen-certs writes an empty CRL next to the CA; `securechat revoke NAME` adds
the client's certificate serial to it. The server always loads the CRL
(VERIFY_CRL_CHECK_LEAF), and after every handshake it also compares the
client's serial with the CRL as it is on disk at that moment (a stat, and a
re-read when it changed), so a client revoked a millisecond before it
connects is refused, and a connected one is dropped. There are no session
tickets to resume around it (tls.py).

`revoked_serials` is what the server uses: the pure DER reader, because
`serve` must not import cryptography (~11 MiB, der.py). `revoke` writes the
CRL and is the only part that needs cryptography.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from securechat.errors import CertificateError, UsageError
from securechat.pki.certfiles import CertsLayout
from securechat.pki.der import DERError, crl_serials, pem_blocks

if TYPE_CHECKING:
    from cryptography import x509


def revoked_serials(path: Path) -> frozenset[int]:
    """The serials the PEM CRL at `path` revokes; CertificateError if it is missing or unreadable."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise CertificateError(f"{path} not found; run securechat gen-certs in that folder to create it") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{path} is not a PEM CRL") from exc
    try:
        blocks = pem_blocks(text, "X509 CRL")
        if len(blocks) != 1:
            raise DERError("expected exactly one CRL")
        return crl_serials(blocks[0])
    except DERError as exc:
        raise CertificateError(f"{path} is not a usable PEM CRL ({exc})") from exc


def load_crl(path: Path) -> "x509.CertificateRevocationList":
    from cryptography import x509

    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError as exc:
        raise CertificateError(f"{path} not found; run securechat gen-certs in that folder to create it") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM CRL") from exc


def revoke(certs: Path, name: str, ca_passphrase: bytes | None = None) -> tuple[int, bool]:
    """Add client `name` to the CRL. Returns (serial, whether it was revoked already)."""
    from cryptography import x509

    from securechat.pki.certs import load_ca, load_cert, write_crl

    layout = CertsLayout(certs)
    cert_path = layout.client_cert(name)
    if not cert_path.exists():
        known = ", ".join(layout.client_names()) or "none"
        raise UsageError(f"no client certificate {cert_path} (clients here: {known})")
    serial = load_cert(cert_path).serial_number
    ca_cert, ca_key = load_ca(layout, ca_passphrase, f"revoke {name}")
    entries = list(load_crl(layout.crl)) if layout.crl.exists() else []
    if any(e.serial_number == serial for e in entries):
        return serial, True
    entries.append(
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(dt.datetime.now(dt.timezone.utc))
        .build()
    )
    number = 1
    if layout.crl.exists():
        try:
            number = load_crl(layout.crl).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            pass
    write_crl(layout, ca_cert, ca_key, entries, number)
    return serial, False
