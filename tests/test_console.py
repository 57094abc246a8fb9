from __future__ import annotations

import io
import json

import pytest

from securechat.ui.console import Console, show_message, visible
from securechat.wire import frames


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
    assert show_message(console, frames.Presence(joined=["bob"], left=[]))
    assert show_message(console, frames.Who(names=["a"]))
    assert not show_message(console, frames.Who())  # a request, not an answer
    assert not show_message(console, frames.End(id=1, sha256="0" * 64))
    assert [json.loads(l)["event"] for l in out.getvalue().splitlines()] == ["joined", "who"]


def render(event: str, **fields) -> str:
    out = io.StringIO()
    Console(out=out).event(event, **fields)
    return out.getvalue()


def test_zwj_emoji_stay_whole_in_chat_but_not_in_file_names_and_bidi_stays_escaped():
    family, rainbow = "👨\u200d👩\u200d👧", "🏳\ufe0f\u200d🌈"
    line = render("message", **{"from": "bob"}, text=f"{family} {rainbow} a\u200db \u202eevil", to=None)
    assert f"<bob> {family} {rainbow} a\\u200db \\u202eevil" in line
    assert "\\u200d" in render("file_rejected", **{"from": "bob"}, name=f"{family}.png", reason="x")


def test_typed_errors_read_as_one_plain_line_at_the_terminal(capsys):
    from securechat.ui.interactive import InteractiveConsole

    InteractiveConsole().error("no such file: nofile.jpg")
    shown = capsys.readouterr().out
    assert "error: no such file: nofile.jpg" in shown
    assert "* error" not in shown and "message=" not in shown and "error: error:" not in shown


def test_connected_says_who_is_here():
    assert "Here: bob, server. Type /help" in render("connected", peer="h:1", name="alice", server="server",
                                                     members=["bob", "server"])
    one_shot = io.StringIO()
    Console(out=one_shot, chat_hints=False).event("connected", peer="h:1", name="a", server="s", members=[])
    assert one_shot.getvalue() == "connected to h:1 as a (TLS 1.3). Here: nobody else yet.\n"


def test_shutdown_is_said_once():
    assert render("shutdown", reason="server shutting down") == "* server shutting down\n"
    assert render("shutdown", reason="disk full") == "* server shutting down: disk full\n"


def test_a_private_file_is_marked_for_its_receiver():
    assert "from bob, privately to alice" in render("file_incoming", **{"from": "bob"}, name="n.txt", size=9,
                                                     offset=0, to="alice")
    assert "from bob, privately to alice, SHA-256" in render(
        "file_received", **{"from": "bob"}, name="n.txt", size=9, sha256="a" * 64, path="dl/n.txt", to="alice")
    assert "privately" not in render("file_received", **{"from": "bob"}, name="n.txt", size=9, sha256="a" * 64,
                                     path="dl/n.txt")


def test_progress_label_keeps_names_whole_and_the_size():
    from securechat.ui.interactive import fit_label

    assert fit_label("photo.jpg", "to", ["bob", "carol", "dave", "erin"], " (1.2 MB)", 28) == \
        "photo.jpg to bob +3 (1.2 MB)"
    assert fit_label("a-very-long-file-name.tar.gz", "to", ["bob"], " (1.2 MB)", 28) == "a-very-long… to bob (1.2 MB)"
    for names in (["bob", "carol"], ["averyveryverylongname_abcdef"], [f"member{i}" for i in range(50)]):
        label = fit_label("photo.jpg", "to", names, " (1.2 MB)", 28)
        assert label.endswith(" (1.2 MB)")
        shown = label.split(" to ", 1)[1].removesuffix(" (1.2 MB)")
        assert all(part.split(" +")[0] in names or part.endswith(("person", "people")) for part in shown.split(", "))


def test_progress_speed_after_a_resume_counts_only_new_bytes(monkeypatch):
    import securechat.ui.interactive as interactive

    clock = [100.0]

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return clock[0]

    monkeypatch.setattr(interactive, "time", FakeTime)
    view = interactive.ProgressView([])
    mb = 1_000_000
    assert view._speed("in1", 0) == 0.0  # offered; the kept part is not checked yet
    clock[0] += 0.5
    assert view._speed("in1", 600 * mb) == 0.0  # resumed at 600 MB: no bytes moved yet
    clock[0] += 1.0
    assert view._speed("in1", 610 * mb) == pytest.approx(10 * mb)


def test_what_exit_waits_for_and_what_was_not_delivered_are_worded_here():
    from securechat.member.outgoing import Awaited, Undelivered
    from securechat.ui.console import describe_undelivered, describe_waiting

    assert describe_waiting([Awaited("big.bin", ["bob", "carol"], 45), Awaited("all.txt", [], 100),
                             Awaited("new.png")], "Ctrl-C to stop it") == (
        "waiting for big.bin to reach bob, carol (45 %); all.txt to reach the room (100 %); new.png (being read); "
        "Ctrl-C to stop it")
    assert describe_undelivered([Undelivered("a.bin", "refused", "bob"), Undelivered("b.bin", "gone"),
                                 Undelivered("c.bin", "not sent", offered=False)]) == (
        "not delivered: a.bin to bob: refused; b.bin to anyone: gone; c.bin: not sent")


def test_events_reported_by_name_are_worded_by_the_console():
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err)
    console.report("send_waits", name="a.bin")
    console.report("send_to_self", to="alice")
    console.report("file_sending", name="a.bin", size=3, to=["bob"])
    assert out.getvalue().splitlines() == ["* not connected: a.bin will be sent when the connection is back",
                                           "→ sending a.bin (3 B) to bob"]
    assert err.getvalue() == "error: alice is you: /send @NAME sends to someone else in the room\n"
    json_out = io.StringIO()
    Console(json_mode=True, out=json_out).report("who_offline")
    event = json.loads(json_out.getvalue())
    assert (event["event"], event["message"]) == ("error", "not connected: /who needs the server")
