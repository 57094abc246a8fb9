"""The `securechat` command: gen-certs, revoke, serve, join, send, fingerprint, verify.

Every command catches SecureChatError once and prints one line on stderr
with a non-zero exit; anything a user can cause ends that way, never in a
traceback.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer
from typer.core import TyperCommand

from securechat import __version__
from securechat.errors import SecureChatError, UsageError
from securechat.files.checksums import verify_paths
from securechat.files.transfer import Downloads, parse_size
from securechat.member.client import Client
from securechat.member.oneshot import ProgressLine, split_address, wait_for_recipient
from securechat.member.outgoing import RESUME_WAIT
from securechat.pki.certfiles import (
    DEFAULT_DAYS,
    PASSPHRASE_ENV,
    CertsLayout,
    certificate_fingerprint,
    common_name,
    key_is_encrypted,
)
from securechat.pki.tls import ClientFiles
from securechat.server.admitting import LOGIN_GRACE
from securechat.server.serve import Server
from securechat.ui.commands import Command, PrivateMessage, Quit, Say, parse, read_commands, stdin_lines
from securechat.ui.config import default_map
from securechat.ui.console import Console, describe_undelivered, visible

DEFAULT_PORT = 7443
DEFAULT_WAIT = 600  # seconds `send --to NAME` waits for NAME to join, like croc or wormhole

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Private chat and SHA-256 verified file exchange over mutual TLS 1.3.",
)


class _Command(TyperCommand):
    """Usage lines as people write them: `join [OPTIONS] HOST`, not typer's `{HOST}`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [re.sub(r"^\{(.*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


# Options shared by several commands, declared once. Environment variables
# and the config file (config.py) supply defaults; a flag always wins.
CERTS = typer.Option(Path("certs"), "--certs", envvar="SECURECHAT_CERTS", help="Folder made by gen-certs.")
DOWNLOADS = typer.Option(Path("downloads"), "--downloads", envvar="SECURECHAT_DOWNLOADS", help="Where received files are saved.")
MAX_FILE_SIZE = typer.Option(None, "--max-file-size", help="Refuse received files larger than this (e.g. 2GiB).")
JSON_OUTPUT = typer.Option(False, "--json", help="One JSON object per line for every event.")
PREVIEW = typer.Option(False, "--preview", help="Draw received images in the terminal (needs securechat\\[images]).")
OPEN_IMAGES = typer.Option(False, "--open", help="Open received images with the system viewer.")
NO_RECONNECT = typer.Option(False, "--no-reconnect",
                            help="When the connection drops, stop instead of reconnecting and resuming transfers.")
SERVER_PORT = typer.Option(DEFAULT_PORT, "--port", envvar="SECURECHAT_PORT", help="Server port.")
HOST = typer.Argument(..., metavar="HOST", show_default=False,
                      help="Server host name or IP address (must be in its certificate), or HOST:PORT, [IPv6]:PORT.")
NAME = typer.Option(None, "--name", help="Which client certificate to use (CERTS/clients/NAME.pem).")
CERT = typer.Option(None, "--cert", help="Client certificate file (overrides --certs/--name).")
KEY = typer.Option(None, "--key", help="Client private key file (with --cert).")
CA = typer.Option(None, "--ca", help="CA certificate file (overrides --certs).")


def _show_version(value: bool) -> None:
    if value:
        print(f"securechat {__version__}")
        raise typer.Exit()


