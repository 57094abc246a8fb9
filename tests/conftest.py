"""Shared fixtures: a PKI made by our own code, and the installed command in subprocesses."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from securechat import frames
from securechat.certs import generate
from securechat.tls import ClientFiles, client_context

EVENT_TIMEOUT = 20.0


def securechat_command() -> list[str]:
    """The installed console script (next to this interpreter), as a user would run it."""
    script = Path(sys.executable).parent / "securechat"
    if script.exists():
        return [str(script)]
    found = shutil.which("securechat")
    if found is None:
        pytest.fail("the securechat command is not installed; run: pip install '.[test]'")
    return [found]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    certs = tmp_path_factory.mktemp("pki") / "certs"
    generate(certs, ["alice", "bob", "carol", "dave"], [])
    return certs


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory) -> Path:
    """A second, unrelated CA: its certificates must be refused everywhere."""
    certs = tmp_path_factory.mktemp("other-pki") / "certs"
    generate(certs, ["alice"], [])
    return certs


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` zero bytes that costs no disk: instant to make, seconds to send."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def wait_for_temp_file(folder: Path, timeout: float = 20) -> None:
    """Until a transfer into `folder` has started (its hidden temp file exists)."""
    deadline = time.monotonic() + timeout
    while not (folder.exists() and any(n.startswith(".securechat-") for n in os.listdir(folder))):
        assert time.monotonic() < deadline, f"no transfer started into {folder}"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A securechat subprocess whose stdout --json events are collected by a thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None, **popen_kwargs) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            securechat_command() + args,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            **popen_kwargs,
        )
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "_text", "line": line}
            self.events.append(event)
            self._queue.put(event)

    def _pump_stderr(self) -> None:
        for raw in self.popen.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace"))

    def send(self, line: str) -> None:
        self.popen.stdin.write((line + "\n").encode("utf-8"))
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        try:
            self.popen.stdin.close()
        except BrokenPipeError:
            pass

    def wait_event(self, event_name: str, timeout: float = EVENT_TIMEOUT, **match) -> dict:
        """The first event called `event_name` whose fields include `match` (seen before or arriving)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                seen += 1
                if event.get("event") == event_name and all(event.get(k) == v for k, v in match.items()):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {event_name} {match} within {timeout} s from {self.args[:1]}; events: {self.events[-15:]}; "
                    f"stderr: {''.join(self.stderr_lines)[-2000:]}"
                )
            try:
                self._queue.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                pass

    def count(self, event_name: str, **match) -> int:
        return sum(1 for e in self.events if e.get("event") == event_name and all(e.get(k) == v for k, v in match.items()))

    def wait_exit(self, timeout: float = EVENT_TIMEOUT) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                stream.close()
            except OSError:
                pass


@pytest.fixture
def procs():
    """Start securechat processes; every one is stopped when the test ends."""
    started: list[Proc] = []

    def start(args: list[str], cwd: Path, **kwargs) -> Proc:
        proc = Proc(args, cwd, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


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


@pytest.fixture
def make_room(pki, procs, tmp_path):
    def make(*server_args: str, certs: Path | None = None, **server_kwargs) -> Room:
        return Room(procs, certs or pki, tmp_path, server_args, **server_kwargs)

    return make


@pytest.fixture
def room(make_room) -> Room:
    return make_room()


class RawClient:
    """A client written against docs/protocol.md only: real TLS, hand-made frames."""

    def __init__(self, port: int, files: ClientFiles, host: str = "127.0.0.1") -> None:
        context = client_context(files)
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.decoder = frames.FrameDecoder()

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: frames.Message) -> None:
        self.sock.sendall(frames.encode(message))

    def hello(self) -> frames.Welcome:
        self.send(frames.Hello(version=frames.PROTOCOL_VERSION, software="raw-test"))
        assert isinstance(self.next_frame(), frames.Hello)
        welcome = self.next_frame()
        assert isinstance(welcome, frames.Welcome)
        return welcome

    def next_frame(self, timeout: float = 10.0):
        """The next frame, or None at EOF."""
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
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.next_frame(deadline - time.monotonic())
            if frame is None:
                return got
            got.append(frame)
        raise AssertionError(f"connection still open after {timeout} s; got {got}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client(pki):
    opened: list[RawClient] = []

    def connect(port: int, name: str = "dave", certs: Path | None = None) -> RawClient:
        client = RawClient(port, ClientFiles.from_certs_dir(certs or pki, name))
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()
