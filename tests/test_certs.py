"""The certificate profile (DESIGN.md section 5) and gen-certs' never-overwrite rules."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from securechat.errors import UsageError
from securechat.pki.certs import CertsLayout, check_client_name, generate, load_cert


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def test_ca_profile(pki):
    ca = load_cert(CertsLayout(pki).ca_cert)
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ext(ca, x509.SubjectKeyIdentifier)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"


@pytest.mark.parametrize("role", ["server", "client"])
def test_leaf_profile(pki, role):
    layout = CertsLayout(pki)
    ca = load_cert(layout.ca_cert)
    cert = load_cert(layout.server_cert if role == "server" else layout.client_cert("alice"))
    assert not ext(cert, x509.BasicConstraints).value.ca
    ku = ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = list(ext(cert, x509.ExtendedKeyUsage).value)
    assert eku == [ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    ext(cert, x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(ca)
    lifespan = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifespan.days == 90 and lifespan.seconds == 0  # Mozilla "modern": at most 90 days


def test_server_san(pki):
    san = ext(load_cert(CertsLayout(pki).server_cert), x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips and ipaddress.ip_address("::1") in ips


def test_client_identity(pki):
    cert = load_cert(CertsLayout(pki).client_cert("bob"))
    assert cert.subject.rfc4514_string() == "CN=bob"
    uris = ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["securechat:bob"]


def test_keys_are_private(pki):
    layout = CertsLayout(pki)
    for key in (layout.ca_key, layout.server_key, layout.client_key("alice")):
        assert (key.stat().st_mode & 0o777) == 0o600


def test_new_client_reuses_ca_and_touches_nothing_else(tmp_path):
    out = tmp_path / "certs"
    generate(out, ["alice"], ["example.org"])
    layout = CertsLayout(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    report = generate(out, ["zed"], [])
    for path, data in before.items():
        assert path.read_bytes() == data, path
    assert [r.role for r in report if r.created] == ["client zed"]
    load_cert(layout.client_cert("zed")).verify_directly_issued_by(load_cert(layout.ca_cert))
    san = ext(load_cert(layout.server_cert), x509.SubjectAlternativeName).value
    assert "example.org" in san.get_values_for_type(x509.DNSName)


def test_force_reissues_server_and_named_clients_but_keeps_the_ca(tmp_path):
    out = tmp_path / "certs"
    generate(out, ["alice"], [])
    layout = CertsLayout(out)
    ca_before, server_before = layout.ca_cert.read_bytes(), layout.server_cert.read_bytes()
    generate(out, ["alice"], ["10.1.2.3"], force=True)
    assert layout.ca_cert.read_bytes() == ca_before
    assert layout.server_cert.read_bytes() != server_before


@pytest.mark.parametrize("bad", ["", "server", "SERVER", "Server", "a b", "../x", "-x", "x" * 65, "é"])
def test_client_names_are_checked(bad):
    with pytest.raises(UsageError):
        check_client_name(bad)
