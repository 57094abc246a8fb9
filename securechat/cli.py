"""The `securechat` command: gen-certs, serve, join, verify.

Every command catches SecureChatError once and prints one line on stderr
with a non-zero exit; anything a user can cause ends that way, never in a
traceback.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import __version__
from .certfiles import DEFAULT_DAYS, PASSPHRASE_ENV, CertsLayout, key_is_encrypted
from .checksums import verify_paths
from .client import Client
from .commands import Command, Quit, read_commands
from .console import Console, visible
from .errors import SecureChatError, UsageError
from .server import Server
from .tls import ClientFiles
from .transfer import Downloads, parse_size

DEFAULT_PORT = 7443

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Private chat and SHA-256 verified file exchange over mutual TLS 1.3.",
)


def _fail(message: str, code: int = 1) -> None:
    sys.stderr.write(f"error: {visible(message)}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def friendly(command: Callable) -> Callable:
    """One clear line and exit 1 for our errors; 130 for Ctrl-C."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SecureChatError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(130)

    return wrapper


def _stdin_lines(fd: int = 0, limit: int = 1024 * 1024):
    """Lines typed or piped in, read with os.read on the raw descriptor.

    Not sys.stdin: a daemon thread blocked inside its buffered reader holds
    the buffer's lock, and CPython aborts (SIGABRT) if the process exits then.
    Invalid UTF-8 is replaced rather than ending the session; a line longer
    than `limit` is passed on cut, and commands.parse refuses it as too long.
    """
    pending = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            if pending:
                yield pending.decode("utf-8", "replace")
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
        if len(pending) > limit:
            yield pending.decode("utf-8", "replace")
            pending = b""


def _prepare_stdout() -> None:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace", line_buffering=True)


def _ca_passphrase(layout: CertsLayout, creating: bool) -> bytes | None:
    """The CA key's passphrase: from the environment or a prompt, never from argv."""
    if not creating and not key_is_encrypted(layout.ca_key):
        return None
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env.encode("utf-8")
    if not sys.stdin.isatty():
        raise UsageError(f"the CA key passphrase is needed: set {PASSPHRASE_ENV} (stdin is not a terminal to ask on)")
    import getpass

    first = getpass.getpass("CA key passphrase: ")
    if creating and getpass.getpass("again: ") != first:
        raise UsageError("the passphrases differ; nothing was created")
    if not first:
        raise UsageError("an empty passphrase protects nothing")
    return first.encode("utf-8")


@app.command("gen-certs")
@friendly
def gen_certs(
    out: Path = typer.Option(Path("certs"), "--out", help="Folder for the CA, server and client files."),
    client: List[str] = typer.Option([], "--client", help="Issue a client certificate for NAME (repeatable)."),
    server_name: List[str] = typer.Option([], "--server-name", help="Extra DNS name or IP for the server certificate (repeatable)."),
    days: int = typer.Option(DEFAULT_DAYS, "--days", help="Validity of the server and client certificates."),
    force: bool = typer.Option(False, "--force", help="Reissue the server and named client certificates."),
    protect_ca: bool = typer.Option(False, "--protect-ca", help=f"Encrypt a new CA key with a passphrase (from {PASSPHRASE_ENV} or asked)."),
) -> None:
    """Create a private CA, a server certificate and client certificates."""
    _prepare_stdout()
    layout = CertsLayout(out)
    creating_ca = not layout.ca_key.exists()
    if protect_ca and not creating_ca and not key_is_encrypted(layout.ca_key):
        raise UsageError(f"{layout.ca_key} exists unprotected; --protect-ca only applies to a new CA")
    passphrase = _ca_passphrase(layout, creating=creating_ca and protect_ca)
    from .certs import generate  # cryptography: only the commands that make certificates load it

    report = generate(out, client, server_name, days, force, passphrase)
    for item in report:
        status = "created" if item.created else "kept   "
        print(f"{status} {item.role:<16} {item.subject:<24} expires {item.not_after:%Y-%m-%d}  {item.cert_path}")
        print(f"        SHA-256 {item.fingerprint}")
    if server_name and not any(i.role == "server" and i.created for i in report):
        print("note: the existing server certificate was kept; add --force to reissue it with the new names")
    ca = out / "ca.pem"
    for item in report:
        if item.role.startswith("client "):
            name = item.role.removeprefix("client ")
            print(f"give {name}: {ca}, {item.cert_path}, {item.key_path} (keep the same layout in their certs folder)")
    print(f"keep {out / 'ca.key'} on this machine only; the server uses {out / 'server.pem'} and {out / 'server.key'}")


