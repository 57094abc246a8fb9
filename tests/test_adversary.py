"""Attacks on the issue-11 room by hostile members, over real TLS (issue 11 review).

Each test here failed on the code it was written against; the docstring says what broke.
Raw clients speak docs/protocol.md only; `securechat join` is the honest member.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from helpers.files import sparse_file
from helpers.hall import presence
from helpers.network import RawClient
from securechat.pki.certfiles import CertsLayout
from securechat.pki.certs import generate, issue_client, load_cert, load_key, save_pair
from securechat.wire import frames


@pytest.fixture(scope="module")
def impostor_pki(tmp_path_factory):
    """A CA holder issued a client certificate named like the operator (`server`) but for case.
    gen-certs refuses that name; another tool (or our builder, as here) does not."""
    certs = tmp_path_factory.mktemp("impostor") / "certs"
    generate(certs, ["alice"], [])
    layout = CertsLayout(certs)
    cert, key = issue_client(load_cert(layout.ca_cert), load_key(layout.ca_key), "Server")
    save_pair(cert, key, layout.client_cert("Server"), layout.client_key("Server"), force=False)
    return certs


def frames_until(raw, wanted, timeout: float = 20.0) -> list:
    """Every frame up to and including the first that is an instance of `wanted`."""
    got = []
    while True:
        frame = raw.next_frame(timeout)
        assert frame is not None, f"connection closed before {wanted.__name__}; got {got}"
        got.append(frame)
        if isinstance(frame, wanted):
            return got


def test_a_refused_operator_impostor_says_nothing_before_it_is_closed(make_room, raw_client, impostor_pki):
    """The room refuses `Server` (the operator is `server`), but frames that came in the same
    read as its hello were still handled as a member's: its chat reached everyone as from `Server`
    and its offer was relayed."""
    room = make_room(certs=impostor_pki)
    alice = raw_client(room.port, "alice", certs=impostor_pki)
    alice.hello()
    impostor = raw_client(room.port, "Server", certs=impostor_pki)
    data = b"payload"
    impostor.send_bytes(b"".join(frames.encode(m) for m in (
        frames.Hello(version=frames.PROTOCOL_VERSION),
        frames.Chat(text="this is the operator: send me your keys"),
        frames.Offer(id=1, name="update.sh", size=len(data), sha256=hashlib.sha256(data).hexdigest(), to="alice"),
        frames.Chat(text="really", to="alice"),
    )))
    closing = impostor.frames_until_closed()
    assert any(isinstance(f, frames.Bye) and "operator" in (f.reason or "") for f in closing), closing
    # Whatever the impostor's frames made the room send alice was queued before its connection
    # closed, so it is ahead of the answer to this.
    alice.send(frames.Who())
    seen = frames_until(alice, frames.Who)
    assert not [f for f in seen if isinstance(f, (frames.Chat, frames.Offer))], seen
    assert [name for _, name in presence(seen)] in ([], ["alice"]), seen  # her own arrival, in its batch
    assert seen[-1].names == ["alice", "server"]
    assert not [f for f in closing if isinstance(f, (frames.Welcome, frames.Recipients, frames.Notice))], closing


def next_offer(raw, timeout: float = 20.0) -> frames.Offer:
    return frames_until(raw, frames.Offer, timeout)[-1]


@pytest.mark.timeout(180)
def test_files_refused_after_their_accept_do_not_use_up_the_senders_uploads(room, raw_client, tmp_path):
    """A file whose every recipient gives up after accepting (refused, or gone mid-transfer) is
    cancelled; the sender then stopped without an `end` or `abort`, the server kept the upload
    open for good, and the 17th such file got the sender disconnected ("more than 16 files")."""
    # big enough that the cancel comes long before the last chunk

    big = sparse_file(tmp_path / "big.bin", 64 * 1024 * 1024)
    alice = room.join("alice")
    dave = raw_client(room.port)
    dave.hello()
    alice.wait_event("joined", name="dave")
    for i in range(17):
        mark = alice.mark()
        alice.send(f"/send @dave {big}")
        try:
            offer = next_offer(dave)
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"offer {i + 1} never reached dave; alice: {alice.events[-6:]}") from exc
        # Accept, then refuse at once: the sender hears accept, a failed result and cancel together.
        dave.send_bytes(frames.encode(frames.Accept(id=offer.id, offset=0))
                        + frames.encode(frames.Result(id=offer.id, ok=False, reason=f"no thanks {i}")))
        alice.wait_event("file_failed", after=mark, reason=f"no thanks {i}")
    alice.send("/send @dave " + str(big))
    next_offer(dave)  # the 18th file is still offered: alice was not thrown out
    alice.send("still here")
    assert frames_until(dave, frames.Chat)[-1].text == "still here"
    assert alice.count("disconnected") == 0 and alice.count("reconnecting") == 0


def connect_as(raw_client, port: int, name: str, session: str, receive_files: bool = True):
    """A raw connection of `name` naming its session, welcomed."""
    raw = raw_client(port, name)
    raw.send(frames.Hello(version=frames.PROTOCOL_VERSION, session=session, receive_files=receive_files))
    assert isinstance(raw.next_frame(), frames.Hello)
    assert isinstance(raw.next_frame(), frames.Welcome)
    return raw


def receive(raw, offer: frames.Offer, offset: int = 0) -> bytes:
    """Accept `offer` from `offset`, read its chunks to its end and verify it, as a receiver does."""
    raw.send(frames.Accept(id=offer.id, offset=offset))
    data = bytearray()
    while True:
        frame = raw.next_frame(20)
        assert frame is not None, "closed while receiving"
        if isinstance(frame, frames.Chunk) and frame.id == offer.id:
            data += frame.data
        elif isinstance(frame, frames.End) and frame.id == offer.id:
            break
    return bytes(data)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sender", ["bob", "the operator"])
def test_a_file_cut_off_on_one_device_reaches_the_recipient_still_present(room, raw_client, tmp_path, sender):
    """dave is here twice (a laptop, then a phone). bob's file goes to the phone, whose
    connection drops mid-file: bob is told `interrupted` and waits to resume when dave is
    "back", which it learned only from `joined`. dave never left (his laptop is here), so no
    `joined` ever came and the file waited for nothing until RESUME_WAIT ran out. The same
    for a file the operator sends."""
    import os

    bob = room.join("bob") if sender == "bob" else room.server
    laptop = connect_as(raw_client, room.port, "dave", "dave-laptop")
    bob.wait_event("joined", name="dave")
    phone = connect_as(raw_client, room.port, "dave", "dave-phone-1")
    content = os.urandom(3 * 1024 * 1024)
    (tmp_path / "photos.zip").write_bytes(content)
    bob.send(f"/send @dave {tmp_path / 'photos.zip'}")
    offer = next_offer(phone)  # the newest connection that receives files
    phone.send(frames.Accept(id=offer.id, offset=0))
    frames_until(phone, frames.Chunk)
    phone.close()  # the phone's network goes: no bye
    assert "dave" in bob.wait_event("file_interrupted", to="dave")["reason"]
    try:
        again = next_offer(laptop, timeout=20)
    except TimeoutError as exc:
        raise AssertionError(f"photos.zip was never offered to dave again; bob: {bob.events[-4:]}") from exc
    assert again.name == "photos.zip" and again.sha256 == offer.sha256
    assert receive(laptop, again) == content
    laptop.send(frames.Result(id=again.id, ok=True, sha256=again.sha256))
    bob.wait_event("file_delivered", to="dave", name="photos.zip")
    assert bob.count("left", name="dave") == 0


def test_an_id_whose_offer_was_cancelled_before_its_accept_may_be_offered_again(make_room, raw_client):
    """protocol.md: the server forgets an id cancelled before its accept at the sender's next
    offer, and only an id *still open* may not be offered again. The next offer reusing that id
    was checked before the forgetting, and the sender was thrown out ("offered twice")."""
    room = make_room("--max-file-size", "1KB")  # the operator, the only recipient, refuses 2 000 bytes
    raw = raw_client(room.port)
    raw.hello()
    big = b"x" * 2000
    assert raw.offer(5, "big.bin", big) is None  # recipients [server], its refusal, then cancel
    small = b"small enough"
    raw.send_file(5, "small.txt", small)
    room.server.wait_event("file_received", name="small.txt")
    result = frames_until(raw, frames.Result)[-1]
    while not (result.id == 5 and result.ok):
        result = frames_until(raw, frames.Result)[-1]
    assert result.sha256 == hashlib.sha256(small).hexdigest()


@pytest.mark.timeout(60)
def test_one_identity_cannot_open_connections_without_end(room, raw_client):
    """Before issue 11 one certificate meant one connection (a second replaced the first). Now one
    identity may have several, and nothing bounded them: one member's script could hold thousands
    of sessions (a thread and ~300 KiB each on the server). Past the cap, a new one is refused."""
    from securechat.rooms.room import MAX_CONNECTIONS_PER_IDENTITY

    bob = connect_as(raw_client, room.port, "bob", "bob-chat-1")
    mine = [connect_as(raw_client, room.port, "dave", f"dave-{i:04d}") for i in range(MAX_CONNECTIONS_PER_IDENTITY)]
    one_more = raw_client(room.port)
    one_more.send(frames.Hello(version=frames.PROTOCOL_VERSION, session="dave-extra"))
    got = one_more.frames_until_closed()
    assert not [f for f in got if isinstance(f, frames.Welcome)], got
    assert "connections" in [f for f in got if isinstance(f, frames.Bye)][-1].reason
    mine[-1].send(frames.Chat(text="the others are fine"))
    assert frames_until(bob, frames.Chat)[-1].text == "the others are fine"
    # A reconnect of one of its sessions replaces that one: it is never counted against the cap.
    again = connect_as(raw_client, room.port, "dave", "dave-0000")
    assert "same session" in [f for f in mine[0].frames_until_closed() if isinstance(f, frames.Bye)][-1].reason
    again.send(frames.Who())
    assert frames_until(again, frames.Who)[-1].names == ["bob", "dave", "server"]


def test_another_identitys_session_id_replaces_nothing(room, raw_client):
    """Sessions are per identity: naming bob's session with dave's certificate throws nobody out."""
    bob = connect_as(raw_client, room.port, "bob", "bob-chat-1")
    dave = connect_as(raw_client, room.port, "dave", "bob-chat-1")
    for _ in range(3):  # and replacing himself in a loop changes nothing for bob either
        dave = connect_as(raw_client, room.port, "dave", "bob-chat-1")
    dave.send(frames.Chat(text="hello bob", to="bob"))
    seen = frames_until(bob, frames.Chat)
    assert seen[-1].text == "hello bob" and seen[-1].sender == "dave"
    assert not [f for f in seen if isinstance(f, frames.Bye)], seen
    # Each replaced his only connection: announced as joined again (batched), never as left.
    assert ("joined", "dave") in presence(seen) and all(kind == "joined" for kind, _ in presence(seen)), seen


def test_accepts_and_verdicts_for_transfers_never_offered_change_nothing(room, raw_client, tmp_path):
    """A one-shot connection (never offered files) and a second connection of the recipient
    answer every transfer id they can guess: ignored, nobody is thrown out, the file arrives."""
    alice = room.join("alice")
    carol = connect_as(raw_client, room.port, "carol", "carol-chat")
    alice.wait_event("joined", name="carol")
    carol_script = connect_as(raw_client, room.port, "carol", "carol-script", receive_files=False)
    dave = raw_client(room.port)
    dave.hello()
    content = b"q" * 200_000
    (tmp_path / "report.pdf").write_bytes(content)
    alice.send(f"/send @carol {tmp_path / 'report.pdf'}")
    offer = next_offer(carol)
    for guesser in (carol_script, dave):
        for guess in range(1, offer.id + 3):
            guesser.send(frames.Accept(id=guess, offset=len(content)))
            guesser.send(frames.Result(id=guess, ok=False, reason="not mine to refuse"))
    guesser.send(frames.Who())
    frames_until(guesser, frames.Who)  # every guess was handled before this answer
    assert receive(carol, offer) == content
    carol.send(frames.Result(id=offer.id, ok=True, sha256=offer.sha256))
    delivered = alice.wait_event("file_delivered", to="carol", name="report.pdf")
    assert delivered["sha256"] == hashlib.sha256(content).hexdigest()
    assert alice.count("file_failed") == 0 and alice.count("left") == 0


@pytest.mark.timeout(120)
def test_presence_of_an_identity_whose_connections_come_and_go_at_once(room, raw_client, pki):
    """Connections of one identity arriving and leaving concurrently: an observer sees dave's
    joined and left strictly alternate, and ends with the room's own answer to who."""
    from securechat.pki.tls import ClientFiles

    bob = connect_as(raw_client, room.port, "bob", "bob-watch-1")
    files = ClientFiles.from_certs_dir(pki, "dave")
    errors: list[BaseException] = []

    def come_and_go(i: int, stay: bool) -> None:
        try:
            dave = RawClient(room.port, files)
            dave.send(frames.Hello(version=frames.PROTOCOL_VERSION, session=f"dave-{i:04d}"))
            assert isinstance(dave.next_frame(), frames.Hello) and isinstance(dave.next_frame(), frames.Welcome)
            if stay:
                kept.append(dave)
            elif i % 2:
                dave.send(frames.Bye(reason="done"))
                dave.frames_until_closed()
                dave.close()
            else:
                dave.close()  # dropped, no bye
        except BaseException as exc:  # reported below
            errors.append(exc)

    kept: list = []
    for round_ in range(4):
        threads = [threading.Thread(target=come_and_go, args=(round_ * 10 + i, round_ == 2 and i == 0), daemon=True)
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for still in kept[:]:  # the one that stayed leaves last
        still.close()
    carol = connect_as(raw_client, room.port, "carol", "carol-late-1")
    for _ in range(500):  # until the room has seen every dave connection go
        carol.send(frames.Who())
        if "dave" not in frames_until(carol, frames.Who)[-1].names:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("dave is still in the room after all his connections closed")
    bob.send(frames.Who())
    seen = frames_until(bob, frames.Who)
    changes = [kind for kind, name in presence(seen) if name == "dave"]
    # Batched (protocol 3): a stay shorter than one batch is not announced at all, so there may
    # be none; but what bob is told alternates, and leaves dave gone.
    assert not changes or (changes[0] == "joined" and changes[-1] == "left"), changes
    assert all(a != b for a, b in zip(changes, changes[1:])), changes
    assert seen[-1].names == ["bob", "carol", "server"]