@app.callback()
def _load_config(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Private chat and SHA-256 verified file exchange over mutual TLS 1.3."""
    try:
        ctx.default_map = {**default_map(), **(ctx.default_map or {})}
    except SecureChatError as exc:
        _fail(str(exc), json_output="--json" in sys.argv[2:])


def _fail(message: str, code: int = 1, json_output: bool = False) -> None:
    """One line on stderr; with --json also an `error` event on stdout, where a script reads."""
    if json_output:
        event = {"event": "error", "time": round(time.time(), 3), "message": message}
        try:
            sys.stdout.write(json.dumps(event, ensure_ascii=True) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass
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
            _fail(str(exc), json_output=bool(kwargs.get("json_output")))
        except KeyboardInterrupt:
            raise typer.Exit(130)

    return wrapper


def _address(ctx: typer.Context, host: str, port: int) -> tuple[str, int]:
    # By name: typer ships its own click, whose module path differs between versions.
    from_flag = getattr(ctx.get_parameter_source("port"), "name", "") == "COMMANDLINE"
    return split_address(host, port, port_from_flag=from_flag)


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


@app.command("gen-certs", cls=_Command)
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
    from securechat.pki.certs import generate  # cryptography: only the commands that make certificates load it

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


@app.command(cls=_Command)
@friendly
def revoke(
    name: str = typer.Argument(..., metavar="NAME", help="The client to revoke (its certificate in CERTS/clients/NAME.pem)."),
    certs: Path = CERTS,
) -> None:
    """Revoke a client certificate: a running server refuses it from its next connection."""
    _prepare_stdout()
    layout = CertsLayout(certs)
    if not layout.client_cert(name).exists():
        known = ", ".join(layout.client_names()) or "none"
        raise UsageError(f"no client certificate {layout.client_cert(name)} (clients here: {known})")
    from securechat.server.revocation import revoke as revoke_client

    serial, already = revoke_client(certs, name, _ca_passphrase(layout, creating=False))
    if already:
        print(f"{name} (serial {serial:x}) was revoked already")
    else:
        print(f"revoked {name} (serial {serial:x}) in {layout.crl}; servers using {certs} refuse it from now on")


@app.command(cls=_Command)
@friendly
def serve(
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, "--port", envvar="SECURECHAT_PORT", help="Port to listen on; 0 picks a free one."),
    certs: Path = CERTS,
    downloads: Path = DOWNLOADS,
    max_file_size: Optional[str] = MAX_FILE_SIZE,
    json_output: bool = JSON_OUTPUT,
    preview: bool = PREVIEW,
    open_images: bool = OPEN_IMAGES,
    login_grace: float = typer.Option(LOGIN_GRACE, "--login-grace", metavar="SECONDS",
                                      help="Time a new connection has for its TLS handshake, and again for its hello."),
) -> None:
    """Run the TLS 1.3 room; the operator at this terminal chats and sends files too."""
    _prepare_stdout()
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is out of range (0 to 65535; 0 picks a free one)")
    if not 0.5 <= login_grace <= 600:
        raise UsageError(f"--login-grace {login_grace:g} is out of range: give 0.5 to 600 seconds")
    interactive = _is_terminal() and not json_output
    console = _make_console(json_output, interactive, preview, open_images)
    limit = parse_size(max_file_size) if max_file_size else None
    server = Server(certs, host, port, Downloads(downloads, limit), console, login_grace=login_grace)
    bound_host, bound_port = server.bind()
    console.event("listening", host=bound_host, port=bound_port, name=server.operator.name)
    server.start()

    stop = threading.Event()
    wait_for_transfers = threading.Event()
    prompt = _make_prompt([(server.operator.incoming, server.operator.outgoing)]) if interactive else None

    def on_signal(signum, frame) -> None:
        stop.set()
        if prompt is not None:
            prompt.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def handle(command: Command) -> bool:
        if isinstance(command, Quit):
            wait_for_transfers.set()
            stop.set()
            return False
        return server.operator.handle(command)

    if prompt is not None:
        _prompt_commands(prompt, handle, console)  # Ctrl-D: keep serving, headless
    else:
        # End of input without exit: keep serving, headless.
        threading.Thread(target=read_commands, args=(stdin_lines(), handle, console.error),
                         name="operator-input", daemon=True).start()
    while not stop.wait(0.5):
        pass
    server.shutdown(wait_for_transfers=wait_for_transfers.is_set())


def _is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _make_console(json_output: bool, interactive: bool, preview: bool, open_images: bool) -> Console:
    if preview:
        from securechat.ui.preview import require_pillow

        require_pillow()
    if interactive:
        from securechat.ui.interactive import InteractiveConsole  # prompt_toolkit and rich: only for a person

        return InteractiveConsole(preview=preview, open_images=open_images)
    return Console(json_output, preview=preview, open_images=open_images)


def _prompt_commands(prompt, handle: Callable[[Command], bool], console: Console) -> None:
    lines = prompt.lines()
    try:
        read_commands(lines, handle, console.error)
    finally:
        lines.close()  # leaves patch_stdout now, not whenever the generator is collected


def _make_prompt(participants):
    from securechat.ui.interactive import Prompt, progress_rows

    return Prompt([progress_rows(incoming, outgoing) for incoming, outgoing in participants])


@app.command(cls=_Command)
@friendly
def join(
    ctx: typer.Context,
    host: str = HOST,
    port: int = SERVER_PORT,
    certs: Path = CERTS,
    name: Optional[str] = NAME,
    cert: Optional[Path] = CERT,
    key: Optional[Path] = KEY,
    ca: Optional[Path] = CA,
    downloads: Path = DOWNLOADS,
    max_file_size: Optional[str] = MAX_FILE_SIZE,
    json_output: bool = JSON_OUTPUT,
    preview: bool = PREVIEW,
    open_images: bool = OPEN_IMAGES,
    no_reconnect: bool = NO_RECONNECT,
) -> None:
    """Join a securechat server as one of its clients.

    With input from a pipe or file, end of input means `exit`: every file asked for
    finishes first, and the exit status is 0 only if each one was delivered verified.
    """
    _prepare_stdout()
    host, port = _address(ctx, host, port)
    files = _client_files(certs, name, cert, key, ca)
    interactive = _is_terminal() and not json_output
    console = _make_console(json_output, interactive, preview, open_images)
    limit = parse_size(max_file_size) if max_file_size else None
    client = Client(host, port, files, Downloads(downloads, limit), console, reconnect=not no_reconnect)
    client.connect()

    interrupted = False
    if interactive:
        prompt = _make_prompt([(client.incoming, client.outgoing)])
        threading.Thread(target=lambda: (client.ended.wait(), prompt.stop()), daemon=True).start()
        _prompt_commands(prompt, client.handle, console)  # exit, /quit, Ctrl-D, Ctrl-C
        interrupted = prompt.interrupted
    else:
        done = threading.Event()

        def person_input() -> None:
            read_commands(stdin_lines(), client.handle, console.error)
            done.set()  # exit, /quit and end of input all leave gracefully

        threading.Thread(target=person_input, name="input", daemon=True).start()
        try:
            while not done.wait(0.1) and not client.ended.is_set():
                pass
        except KeyboardInterrupt:
            interrupted = True  # the first Ctrl-C leaves as `exit` does
    if not client.ended.is_set():
        _leave(client, "Ctrl-C again" if interrupted else "Ctrl-C")
        failures = client.outgoing.failures()
        if failures and not interactive:
            _fail(describe_undelivered(failures), json_output=json_output)
        return
    if client.failure is not None:
        raise client.failure  # e.g. revoked: its own line, not "connection lost"
    if not client.ended_cleanly:
        _fail(f"connection to {host}:{port} lost: {client.end_reason}", json_output=json_output)


def _leave(client: Client, ctrl_c: str) -> None:
    """Leave after every file asked for is decided; a Ctrl-C meanwhile stops them (they resume later)."""
    try:
        client.leave(hint=f"{ctrl_c} to stop it, it resumes when you send it again")
    except KeyboardInterrupt:
        client.abandon()
        raise


def _client_files(certs: Path, name: str | None, cert: Path | None, key: Path | None, ca: Path | None) -> ClientFiles:
    if (cert is None) != (key is None):
        raise UsageError("give --cert and --key together")
    if cert is not None and key is not None:
        return ClientFiles(ca or certs / "ca.pem", cert, key)
    files = ClientFiles.from_certs_dir(certs, name)
    return files if ca is None else ClientFiles(ca, files.cert, files.key)


@app.command(cls=_Command)
@friendly
def send(
    ctx: typer.Context,
    host: str = HOST,
    paths: List[Path] = typer.Argument(None, metavar="PATH...", show_default=False, help="Files to send."),
    to: Optional[str] = typer.Option(None, "--to", help="Send to this participant only (default: everyone)."),
    message: Optional[str] = typer.Option(None, "-m", "--message", help="Send this chat line."),
    wait: float = typer.Option(DEFAULT_WAIT, "--wait", metavar="SECONDS",
                               help="With --to: how long to wait for NAME to join; 0 fails at once."),
    port: int = SERVER_PORT,
    certs: Path = CERTS,
    name: Optional[str] = NAME,
    cert: Optional[Path] = CERT,
    key: Optional[Path] = KEY,
    ca: Optional[Path] = CA,
    downloads: Path = DOWNLOADS,
    json_output: bool = JSON_OUTPUT,
    no_reconnect: bool = NO_RECONNECT,
) -> None:
    """Connect, send files (or a line), wait until every recipient verified them, leave.

    Exit 0 when every file reached every recipient verified; otherwise 1, naming each failure.
    """
    _prepare_stdout()
    host, port = _address(ctx, host, port)
    paths = paths or []
    if not paths and message is None:
        raise UsageError("nothing to send: give files, or -m TEXT")
    if wait < 0:
        raise UsageError("--wait takes seconds, 0 or more")
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path} is not a file" if path.exists() else f"no such file: {path}")
    command = None
    if message is not None:
        command = PrivateMessage(to, message) if to else Say(message)
        parse(("/msg " + to + " " if to else "//") + message)  # the same length check as typed lines
    console = Console(json_output, chat_hints=False)
    client = Client(host, port, _client_files(certs, name, cert, key, ca), Downloads(downloads), console,
                    reconnect=not no_reconnect, give_up_after=RESUME_WAIT, receive_files=False)
    if to is not None and to == client.name:
        raise UsageError(f"--to {to} is you (your certificate's name); name someone else in the room")
    client.connect()
    progress = None
    try:
        if to is not None:
            wait_for_recipient(client, console, to, wait)
        if command is not None:
            client.handle(command)
        progress = ProgressLine(console, client.outgoing) if sys.stderr.isatty() and not json_output and paths else None
        senders = [threading.Thread(target=client.send_file, args=(path, to), daemon=True) for path in paths]
        for thread in senders:
            thread.start()
        for thread in senders:
            while thread.is_alive():
                thread.join(0.5)
        while not client.outgoing.wait_idle(timeout=1.0, retries=True) and not client.ended.is_set():
            pass  # interrupted files are offered again when the connection (or their recipient) is back
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
        names = ", ".join(p.name for p in paths) or "the line"
        client.abandon()
        _fail(f"stopped: {names} not delivered; sending it again resumes where it stopped", 130, json_output)
    finally:
        if progress is not None:
            progress.stop()
    failures = client.outgoing.failures()
    client.leave()
    if failures:
        _fail(describe_undelivered(failures), json_output=json_output)


@app.command(cls=_Command)
@friendly
def fingerprint(certs: Path = CERTS) -> None:
    """Print the SHA-256 fingerprints of the certificates, to compare over the phone."""
    _prepare_stdout()
    layout = CertsLayout(certs)
    found = [("CA", layout.ca_cert), ("server", layout.server_cert)]
    found += [(f"client {n}", layout.client_cert(n)) for n in layout.client_names()]
    shown = 0
    for role, path in found:
        if path.is_file():
            print(f"{role:<16} {common_name(path):<24} SHA-256 {certificate_fingerprint(path)}")
            shown += 1
    if not shown:
        raise UsageError(f"no certificates in {certs}; create them with: securechat gen-certs")


@app.command(cls=_Command)
@friendly
def verify(
    paths: List[Path] = typer.Argument(..., metavar="PATH...", help="Received files (or a downloads folder) to check."),
    downloads: Optional[Path] = typer.Option(None, "--downloads", help="Folder whose SHA256SUMS to check against (default: each file's own folder)."),
) -> None:
    """Re-check received files against the SHA-256 recorded when they arrived."""
    _prepare_stdout()
    outcomes = verify_paths(paths, downloads)
    for outcome in outcomes:
        print(f"{'OK  ' if outcome.ok else 'FAIL'} {visible(str(outcome.path))}: {outcome.detail}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


@app.command(cls=_Command)
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    app()
