"""The sender's bookkeeping: offsets from the server are checked before any byte is read.

The check itself is the protocol's (client_protocol.py decides every rule a server can
break); OutgoingFiles only ever sees an accept the protocol let through.
"""

from __future__ import annotations

import pytest

from securechat.errors import RemoteProtocolError
from securechat.member.outgoing import OutgoingFiles
from securechat.wire import frames
from securechat.wire.client_protocol import ClientProtocol


def test_accept_past_the_end_is_a_protocol_error(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"x" * 10)
    events = []
    outgoing = OutgoingFiles(lambda event, **fields: events.append((event, fields)))
    source, transfer_id = outgoing.start(tmp_path / "f.bin")
    protocol = ClientProtocol("alice")
    protocol.send(frames.Hello(version=frames.PROTOCOL_VERSION))
    protocol.receive(frames.Hello(version=frames.PROTOCOL_VERSION))
    protocol.receive(frames.Welcome(you="alice", server="server", members=["bob"]))
    protocol.send(frames.Offer(id=transfer_id, name=source.name, size=source.size, sha256=source.sha256))
    outgoing.handle(protocol.receive(frames.Recipients(id=transfer_id, names=["bob"])))
    with pytest.raises(RemoteProtocolError, match="past its end"):
        protocol.receive(frames.Accept(id=transfer_id, offset=11))
    # the whole file is there: nothing to send
    outgoing.handle(protocol.receive(frames.Accept(id=transfer_id, offset=10)))
    assert outgoing.wait_accept(transfer_id) == 10
    assert events == [("file_sending", {"name": "f.bin", "size": 10, "to": ["bob"]}),
                      ("file_resuming", {"name": "f.bin", "offset": 10, "size": 10})]
    source.close()


def test_files_that_cannot_be_read_are_reported_as_events_not_printed(tmp_path):
    events = []
    outgoing = OutgoingFiles(lambda event, **fields: events.append((event, fields)))
    assert outgoing.start(tmp_path / "missing.bin") is None
    assert [event for event, _ in events] == ["error"]
