"""Revoking a client: the CRL in the certs folder, signed by the CA.

gen-certs writes an empty CRL next to the CA; `securechat revoke NAME` adds
the client's certificate serial to it. The server always loads the CRL
(VERIFY_CRL_CHECK_LEAF) and re-reads it when the file changes, so a revoked
client is refused on its very next connection and, if connected, dropped.
There are no session tickets to resume around it (tls.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from .certs import CertsLayout, load_cert, load_key, write_crl
from .errors import CertificateError, UsageError

def load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError as exc:
        raise CertificateError(f"{path} not found; run securechat gen-certs in that folder to create it") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM CRL") from exc


def revoked_serials(path: Path) -> set[int]:
    return {entry.serial_number for entry in load_crl(path)}


def revoke(certs: Path, name: str, ca_passphrase: bytes | None = None) -> tuple[int, bool]:
    """Add client `name` to the CRL. Returns (serial, whether it was revoked already)."""
    layout = CertsLayout(certs)
    cert_path = layout.client_cert(name)
    if not cert_path.exists():
        known = ", ".join(layout.client_names()) or "none"
        raise UsageError(f"no client certificate {cert_path} (clients here: {known})")
    serial = load_cert(cert_path).serial_number
    ca_cert, ca_key = load_cert(layout.ca_cert), load_key(layout.ca_key, ca_passphrase)
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
