"""Where each file of a certs folder lives; no cryptography import.

`join` and `serve` only need paths (the ssl module reads the PEM files), so
they never import the cryptography package: that keeps 10 MB out of every
running process (docs/performance.md). certs.py makes the files.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from .errors import CertificateError

PASSPHRASE_ENV = "SECURECHAT_CA_PASSPHRASE"
DEFAULT_DAYS = 90  # Mozilla's "modern" profile: leaf certificates live at most 90 days


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
        der = ssl.PEM_cert_to_DER_cert(path.read_text(encoding="ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{path} is not a PEM certificate") from exc
    return hashlib.sha256(der).digest().hex(":").upper()


def common_name(path: Path) -> str:
    """The subject CN of the PEM certificate at `path`.

    The ssl module parses a certificate into the dict getpeercert() returns,
    but only through a private helper; when it is missing, cryptography does it.
    """
    if not path.is_file():
        raise CertificateError(f"certificate {path} not found; create it with: securechat gen-certs")
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is not None:
        try:
            subject = decode(str(path))["subject"]
        except (ssl.SSLError, KeyError) as exc:
            raise CertificateError(f"{path} is not a PEM certificate") from exc
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    return value
        raise CertificateError(f"{path} has no common name")
    from .certs import load_cert

    return load_cert(path).subject.rfc4514_string().removeprefix("CN=")
