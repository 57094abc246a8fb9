"""`securechat send` and `fingerprint` for scripts, and the defaults from env and config."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import time

from helpers.commands import securechat_command


def run(args, cwd, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(securechat_command() + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_send_files_waits_for_every_verified_confirmation(room, pki, tmp_path):
    bob = room.join("bob")
    digests = {}
    for name in ("one.bin", "two.bin"):
        data = os.urandom(200_000)
        (tmp_path / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    result = run(["send", "127.0.0.1", "one.bin", "two.bin", "--port", str(room.port), "--certs", str(pki),
                  "--name", "alice", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    delivered = [json.loads(line) for line in result.stdout.splitlines() if '"file_delivered"' in line]
    assert {(e["name"], e["to"]) for e in delivered} == {(n, w) for n in digests for w in ("bob", "server")}
    assert all(e["sha256"] == digests[e["name"]] for e in delivered)
    for name, digest in digests.items():
        assert bob.wait_event("file_received", name=name)["sha256"] == digest
    bob.wait_event("left", name="alice")  # it left on its own


def test_send_to_one_and_a_line(room, pki, tmp_path):
    bob = room.join("bob")
    carol = room.join("carol")
    (tmp_path / "note.txt").write_text("for carol")
    result = run(["send", "127.0.0.1", "note.txt", "--to", "carol", "-m", "see the note", "--port", str(room.port),
                  "--certs", str(pki), "--name", "alice"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "delivered to carol" in result.stdout
    carol.wait_event("message", text="see the note", to="carol")
    carol.wait_event("file_received", name="note.txt")
    bob.send("/who")
    bob.wait_event("who")
    assert bob.count("file_received") == 0 and bob.count("message", text="see the note") == 0


def test_send_to_someone_absent_with_wait_0_fails_at_once_in_one_line(room, pki, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x")
    result = run(["send", "127.0.0.1", "x.bin", "--to", "bob", "--wait", "0", "--port", str(room.port),
                  "--certs", str(pki), "--name", "alice"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: nobody named 'bob' is here; nothing was sent "
                                          "(--wait SECONDS waits for them to join)"]
    assert "sending" not in result.stdout


def test_send_to_yourself_says_so(room, pki, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x")
    result = run(["send", "127.0.0.1", "x.bin", "--to", "alice", "--port", str(room.port), "--certs", str(pki),
                  "--name", "alice"], tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "--to alice is you" in result.stderr


def test_send_waits_for_the_recipient_to_join(room, pki, tmp_path, procs):
    data = os.urandom(50_000)
    (tmp_path / "x.bin").write_bytes(data)
    sender = procs(["send", "127.0.0.1", "x.bin", "--to", "bob", "-m", "here it is", "--port", str(room.port),
                    "--certs", str(pki), "--name", "alice", "--json"], tmp_path)
    waiting = sender.wait_event("waiting", name="bob")
    assert "waiting for bob to join (up to 10 min" in waiting["text"]
    bob = room.join("bob")
    assert sender.wait_exit(60) == 0, "".join(sender.stderr_lines)
    assert bob.wait_event("file_received", name="x.bin")["sha256"] == hashlib.sha256(data).hexdigest()
    bob.wait_event("message", text="here it is")
    assert sender.count("waiting") == 1  # one line while waiting


def test_send_gives_up_waiting_after_wait_seconds(room, pki, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x")
    result = run(["send", "127.0.0.1", "x.bin", "--to", "bob", "--wait", "1", "--port", str(room.port),
                  "--certs", str(pki), "--name", "alice"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: bob did not join within 1 s; nothing was sent"]
    assert room.server.count("file_received") == 0


def test_fingerprint_matches_gen_certs(tmp_path):
    made = run(["gen-certs", "--out", "c", "--client", "zoe"], tmp_path)
    printed = run(["fingerprint", "--certs", "c"], tmp_path)
    assert printed.returncode == 0
    fingerprints = [line.split("SHA-256 ")[1] for line in printed.stdout.splitlines()]
    assert len(fingerprints) == 3
    for fp in fingerprints:
        assert fp in made.stdout
    missing = run(["fingerprint", "--certs", "nowhere"], tmp_path)
    assert missing.returncode == 1 and "gen-certs" in missing.stderr


def test_environment_and_config_file_supply_defaults_and_flags_win(room, pki, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'certs = "{pki}"\nport = {room.port}\n[send]\nname = "alice"\n')
    env = {"SECURECHAT_CONFIG": str(config)}
    ok = run(["send", "127.0.0.1", "-m", "from the config"], tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    room.server.wait_event("message", **{"from": "alice", "text": "from the config"})
    env_wins = run(["send", "127.0.0.1", "-m", "x"], tmp_path, env={**env, "SECURECHAT_PORT": "1"})
    assert env_wins.returncode == 1 and "127.0.0.1:1: connection refused" in env_wins.stderr
    flag_wins = run(["send", "127.0.0.1", "-m", "flag wins", "--port", str(room.port)], tmp_path,
                    env={**env, "SECURECHAT_PORT": "1"})
    assert flag_wins.returncode == 0, flag_wins.stderr
    config.write_text("port = [oops\n")
    broken = run(["fingerprint"], tmp_path, env=env)
    assert broken.returncode == 1 and "not valid TOML" in broken.stderr and "Traceback" not in broken.stderr
    config.write_text('colour = "blue"\n')
    unknown = run(["fingerprint"], tmp_path, env=env)
    assert unknown.returncode == 1 and "unknown setting 'colour'" in unknown.stderr


def _read_until(fd: int, wanted: bytes, timeout: float = 20) -> bytes:
    """What a terminal showed, read until `wanted` appears (or the writer closes it)."""
    shown = b""
    deadline = time.monotonic() + timeout
    while wanted not in shown:
        assert time.monotonic() < deadline, shown
        if select.select([fd], [], [], 0.2)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                return shown
            if not data:
                return shown
            shown += data
    return shown


def test_one_shot_progress_on_a_terminal_and_ctrl_c_says_it_resumes(room, pki, tmp_path, raw_client):
    dave = raw_client(room.port, "dave")  # takes the offer and never accepts: the upload stays in flight
    dave.hello()
    room.server.wait_event("joined", name="dave")
    (tmp_path / "big.bin").write_bytes(os.urandom(100_000))
    controller, terminal = pty.openpty()
    sender = subprocess.Popen(securechat_command() + ["send", "127.0.0.1", "big.bin", "--to", "dave", "--port",
                                                      str(room.port), "--certs", str(pki), "--name", "alice"],
                              cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    try:
        shown = _read_until(controller, "↑ big.bin   0% of 100.0 KB".encode())
        sender.send_signal(signal.SIGINT)
        assert sender.wait(20) == 130
        shown += _read_until(controller, b"resumes where it stopped")
        assert b"error: stopped: big.bin not delivered; sending it again resumes where it stopped" in shown
        assert b"Type /help" not in sender.stdout.read()
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
        sender.stdout.close()
        os.close(controller)
