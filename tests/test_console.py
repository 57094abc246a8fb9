from __future__ import annotations

import io
import json

from securechat import frames
from securechat.console import Console, show_message, visible


def test_visible_escapes_controls_and_bidi_but_keeps_text():
    assert visible("\x1b[2J") == "\\x1b[2J"
    assert visible("\x1b]52;c;ZXZpbA==\x07") == "\\x1b]52;c;ZXZpbA==\\x07"
    assert visible("\x9b31m") == "\\x9b31m"
    assert visible("a\bb\rc\nd\te") == "a\\x08b\\x0dc\\x0ad\\x09e"
    assert visible("invoice\u202efdp.exe") == "invoice\\u202efdp.exe"
    assert visible("zero\u200bwidth") == "zero\\u200bwidth"
    assert visible("你好 🎉 café") == "你好 🎉 café"


def test_human_lines_never_carry_raw_controls():
    out = io.StringIO()
    console = Console(out=out)
    console.event("message", **{"from": "ev\x1bil"}, text="\x1b[2J\u202ehi", to=None)
    console.event("file_rejected", **{"from": "a"}, name="x\x9b.png", reason="bad\x07")
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\x9b" not in text and "\x07" not in text
    assert "<ev\\x1bil> \\x1b[2J\\u202ehi" in text


def test_json_lines_are_ascii_and_exact():
    out = io.StringIO()
    Console(json_mode=True, out=out).event("message", **{"from": "alice"}, text="\x1b 你好", to=None)
    line = out.getvalue()
    assert line.isascii() and line.endswith("\n")
    event = json.loads(line)
    assert event["event"] == "message" and event["text"] == "\x1b 你好" and "time" in event


def test_show_message_reports_room_messages_only():
    out = io.StringIO()
    console = Console(json_mode=True, out=out)
    assert show_message(console, frames.Joined(name="bob"))
    assert show_message(console, frames.Who(names=["a"]))
    assert not show_message(console, frames.Who())  # a request, not an answer
    assert not show_message(console, frames.End(id=1, sha256="0" * 64))
    assert [json.loads(l)["event"] for l in out.getvalue().splitlines()] == ["joined", "who"]
