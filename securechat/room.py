"""The room: who is present, chat fan-out, and files relayed to every recipient.

Everyone in the room is a Participant: a remote connection (server.Session) or
the operator at the server's terminal (server.Operator). The room never
touches sockets; it calls Participant methods, which queue frames.

A file is relayed, not stored. The offer goes to every recipient, and each
answers with the offset it wants the bytes from (it may hold part of the
file from an interrupted attempt); once all have answered (or
ACCEPT_TIMEOUT passed), the sender is told the smallest offset and starts
there. Each chunk is framed once and the same bytes are queued to every
recipient, minus the leading bytes a recipient already has. When a recipient's queue
is full, the sender's connection stops reading until it drains (TCP then
slows the sender), so memory stays bounded by the queues, not by the file.
The SHA-256 that each recipient checks is the one the original sender
computed; the server never vouches for a file's content.

Identities and connections: one identity (certificate name) may have several
connections at once (a laptop and a phone, a chat and a `securechat send`).
The room announces `joined` for an identity's first connection and `left` for
its last. Chat reaches every connection of its addressee. A file goes to one
connection per identity, its newest that receives files (a one-shot `send`
never does), so each recipient name gives exactly one verdict. A connection
that names the session of an older one (a reconnect) replaces only that one.
The operator's identity is never taken: nobody else joins under its name.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable

from . import frames
from .identity import same_name
from .outbox import Outbox

Pause = Callable[[Outbox], None] | None  # None: block instead (for threads that may)

# Seconds a recipient may take to answer an offer. Nobody gets a byte until every
# recipient has answered (the sender needs the smallest offset), so one frozen
# member would hold up the room: past this it is left out of that file and told.
# The same limit as a stalled queue; checking a kept part takes ~1 s per GiB.
ACCEPT_TIMEOUT = 10.0
# Connections one identity may hold at once (devices, chats, `send` scripts). Each costs the
# server a thread and buffers; one certificate must not be able to hold thousands.
MAX_CONNECTIONS_PER_IDENTITY = 32


class Participant:
    """What the room needs from a member. Subclasses: server.Session, server.Operator.

    The room calls these with its lock held. They may queue, print or wait for a
    thread of their own to finish, but nothing they wait for may need the room lock:
    callbacks into the room from such threads go through a thread of their own
    (see Operator.offer), or the room deadlocks.
    """

    name: str
    session: str | None = None  # the client's session id; a reconnect names it again
    receives_files: bool = True  # False for a one-shot `send` connection

    def greet(self, members: list[str]) -> None:
        """Welcome this connection, with the names of everyone else present (under the room lock,
        so nobody can join between the list and this member's arrival and be missed)."""

    def deliver(self, message: frames.Message, encoded: bytes | None = None) -> None:
        raise NotImplementedError

    def offer(self, relay: "Relay") -> None:
        """Offer the file; the answer comes back as Room.accepted() or Room.verdict()."""
        raise NotImplementedError

    def start_sending(self, relay: "Relay") -> None:
        """As the relay's sender: every recipient answered, send from relay.start on."""
        raise NotImplementedError

    def chunk(self, relay: "Relay", frame: bytes, data: memoryview, pause: Pause) -> bool:
        """Pass on one chunk; False when this participant can take no more of this relay."""
        raise NotImplementedError

    def end(self, relay: "Relay", sha256: str) -> None:
        raise NotImplementedError

    def abort(self, relay: "Relay", reason: str) -> None:
        raise NotImplementedError

    def kick(self, reason: str) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class Relay:
    id: int
    sender: Participant
    sender_id: int  # the id the sender chose for it
    name: str
    size: int
    sha256: str
    targets: list[Participant]  # still being fed chunks
    pending: dict[str, Participant]  # still owing a verdict
    private: bool = False  # sent to one recipient by name
    offsets: dict[str, int] = field(default_factory=dict)  # where each recipient wants the bytes from
    start: int | None = None  # where the sender starts, once every recipient answered the offer
    received: int = 0  # the sender's position in the file
    finished: bool = False  # the sender sent end or abort
    ended: bool = False  # the sender sent end: only now may a recipient report the file verified
    ready: threading.Event = field(default_factory=threading.Event)  # start is known, or finished
    lock: threading.Lock = field(default_factory=threading.Lock)


class Room:
    def __init__(self, operator_name: str) -> None:
        self.operator_name = operator_name
        self._lock = threading.RLock()
        self._members: dict[str, list[Participant]] = {}  # identity -> its connections, oldest first
        self._relays: dict[int, Relay] = {}
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- members

    def names(self) -> list[str]:
        """Everyone present, each identity once."""
        with self._lock:
            return sorted(self._members)

    def members(self) -> list[Participant]:
        """Every connection in the room."""
        with self._lock:
            return [c for connections in self._members.values() for c in connections]

    def join(self, member: Participant) -> bool:
        """Welcome `member` and add it, in one step; False (and kicked) if it may not join."""
        with self._lock:
            connections = self._members.get(member.name, [])
            is_operator = member.name == self.operator_name and not connections
            if not is_operator and same_name(member.name, self.operator_name):
                member.kick(f"the name {member.name!r} is the server operator's")
                return False
            if member.session is not None:
                for old in [c for c in connections if c.session == member.session]:
                    connections.remove(old)
                    self._forget(old, f"{old.name} reconnected", interrupted=True)
                    old.kick("replaced by a reconnect of the same session")
            if len(connections) >= MAX_CONNECTIONS_PER_IDENTITY:
                member.kick(f"{member.name} has {MAX_CONNECTIONS_PER_IDENTITY} connections here already")
                return False
            member.greet(sorted(n for n in self._members if n != member.name))
            if not connections:
                self._broadcast(frames.Presence(joined=[member.name], left=[]), skip=member)
            connections.append(member)
            self._members[member.name] = connections
            return True

    def leave(self, member: Participant, reason: str, interrupted: bool = False) -> None:
        """`interrupted`: the connection dropped (rather than the member saying goodbye)."""
        with self._lock:
            connections = self._members.get(member.name, [])
            if member in connections:
                connections.remove(member)
                if not connections:
                    del self._members[member.name]
                    self._broadcast(frames.Presence(joined=[], left=[{"name": member.name, "reason": reason}]), skip=member)
            self._forget(member, f"{member.name} left ({reason})" if reason else f"{member.name} left", interrupted)

    def _forget(self, member: Participant, reason: str, interrupted: bool) -> None:
        """Settle every relay `member` was part of."""
        for relay in list(self._relays.values()):
            if relay.sender is member:
                if not relay.finished:
                    self._abort(relay, f"{member.name} left")
                self._relays.pop(relay.id, None)
            elif member.name in relay.pending and relay.pending[member.name] is member:
                self._verdict(relay, member.name, False, reason, None, interrupted)

    def _broadcast(self, message: frames.Message, skip: Participant | None = None) -> None:
        encoded = frames.encode(message)
        for connections in self._members.values():
            for member in connections:
                if member is not skip:
                    member.deliver(message, encoded)

    def _receiver(self, name: str) -> Participant | None:
        """The connection of `name` that files go to: its newest one that receives files."""
        for member in reversed(self._members.get(name, ())):
            if member.receives_files:
                return member
        return None

    # ---------------------------------------------------------------- chat

    def chat(self, sender: Participant, text: str, to: str | None = None) -> str | None:
        """Relay a line to every other connection (or every connection of `to`); returns why not."""
        message = frames.Chat(text=text, to=to, sender=sender.name)
        with self._lock:
            if to is None:
                self._broadcast(message, skip=sender)
                return None
            if to == sender.name:
                return "that is you"
            targets = self._members.get(to)
            if not targets:
                return f"nobody named {to!r} is here"
            encoded = frames.encode(message)
            for target in targets:
                target.deliver(message, encoded)
        return None

    # ---------------------------------------------------------------- files

    def start_relay(self, sender: Participant, sender_id: int, name: str, size: int, sha256: str,
                    to: str | None) -> Relay | None:
        """Offer the file to its recipients and tell the sender who they are.

        None when nobody receives it (the sender was told why, in `recipients`): that
        transfer is over before it began, and the caller keeps nothing of it."""
        with self._lock:
            why_nobody = None
            if to is None:
                found = (self._receiver(n) for n in self._members if n != sender.name)
                targets = [t for t in found if t is not None]
            elif to == sender.name:
                targets, why_nobody = [], "you cannot send a file to yourself"
            elif to not in self._members:
                targets, why_nobody = [], f"nobody named {to!r} is here"
            else:
                target = self._receiver(to)
                targets = [] if target is None else [target]
                if target is None:
                    why_nobody = f"{to} is connected only to send, not to receive files"
            relay_id = next(self._ids) % (frames.MAX_TRANSFER_ID + 1)
            while relay_id in self._relays or relay_id == 0:
                relay_id = next(self._ids) % (frames.MAX_TRANSFER_ID + 1)
            relay = Relay(relay_id, sender, sender_id, name, size, sha256, [], {t.name: t for t in targets},
                          private=to is not None)
            sender.deliver(frames.Recipients(id=sender_id, names=sorted(relay.pending), reason=why_nobody))
            if not targets:
                return None
            self._relays[relay_id] = relay
            timer = threading.Timer(ACCEPT_TIMEOUT, self._offer_expired, (relay,))
            timer.daemon = True
            timer.start()
            for target in targets:
                # A target joins the relay's data path only once its offer is out: whatever goes
                # wrong later (an abort, the sender leaving) is told only to those offered it.
                if relay.pending.get(target.name) is not target:
                    continue  # settled already (an earlier target's refusal cannot do this, but be sure)
                relay.targets.append(target)
                target.offer(relay)
        return relay

    def accepted(self, relay_id: int, recipient: Participant, offset: int) -> bool:
        """A recipient's answer to an offer; False if the offset is past the end of the file."""
        with self._lock:
            relay = self._relays.get(relay_id)
            if relay is None or relay.pending.get(recipient.name) is not recipient or relay.start is not None:
                return True  # late, or for a relay already settled
            if offset > relay.size:
                return False
            relay.offsets.setdefault(recipient.name, offset)
            self._maybe_start(relay)
        return True

    def _maybe_start(self, relay: Relay) -> None:
        if relay.start is not None or relay.finished or not relay.pending:
            return
        if all(name in relay.offsets for name in relay.pending):
            relay.start = relay.received = min(relay.offsets[name] for name in relay.pending)
            # Ready before the sender hears of it: its first chunk may arrive (on another
            # thread) as soon as the accept is out, and is a protocol error if not ready.
            relay.ready.set()
            relay.sender.start_sending(relay)

    def _offer_expired(self, relay: Relay) -> None:
        with self._lock:
            if relay.ready.is_set() or self._relays.get(relay.id) is not relay:
                return
            for name, member in list(relay.pending.items()):
                if name not in relay.offsets:
                    with relay.lock:
                        offered = member in relay.targets
                        if offered:
                            relay.targets.remove(member)
                    if offered:  # not after an end (a sender may end before the accept): one of them only
                        member.abort(relay, "no answer to the offer in time")
                    self._verdict(relay, name, False, f"did not answer the offer within {ACCEPT_TIMEOUT:.0f} s", None)

    def relay_chunk(self, relay: Relay, data: memoryview, pause: Pause, frame: bytes | None = None) -> str | None:
        """Pass a chunk to every recipient, from its own offset on; returns an error for the sender, if any."""
        position = relay.received
        relay.received += len(data)
        if relay.received > relay.size:
            with self._lock:
                self._abort(relay, f"sender sent more than the {relay.size} bytes it declared")
            return f"{relay.name}: you sent more than the {relay.size} bytes you declared"
        for target in list(relay.targets):
            skip = relay.offsets.get(target.name, 0) - position
            if skip >= len(data):
                continue  # it has these bytes already
            if skip > 0:
                part = data[skip:]
                ok = target.chunk(relay, frames.encode_chunk(relay.id, part), part, pause)
            else:
                if frame is None:
                    frame = frames.encode_chunk(relay.id, data)
                ok = target.chunk(relay, frame, data, pause)
            if not ok:
                with relay.lock:
                    if target in relay.targets:
                        relay.targets.remove(target)
        return None

    def end_relay(self, relay: Relay, sha256: str) -> None:
        relay.finished = relay.ended = True  # before any end goes out: a verdict may come back at once
        # Taken under relay.lock: a recipient's thread may be removing itself from the list right now.
        with relay.lock:
            targets, relay.targets = relay.targets, []
        for target in targets:
            target.end(relay, sha256)
        with self._lock:
            if not relay.pending:
                self._relays.pop(relay.id, None)

    def sender_aborted(self, relay: Relay, reason: str) -> None:
        with self._lock:
            self._abort(relay, reason)

    def _abort(self, relay: Relay, reason: str) -> None:
        relay.finished = True
        relay.ready.set()
        with relay.lock:  # the sender's thread may be removing a target that could take no more
            targets, relay.targets = relay.targets, []
        for target in targets:
            target.abort(relay, reason)
        for name in list(relay.pending):
            self._verdict(relay, name, False, reason, None)

    def verdict(self, relay_id: int, recipient: Participant, ok: bool, reason: str,
                sha256: str | None) -> str | None:
        """A recipient's verdict: relayed to the sender as a Result naming the recipient.

        Returns a protocol error of the recipient's, if the verdict is one: nobody can
        have verified a file whose end the sender has not sent, or under another hash."""
        with self._lock:
            relay = self._relays.get(relay_id)
            if relay is None or relay.pending.get(recipient.name) is not recipient:
                return None  # late, repeated, or for a relay that is already settled
            if ok and not relay.ended:
                return f"result ok for transfer {relay_id} before its end"
            if ok and sha256 != relay.sha256:
                return f"result ok for transfer {relay_id} names another SHA-256 than the offer's"
            with relay.lock:
                if recipient in relay.targets:
                    relay.targets.remove(recipient)
            self._verdict(relay, recipient.name, ok, reason, sha256)
        return None

    def _verdict(self, relay: Relay, name: str, ok: bool, reason: str, sha256: str | None,
                 interrupted: bool = False) -> None:
        relay.pending.pop(name, None)
        relay.sender.deliver(frames.Result(id=relay.sender_id, ok=ok, reason=reason[:900], sha256=sha256, sender=name,
                                           interrupted=interrupted))
        self._maybe_start(relay)
        if not relay.pending:
            if not relay.finished:
                # Nobody is left to receive it: tell the sender to stop sending.
                relay.sender.deliver(frames.Cancel(id=relay.sender_id, reason="no recipient left"))
                relay.finished = True
            self._relays.pop(relay.id, None)
            relay.ready.set()
