"""The interactive terminal, driven for real in tmux: what a person sees and types."""

from __future__ import annotations

import io
import os
import shutil
import time

import pytest

from helpers.commands import securechat_command
from helpers.files import sparse_file
from helpers.terminal import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")


def type_keys(term: Tmux, *keys: str) -> None:
    import subprocess

    subprocess.run([*term.tmux, "send-keys", "-t", term.session, *keys], check=True, timeout=10)


@pytest.fixture
def person(room, pki, tmp_path):
    """carol at a real terminal (a tmux pane), joined to the room; the server is driven by the test."""
    terms = []

    def start(*extra: str) -> Tmux:
        command = securechat_command() + ["join", "127.0.0.1", "--port", str(room.port), "--certs", str(pki),
                                          "--name", "carol", "--downloads", str(tmp_path / "carol-dl"), *extra]
        term = Tmux(command, tmp_path)
        terms.append(term)
        term.wait_for("connected to 127.0.0.1")
        room.server.wait_event("joined", name="carol")
        return term

    yield start
    for term in terms:
        term.kill()


def test_half_typed_line_survives_incoming_messages_and_history_recalls(room, person):
    term = person()
    type_keys(term, "half typed")
    for i in range(3):
        room.server.send(f"interruption {i}")
    screen = term.wait_for("interruption 2")
    deadline = time.monotonic() + 10
    while not any(line.startswith(">") for line in screen.splitlines()):  # redrawn just after the line
        assert time.monotonic() < deadline, screen
        time.sleep(0.05)
        screen = term.screen()
    prompt_line = [line for line in screen.splitlines() if line.startswith(">")][-1]
    assert prompt_line.rstrip() == "> half typed"
    assert "<server> interruption 0" in screen and ":" in screen.split("<server>")[0][-6:]  # a timestamp
    type_keys(term, " and finished", "Enter")
    room.server.wait_event("message", **{"from": "carol", "text": "half typed and finished"})
    type_keys(term, "Up")
    deadline = time.monotonic() + 10
    while [l for l in term.screen().splitlines() if l.startswith(">")][-1].rstrip() != "> half typed and finished":
        assert time.monotonic() < deadline, term.screen()
        time.sleep(0.05)


def test_ctrl_c_at_the_operator_prompt_shuts_the_server_down(pki, tmp_path, procs):
    command = securechat_command() + ["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(pki),
                                      "--downloads", str(tmp_path / "dl")]
    term = Tmux(command, tmp_path)
    try:
        term.wait_for("listening on 127.0.0.1:")
        type_keys(term, "C-c")
        term.wait_for("server shutting down")
        term.wait_for("[exited 0]")
    finally:
        term.kill()


def test_ctrl_c_clears_a_half_typed_line_and_quits_on_an_empty_one(room, person):
    term = person()
    type_keys(term, "never sent")
    term.wait_for("> never sent")
    type_keys(term, "C-c")
    deadline = time.monotonic() + 10
    while [l for l in term.screen().splitlines() if l.startswith(">")][-1].rstrip() != ">":
        assert time.monotonic() < deadline, term.screen()
        time.sleep(0.05)
    type_keys(term, "still here", "Enter")
    room.server.wait_event("message", **{"from": "carol", "text": "still here"})
    type_keys(term, "C-c")
    term.wait_for("[exited 0]")
    room.server.wait_event("left", name="carol")
    assert room.server.count("message", text="never sent") == 0


def test_exit_during_an_upload_says_what_it_waits_for_and_ctrl_c_stops_it(room, person, tmp_path, raw_client):
    dave = raw_client(room.port, "dave")  # takes the offer and never accepts: carol's upload stays in flight
    dave.hello()
    room.server.wait_event("joined", name="dave")
    (tmp_path / "upload.bin").write_bytes(os.urandom(100_000))
    term = person()
    type_keys(term, f"/send @dave {tmp_path / 'upload.bin'}", "Enter")
    term.wait_for("sending upload.bin")
    type_keys(term, "C-c")  # on an empty line: leave, which waits for the upload
    term.wait_for("waiting for upload.bin to reach dave (0 %); Ctrl-C again to stop it, it resumes when you send it again")
    type_keys(term, "C-c")
    screen = term.wait_for("[exited 130]")
    assert "upload.bin not delivered to dave: stopped; it resumes" in screen


