"""`join` and `send` as scripts use them (issue 11): end of input, exit status, addresses,
--json errors, and what the client believes about itself and its files.

A hand-written TLS server (FakeServer, written against docs/protocol.md) stands in for a
server that lies or relays what ours does not send yet; everything else talks to the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading

import pytest

from helpers.commands import securechat_command
from securechat.pki.tls import server_context
from securechat.wire import frames


def run(args, cwd, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(securechat_command() + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)


class FakeServer:
    """One TLS 1.3 connection with our server certificate: hello, a welcome we choose, then `script`."""

    def __init__(self, certs, welcome: frames.Welcome, script=None) -> None:
        self.context = server_context(certs)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.welcome, self.script = welcome, script
        self.got: list = []
        self.error: BaseException | None = None
        self._sock = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            raw.settimeout(20)
            self._sock = self.context.wrap_socket(raw, server_side=True)
            self.decoder = frames.FrameDecoder()
            assert isinstance(self.next_frame(), frames.Hello)
            self.send(frames.Hello(version=frames.PROTOCOL_VERSION, software="fake"))
            self.send(self.welcome)
            if self.script is not None:
                self.script(self)
            while self.next_frame() is not None:  # until the client closes
                pass
        except BaseException as exc:  # reported by the test through .error
            self.error = exc

    def send(self, message) -> None:
        self._sock.sendall(frames.encode(message))

    def next_frame(self):
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                self.got.append(frame)
                return frame
            try:
                data = self._sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self.decoder.feed(data)

    def close(self) -> None:
        self.listener.close()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self.thread.join(10)


@pytest.fixture
def fake_server(pki):
    made: list[FakeServer] = []

    def make(welcome: frames.Welcome, script=None) -> FakeServer:
        made.append(FakeServer(pki, welcome, script))
        return made[-1]

    yield make
    for server in made:
        server.close()


def join_args(port: int, pki, tmp_path, name: str = "alice", *extra: str) -> list[str]:
    return ["join", "127.0.0.1", "--port", str(port), "--certs", str(pki), "--name", name,
            "--downloads", str(tmp_path / f"{name}-dl"), "--json", *extra]


# ---------------------------------------------------------------- item 1: end of input


def test_end_of_input_finishes_the_file_asked_for_and_exits_0(room, tmp_path):
    bob = room.join("bob")
    data = os.urandom(400_000)
    (tmp_path / "x.bin").write_bytes(data)
    alice = room.start_client("alice")
    alice.send("/send x.bin")
    alice.close_stdin()  # what `printf '/send x.bin\n' | securechat join ...` does
    assert alice.wait_exit(60) == 0, "".join(alice.stderr_lines)
    digest = hashlib.sha256(data).hexdigest()
    assert bob.wait_event("file_received", name="x.bin")["sha256"] == digest
    assert room.server.wait_event("file_received", name="x.bin")["sha256"] == digest
    assert {e["to"] for e in alice.events if e.get("event") == "file_delivered"} == {"bob", "server"}
    assert alice.count("file_failed") == 0


def test_end_of_input_exits_1_when_a_file_asked_for_was_not_delivered(room, tmp_path):
    alice = room.start_client("alice")
    alice.send("/send nofile.bin")
    alice.close_stdin()
    assert alice.wait_exit(60) == 1
    last = alice.stderr_lines[-1]
    assert last.startswith("error: not delivered: nofile.bin") and "no such file" in last


def test_exit_waits_for_an_upload_says_so_and_ctrl_c_stops_it(room, tmp_path, raw_client, pki):
    dave = raw_client(room.port, "dave")  # receives the offer and never accepts: the upload waits
    dave.hello()
    room.server.wait_event("joined", name="dave")
    (tmp_path / "big.bin").write_bytes(os.urandom(100_000))
    alice = room.start_client("alice")
    alice.wait_event("connected")
    alice.send("/send @dave big.bin")
    alice.wait_event("file_sending", name="big.bin")
    alice.send("exit")
    waiting = alice.wait_event("waiting")
    assert "big.bin to reach dave (0 %)" in waiting["text"] and "resumes when you send it again" in waiting["text"]
    assert alice.popen.poll() is None  # still waiting, not gone
    alice.popen.send_signal(signal.SIGINT)
    assert alice.wait_exit(20) == 130
    failed = alice.wait_event("file_failed", name="big.bin")
    assert "resumes" in failed["reason"]


def test_first_ctrl_c_leaves_like_exit_and_the_second_stops_the_upload(room, tmp_path, raw_client):
    dave = raw_client(room.port, "dave")
    dave.hello()
    room.server.wait_event("joined", name="dave")
    (tmp_path / "big.bin").write_bytes(os.urandom(100_000))
    alice = room.start_client("alice")
    alice.wait_event("connected")
    alice.send("/send @dave big.bin")
    alice.wait_event("file_sending", name="big.bin")
    alice.popen.send_signal(signal.SIGINT)
    waiting = alice.wait_event("waiting")
    assert waiting["text"] == ("waiting for big.bin to reach dave (0 %); "
                               "Ctrl-C again to stop it, it resumes when you send it again")
    alice.popen.send_signal(signal.SIGINT)
    assert alice.wait_exit(20) == 130
    assert alice.count("file_failed", name="big.bin") == 1


# ---------------------------------------------------------------- item 9: who we are


def test_join_refuses_a_server_that_renames_it(fake_server, pki, tmp_path, procs):
    server = fake_server(frames.Welcome(you="mallory", server="server", members=["mallory", "server"]))
    alice = procs(join_args(server.port, pki, tmp_path), tmp_path)
    assert alice.wait_exit(20) != 0
    assert alice.count("connected") == 0
    errors = [e for e in alice.events if e.get("event") == "error"]
    assert errors[-1]["message"].endswith("protocol error: the server calls us 'mallory', "
                                          "but our certificate says 'alice'")


def test_connected_names_who_is_here_and_never_ourselves(room, tmp_path):
    room.join("bob")
    alice = room.start_client("alice")
    connected = alice.wait_event("connected")
    assert connected["name"] == "alice"
    assert connected["members"] == ["bob", "server"]
    human = run(["send", "127.0.0.1", "-m", "hi", "--port", str(room.port), "--certs", str(room.certs),
                 "--name", "carol"], tmp_path)
    assert human.returncode == 0, human.stderr
    assert "Here: alice, bob, server." in human.stdout
    assert "/help" not in human.stdout  # no chat hints in one-shot mode
    assert human.stderr == ""  # not a terminal: nothing extra


# ---------------------------------------------------------------- item 19: private files


def test_a_file_relayed_to_us_alone_is_marked_private(fake_server, pki, tmp_path, procs):
    data = b"for alice only\n" * 100
    digest = hashlib.sha256(data).hexdigest()

    def offer_privately(server: FakeServer) -> None:
        server.send(frames.Offer(id=7, name="note.txt", size=len(data), sha256=digest, to="alice", sender="bob"))
        while not isinstance(frame := server.next_frame(), frames.Accept):
            assert frame is not None
        server._sock.sendall(frames.encode_chunk(7, data))
        server.send(frames.End(id=7, sha256=digest))

    server = fake_server(frames.Welcome(you="alice", server="server", members=["bob", "server"]), offer_privately)
    alice = procs(join_args(server.port, pki, tmp_path), tmp_path)
    incoming = alice.wait_event("file_incoming", name="note.txt")
    received = alice.wait_event("file_received", name="note.txt")
    assert incoming["to"] == "alice" and received["to"] == "alice" and received["sha256"] == digest


# ---------------------------------------------------------------- item 16: --json errors


def test_json_start_up_errors_are_events_on_stdout(tmp_path, pki):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    result = run(join_args(port, pki, tmp_path), tmp_path)
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["error"]
    assert "connection refused" in events[0]["message"]
    missing = run(["send", "127.0.0.1", "-m", "x", "--port", str(port), "--certs", str(pki), "--name", "zed",
                   "--json"], tmp_path)
    assert missing.returncode == 1
    assert json.loads(missing.stdout.splitlines()[-1])["event"] == "error"


# ---------------------------------------------------------------- item 17: addresses


def test_host_colon_port_as_the_server_prints_it(room, pki, tmp_path):
    ok = run(["send", f"127.0.0.1:{room.port}", "-m", "by address", "--certs", str(pki), "--name", "alice"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    room.server.wait_event("message", text="by address")
    both = run(["send", f"127.0.0.1:{room.port}", "-m", "x", "--port", "1", "--certs", str(pki), "--name", "alice"],
               tmp_path)
    assert both.returncode == 1 and "two ports" in both.stderr


@pytest.mark.parametrize("address, port, expected", [
    ("127.0.0.1", "99999", "port 99999 is out of range"),
    ("127.0.0.1:0", None, "port 0 is out of range"),
    ("[::1", None, "is not like [IPv6]:PORT"),
    ("127.0.0.1:http", None, "is not a number"),
])
def test_bad_addresses_are_usage_errors(pki, tmp_path, address, port, expected):
    args = ["join", address, "--certs", str(pki), "--name", "alice"] + (["--port", port] if port else [])
    result = run(args, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and expected in result.stderr
    assert "refused" not in result.stderr and "Traceback" not in result.stderr


def test_ipv6_address_with_port_reaches_the_connect_step(pki, tmp_path):
    # ::1 is parsed out of the brackets: the error names it, with the port from the address.
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    result = run(["send", f"[::1]:{port}", "-m", "x", "--certs", str(pki), "--name", "alice"], tmp_path)
    assert result.returncode == 1
    assert f"[::1]:{port}" in result.stderr and "not like" not in result.stderr


def test_version_and_short_help(tmp_path):
    from securechat import __version__

    version = run(["--version"], tmp_path)
    assert version.returncode == 0 and __version__ in version.stdout
    short = run(["join", "-h"], tmp_path)
    assert short.returncode == 0 and "--max-file-size" in short.stdout


def test_help_shows_host_and_the_images_extra(tmp_path):
    shown = run(["join", "--help"], tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0
    assert "Usage: securechat join [OPTIONS] HOST" in shown.stdout and "{" not in shown.stdout
    assert "securechat[images]" in shown.stdout


# ---------------------------------------------------------------- item 19: small texts


def test_verify_a_missing_file_says_so(tmp_path):
    result = run(["verify", "nosuchfile"], tmp_path)
    assert result.returncode == 1
    assert "nosuchfile: no such file" in result.stdout and "not recorded" not in result.stdout


def test_config_type_error_reads_well(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('port = "7443"\n')
    result = run(["fingerprint"], tmp_path, env={**os.environ, "SECURECHAT_CONFIG": str(config)})
    assert result.returncode == 1
    assert "port must be a whole number, not '7443'" in result.stderr and "a int" not in result.stderr



# ---------------------------------------------------------------- item 15: size limit on the whole file


def test_size_limit_counts_the_whole_file_not_what_is_left(tmp_path):
    from securechat.errors import TransferError
    from securechat.files.transfer import Downloads, IncomingFile

    downloads = Downloads(tmp_path / "dl")
    size, kept = 1_000_000, b"\0" * 600_000
    digest = hashlib.sha256(b"\0" * size).hexdigest()
    partial = downloads.partials.open("bob", "big.bin", size, digest)
    os.write(partial.fd, kept)
    partial.checkpoint(len(kept), hashlib.sha256(kept).hexdigest())
    partial.release()
    downloads.max_file_size = 500_000  # more than the 400 kB still to come, less than the file
    try:
        with pytest.raises(TransferError) as refused:
            IncomingFile(downloads, "big.bin", size, digest, "bob", lambda offset, note: None)
        assert str(refused.value) == "file of 1.0 MB exceeds the limit of 500.0 KB"
    finally:
        downloads.close()
