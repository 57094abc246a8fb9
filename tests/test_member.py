"""The operator as a member attached over a socketpair (member.attach_operator), with the
server's end spoken by hand: the same wire protocol as any client, in one process."""

from __future__ import annotations

import ast
import hashlib
import socket
import ssl
from pathlib import Path

import pytest

from helpers.client import RecordingConsole, ServerEnd
from securechat.files.transfer import Downloads
from securechat.member.local import attach_operator
from securechat.ui.commands import PrivateMessage, Quit, Say, SendFile, Who
from securechat.wire import frames

SOURCE = Path(__file__).resolve().parent.parent / "securechat"


@pytest.fixture
def operator(tmp_path):
    """(handle, server end, console): the operator `server`, before the server's hello."""
    ours, theirs = socket.socketpair()
    console = RecordingConsole()
    handle = attach_operator(ours, "server", console, Downloads(tmp_path / "downloads"))
    end = ServerEnd(theirs)
    yield handle, end, console
    end.close()  # first: the member's goodbye then meets our end's close at once, not its linger
    handle.close("test over")


def greet(end: ServerEnd, members=()) -> None:
    end.send(frames.Hello(version=frames.PROTOCOL_VERSION, software="test"),
             frames.Welcome(you="server", server="server", members=list(members)))


def test_the_operator_says_hello_and_what_it_types_follows_it(operator):
    handle, end, console = operator
    hello = end.next_frame()
    assert isinstance(hello, frames.Hello) and hello.version == frames.PROTOCOL_VERSION
    assert hello.name == "server" and hello.session and hello.receive_files is True
    assert handle.handle(Say("before the welcome")) is True  # follows the hello on the socket
    assert end.next_of(frames.Chat).text == "before the welcome"
    greet(end, ["bob"])
    handle.handle(PrivateMessage("bob", "psst"))
    chat = end.next_of(frames.Chat)
    assert (chat.text, chat.to) == ("psst", "bob")
    handle.handle(Who())
    assert end.next_of(frames.Who).names is None
    assert handle.handle(Quit()) is False
    assert console.named("connected") == []  # the operator is not "connected to" its own server


def test_presence_is_idempotent_and_never_announces_ourselves(operator):
    handle, end, console = operator
    greet(end, ["bob"])
    end.send(frames.Presence(joined=["server", "bob", "carol"], left=[]))
    end.send(frames.Presence(joined=["bob"], left=[{"name": "bob", "reason": "dropped"}]))
    end.send(frames.Chat(text="done", sender="carol"))
    console.wait_for("message", text="done")
    shown = [(e["event"], e["name"]) for e in console.events if e["event"] in ("joined", "left")]
    assert shown == [("joined", "carol"), ("left", "bob"), ("joined", "bob")]


def test_a_server_breaking_the_rules_gets_a_bye_with_the_reason(operator):
    handle, end, console = operator
    greet(end)
    end.send(frames.Accept(id=5, offset=0))  # we never offered transfer 5
    bye = end.next_of(frames.Bye)
    assert "accept for transfer 5, which we never offered" in bye.reason
    assert end.next_frame() is None


def test_close_reports_a_file_still_arriving_as_failed_and_closes(operator):
    handle, end, console = operator
    greet(end, ["alice"])
    data = b"0123456789"
    end.send(frames.Offer(id=3, name="a.txt", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                          sender="alice"))
    accept = end.next_of(frames.Accept)
    assert (accept.id, accept.offset) == (3, 0)
    end.send(frames.Chunk(3, data[:4]))
    console.wait_for("file_incoming", name="a.txt")
    handle.close("server shut down")
    rejected = console.wait_for("file_rejected", name="a.txt")
    assert rejected["reason"].startswith("server shut down") and "to" not in rejected
    assert isinstance(end.next_of(frames.Bye), frames.Bye)


def test_a_file_the_operator_sends_goes_over_the_wire_and_exit_waits_for_it(operator, tmp_path):
    handle, end, console = operator
    greet(end, ["bob"])
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello, room")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    handle.handle(SendFile(path, None))
    offer = end.next_of(frames.Offer)
    assert (offer.name, offer.size, offer.sha256) == ("hello.txt", 11, digest)
    end.send(frames.Recipients(id=offer.id, names=["bob"]), frames.Accept(id=offer.id, offset=0))
    received = b""
    while True:
        frame = end.next_frame()
        if isinstance(frame, frames.Chunk):
            received += bytes(frame.data)
        elif isinstance(frame, frames.End):
            break
    assert received == path.read_bytes()
    end.send(frames.Result(id=offer.id, ok=True, sha256=digest, sender="bob"))
    handle.wait_idle(10.0)
    assert console.wait_for("file_delivered", to="bob")["sha256"] == digest
    assert handle.outgoing.failures() == []


def test_the_operator_sending_to_itself_is_told_once(operator, tmp_path):
    handle, end, console = operator
    greet(end)
    handle.handle(SendFile(tmp_path / "x", "server"))
    assert console.wait_for("error")["message"].startswith("server is you")


def _imports(module: str) -> set[str]:
    tree = ast.parse((SOURCE / module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(f"{node.module}.{a.name}" if node.module else a.name for a in node.names)
            names.add(node.module or "")
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("module", ["member/incoming.py", "member/outgoing.py", "member/local.py",
                                    "wire/client_protocol.py"])
def test_only_the_console_turns_events_into_text(module):
    """These modules report events; the console (ui/console.py) alone words them."""
    assert not any(name.split(".")[-1] == "console" or ".console." in name for name in _imports(module))


@pytest.mark.parametrize("module", ["member/connection.py", "member/client.py", "member/local.py",
                                    "member/oneshot.py", "member/incoming.py", "member/outgoing.py",
                                    "wire/client_protocol.py"])
def test_no_client_module_searches_an_errors_text(module):
    """Errors travel as types and kinds (DESIGN.md 7), never as text someone searches later."""
    source = (SOURCE / module).read_text()
    assert "in str(exc)" not in source and "in str(e)" not in source


def test_an_eof_is_known_by_its_type_or_library_reason():
    from securechat.member.connection import _is_eof

    assert _is_eof(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    unexpected = ssl.SSLError(1, "unexpected eof while reading")
    unexpected.reason = "UNEXPECTED_EOF_WHILE_READING"
    assert _is_eof(unexpected)
    lookalike = ssl.SSLError(1, "decryption failed near EOF")
    lookalike.reason = "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"
    assert not _is_eof(lookalike)  # the old text search took this for a clean end


def test_the_server_serves_its_operator_over_a_plain_socketpair(pki, tmp_path):
    """No certificate on the operator's connection: its identity is given, and the room has it
    before the listener opens (so every client's welcome names the operator)."""
    from securechat.server.serve import Server

    console = RecordingConsole()
    server = Server(pki, "127.0.0.1", 0, Downloads(tmp_path / "downloads"), console)
    try:
        server.bind()
        server.start()
        assert server.operator.welcomed.is_set()
        assert server.room.names() == ["server"]
        server.operator.handle(Who())
        assert console.wait_for("who")["names"] == ["server"]
    finally:
        server.shutdown()
    assert console.named("error") == [] and console.named("connected") == []
