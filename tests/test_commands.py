from __future__ import annotations

from pathlib import Path

import pytest

from securechat.errors import UsageError
from securechat.ui.commands import DEFAULT_IMAGE, Help, PrivateMessage, Quit, Say, SendFile, Who, parse, read_commands
from securechat.wire.frames import MAX_TEXT_BYTES


@pytest.mark.parametrize(
    "line,command",
    [
        ("hello there\n", Say("hello there")),
        ("  spaced  ", Say("  spaced  ")),
        ("exit", Quit()),
        ("/quit\n", Quit()),
        ("/send photo.jpg", SendFile(Path("photo.jpg"))),
        ("/send my photo.jpg", SendFile(Path("my photo.jpg"))),
        ("/send 'quoted name.jpg'", SendFile(Path("quoted name.jpg"))),
        ("/send @bob photo.jpg", SendFile(Path("photo.jpg"), to="bob")),
        ("SEND_IMAGE", SendFile(Path(DEFAULT_IMAGE))),
        ("SEND_IMAGE cat.png", SendFile(Path("cat.png"))),
        ("/msg bob hi there", PrivateMessage("bob", "hi there")),
        ("/who", Who()),
        ("/help", Help()),
        ("//etc is a folder", Say("/etc is a folder")),
        ("你好 🎉", Say("你好 🎉")),
    ],
)
def test_parse(line, command):
    assert parse(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\n"])
def test_blank_lines_are_nothing(line):
    assert parse(line) is None


@pytest.mark.parametrize("line,message", [
    ("/send", "which file"),
    ("/send @bob", "which file"),
    ("/send @ x", "who gets"),
    ("/msg bob", "usage"),
    ("/nope", "unknown command"),
    ("x" * (MAX_TEXT_BYTES + 1), "limit"),
])
def test_bad_lines_are_refused_with_a_reason(line, message):
    with pytest.raises(UsageError, match=message):
        parse(line)


def test_longest_line_is_accepted_and_not_cut():
    text = "é" * (MAX_TEXT_BYTES // 2)
    assert parse(text) == Say(text)


def test_read_commands_stops_at_quit_and_reports_errors():
    seen, errors = [], []
    read_commands(["a", "/bad", "b", "exit", "never"], lambda c: seen.append(c) or not isinstance(c, Quit),
                  errors.append)
    assert seen == [Say("a"), Say("b"), Quit()]
    assert len(errors) == 1 and "unknown command" in errors[0]
