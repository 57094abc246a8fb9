"""Issue 11 item 18: each failure's one line tells the person at *this* machine what they can do.

A client cannot issue certificates; only the CA key's holder (the server's
operator) can. Every case runs the installed command and checks the single
stderr line and the exit status.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.commands import run
from securechat.pki.certs import CertsLayout


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def client_machine(pki, tmp_path) -> Path:
    """What a client is given: ca.pem and its own certificate and key, no CA key."""
    layout, folder = CertsLayout(pki), tmp_path / "certs"
    (folder / "clients").mkdir(parents=True)
    shutil.copy(layout.ca_cert, folder / "ca.pem")
    for name in ("alice", "bob"):
        shutil.copy(layout.client_cert(name), folder / "clients" / f"{name}.pem")
        shutil.copy(layout.client_key(name), folder / "clients" / f"{name}.key")
    return folder


def test_join_with_a_name_that_has_no_certificate_lists_the_names_and_names_the_operator(client_machine, tmp_path):
    line = one_error_line(run(["join", "127.0.0.1", "--port", "9", "--certs", str(client_machine), "--name", "dave"],
                              tmp_path))
    assert "alice, bob" in line
    assert "server's operator" in line and "gen-certs --client dave" in line
    assert "create it with" not in line


def test_gen_certs_on_a_client_machine_says_there_is_no_ca_key_here(client_machine, tmp_path):
    before = sorted(p.name for p in client_machine.rglob("*"))
    line = one_error_line(run(["gen-certs", "--out", str(client_machine), "--client", "carol"], tmp_path))
    assert "holds no CA key" in line and "server's operator" in line
    assert "create it with" not in line
    assert sorted(p.name for p in client_machine.rglob("*")) == before  # nothing made, no CRL either


def test_revoke_on_a_client_machine_says_there_is_no_ca_key_here(client_machine, tmp_path):
    line = one_error_line(run(["revoke", "bob", "--certs", str(client_machine)], tmp_path))
    assert "holds no CA key" in line


@pytest.mark.timeout(60)
def test_host_name_mismatch_says_the_operator_must_reissue_it(pki, procs, tmp_path):
    server = procs(["serve", "--host", "127.0.0.2", "--port", "0", "--certs", str(pki), "--json",
                    "--downloads", str(tmp_path / "dl")], tmp_path)
    port = server.wait_event("listening")["port"]
    done = run(["join", "127.0.0.2", "--port", str(port), "--certs", str(pki), "--name", "alice", "--json"], tmp_path)
    line = one_error_line(done)
    assert "server's operator must reissue it" in line
    assert "gen-certs --server-name 127.0.0.2 --force" in line
    assert '"reconnecting"' not in done.stdout


def test_the_server_certificate_used_as_a_client_one_names_the_file(room, pki, tmp_path):
    layout = CertsLayout(pki)
    line = one_error_line(run(["join", "127.0.0.1", "--port", str(room.port), "--certs", str(pki), "--cert",
                               str(layout.server_cert), "--key", str(layout.server_key)], tmp_path))
    assert str(layout.server_cert) in line
    assert "not a client certificate" in line and "clients/NAME.pem" in line
    assert "SSLV3_ALERT" not in line
