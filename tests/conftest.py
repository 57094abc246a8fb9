"""The shared fixtures: a PKI made by our own code, the installed command in subprocesses, a room.

What tests share that is not a fixture lives in tests/helpers/ (see its __init__); no
process outlives its test: see helpers/processes.py, whose fixture and hooks are imported
below so that they apply to every test.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helpers.commands import Proc
from helpers.network import CuttingProxy, RawClient, Room
from helpers.processes import no_process_left_behind, pytest_configure, pytest_sessionfinish  # noqa: F401  (applied here)
from securechat.files.transfer import Downloads
from securechat.pki.certs import generate
from securechat.pki.tls import ClientFiles

# tests/test_room.py (being rewritten with the pure room) still imports these from here.


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


@pytest.fixture
def make_room(pki, procs, tmp_path):
    def make(*server_args: str, certs: Path | None = None, **server_kwargs) -> Room:
        return Room(procs, certs or pki, tmp_path, server_args, **server_kwargs)

    return make


@pytest.fixture
def room(make_room) -> Room:
    return make_room()


@pytest.fixture
def cutting_proxy():
    made: list[CuttingProxy] = []

    def make(target_port: int) -> CuttingProxy:
        made.append(CuttingProxy(target_port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


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


@pytest.fixture
def downloads(tmp_path):
    d = Downloads(tmp_path / "dl")
    yield d
    d.close()
