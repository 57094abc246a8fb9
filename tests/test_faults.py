"""Network faults: a connection cut mid-frame, a server killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from conftest import free_port, sparse_file, wait_for_temp_file


class CuttingProxy:
    """Forwards 127.0.0.1:port to the server until `cut()`, then drops both sides (RST)."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.forwarded = 0  # client -> server bytes
        self._sockets: list[socket.socket] = []
        self._cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        self._sockets = [client, server]
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self._cut.is_set():
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
                if upstream:
                    self.forwarded += len(data)
        except OSError:
            return

    def cut(self) -> None:
        self._cut.set()
        for s in self._sockets:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            # close() alone would wait for the pump blocked in recv() on it; shutdown wakes it.
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.listener.close()


def test_connection_cut_mid_transfer(room, procs, pki, tmp_path):
    bob = room.join("bob")
    proxy = CuttingProxy(room.port)
    alice = procs(["join", "127.0.0.1", "--port", str(proxy.port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(tmp_path / "alice-downloads"), "--json"], tmp_path)
    alice.wait_event("connected")
    big = sparse_file(tmp_path / "big.bin", 1024 * 1024 * 1024)
    alice.send(f"/send {big}")
    deadline = time.monotonic() + 20
    while proxy.forwarded < 50 * 1024 * 1024 + 12345:  # cut somewhere inside a frame
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proxy.cut()
    assert alice.wait_exit() == 1
    stderr = "".join(alice.stderr_lines)
    assert "connection to 127.0.0.1" in stderr and "lost" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    alice.wait_event("file_failed")
    for member in (bob, room.server):
        member.wait_event("file_rejected", name="big.bin")
    room.server.wait_event("left", name="alice")
    for folder in (tmp_path / "bob-downloads", tmp_path / "server-downloads"):
        assert [n for n in os.listdir(folder) if n != "SHA256SUMS"] == []
    bob.send("the room goes on")
    room.server.wait_event("message", text="the room goes on")


def test_server_killed_and_restarted(pki, procs, tmp_path):
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--certs", str(pki),
            "--downloads", str(tmp_path / "server-downloads"), "--json"]
    server = procs(args, tmp_path)
    server.wait_event("listening")
    alice = procs(["join", "127.0.0.1", "--port", str(port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(tmp_path / "alice-downloads"), "--json"], tmp_path)
    alice.wait_event("connected")
    big = sparse_file(tmp_path / "big.bin", 1024 * 1024 * 1024)
    server.send(f"/send {big}")  # the server is sending to alice when it dies
    alice_dl = tmp_path / "alice-downloads"
    wait_for_temp_file(alice_dl)
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)
    assert alice.wait_exit() == 1
    stderr = "".join(alice.stderr_lines)
    assert "lost" in stderr and "Traceback" not in stderr
    rejected = alice.wait_event("file_rejected", name="big.bin")
    assert "connection closed" in rejected["reason"]
    assert os.listdir(alice_dl) == []  # the temp file is gone, nothing under a final name

    restarted = procs(args, tmp_path)
    restarted.wait_event("listening")
    again = procs(["join", "127.0.0.1", "--port", str(port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(alice_dl), "--json"], tmp_path)
    again.wait_event("connected")
    again.send("back again")
    restarted.wait_event("message", text="back again")
