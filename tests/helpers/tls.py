"""Handshakes from outside our own client: a client that presents whatever it is given, a one-shot server."""

from __future__ import annotations

import socket
import ssl
import threading

from securechat.member.connection import tls_handshake
from securechat.pki.tls import ClientFiles, peer_identity


def presenting(files: ClientFiles, host_check: bool = True) -> ssl.SSLContext:
    """client_context without its local check of our own certificate: a client that presents
    whatever it is given, so that the server's own refusal is what gets tested."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = host_check
    context.load_cert_chain(files.cert, files.key)
    context.load_verify_locations(files.ca)
    context.set_alpn_protocols(["securechat/1"])
    return context


class OneShotServer:
    """Accepts one connection, handshakes with our server context, records the outcome."""

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.identity: str | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        raw, _ = self.listener.accept()
        try:
            sock = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            tls_handshake(sock, timeout=5)
            self.identity = peer_identity(sock)
            sock.setblocking(True)
            sock.sendall(b"ok")
            sock.close()
        except Exception as exc:
            self.error = exc
            raw.close()

    def finish(self) -> None:
        self.thread.join(10)
        self.listener.close()
