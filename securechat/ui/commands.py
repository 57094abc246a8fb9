"""What a person types, turned into commands. Pure: no I/O but the input loops at the end."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from securechat.errors import UsageError
from securechat.wire.frames import MAX_TEXT_BYTES

DEFAULT_IMAGE = "image_to_send.jpg"  # what the seed's bare SEND_IMAGE sent

HELP = f"""commands:
  TEXT                  send a chat line to everyone (at most {MAX_TEXT_BYTES} bytes)
  /send PATH            send a file to everyone; each recipient verifies its SHA-256
  /send @NAME PATH      send a file to NAME only
  SEND_IMAGE [PATH]     same as /send (default {DEFAULT_IMAGE})
  /msg NAME TEXT        a private line to NAME only
  /who                  who is here
  /help                 this list
  exit, /quit           leave (transfers in progress finish first)
  //TEXT                a chat line that starts with '/'"""


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class SendFile:
    path: Path
    to: str | None = None


@dataclass(frozen=True)
class PrivateMessage:
    to: str
    text: str


@dataclass(frozen=True)
class Who:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Quit:
    pass


Command = Say | SendFile | PrivateMessage | Who | Help | Quit


def _checked_text(text: str) -> str:
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > MAX_TEXT_BYTES:
        raise UsageError(f"line is {size} bytes; the limit is {MAX_TEXT_BYTES}, nothing was sent (send long text as a file)")
    return text


def _path(text: str) -> Path:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    if not text:
        raise UsageError("say which file: /send PATH")
    return Path(text).expanduser()


def _send(rest: str) -> SendFile:
    rest = rest.strip()
    if rest.startswith("@"):
        name, _, path = rest[1:].partition(" ")
        if not name:
            raise UsageError("say who gets the file: /send @NAME PATH")
        return SendFile(_path(path), to=name)
    return SendFile(_path(rest))


def parse(line: str) -> Command | None:
    """The command a line stands for; None for a blank line; UsageError for a bad one."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    word, _, rest = line.strip().partition(" ")
    if line.strip() in ("exit", "/quit"):
        return Quit()
    if word == "SEND_IMAGE":
        return SendFile(_path(rest) if rest.strip() else Path(DEFAULT_IMAGE))
    if line.startswith("//"):
        return Say(_checked_text(line[1:]))
    if not line.startswith("/"):
        return Say(_checked_text(line))
    if word == "/send":
        return _send(rest)
    if word == "/msg":
        name, _, text = rest.strip().partition(" ")
        if not name or not text:
            raise UsageError("usage: /msg NAME TEXT")
        return PrivateMessage(name, _checked_text(text))
    if word == "/who":
        return Who()
    if word == "/help":
        return Help()
    raise UsageError(f"unknown command {word}; /help lists the commands (start a line with // to send a '/')")


def read_commands(stream: Iterable[str], handle: Callable[[Command], bool], on_error: Callable[[str], None]) -> None:
    """Feed each line of `stream` to `handle` until it returns False or the stream ends."""
    for line in stream:
        try:
            command = parse(line)
        except UsageError as exc:
            on_error(str(exc))
            continue
        if command is not None and not handle(command):
            return


def stdin_lines(fd: int = 0, limit: int = 1024 * 1024):
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
