"""Real handshakes on 127.0.0.1 with our own certificates, and the failures that must happen."""

from __future__ import annotations

import socket
import ssl

import pytest

from helpers.tls import OneShotServer, presenting
from securechat.errors import CertificateError, ConnectionFailed
from securechat.member.connection import connect
from securechat.pki.certs import CertsLayout
from securechat.pki.tls import ClientFiles, client_context, peer_identity, server_context


def test_mutual_handshake_identifies_the_client(pki):
    server = OneShotServer(server_context(pki))
    sock = connect("127.0.0.1", server.port, client_context(ClientFiles.from_certs_dir(pki, "alice")))
    assert sock.version() == "TLSv1.3"
    assert sock.selected_alpn_protocol() == "securechat/1"
    assert peer_identity(sock) == "server"
    sock.setblocking(True)
    assert sock.recv(2) == b"ok"
    sock.close()
    server.finish()
    assert server.identity == "alice" and server.error is None


def test_client_refuses_server_from_another_ca(pki, other_pki):
    server = OneShotServer(server_context(other_pki))
    with pytest.raises(ConnectionFailed, match="certificate rejected"):
        connect("127.0.0.1", server.port, client_context(ClientFiles.from_certs_dir(pki, "alice")))
    server.finish()


def test_server_refuses_client_from_another_ca(pki, other_pki):
    server = OneShotServer(server_context(pki))
    files = ClientFiles(CertsLayout(pki).ca_cert, CertsLayout(other_pki).client_cert("alice"),
                        CertsLayout(other_pki).client_key("alice"))
    sock = connect("127.0.0.1", server.port, client_context(files))  # TLS 1.3: refusal comes after
    sock.setblocking(True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        sock.recv(2)
    server.finish()
    assert isinstance(server.error, ConnectionFailed)
    assert server.identity is None


def test_server_refuses_client_without_certificate(pki):
    server = OneShotServer(server_context(pki))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(CertsLayout(pki).ca_cert)
    context.set_alpn_protocols(["securechat/1"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                sock.recv(2)
    server.finish()
    assert "presented no certificate" in str(server.error)


def test_wrong_host_name_is_refused(pki):
    server = OneShotServer(server_context(pki), host="127.0.0.2")  # not in the certificate's SAN
    with pytest.raises(ConnectionFailed, match="gen-certs --server-name 127.0.0.2"):
        connect("127.0.0.2", server.port, client_context(ClientFiles.from_certs_dir(pki, "alice")))
    server.finish()


def test_tls12_is_refused(pki):
    server = OneShotServer(server_context(pki))
    files = ClientFiles.from_certs_dir(pki, "alice")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(files.ca)
    context.load_cert_chain(files.cert, files.key)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="localhost")
    server.finish()
    assert isinstance(server.error, ConnectionFailed)


def test_server_certificate_cannot_act_as_a_client(pki):
    """EKU: serverAuth only, so presenting server.pem as a client certificate fails."""
    layout = CertsLayout(pki)
    server = OneShotServer(server_context(pki))
    files = ClientFiles(layout.ca_cert, layout.server_cert, layout.server_key)
    sock = connect("127.0.0.1", server.port, presenting(files))
    sock.setblocking(True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        sock.recv(2)
    server.finish()
    assert server.identity is None


def test_contexts_are_strict(pki):
    for context in (server_context(pki), client_context(ClientFiles.from_certs_dir(pki, "alice"))):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.keylog_filename is None
    assert server_context(pki).num_tickets == 0


def test_missing_files_give_clear_errors(tmp_path, pki):
    with pytest.raises(CertificateError, match="not found"):
        server_context(tmp_path)
    with pytest.raises(CertificateError, match="ca.pem"):
        client_context(ClientFiles(tmp_path / "ca.pem", CertsLayout(pki).client_cert("alice"),
                                   CertsLayout(pki).client_key("alice")))
