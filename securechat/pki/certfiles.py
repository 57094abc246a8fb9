"""Certificate *files*: where each file of a certs folder lives, and the little read from them.

`join` and `serve` only need paths (the ssl module reads the PEM files) and a
certificate's name (read with the pure DER reader), so they never import the
cryptography package: that keeps 10 MB out of every running process
(docs/performance.md). Certificate *building* is certs.py, which imports this
module; nothing here imports certs.py, so the dependency runs one way only.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from securechat.errors import CertificateError
from securechat.pki import der

PASSPHRASE_ENV = "SECURECHAT_CA_PASSPHRASE"
DEFAULT_DAYS = 90  # Mozilla's "modern" profile: leaf certificates live at most 90 days
COMMON_NAME = "2.5.4.3"
# How X.501 may spell a name's value; cryptography writes UTF8String, others PrintableString.
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x1E: "utf-16-be"}


@dataclass(frozen=True)
class CertsLayout:
    """Where each file lives inside a certs folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def clients(self) -> Path:
        return self.root / "clients"

    def client_cert(self, name: str) -> Path:
        return self.clients / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        return self.clients / f"{name}.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    def client_names(self) -> list[str]:
        if not self.clients.is_dir():
            return []
        return sorted(p.stem for p in self.clients.glob("*.pem") if (self.clients / f"{p.stem}.key").exists())


def key_is_encrypted(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in path.read_bytes()[:64]
    except FileNotFoundError:
        return False


def certificate_fingerprint(path: Path) -> str:
    """SHA-256 over the DER form, as colon-separated hex (the same as gen-certs prints)."""
    try:
        certificate_der = ssl.PEM_cert_to_DER_cert(path.read_text(encoding="ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{path} is not a PEM certificate") from exc
    return hashlib.sha256(certificate_der).digest().hex(":").upper()


def common_name(path: Path) -> str:
    """The subject CN of the PEM certificate at `path`, read by the pure DER reader."""
    if not path.is_file():
        raise CertificateError(f"certificate {path} not found; create it with: securechat gen-certs")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{path} is not a PEM certificate") from exc
    try:
        blocks = der.pem_blocks(text, "CERTIFICATE")
        if not blocks:
            raise der.DERError("no PEM certificate block")
        name = _subject_common_name(blocks[0])
    except der.DERError as exc:
        raise CertificateError(f"{path} is not a PEM certificate") from exc
    if name is None:
        raise CertificateError(f"{path} has no common name")
    return name


def _subject_common_name(certificate_der: bytes) -> str | None:
    """The first CN in the subject of a DER certificate, None when it has none."""
    certificate = der.children(der.single(certificate_der, der.SEQUENCE, "certificate").data)
    if not certificate:
        raise der.DERError("empty certificate")
    tbs = der.children(der.expect(certificate[0], der.SEQUENCE, "tbsCertificate").data)
    if tbs and tbs[0].tag == der.EXPLICIT_0:
        tbs = tbs[1:]  # version
    if len(tbs) < 5:
        raise der.DERError("tbsCertificate is too short")
    # serialNumber, signature, issuer, validity, subject
    for rdn in der.children(der.expect(tbs[4], der.SEQUENCE, "subject").data):
        for attribute in der.children(der.expect(rdn, der.SET, "relative distinguished name").data):
            parts = der.children(der.expect(attribute, der.SEQUENCE, "attribute").data)
            if len(parts) != 2:
                raise der.DERError("malformed name attribute")
            if der.decode_oid(der.expect(parts[0], der.OID, "attribute type").data) != COMMON_NAME:
                continue
            codec = _STRING_CODECS.get(parts[1].tag)
            if codec is None:
                raise der.DERError(f"common name in an unsupported string type 0x{parts[1].tag:02x}")
            try:
                return parts[1].data.decode(codec)
            except UnicodeDecodeError as exc:
                raise der.DERError("common name is not valid text") from exc
    return None