@app.command()
@friendly
def revoke(
    name: str = typer.Argument(..., help="The client to revoke (its certificate in CERTS/clients/NAME.pem)."),
    certs: Path = typer.Option(Path("certs"), "--certs", help="Folder made by gen-certs (with ca.key)."),
) -> None:
    """Revoke a client certificate: a running server refuses it from its next connection."""
    _prepare_stdout()
    layout = CertsLayout(certs)
    if not layout.client_cert(name).exists():
        known = ", ".join(layout.client_names()) or "none"
        raise UsageError(f"no client certificate {layout.client_cert(name)} (clients here: {known})")
    from .revocation import revoke as revoke_client

    serial, already = revoke_client(certs, name, _ca_passphrase(layout, creating=False))
    if already:
        print(f"{name} (serial {serial:x}) was revoked already")
    else:
        print(f"revoked {name} (serial {serial:x}) in {layout.crl}; servers using {certs} refuse it from now on")


@app.command()
@friendly
def serve(
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on; 0 picks a free one."),
    certs: Path = typer.Option(Path("certs"), "--certs", help="Folder made by gen-certs."),
    downloads: Path = typer.Option(Path("downloads"), "--downloads", help="Where received files are saved."),
    max_file_size: Optional[str] = typer.Option(None, "--max-file-size", help="Refuse received files larger than this (e.g. 2GiB)."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line for every event."),
) -> None:
    """Run the TLS 1.3 room; the operator at this terminal chats and sends files too."""
    _prepare_stdout()
    console = Console(json_output)
    limit = parse_size(max_file_size) if max_file_size else None
    server = Server(certs, host, port, Downloads(downloads, limit), console)
    bound_host, bound_port = server.bind()
    console.event("listening", host=bound_host, port=bound_port, name=server.operator.name)
    server.start()

    stop = threading.Event()
    wait_for_transfers = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def operator_input() -> None:
        def handle(command: Command) -> bool:
            if isinstance(command, Quit):
                wait_for_transfers.set()
                stop.set()
                return False
            return server.operator.handle(command)

        read_commands(_stdin_lines(), handle, console.error)
        # End of input without exit: keep serving, headless.

    threading.Thread(target=operator_input, name="operator-input", daemon=True).start()
    while not stop.wait(0.5):
        pass
    server.shutdown(wait_for_transfers=wait_for_transfers.is_set())


@app.command()
@friendly
def join(
    host: str = typer.Argument(..., help="Server host name or IP address (must be in its certificate)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Server port."),
    certs: Path = typer.Option(Path("certs"), "--certs", help="Folder holding ca.pem and clients/NAME.pem/.key."),
    name: Optional[str] = typer.Option(None, "--name", help="Which client certificate to use (clients/NAME.pem)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="Client certificate file (overrides --certs/--name)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Client private key file (with --cert)."),
    ca: Optional[Path] = typer.Option(None, "--ca", help="CA certificate file (overrides --certs)."),
    downloads: Path = typer.Option(Path("downloads"), "--downloads", help="Where received files are saved."),
    max_file_size: Optional[str] = typer.Option(None, "--max-file-size", help="Refuse received files larger than this (e.g. 2GiB)."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line for every event."),
) -> None:
    """Join a securechat server as one of its clients."""
    _prepare_stdout()
    if (cert is None) != (key is None):
        raise UsageError("give --cert and --key together")
    if cert is not None and key is not None:
        files = ClientFiles(ca or certs / "ca.pem", cert, key)
    else:
        files = ClientFiles.from_certs_dir(certs, name)
        if ca is not None:
            files = ClientFiles(ca, files.cert, files.key)
    console = Console(json_output)
    limit = parse_size(max_file_size) if max_file_size else None
    client = Client(host, port, files, Downloads(downloads, limit), console)
    client.connect()
    assert client.conn is not None

    done = threading.Event()

    def person_input() -> None:
        read_commands(_stdin_lines(), client.handle, console.error)
        done.set()  # exit, /quit and end of input all leave gracefully

    threading.Thread(target=person_input, name="input", daemon=True).start()
    while not done.wait(0.1):
        if client.conn.finished.is_set():
            break
    if not client.conn.finished.is_set():
        client.leave()
        return
    if not client.ended_cleanly:
        _fail(f"connection to {host}:{port} lost: {client.end_reason}")


@app.command()
@friendly
def verify(
    paths: List[Path] = typer.Argument(..., help="Received files (or a downloads folder) to check."),
    downloads: Optional[Path] = typer.Option(None, "--downloads", help="Folder whose SHA256SUMS to check against (default: each file's own folder)."),
) -> None:
    """Re-check received files against the SHA-256 recorded when they arrived."""
    _prepare_stdout()
    outcomes = verify_paths(paths, downloads)
    for outcome in outcomes:
        print(f"{'OK  ' if outcome.ok else 'FAIL'} {visible(str(outcome.path))}: {outcome.detail}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    app()
