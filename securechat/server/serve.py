"""`securechat serve`: the listener, the loop's thread, and the operator attached in-process.

The loop (loop.py) owns every client socket on one thread. The operator is a
member like any other, over a socketpair: its typing, its files and their
hashing run on its own threads (member/local.py) and never stall the room.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from pathlib import Path

from securechat.errors import UsageError
from securechat.files.transfer import Downloads
from securechat.pki.certfiles import CertsLayout, common_name
from securechat.rooms.room import Room
from securechat.server.admission import CrlInForce
from securechat.server.admitting import LOGIN_GRACE
from securechat.server.loop import Loop
from securechat.ui.console import Console

LISTEN_BACKLOG = 4096  # a reconnect storm of thousands arrives at once
SHUTDOWN_TIMEOUT = 15.0
OPERATOR_JOIN_TIMEOUT = 10.0
SOFTWARE = "securechat-server/0.2"


def _raise_open_file_limit() -> None:
    """One descriptor per client: the common default soft limit of 1024 would cap a room near 1,000."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


class Server:
    def __init__(self, certs: Path, host: str, port: int, downloads: Downloads, console: Console,
                 attach_operator=None, login_grace: float = LOGIN_GRACE) -> None:
        self.certs = certs
        self.host, self.port = host, port
        self.console = console
        name = common_name(CertsLayout(certs).server_cert)
        self.room = Room(name, time.monotonic())
        self.loop = Loop(self.room, CrlInForce(certs), SOFTWARE, console.event, console.error, grace=login_grace)
        ours, theirs = socket.socketpair()
        self.loop.attach_local(theirs, name)
        if attach_operator is None:
            from securechat.member.local import attach_operator
        self.operator = attach_operator(ours, name, console, downloads)
        self.address: tuple[str, int] = (host, port)
        self._thread = threading.Thread(target=self.loop.run, name="server-loop", daemon=True)

    def bind(self) -> tuple[str, int]:
        _raise_open_file_limit()
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise UsageError(f"cannot listen on {self.host!r}: {exc.strerror}") from exc
        family, _, _, _, address = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
            listener.listen(LISTEN_BACKLOG)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {self.port} on {self.host} is already in use — choose another with --port") from exc
            if exc.errno == errno.EACCES:
                raise UsageError(f"no permission to listen on port {self.port}; use a port above 1023") from exc
            raise UsageError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self.loop.listen(listener)
        self.address = listener.getsockname()[:2]
        return self.address

    def start(self) -> None:
        """Run the loop; return once the operator is in the room (the listener opens then)."""
        self._thread.start()
        welcomed = getattr(self.operator, "welcomed", None)
        if welcomed is not None:
            welcomed.wait(OPERATOR_JOIN_TIMEOUT)

    def shutdown(self, reason: str = "server shutting down", wait_for_transfers: bool = False) -> None:
        """Stop accepting, tell every client, close. `exit` first lets the operator's sends finish."""
        if wait_for_transfers:
            self.operator.wait_idle(None)
        self.console.event("shutdown", reason=reason)
        self.loop.stop(reason)
        self._thread.join(SHUTDOWN_TIMEOUT)
        self.operator.close("server shut down")
