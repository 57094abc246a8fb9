"""A private CA, the server certificate and client certificates.

Every certificate is made by one helper, `_build`, that takes its extensions
explicitly (the trustme way), so the profile below is all in one screen:

* keys: ECDSA P-256, signatures ECDSA-SHA256;
* CA: basicConstraints critical CA:TRUE pathlen 0, keyUsage keyCertSign +
  cRLSign, SKI;
* leaves: basicConstraints critical CA:FALSE, keyUsage digitalSignature,
  EKU serverAuth *or* clientAuth, SAN, AKI + SKI.

A client's identity is its certificate's common name; its SAN carries the
same name as the URI `securechat:NAME`. The folder layout is in certs/README.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securechat.errors import CertificateError, UsageError
from securechat.pki.certfiles import DEFAULT_DAYS, PASSPHRASE_ENV, CertsLayout
from securechat.pki.identity import same_name

CA_DAYS = 3650
CLOCK_SKEW = dt.timedelta(minutes=5)
SERVER_IDENTITY = "server"  # the operator's name in the room: the server certificate's CN
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_client_name(name: str) -> str:
    if not _CLIENT_NAME.fullmatch(name):
        raise UsageError(f"client name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if same_name(name, SERVER_IDENTITY):  # the server refuses it at the handshake in any case
        raise UsageError(f"client name {name!r} is taken by the server operator; choose another")
    return name


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _build(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now - CLOCK_SKEW + dt.timedelta(days=days))  # the lifespan is exactly `days`
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_usage(ca_key: ec.EllipticCurvePrivateKey, public_key, eku) -> list[tuple[x509.ExtensionType, bool]]:
    no_ca = x509.BasicConstraints(ca=False, path_length=None)
    signing = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )
    return [
        (no_ca, True),
        (signing, True),
        (x509.ExtendedKeyUsage([eku]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
    ]


def create_ca(common_name: str = "securechat private CA", days: int = CA_DAYS):
    key = new_key()
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )
    cert = _build(
        _name(common_name), key.public_key(), _name(common_name), key, days,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (usage, True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    return cert, key


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server(ca_cert: x509.Certificate, ca_key, names: list[str], days: int = DEFAULT_DAYS):
    key = new_key()
    unique = list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *names]))
    extensions = _leaf_usage(ca_key, key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH)
    extensions.append((x509.SubjectAlternativeName([_san_entry(n) for n in unique]), False))
    return _build(_name(SERVER_IDENTITY), key.public_key(), ca_cert.subject, ca_key, days, extensions), key


def issue_client(ca_cert: x509.Certificate, ca_key, name: str, days: int = DEFAULT_DAYS):
    key = new_key()
    extensions = _leaf_usage(ca_key, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
    extensions.append((x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"securechat:{name}")]), False))
    return _build(_name(name), key.public_key(), ca_cert.subject, ca_key, days, extensions), key


CRL_DAYS = 3650  # our own server re-reads it on change; it must not expire under a running room


def write_crl(layout: CertsLayout, ca_cert: x509.Certificate, ca_key, revoked: list[x509.RevokedCertificate],
              number: int = 1) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=CRL_DAYS))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    # Write beside, then rename: a server re-reading it never sees half a file.
    temp = layout.crl.with_name(f".{layout.crl.name}.tmp")
    temp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(temp, layout.crl)


# --------------------------------------------------------------------------- #
# Files


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write a file that must not exist yet (or, with force, replace it)."""
    if path.exists() or path.is_symlink():
        if not force:
            raise CertificateError(f"{path} exists; refusing to overwrite it without --force")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with open(fd, "wb") as f:
        f.write(data)


def save_pair(cert: x509.Certificate, key, cert_path: Path, key_path: Path, force: bool,
              passphrase: bytes | None = None) -> None:
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_new(key_path, key_pem, 0o600, force)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise CertificateError(f"certificate {path} not found; create it with: securechat gen-certs") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate") from exc


