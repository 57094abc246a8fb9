"""The sender's bookkeeping: offsets from the server are checked before any byte is read."""

from __future__ import annotations

import io

import pytest

from securechat import frames
from securechat.console import Console
from securechat.errors import RemoteProtocolError
from securechat.outgoing import Outgoing


def test_accept_past_the_end_is_a_protocol_error(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"x" * 10)
    outgoing = Outgoing(Console(json_mode=True, out=io.StringIO(), err=io.StringIO()))
    source, transfer_id = outgoing.start(tmp_path / "f.bin")
    with pytest.raises(RemoteProtocolError, match="past its end"):
        outgoing.handle(frames.Accept(id=transfer_id, offset=11))
    outgoing.handle(frames.Accept(id=transfer_id, offset=10))  # the whole file is there: nothing to send
    assert outgoing.wait_accept(transfer_id) == 10
    source.close()
