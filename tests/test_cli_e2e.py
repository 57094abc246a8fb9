"""End to end: the installed `securechat` command in subprocesses, on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.commands import run
from helpers.files import JPEG_MAGIC, files_in, partial_files, random_file, sparse_file, wait_for_temp_file


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def test_chat_both_ways_and_private_lines(room):
    alice = room.join("alice")
    bob = room.join("bob")
    alice.send("hello from alice ✓ 你好")
    bob.wait_event("message", **{"from": "alice", "text": "hello from alice ✓ 你好"})
    room.server.wait_event("message", **{"from": "alice"})
    room.server.send("hello from the server")
    alice.wait_event("message", **{"from": "server", "text": "hello from the server"})
    bob.wait_event("message", **{"from": "server", "text": "hello from the server"})
    bob.send("/msg alice just for you")
    alice.wait_event("message", **{"from": "bob", "text": "just for you", "to": "alice"})
    bob.send("/who")
    assert bob.wait_event("who")["names"] == ["alice", "bob", "server"]
    bob.send("after the private line")
    room.server.wait_event("message", text="after the private line")
    assert room.server.count("message", text="just for you") == 0  # private means private


def test_image_each_way_verified_then_tamper_caught_by_verify(room, tmp_path):
    alice = room.join("alice")
    digest = random_file(tmp_path / "photo.jpg", 300_000, prefix=JPEG_MAGIC)
    alice.send(f"/send {tmp_path / 'photo.jpg'}")
    got = room.server.wait_event("file_received", name="photo.jpg")
    assert got["sha256"] == digest and got["from"] == "alice"
    delivered = alice.wait_event("file_delivered", to="server")
    assert delivered["sha256"] == digest

    back = random_file(tmp_path / "image_to_send.jpg", 200_000, prefix=JPEG_MAGIC)
    room.server.send(f"SEND_IMAGE {tmp_path / 'image_to_send.jpg'}")
    received = alice.wait_event("file_received", name="image_to_send.jpg")
    assert received["sha256"] == back
    room.server.wait_event("file_delivered", to="alice", sha256=back)

    saved = tmp_path / "alice-downloads" / "image_to_send.jpg"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == back
    ok = run(["verify", str(saved)], tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout

    with open(saved, "r+b") as f:  # one flipped byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    bad = run(["verify", str(saved), str(tmp_path / "photo.jpg")], tmp_path)
    assert bad.returncode == 1
    assert "MODIFIED" in bad.stdout and "image_to_send.jpg" in bad.stdout
    assert "unknown" in bad.stdout  # photo.jpg was never received into tmp_path
    assert_no_traceback(bad.stdout, bad.stderr)


def test_same_name_twice_never_overwrites(room, tmp_path):
    alice = room.join("alice")
    random_file(tmp_path / "a.jpg", 1000, prefix=JPEG_MAGIC)
    alice.send(f"/send {tmp_path / 'a.jpg'}")
    room.server.wait_event("file_received", name="a.jpg")
    random_file(tmp_path / "a.jpg", 1000, prefix=JPEG_MAGIC)
    alice.send(f"/send {tmp_path / 'a.jpg'}")
    room.server.wait_event("file_received", name="a (1).jpg")
    assert run(["verify", str(tmp_path / "server-downloads")], tmp_path).returncode == 0


def test_send_missing_file_is_a_local_error_and_the_session_goes_on(room, tmp_path):
    alice = room.join("alice")
    alice.send("/send /no/such/file.jpg")
    alice.send("/frobnicate")
    alice.send("still here")
    room.server.wait_event("message", text="still here")
    alice.wait_event("error", message="no such file: /no/such/file.jpg")  # from the /send thread
    # The /send thread may print before the input thread's own error is read from the pipe: wait for it.
    unknown = "unknown command /frobnicate; /help lists the commands (start a line with // to send a '/')"
    alice.wait_event("error", message=unknown)


def test_exit_and_eof_leave_gracefully(room):
    alice = room.join("alice")
    bob = room.join("bob")
    alice.send("exit")
    assert alice.wait_exit() == 0
    bob.wait_event("left", name="alice")
    bob.close_stdin()  # end of input on join: leave, exit 0
    assert bob.wait_exit() == 0
    room.server.wait_event("left", name="bob")
    assert room.server.popen.poll() is None  # the server keeps serving


def test_server_eof_is_headless_and_sigterm_tells_clients(room):
    alice = room.join("alice")
    room.server.close_stdin()
    alice.send("anyone?")
    room.server.wait_event("message", text="anyone?")  # still serving without a terminal
    room.server.popen.send_signal(signal.SIGTERM)
    assert room.server.wait_exit() == 0
    alice.wait_event("disconnected", reason="server shutting down")
    assert alice.wait_exit() == 0
    assert_no_traceback("".join(alice.stderr_lines), "".join(room.server.stderr_lines))


def test_server_exit_command(room):
    alice = room.join("alice")
    room.server.send("exit")
    assert room.server.wait_exit() == 0
    alice.wait_event("disconnected")
    assert alice.wait_exit() == 0


def test_sender_killed_mid_transfer_leaves_only_a_hidden_partial(room, tmp_path):
    alice = room.join("alice")
    big = sparse_file(tmp_path / "big.bin", 1024 * 1024 * 1024)
    alice.send(f"/send {big}")
    downloads = tmp_path / "server-downloads"
    wait_for_temp_file(downloads)
    alice.popen.kill()
    alice.popen.wait(10)
    room.server.wait_event("file_rejected", name="big.bin")
    room.server.wait_event("left", name="alice")
    assert not (downloads / "big.bin").exists()
    assert [f for f in files_in(downloads) if not f.startswith(".securechat-partial/")] == []  # no SHA256SUMS line
    assert len(partial_files(downloads)) == 1  # kept, hidden, for a resume
    bob = room.join("bob")  # the server is fine
    bob.send("after the crash")
    room.server.wait_event("message", text="after the crash")


def test_receiver_killed_mid_transfer_sender_is_told_it_waits_to_resume(room, tmp_path):
    alice = room.join("alice")
    bob = room.join("bob")
    big = sparse_file(tmp_path / "big.bin", 1024 * 1024 * 1024)
    alice.send(f"/send @bob {big}")
    bob_dl = tmp_path / "bob-downloads"
    wait_for_temp_file(bob_dl)
    bob.popen.kill()
    bob.popen.wait(10)
    interrupted = alice.wait_event("file_interrupted", to="bob")
    assert "bob left" in interrupted["reason"]
    alice.send("still connected")
    room.server.wait_event("message", text="still connected")
    assert not (bob_dl / "big.bin").exists()


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, pki, other_pki):
    cases = [
        (["join", "127.0.0.1", "--port", "1", "--certs", str(pki), "--name", "alice"], "connection refused"),
        (["join", "127.0.0.1", "--certs", str(tmp_path / "none")], "certs folder"),
        (["join", "127.0.0.1", "--certs", str(pki)], "--name"),
        (["join", "127.0.0.1", "--certs", str(pki), "--name", "nobody"], "not found"),
        (["serve", "--certs", str(tmp_path / "none"), "--port", "0"], "not found"),
        (["verify", str(tmp_path / "nothing.jpg")], "no such file"),
        (["gen-certs", "--out", str(tmp_path / "c"), "--client", "bad name"], "client name"),
    ]
    for args, expected in cases:
        result = run(args, tmp_path, input="")
        assert result.returncode != 0, args
        assert expected in result.stdout + result.stderr, (args, result.stdout, result.stderr)
        assert_no_traceback(result.stdout, result.stderr)
        if args[0] != "verify":
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_port_in_use_and_wrong_ca(room, tmp_path, pki, other_pki):
    busy = run(["serve", "--host", "127.0.0.1", "--port", str(room.port), "--certs", str(pki)], tmp_path, input="")
    assert busy.returncode == 1 and "already in use" in busy.stderr
    foreign = run(["join", "127.0.0.1", "--port", str(room.port), "--certs", str(other_pki), "--name", "alice",
                   "--ca", str(pki / "ca.pem")], tmp_path, input="")
    assert foreign.returncode == 1 and "does not trust our certificate" in foreign.stderr
    untrusted = run(["join", "127.0.0.1", "--port", str(room.port), "--certs", str(other_pki), "--name", "alice"],
                    tmp_path, input="")
    assert untrusted.returncode == 1 and "certificate rejected" in untrusted.stderr
    room.server.wait_event("refused")
    assert_no_traceback(busy.stderr, foreign.stderr, untrusted.stderr)


def test_gen_certs_cli_never_overwrites(tmp_path):
    first = run(["gen-certs", "--out", "c", "--client", "alice"], tmp_path)
    assert first.returncode == 0 and "SHA-256" in first.stdout and "give alice" in first.stdout
    key = (tmp_path / "c" / "clients" / "alice.key").read_bytes()
    again = run(["gen-certs", "--out", "c", "--client", "alice", "--client", "bob"], tmp_path)
    assert again.returncode == 0 and "kept" in again.stdout
    assert (tmp_path / "c" / "clients" / "alice.key").read_bytes() == key
    assert (tmp_path / "c" / "clients" / "bob.pem").exists()


def test_standalone_script_generates_certificates(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "gen_certs.py")
    result = subprocess.run([sys.executable, script, "--out", str(tmp_path / "c"), "--client", "zoe"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "clients" / "zoe.pem").exists()


@pytest.mark.parametrize("flag", ["--json", None])
def test_human_and_json_output_escape_terminal_controls(room, flag, pki, procs, tmp_path):
    args = ["join", "127.0.0.1", "--port", str(room.port), "--certs", str(pki), "--name", "carol",
            "--downloads", str(tmp_path / "carol-dl")]
    carol = procs(args + ([flag] if flag else []), tmp_path)
    room.server.wait_event("joined", name="carol")
    room.server.send("evil \x1b[2J\x1b]0;pwned\x07 \u202eexe.pdf done")
    # The operator's line travels through the server's loop, carol's "bye" from another process:
    # carol leaves only once the line has reached her (bounded).
    deadline = time.monotonic() + 20
    while not any(e.get("event") == "message" or "evil" in e.get("line", "") for e in carol.events):
        assert time.monotonic() < deadline, carol.events
        time.sleep(0.05)
    carol.send("bye")
    room.server.wait_event("message", text="bye")
    carol.close_stdin()
    assert carol.wait_exit() == 0
    text = "\n".join(e.get("line", "") for e in carol.events) if not flag else ""
    raw_out = "".join(str(e) for e in carol.events)
    if flag:
        message = next(e for e in carol.events if e["event"] == "message")
        assert message["text"] == "evil \x1b[2J\x1b]0;pwned\x07 \u202eexe.pdf done"  # JSON keeps the data
    else:
        assert "\\x1b[2J" in text and "\\u202e" in text
        assert "\x1b" not in raw_out and "\u202e" not in raw_out