def load_key(path: Path, passphrase: bytes | None = None):
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CertificateError(f"private key {path} not found; create it with: securechat gen-certs") from exc
    encrypted = b"ENCRYPTED" in data[:64]
    if encrypted and not passphrase:
        raise CertificateError(f"{path} is protected by a passphrase; set {PASSPHRASE_ENV} or run in a terminal to be asked")
    try:
        return serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise CertificateError(f"wrong passphrase for {path}") from exc
        raise CertificateError(f"{path} is not a PEM private key") from exc


def load_ca(layout: CertsLayout, passphrase: bytes | None, action: str):
    """The CA certificate and key; a folder with ca.pem but no ca.key is a client's or a server's copy."""
    if layout.ca_cert.exists() and not layout.ca_key.exists():
        # Said this way because the old hint ("create it with gen-certs") made a
        # client try to become a CA of its own.
        raise CertificateError(
            f"{layout.root} holds no CA key ({layout.ca_key.name}), so it cannot {action}: "
            f"certificates are issued and revoked on the machine that holds the CA key, by the server's operator"
        )
    return load_cert(layout.ca_cert), load_key(layout.ca_key, passphrase)


@dataclass(frozen=True)
class Issued:
    """One certificate gen-certs made or kept, for the report it prints."""

    role: str
    cert_path: Path
    key_path: Path
    subject: str
    not_after: dt.datetime
    fingerprint: str
    created: bool


def _issued(role: str, cert: x509.Certificate, cert_path: Path, key_path: Path, created: bool) -> Issued:
    return Issued(role, cert_path, key_path, cert.subject.rfc4514_string(), cert.not_valid_after_utc,
                  fingerprint(cert), created)


def generate(out: Path, clients: list[str], server_names: list[str], days: int = DEFAULT_DAYS,
             force: bool = False, ca_passphrase: bytes | None = None) -> list[Issued]:
    """Create what is missing in `out`: CA, server certificate, the named clients.

    An existing CA is reused (a new client is issued from it without touching
    anything else); --force reissues the server and named client certificates.
    """
    if days < 1:
        raise UsageError("--days must be at least 1")
    for name in clients:
        check_client_name(name)
    for name in server_names:
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"--server-name {name!r} is not a host name or IP address")
    layout = CertsLayout(out)
    report: list[Issued] = []

    if layout.ca_cert.exists() or layout.ca_key.exists():
        ca_cert, ca_key = load_ca(layout, ca_passphrase, "issue certificates")
        report.append(_issued("CA", ca_cert, layout.ca_cert, layout.ca_key, created=False))
    else:
        ca_cert, ca_key = create_ca()
        save_pair(ca_cert, ca_key, layout.ca_cert, layout.ca_key, force=False, passphrase=ca_passphrase)
        report.append(_issued("CA", ca_cert, layout.ca_cert, layout.ca_key, created=True))
    if not layout.crl.exists():
        write_crl(layout, ca_cert, ca_key, [])  # the server always loads a CRL: start with an empty one

    if force or not layout.server_cert.exists():
        cert, key = issue_server(ca_cert, ca_key, server_names, days)
        save_pair(cert, key, layout.server_cert, layout.server_key, force)
        report.append(_issued("server", cert, layout.server_cert, layout.server_key, created=True))
    else:
        report.append(_issued("server", load_cert(layout.server_cert), layout.server_cert, layout.server_key, False))

    for name in dict.fromkeys(clients):
        cert_path, key_path = layout.client_cert(name), layout.client_key(name)
        if force or not cert_path.exists():
            cert, key = issue_client(ca_cert, ca_key, name, days)
            save_pair(cert, key, cert_path, key_path, force)
            report.append(_issued(f"client {name}", cert, cert_path, key_path, created=True))
        else:
            report.append(_issued(f"client {name}", load_cert(cert_path), cert_path, key_path, created=False))
    return report
