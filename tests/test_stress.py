"""Proof of the threading rule: both directions stream at full speed while chatting.

Each side has a Connection (one I/O thread owning the TLS socket) plus two
producer threads that only enqueue: one pushes file chunks, one pushes chat
lines. If two threads were ever inside SSL_read/SSL_write at once, OpenSSL
would sooner or later report a bad record MAC or a decryption failure; here
every byte and every line must arrive, in order, with no error.
"""

from __future__ import annotations

import hashlib
import socket
import threading

from securechat.member.connection import Connection, connect, tls_handshake
from securechat.pki.tls import ClientFiles, client_context, server_context
from securechat.wire import frames

ROUNDS = 400
CHUNK = 64 * 1024
CHATS_PER_ROUND = 3


class Side:
    def __init__(self, label: str) -> None:
        self.label = label
        self.hash = hashlib.sha256()
        self.bytes = 0
        self.chats: list[str] = []
        self.closed = threading.Event()
        self.close_reason = ""
        self.clean = None
        self.conn: Connection | None = None

    def on_frame(self, conn, frame) -> None:
        if isinstance(frame, frames.Chunk):
            self.hash.update(frame.data)
            self.bytes += len(frame.data)
        elif isinstance(frame, frames.Chat):
            self.chats.append(frame.text)

    def on_close(self, conn, reason, clean) -> None:
        self.close_reason, self.clean = reason, clean
        self.closed.set()


def produce(conn: Connection, seed: bytes, sent_hash) -> None:
    block = hashlib.sha256(seed).digest() * (CHUNK // 32)
    for i in range(ROUNDS):
        data = block[i % 7 :] + block[: i % 7]
        sent_hash.update(data)
        conn.outbox.put_data(frames.encode_chunk(1, data))


def chatter(conn: Connection, label: str) -> None:
    for i in range(ROUNDS * CHATS_PER_ROUND):
        conn.send(frames.Chat(text=f"{label} line {i} ✓"))


def test_both_directions_stream_and_chat_without_tls_errors(pki):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = {}

    def accept() -> None:
        raw, _ = listener.accept()
        sock = server_context(pki).wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        tls_handshake(sock)
        accepted["sock"] = sock

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    client_sock = connect("127.0.0.1", port, client_context(ClientFiles.from_certs_dir(pki, "alice")))
    acceptor.join(10)
    listener.close()

    a, b = Side("a"), Side("b")
    a.conn = Connection(client_sock, "server", a.on_frame, a.on_close, first_frame_timeout=None)
    b.conn = Connection(accepted["sock"], "alice", b.on_frame, b.on_close, first_frame_timeout=None)
    a.conn.start()
    b.conn.start()

    sent = {"a": hashlib.sha256(), "b": hashlib.sha256()}
    threads = [
        threading.Thread(target=produce, args=(a.conn, b"from-a", sent["a"])),
        threading.Thread(target=produce, args=(b.conn, b"from-b", sent["b"])),
        threading.Thread(target=chatter, args=(a.conn, "a")),
        threading.Thread(target=chatter, args=(b.conn, "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()

    expected = ROUNDS * CHUNK
    for _ in range(600):
        if (a.bytes >= expected and b.bytes >= expected
                and len(a.chats) == len(b.chats) == ROUNDS * CHATS_PER_ROUND) or a.closed.is_set():
            break
        a.closed.wait(0.1)
    assert not a.closed.is_set() and not b.closed.is_set(), (a.close_reason, b.close_reason)
    assert a.bytes == b.bytes == expected
    assert b.hash.hexdigest() == sent["a"].hexdigest()
    assert a.hash.hexdigest() == sent["b"].hexdigest()
    assert a.chats == [f"b line {i} ✓" for i in range(ROUNDS * CHATS_PER_ROUND)]
    assert b.chats == [f"a line {i} ✓" for i in range(ROUNDS * CHATS_PER_ROUND)]

    a.conn.close("done")
    assert b.closed.wait(15) and a.closed.wait(15)
    assert a.clean and b.clean, (a.close_reason, b.close_reason)
    assert b.close_reason == "done"
