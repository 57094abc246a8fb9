"""The pure DER reader and the admission rules (der.py, identity.py), against cryptography's view.

The reader decides admission, so: what it reads must agree with cryptography
on real certificates and CRLs, and on any other input it must return a
verdict or raise DERError, never anything else (hypothesis).
"""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from securechat.pki import der
from securechat.pki.certs import CertsLayout, load_cert
from securechat.pki.identity import client_certificate_problem, name_problem, server_certificate_problem
from securechat.server.revocation import revoke, revoked_serials


def der_of(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_reads_the_profile_of_every_certificate_gen_certs_makes(pki):
    layout = CertsLayout(pki)
    for path in (layout.ca_cert, layout.server_cert, layout.client_cert("alice")):
        cert = load_cert(path)
        profile = der.certificate_profile(der_of(path))
        assert profile.serial == cert.serial_number
        assert profile.is_ca == cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert (profile.key_algorithm, profile.curve) == (der.EC_PUBLIC_KEY, der.P256)
    assert der.certificate_profile(der_of(layout.ca_cert)).extended_key_usage is None
    assert der.certificate_profile(der_of(layout.server_cert)).extended_key_usage == {der.SERVER_AUTH}
    assert der.certificate_profile(der_of(layout.client_cert("alice"))).extended_key_usage == {der.CLIENT_AUTH}


def test_the_profile_checks_accept_our_own_and_refuse_the_wrong_role(pki):
    layout = CertsLayout(pki)
    assert client_certificate_problem(der_of(layout.client_cert("alice"))) is None
    assert server_certificate_problem(der_of(layout.server_cert)) is None
    assert "clientAuth" in client_certificate_problem(der_of(layout.server_cert))
    assert "serverAuth" in server_certificate_problem(der_of(layout.client_cert("alice")))
    assert "CA:TRUE" in client_certificate_problem(der_of(layout.ca_cert))
    assert "CA:TRUE" in server_certificate_problem(der_of(layout.ca_cert))


def _self_signed(key, extensions) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_a_key_other_than_p256_is_refused():
    eku = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    p384 = _self_signed(ec.generate_private_key(ec.SECP384R1()), [eku])
    rsa_key = _self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), [eku])
    assert "P-256" in client_certificate_problem(p384)
    assert "P-256" in client_certificate_problem(rsa_key)
    assert client_certificate_problem(_self_signed(ec.generate_private_key(ec.SECP256R1()), [eku])) is None


def test_reads_the_serials_of_a_crl(tmp_path):
    from securechat.pki.certs import generate

    out = tmp_path / "certs"
    generate(out, ["alice", "bob", "carol"], [])
    layout = CertsLayout(out)
    assert revoked_serials(layout.crl) == frozenset()  # gen-certs' empty CRL
    revoke(out, "alice")
    revoke(out, "carol")
    expected = {load_cert(layout.client_cert(n)).serial_number for n in ("alice", "carol")}
    assert revoked_serials(layout.crl) == expected
    crl = x509.load_pem_x509_crl(layout.crl.read_bytes())
    assert {e.serial_number for e in crl} == expected


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x80\x00\x00", b"\x30\x81\x01\x00", b"\x30\x02\x01",
                                  b"\x30\x00\x00", b"\x1f\x00", b"\x30\x84\xff\xff\xff\xff"])
def test_malformed_der_raises_our_error(data):
    with pytest.raises(der.DERError):
        der.certificate_profile(data)
    with pytest.raises(der.DERError):
        der.crl_serials(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_give_a_verdict_or_our_error(data):
    for parse in (der.certificate_profile, der.crl_serials):
        try:
            parse(data)
        except der.DERError:
            pass
    assert client_certificate_problem(data) is None or isinstance(client_certificate_problem(data), str)


@pytest.fixture(scope="module")
def alice_der(pki) -> bytes:
    return der_of(CertsLayout(pki).client_cert("alice"))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_damaged_certificates_give_a_verdict_or_our_error(alice_der, data):
    """Flipped, dropped and inserted bytes in a real certificate: near-valid input reaches deep paths."""
    damaged = bytearray(alice_der)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        match data.draw(st.sampled_from(["flip", "drop", "insert", "cut"])):
            case "flip":
                damaged[at] ^= data.draw(st.integers(1, 255))
            case "drop":
                del damaged[at]
            case "insert":
                damaged.insert(at, data.draw(st.integers(0, 255)))
            case "cut":
                del damaged[at:]
        if not damaged:
            damaged.append(0)
    try:
        der.certificate_profile(bytes(damaged))
    except der.DERError:
        pass
    problem = client_certificate_problem(bytes(damaged))
    assert problem is None or isinstance(problem, str)


@pytest.mark.parametrize("name", ["alice", "bob-2", "x.y_z", "José", "Åsa", "李雷", "a" * 64, "ex"])
def test_ordinary_names_are_accepted(name):
    assert name_problem(name, "server") is None


@pytest.mark.parametrize("name,reason", [
    ("server", "operator"), ("SERVER", "operator"), ("\uff53\uff45\uff52\uff56\uff45\uff52", "operator"),
    ("Server", "operator"), ("serv\u200ber", "U+200B"), ("a\nb", "control"), ("a\x00b", "control"),
    ("a\x9bb", "control"), ("a\u202eb", "U+202E"), ("a\u2066b", "U+2066"), ("a\ufeffb", "U+FEFF"),
    ("../x", "U+002F"), ("a\\b", "U+005C"), (".hidden", "start"), ("-x", "start"), ("a b", "space"),
    ("", "empty"), ("\u00e9" * 33, "64 bytes"), ("e\u0301", "normal form"),
])
def test_names_that_are_refused(name, reason):
    problem = name_problem(name, "server")
    assert problem is not None and reason in problem, problem


@given(st.text(max_size=80))
def test_any_name_gets_a_verdict(name):
    problem = name_problem(name, "server")
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert name.isprintable() and "/" not in name and len(name.encode()) <= 64
