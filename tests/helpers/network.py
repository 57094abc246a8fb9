"""The room on 127.0.0.1, and what talks to it by hand: raw clients, a proxy that cuts, odd frames."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import deque
from pathlib import Path

from helpers.commands import Proc
from securechat.pki.tls import ClientFiles, client_context
from securechat.wire import frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Room:
    """A running `securechat serve --json` on 127.0.0.1, and a way to join it."""

    def __init__(self, procs, certs: Path, folder: Path, server_args=(), **server_kwargs) -> None:
        self.procs, self.certs, self.dir = procs, certs, folder
        self.server = procs(
            ["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(certs),
             "--downloads", str(folder / "server-downloads"), "--json", *server_args],
            folder, **server_kwargs,
        )
        self.port = self.server.wait_event("listening")["port"]

    def start_client(self, name: str, *extra: str, **kwargs) -> Proc:
        return self.procs(
            ["join", "127.0.0.1", "--port", str(self.port), "--certs", str(self.certs), "--name", name,
             "--downloads", str(self.dir / f"{name}-downloads"), "--json", *extra],
            self.dir, **kwargs,
        )

    def join(self, name: str, *extra: str, **kwargs) -> Proc:
        client = self.start_client(name, *extra, **kwargs)
        client.wait_event("connected")
        self.server.wait_event("joined", name=name)
        return client


class CuttingProxy:
    """Forwards 127.0.0.1:port to the server until `cut()`, which drops every connection (RST).

    It keeps accepting afterwards (a reconnect gets through) unless `refuse` is set,
    when new connections are reset at once."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.forwarded = 0  # client -> server bytes
        self.connections = 0
        self.refuse = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse.is_set():
                _reset(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
                if upstream:
                    self.forwarded += len(data)
        except OSError:
            return

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _reset(s)

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # close() alone would wait for a pump blocked in recv() on it; shutdown wakes it.
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class RawClient:
    """A client written against docs/protocol.md only: real TLS, hand-made frames."""

    def __init__(self, port: int, files: ClientFiles, host: str = "127.0.0.1") -> None:
        context = client_context(files)
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.decoder = frames.FrameDecoder()
        self._stash: deque = deque()  # frames read while waiting for an accept

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: frames.Message) -> None:
        self.sock.sendall(frames.encode(message))

    def offer(self, transfer_id: int, name: str, data: bytes, sha256: str | None = None) -> int | None:
        """Offer a file and wait for the server's accept: the offset to send from, None if nobody takes it."""
        self.send(frames.Offer(id=transfer_id, name=name, size=len(data),
                               sha256=sha256 or hashlib.sha256(data).hexdigest()))
        deadline = time.monotonic() + 20
        while True:
            frame = self._read_frame(max(0.1, deadline - time.monotonic()))
            assert frame is not None, "connection closed while waiting for accept"
            if isinstance(frame, frames.Accept) and frame.id == transfer_id:
                return frame.offset
            if isinstance(frame, frames.Cancel) and frame.id == transfer_id:
                self._stash.append(frame)
                return None
            self._stash.append(frame)

    def send_file(self, transfer_id: int, name: str, data: bytes, sha256: str | None = None,
                  end_sha256: str | None = None) -> None:
        """offer, wait for accept, chunks from the accepted offset, end: as docs/protocol.md says."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        offset = self.offer(transfer_id, name, data, sha256)
        if offset is None:
            return
        for start in range(offset, len(data), frames.MAX_CHUNK_DATA):
            self.send_bytes(frames.encode_chunk(transfer_id, data[start : start + frames.MAX_CHUNK_DATA]))
        self.send(frames.End(id=transfer_id, sha256=end_sha256 or sha256))

    def hello(self) -> frames.Welcome:
        self.send(frames.Hello(version=frames.PROTOCOL_VERSION, software="raw-test"))
        assert isinstance(self.next_frame(), frames.Hello)
        welcome = self.next_frame()
        assert isinstance(welcome, frames.Welcome)
        return welcome

    def next_frame(self, timeout: float = 10.0):
        """The next frame, or None at EOF."""
        if self._stash:
            return self._stash.popleft()
        return self._read_frame(timeout)

    def _read_frame(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, OSError) as exc:
                if isinstance(exc, socket.timeout):
                    raise
                return None
            if not data:
                return None
            self.decoder.feed(data)

    def frames_until_closed(self, timeout: float = 10.0) -> list:
        """Every frame until the server closes the connection; then closes ours, as a client does at
        EOF (the server lingers up to 2 s for that before it lets the member go)."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.next_frame(deadline - time.monotonic())
            if frame is None:
                self.close()
                return got
            got.append(frame)
        raise AssertionError(f"connection still open after {timeout} s; got {got}")

    def close(self) -> None:
        self.sock.close()


def control_frame(obj) -> bytes:
    """A CONTROL frame from raw JSON text: lets a test send what our encoder would refuse."""
    payload = json.dumps(obj, ensure_ascii=True).encode()  # "\udcff" travels as a valid JSON escape
    return frames.HEADER.pack(frames.KIND_CONTROL, len(payload)) + payload


def bye_reason(got: list) -> str:
    """The reason of the last bye among frames received before a close."""
    byes = [f for f in got if isinstance(f, frames.Bye)]
    assert byes, f"no bye before the close: {got}"
    return byes[-1].reason
