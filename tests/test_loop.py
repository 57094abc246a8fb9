"""The server's loop in-process, over real TLS: a bug in one turn is logged, and the room goes on."""

from __future__ import annotations

import pytest

from helpers.client import RecordingConsole
from helpers.network import RawClient
from securechat.files.transfer import Downloads
from securechat.pki.tls import ClientFiles
from securechat.server.serve import Server
from securechat.wire import frames


@pytest.mark.timeout(60)
def test_a_bug_in_one_turn_is_logged_and_the_room_goes_on(pki, tmp_path):
    console = RecordingConsole()
    server = Server(pki, "127.0.0.1", 0, Downloads(tmp_path / "downloads"), console)
    tick, failures = server.room.tick, []

    def tick_that_fails_once(now):
        if not failures:
            failures.append(now)
            raise RuntimeError("a bug in the room")
        return tick(now)

    server.room.tick = tick_that_fails_once
    try:
        server.bind()
        server.start()
        alice = RawClient(server.address[1], ClientFiles.from_certs_dir(pki, "alice"))
        try:
            assert alice.hello().members == ["server"]
            alice.send(frames.Chat(text="still here?"))
            assert console.wait_for("message")["text"] == "still here?"
        finally:
            alice.close()
    finally:
        server.shutdown()
    assert failures and "a bug in the room" in console.wait_for("error")["message"]
