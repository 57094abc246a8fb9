"""Certificates that must be refused, revocation, and the TLS properties of issue 4."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers.commands import securechat_command
from helpers.tls import OneShotServer, presenting
from securechat.errors import ConnectionFailed
from securechat.member.connection import connect
from securechat.pki.certs import CertsLayout, generate, load_cert, load_key, new_key, save_pair
from securechat.pki.tls import ClientFiles, client_context, server_context


def build_client(layout: CertsLayout, name: str, folder, *, not_before=None, not_after=None,
                 eku=ExtendedKeyUsageOID.CLIENT_AUTH, aki=True) -> ClientFiles:
    """A client certificate from the real CA, with exactly one thing wrong."""
    ca_cert, ca_key = load_cert(layout.ca_cert), load_key(layout.ca_key)
    key = new_key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"securechat:{name}")]),
                       critical=False)
    )
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    save_pair(cert, key, cert_path, key_path, force=True)
    return ClientFiles(layout.ca_cert, cert_path, key_path)


def server_refuses(pki, files: ClientFiles) -> str:
    """Handshake against our server context; returns the server's reason for refusing."""
    server = OneShotServer(server_context(pki))
    sock = connect("127.0.0.1", server.port, presenting(files))
    sock.setblocking(True)
    sock.settimeout(10)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        sock.recv(2)
    sock.close()
    server.finish()
    assert server.identity is None, "the server let it in"
    return str(server.error)


NOW = dt.datetime.now(dt.timezone.utc)


@pytest.mark.parametrize(
    "defect,kwargs,reason",
    [
        ("expired", dict(not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)), "expired"),
        ("not yet valid", dict(not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=9)), "not yet valid"),
        ("server EKU", dict(eku=ExtendedKeyUsageOID.SERVER_AUTH), "purpose"),
        ("no AKI", dict(aki=False), "authority key identifier"),
    ],
)
def test_defective_client_certificates_are_refused_with_a_reason(pki, tmp_path, defect, kwargs, reason):
    files = build_client(CertsLayout(pki), "mallory", tmp_path, **kwargs)
    assert reason in server_refuses(pki, files).lower()


def test_client_certificate_presented_as_a_server_is_refused(pki):
    layout = CertsLayout(pki)
    context = server_context(pki)
    context.load_cert_chain(layout.client_cert("bob"), layout.client_key("bob"))  # bob pretends to be the server
    server = OneShotServer(context)
    with pytest.raises(ConnectionFailed, match="purpose"):
        connect("127.0.0.1", server.port, client_context(ClientFiles.from_certs_dir(pki, "alice")))
    server.finish()


