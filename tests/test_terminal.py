"""What a person's terminal shows: hostile escapes stay visible text, the screen is untouched.

Runs a real `securechat join` inside tmux and reads the screen with capture-pane.
"""

from __future__ import annotations

import shutil

import pytest

from helpers.commands import securechat_command
from helpers.terminal import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")

EVIL = [
    "clear \x1b[2J\x1b[H done",
    "title \x1b]0;pwned\x07 done",
    "clipboard \x1b]52;c;ZWNobyBwd25lZA==\x07 done",
    "cursor \x1b[10A\x1b[5D up done",
    "c1 \x9b2J done",
    "erase abc\b\b\bxyz done",
    "bidi \u202etxt.exe done",
]


def test_escape_sequences_are_shown_not_obeyed(room, pki, tmp_path):
    command = securechat_command() + ["join", "127.0.0.1", "--port", str(room.port), "--certs", str(pki),
                                      "--name", "carol", "--downloads", str(tmp_path / "carol-dl")]
    term = Tmux(command, tmp_path)
    try:
        term.wait_for("connected to 127.0.0.1")
        title_before = term.title()
        room.server.wait_event("joined", name="carol")
        room.server.send("MARKER-BEFORE 你好 🎉 café")
        for line in EVIL:
            room.server.send(line)
        room.server.send("MARKER-AFTER")
        screen = term.wait_for("MARKER-AFTER")
        assert "MARKER-BEFORE 你好 🎉 café" in screen  # not cleared, not mangled
        assert "connected to 127.0.0.1" in screen
        for visible in ("\\x1b[2J\\x1b[H", "\\x1b]0;pwned\\x07", "\\x1b]52;c;ZWNobyBwd25lZA==\\x07",
                        "\\x1b[10A\\x1b[5D", "\\x9b2J", "abc\\x08\\x08\\x08xyz", "\\u202etxt.exe"):
            assert visible in screen, (visible, screen)
        lines = screen.splitlines()
        order = [next(i for i, l in enumerate(lines) if marker in l)
                 for marker in ("MARKER-BEFORE", "clear", "title", "clipboard", "cursor", "c1", "erase", "bidi",
                                "MARKER-AFTER")]
        assert order == sorted(order)  # every line where it belongs: nothing moved the cursor
        assert term.title() == title_before and "pwned" not in term.title()
    finally:
        term.kill()


def test_hostile_file_name_is_shown_escaped(room, pki, tmp_path, raw_client):
    command = securechat_command() + ["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(pki),
                                      "--downloads", str(tmp_path / "tmux-server-dl")]
    term = Tmux(command, tmp_path)
    try:
        screen = term.wait_for("listening on 127.0.0.1:")
        port = int(screen.split("listening on 127.0.0.1:")[1].split()[0])
        raw = raw_client(port)
        raw.hello()
        name = "\x1b[2Jinvoice\u202efdp.exe"
        raw.send_file(1, name, b"abc")
        screen = term.wait_for("verified, saved")
        assert "listening on 127.0.0.1" in screen  # the screen was not cleared
        assert "[2Jinvoicefdp.exe" in screen  # saved under the sanitised name, shown as such
        assert "\u202e" not in screen
    finally:
        term.kill()
