"""`securechat join`: one connection to the server, plus the local person's input.

Threads, as in the seed: one receives (the Connection's I/O thread, which
also does all sending on the socket), one reads what the person types. Each
/send gets a thread that reads the file and queues its chunks; it blocks
when the outbox is full, which is how a big file is paced without memory
growing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from . import frames
from .commands import HELP, Command, Help, PrivateMessage, Quit, Say, SendFile, Who
from .connection import HELLO_TIMEOUT, Connection, connect
from .console import Console, show_message
from .errors import ConnectionFailed, ConnectionLost, RemoteProtocolError, TransferError
from .inbox import Inbox, Verdict
from .outgoing import Outgoing
from .tls import ClientFiles, client_context, peer_identity
from .transfer import Downloads

SOFTWARE = "securechat-client/0.1"


class Client:
    def __init__(self, host: str, port: int, files: ClientFiles, downloads: Downloads, console: Console) -> None:
        self.host, self.port = host, port
        self.context = client_context(files)
        self.console = console
        self.inbox = Inbox(downloads)
        self.outgoing = Outgoing(console)
        self.conn: Connection | None = None
        self.name = ""
        self._welcomed = threading.Event()
        self._hello_seen = False
        self._leaving = False
        self.end_reason = ""
        self.ended_cleanly = False

    # ------------------------------------------------ connecting

    def connect(self) -> None:
        sock = connect(self.host, self.port, self.context)
        server_name = peer_identity(sock)
        self.conn = Connection(sock, server_name, self._on_frame, self._on_close)
        self.conn.start()
        self.conn.send(frames.Hello(version=frames.PROTOCOL_VERSION, software=SOFTWARE))
        # TLS 1.3 finishes the client's handshake before the server has checked
        # our certificate; a refusal shows up here, as the connection closing.
        deadline = time.monotonic() + HELLO_TIMEOUT
        while not self._welcomed.wait(0.05):
            if self.conn.finished.is_set():
                raise ConnectionFailed(f"cannot join {self.host}:{self.port}: {self.end_reason}")
            if time.monotonic() > deadline:
                self.conn.close("no welcome", send_bye=False)
                raise ConnectionFailed(f"cannot join {self.host}:{self.port}: no answer to hello within {HELLO_TIMEOUT:.0f} s")

    # ------------------------------------------------ frames from the server

    def _on_frame(self, conn: Connection, frame: frames.Frame) -> None:
        if not self._welcomed.is_set():
            self._greeting(frame)
            return
        if show_message(self.console, frame) or self.outgoing.handle(frame):
            return
        match frame:
            case frames.Offer():
                self._answer(self.inbox.offer(frame.id, frame.sender or "server", frame.name, frame.size))
            case frames.Chunk():
                self._answer(self.inbox.chunk(frame.id, frame.data))
            case frames.End():
                self._answer(self.inbox.end(frame.id, frame.sha256))
            case frames.Abort():
                verdict = self.inbox.abort(frame.id, frame.reason)
                if verdict is not None:
                    verdict.report(self.console)
            case frames.Bye():
                pass
            case _:
                raise RemoteProtocolError(f"the server may not send {frame.TYPE!r} now")

    def _greeting(self, frame: frames.Frame) -> None:
        if not self._hello_seen:
            if not isinstance(frame, frames.Hello):
                raise RemoteProtocolError("the server's first message was not hello")
            if frame.version != frames.PROTOCOL_VERSION:
                raise RemoteProtocolError(f"server speaks protocol version {frame.version}, we speak {frames.PROTOCOL_VERSION}")
            self._hello_seen = True
            return
        if isinstance(frame, frames.Bye):
            return
        if not isinstance(frame, frames.Welcome):
            raise RemoteProtocolError("the server did not send welcome after hello")
        self.name = frame.you
        self.console.event("connected", peer=f"{self.host}:{self.port}", name=frame.you, server=frame.server,
                           members=frame.members)
        self._welcomed.set()

    def _answer(self, verdict: Verdict | None) -> None:
        """Report a decided incoming transfer and tell the sender (through the server)."""
        if verdict is None:
            return
        verdict.report(self.console)
        assert self.conn is not None
        self.conn.send(frames.Result(id=verdict.transfer_id, ok=verdict.ok, reason=verdict.reason[:900],
                                     sha256=verdict.sha256 if verdict.ok else None))

    def _on_close(self, conn: Connection, reason: str, clean: bool) -> None:
        self.end_reason = reason
        self.ended_cleanly = clean
        for verdict in self.inbox.close(f"connection closed: {reason}"):
            verdict.report(self.console)
        self.outgoing.fail_all(f"connection closed: {reason}")
        if self._welcomed.is_set() and not self._leaving:
            self.console.event("disconnected", reason=reason)

    # ------------------------------------------------ what the person types

    def handle(self, command: Command) -> bool:
        assert self.conn is not None
        match command:
            case Say(text=text):
                self.conn.send(frames.Chat(text=text))
            case PrivateMessage(to=to, text=text):
                self.conn.send(frames.Chat(text=text, to=to))
            case SendFile(path=path, to=to):
                threading.Thread(target=self.send_file, args=(path, to), name="send-file", daemon=True).start()
            case Who():
                self.conn.send(frames.Who())
            case Help():
                self.console.event("help", text=HELP)
            case Quit():
                return False
        return True

    def send_file(self, path: Path, to: str | None = None) -> None:
        assert self.conn is not None
        with self.outgoing.slots:
            self._send_file(path, to)

    def _send_file(self, path: Path, to: str | None) -> None:
        assert self.conn is not None
        started = self.outgoing.start(path)
        if started is None:
            return
        source, transfer_id = started
        try:
            self.conn.send_stream(frames.Offer(id=transfer_id, name=source.name, size=source.size, to=to))
            for frame in source.chunk_frames(transfer_id):
                if self.outgoing.cancelled(transfer_id):
                    break
                self.conn.outbox.put_data(frame)
            else:
                self.conn.send_stream(frames.End(id=transfer_id, sha256=source.sha256))
        except TransferError as exc:
            self.conn.send_stream(frames.Abort(id=transfer_id, reason=str(exc)))
            self.outgoing.fail(transfer_id, str(exc))
        except ConnectionLost as exc:
            self.outgoing.fail(transfer_id, f"connection closed: {exc}")
        finally:
            source.close()

    def leave(self) -> None:
        """Let transfers in progress finish, say goodbye, close."""
        assert self.conn is not None
        self.outgoing.wait_idle()
        self._leaving = True
        self.conn.close("left")
        self.conn.join(15.0)