def test_ca_without_critical_basic_constraints_is_refused(tmp_path):
    """A whole PKI whose CA marks basicConstraints non-critical: both sides must refuse it."""
    out = tmp_path / "weak"
    generate(out, ["alice"], [])
    layout = CertsLayout(out)
    ca_cert, ca_key = load_cert(layout.ca_cert), load_key(layout.ca_key)
    weak = (
        x509.CertificateBuilder()
        .subject_name(ca_cert.subject).issuer_name(ca_cert.subject).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca_cert.not_valid_before_utc).not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=False)
        .add_extension(ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    layout.ca_cert.write_bytes(weak.public_bytes(serialization.Encoding.PEM))
    server = OneShotServer(server_context(out))
    with pytest.raises(ConnectionFailed, match="certificate rejected"):
        connect("127.0.0.1", server.port, client_context(ClientFiles.from_certs_dir(out, "alice")))
    server.finish()


@pytest.fixture
def own_pki(tmp_path):
    """Revocation writes the CRL: a PKI of this test's own."""
    out = tmp_path / "certs"
    generate(out, ["alice", "bob"], [])
    return out


REVOKED_LINE = "error: your certificate was revoked by the server's operator\n"


@pytest.mark.timeout(120)
def test_revoked_client_is_dropped_and_refused_on_its_next_connection(make_room, own_pki, tmp_path):
    """Dropped while connected, and refused at its next connection: one line, exit 1, no reconnecting."""
    room = make_room(certs=own_pki)
    alice = room.join("alice")
    bob = room.join("bob")
    done = subprocess.run(securechat_command() + ["revoke", "alice", "--certs", str(own_pki)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "revoked alice" in done.stdout
    assert alice.wait_exit() == 1
    assert alice.stderr_after_exit() == REVOKED_LINE
    assert alice.count("reconnecting") == 0
    bob.wait_event("left", name="alice")
    again = subprocess.run(securechat_command() + ["join", "127.0.0.1", "--port", str(room.port), "--certs",
                                                   str(own_pki), "--name", "alice", "--json"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert again.returncode == 1
    assert again.stderr == REVOKED_LINE
    # Dropping alice reloaded the server's TLS context, so this one met OpenSSL's CRL check:
    # the client learnt it from the certificate_revoked alert (the bye path: test_admission.py).
    assert "certificate rejected" in room.server.wait_event("refused")["reason"]
    assert '"reconnecting"' not in again.stdout and '"connected"' not in again.stdout
    assert room.server.count("joined", name="alice") == 1  # the first time only
    bob.send("bob is unaffected")
    room.server.wait_event("message", text="bob is unaffected")


def test_no_session_tickets_so_nothing_resumes(pki):
    server = OneShotServer(server_context(pki))
    sock = connect("127.0.0.1", server.port, client_context(ClientFiles.from_certs_dir(pki, "alice")))
    sock.setblocking(True)
    assert sock.recv(2) == b"ok"
    session = sock.session
    sock.close()
    server.finish()
    assert session is None or not session.has_ticket


def test_sslkeylogfile_writes_nothing(room, tmp_path):
    keylog = tmp_path / "keys.log"
    env = {"SSLKEYLOGFILE": str(keylog)}
    client = room.start_client("alice", env=env)
    client.wait_event("connected")
    client.send("hello")
    room.server.wait_event("message", text="hello")
    client.close_stdin()
    assert client.wait_exit() == 0
    assert not keylog.exists()


def test_sslkeylogfile_writes_nothing_on_the_server(make_room, tmp_path):
    keylog = tmp_path / "server-keys.log"
    room = make_room(env={"SSLKEYLOGFILE": str(keylog)})
    room.join("alice")
    assert not keylog.exists()


def test_gen_certs_passphrase_never_from_argv(tmp_path):
    import subprocess

    env = {**os.environ, "SECURECHAT_CA_PASSPHRASE": "correct horse"}
    made = subprocess.run(securechat_command() + ["gen-certs", "--out", "c", "--protect-ca", "--client", "a"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "c" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    no_pass = {k: v for k, v in env.items() if k != "SECURECHAT_CA_PASSPHRASE"}
    refused = subprocess.run(securechat_command() + ["gen-certs", "--out", "c", "--client", "b"],
                             cwd=tmp_path, env=no_pass, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 1 and "SECURECHAT_CA_PASSPHRASE" in refused.stderr
    wrong = subprocess.run(securechat_command() + ["gen-certs", "--out", "c", "--client", "b"],
                           cwd=tmp_path, env={**no_pass, "SECURECHAT_CA_PASSPHRASE": "wrong"},
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    assert not (tmp_path / "c" / "clients" / "b.pem").exists()
    help_text = subprocess.run(securechat_command() + ["gen-certs", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert "--passphrase" not in help_text  # there is no way to put it on the command line
    shutil.rmtree(tmp_path / "c")


@pytest.mark.timeout(60)
def test_an_unreadable_crl_keeps_the_previous_one_and_is_reported_once(make_room, own_pki):
    room = make_room(certs=own_pki)
    crl = CertsLayout(own_pki).crl
    broken = crl.with_name("broken.pem")
    broken.write_text("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    os.replace(broken, crl)  # a new file, as `revoke` writes it
    room.join("alice")  # handshakes after the change: each checks the CRL's stamp
    room.join("bob")
    time.sleep(1.5)  # three rounds of the accept loop's own check
    assert "keeping the previous CRL" in room.server.wait_event("error")["message"]
    assert room.server.count("error") == 1
