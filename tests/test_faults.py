"""Network faults: a connection cut mid-frame, a server killed and restarted."""

from __future__ import annotations

import signal
import time

from helpers.files import file_sha256, files_in, partial_files, sparse_file, wait_for_temp_file
from helpers.network import free_port
from securechat.files.partials import PARTIAL_DIR


def test_connection_cut_mid_transfer_without_reconnect(room, procs, pki, tmp_path, cutting_proxy):
    bob = room.join("bob")
    proxy = cutting_proxy(room.port)
    alice = procs(["join", "127.0.0.1", "--port", str(proxy.port), "--certs", str(pki), "--name", "alice",
                   "--downloads", str(tmp_path / "alice-downloads"), "--json", "--no-reconnect"], tmp_path)
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
        assert [f for f in files_in(folder) if not f.startswith(f"{PARTIAL_DIR}/")] == []
    bob.send("the room goes on")
    room.server.wait_event("message", text="the room goes on")


def test_server_killed_and_restarted_client_reconnects_and_resumes(pki, procs, tmp_path):
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
    wait_for_temp_file(alice_dl, at_least=100 * 1024 * 1024)
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)
    rejected = alice.wait_event("file_rejected", name="big.bin")
    assert "connection closed" in rejected["reason"] and "kept to resume" in rejected["reason"]
    alice.wait_event("reconnecting")
    assert [f for f in files_in(alice_dl) if not f.startswith(f"{PARTIAL_DIR}/")] == []  # nothing published
    alice.send("typed while the server is down")

    restarted = procs(args, tmp_path)
    restarted.wait_event("listening")
    assert alice.wait_event("connected", timeout=40)["members"] == ["server"]  # by itself, same process
    restarted.wait_event("message", text="typed while the server is down")  # kept, then sent
    mark = alice.mark()
    restarted.send(f"/send {big}")  # the new server process knows nothing: sending again resumes
    incoming = alice.wait_event("file_incoming", name="big.bin", after=mark)
    assert incoming["offset"] >= 96 * 1024 * 1024
    received = alice.wait_event("file_received", name="big.bin", timeout=60, after=mark)
    assert received["sha256"] == file_sha256(big)
    restarted.wait_event("file_delivered", to="alice", timeout=60)
    assert partial_files(alice_dl) == []