def test_tab_completes_a_path_after_send(room, person, tmp_path):
    (tmp_path / "holiday-photo.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    term = person()
    type_keys(term, "/send ./holi", "Tab")
    deadline = time.monotonic() + 10
    while "> /send ./holiday-photo.jpg" not in term.screen():
        assert time.monotonic() < deadline, term.screen()
        time.sleep(0.1)
    type_keys(term, "Enter")
    room.server.wait_event("file_received", name="holiday-photo.jpg")


def test_progress_bar_then_one_line_summary(room, person, tmp_path):
    term = person()
    big = sparse_file(tmp_path / "big.bin", 1024 * 1024 * 1024)
    room.server.send(f"/send {big}")
    screen = term.wait_for("big.bin from server", timeout=30)
    bar = [line for line in screen.splitlines() if "big.bin from server" in line][0]
    assert "%" in bar and "/s" in bar and "(1.1 GB)" in bar and "━" in bar
    screen = term.wait_for("✓ big.bin 1.1 GB from server", timeout=120)
    assert "verified, saved" in screen
    deadline = time.monotonic() + 10
    while "big.bin from server" in term.screen():  # the bar gives way to the summary
        assert time.monotonic() < deadline, term.screen()
        time.sleep(0.05)


def _png_bytes(width: int, height: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(height):
            image.putpixel((x, y), (255 * x // width, 0, 255 * y // height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_image_dimensions_preview_and_broken_image(room, person, tmp_path):
    pytest.importorskip("PIL", reason="Pillow is the optional images extra: pip install 'securechat[images]'")
    term = person("--preview")
    (tmp_path / "sunset.png").write_bytes(_png_bytes(64, 32))
    room.server.send(f"/send {tmp_path / 'sunset.png'}")
    term.wait_for("PNG 64×32")
    screen = term.wait_for("▀")  # the half-block preview follows the summary line
    assert screen.index("PNG 64×32") < screen.index("▀")
    broken = _png_bytes(40, 40)[:60]  # a PNG header, then nothing that decodes
    (tmp_path / "broken.png").write_bytes(broken)
    room.server.send(f"/send {tmp_path / 'broken.png'}")
    screen = term.wait_for("no preview of broken.png")
    assert "the file is saved, its SHA-256 verified" in screen
    assert (tmp_path / "carol-dl" / "broken.png").read_bytes() == broken


def test_preview_without_pillow_is_one_clear_line(tmp_path, pki):
    import subprocess

    blocker = tmp_path / "no-pillow" / "PIL"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('Pillow is not installed')\n")  # shadows the real one
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    result = subprocess.run(securechat_command() + ["join", "127.0.0.1", "--certs", str(pki), "--name", "bob",
                                                    "--preview"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 1
    assert "--preview needs Pillow: pip install 'securechat[images]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_plain_mode_is_kept_for_pipes(room, procs, pki, tmp_path):
    """Not a terminal: no prompt, no colours, the plain lines scripts rely on."""
    carol = procs(["join", "127.0.0.1", "--port", str(room.port), "--certs", str(pki), "--name", "carol",
                   "--downloads", str(tmp_path / "dl")], tmp_path)
    room.server.wait_event("joined", name="carol")
    room.server.send("plain please")
    deadline = time.monotonic() + 20
    while not any("<server> plain please" in e.get("line", "") for e in carol.events):
        assert time.monotonic() < deadline, carol.events
        time.sleep(0.05)
    assert not any("\x1b" in e.get("line", "") for e in carol.events)
    assert os.path.isdir(tmp_path / "dl")
