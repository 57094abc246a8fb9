"""`securechat send` and `fingerprint` for scripts, and the defaults from env and config."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

from conftest import securechat_command


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


def test_send_fails_loudly_when_nobody_gets_it(room, pki, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x")
    result = run(["send", "127.0.0.1", "x.bin", "--to", "nobody", "--port", str(room.port), "--certs", str(pki),
                  "--name", "alice"], tmp_path)
    assert result.returncode == 1
    assert "not delivered: x.bin" in result.stderr and len(result.stderr.strip().splitlines()) == 1


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
