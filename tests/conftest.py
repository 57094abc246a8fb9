"""Shared fixtures: a PKI made by our own code, and the installed command in subprocesses.

No process outlives its test: see tests/processes.py, whose fixture and hooks are
imported below so that they apply to every test.
"""

from __future__ import annotations

import hashlib
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
from collections import deque
from pathlib import Path

import pytest

from securechat import frames
from securechat.certs import generate
from securechat.partials import PARTIAL_DIR
from securechat.tls import ClientFiles, client_context

from processes import no_process_left_behind, pytest_configure, pytest_sessionfinish  # noqa: F401  (applied here)

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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def partial_files(folder: Path) -> list[Path]:
    """The .part files in a downloads folder's hidden partial area."""
    return sorted((folder / PARTIAL_DIR).glob("*.part")) if (folder / PARTIAL_DIR).is_dir() else []


def files_in(folder: Path) -> list[str]:
    """Every file under `folder` (the partial area included), as relative paths; folders are not listed."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def wait_for_temp_file(folder: Path, timeout: float = 20, at_least: int = 1) -> Path:
    """Until a transfer into `folder` has written `at_least` bytes into its partial file; that file."""
    deadline = time.monotonic() + timeout
    while True:
        for part in partial_files(folder):
            try:
                if part.stat().st_size >= at_least:
                    return part
            except FileNotFoundError:
                pass
        assert time.monotonic() < deadline, f"no transfer into {folder} reached {at_least} bytes"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(stream):
    """The stream's lines until EOF, or until stop() closes it under the reading thread."""
    try:
        yield from stream
    except (ValueError, OSError):
        return


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
        self._pumps = [threading.Thread(target=self._pump_stdout, daemon=True),
                       threading.Thread(target=self._pump_stderr, daemon=True)]
        for pump in self._pumps:
            pump.start()

    def _pump_stdout(self) -> None:
        for raw in _lines(self.popen.stdout):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "_text", "line": line}
            self.events.append(event)
            self._queue.put(event)

    def _pump_stderr(self) -> None:
        for raw in _lines(self.popen.stderr):
            self.stderr_lines.append(raw.decode("utf-8", "replace"))

    def send(self, line: str) -> None:
        self.popen.stdin.write((line + "\n").encode("utf-8"))
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        try:
            self.popen.stdin.close()
        except BrokenPipeError:
            pass

    def mark(self) -> int:
        """A point in the event stream, for wait_event(after=...)."""
        return len(self.events)

    def wait_event(self, event_name: str, timeout: float = EVENT_TIMEOUT, after: int = 0, **match) -> dict:
        """The first event called `event_name` whose fields include `match` (seen before or arriving),
        among the events since `after` (a mark())."""
        deadline = time.monotonic() + timeout
        seen = after
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
        """Its exit status, once it has exited and everything it printed is in events/stderr_lines."""
        status = self.popen.wait(timeout)
        for pump in self._pumps:
            pump.join(5)  # the pipes are at EOF unless something it started still holds them
        return status

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
    # Told all at once, so they stop in parallel; one failure to stop does not spare the others.
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    failures = []
    for proc in reversed(started):
        try:
            proc.stop()
        except BaseException as exc:  # pytest-timeout's, too: the rest must still be stopped
            proc.popen.kill()
            failures.append(exc)
    if failures:
        raise failures[0]


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


@pytest.fixture
def cutting_proxy():
    made: list[CuttingProxy] = []

    def make(target_port: int) -> CuttingProxy:
        made.append(CuttingProxy(target_port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


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
