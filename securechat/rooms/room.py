"""The room as a pure state machine: who is present, chat fan-out, files relayed.

No sockets, threads, locks, timers or callbacks. The server's loop tells the room
what happened (`join`, `handle`, `leave`, `tick`), always with the time `now`, and
carries out the actions it gets back (actions.py); so every rule with a deadline
is tested with a fake clock in milliseconds (tests/test_room_rules.py).

A file is relayed, not stored. The offer goes to every recipient; each answers
with the offset it wants the bytes from (it may keep part of the file from an
interrupted attempt); once all have answered (or ACCEPT_TIMEOUT passed), the
sender is told the smallest offset. Each chunk is framed once, and each
recipient gets it from its own offset on. The SHA-256 each recipient checks is
the original sender's: the server never vouches for a file. Flow control (a full
queue pauses the sender) is the loop's; the room never knows how full a queue is.

One identity (certificate name) may have several connections: announced as
joined with its first and as left with its last, in batches (presence.py). Chat
reaches every connection of its addressee; a file goes to one connection per
identity (its newest that receives files), so each name gives one verdict. A
reconnect naming an older connection's session replaces only that one. The
operator's identity is never taken.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from securechat.pki.identity import same_name
from securechat.rooms.actions import Action, Close, Fanout, PauseReading, Send, SendData
from securechat.rooms.presence import Presence
from securechat.rooms.ratelimit import CHAT_RATE, WARNING_INTERVAL, MemberBudget
from securechat.wire import frames

# Seconds a recipient may take to answer an offer. Nobody gets a byte until every
# recipient has answered (the sender needs the smallest offset), so one frozen
# member would hold up the room: past this it is left out of that file and told.
ACCEPT_TIMEOUT = 10.0
# Connections one identity may hold at once (devices, chats, `send` scripts).
MAX_CONNECTIONS_PER_IDENTITY = 32


@dataclass(eq=False)
class Member:
    """One connection, as the room sees it. `link` is the loop's; the room never touches it."""

    name: str
    session: str | None = None  # a reconnect names the same session and replaces this one
    receives_files: bool = True  # False for a one-shot `send` connection
    operator: bool = False  # the server's own operator, attached in-process
    link: object = None
    in_room: bool = False


@dataclass(eq=False)
class Relay:
    id: int
    sender: Member
    sender_id: int  # the id the sender chose for it
    name: str
    size: int
    sha256: str
    expires: float  # recipients that have not answered by then are left out
    pending: dict[str, Member]  # still owing a verdict
    targets: list[Member] = field(default_factory=list)  # offered it, and still fed chunks
    private: bool = False  # sent to one recipient by name
    offsets: dict[str, int] = field(default_factory=dict)  # where each recipient wants the bytes from
    start: int | None = None  # where the sender starts, once every recipient answered
    received: int = 0  # the sender's position in the file
    finished: bool = False  # the sender sent end or abort, or nobody is left


class Room:
    def __init__(self, operator_name: str, now: float) -> None:
        self.operator_name = operator_name
        self._members: dict[str, list[Member]] = {}  # identity -> its connections, oldest first
        self._everyone: list[Member] | None = []  # every connection; None: to be rebuilt
        self._relays: dict[int, Relay] = {}
        self._uploads: dict[tuple[Member, int], Relay] = {}  # (sender, its id) -> relay
        self._expiries: list[tuple[float, int]] = []  # (when, relay id), a heap
        self._ids = itertools.count(1)
        self._budgets: dict[str, MemberBudget] = {}  # per identity: 32 connections do not buy 32 budgets
        self.presence = Presence(now)

    # ------------------------------------------------------------ members

    def names(self) -> list[str]:
        return sorted(self._members)

    def connections(self) -> list[Member]:
        if self._everyone is None:
            self._everyone = [c for conns in self._members.values() for c in conns]
        return self._everyone

    def join(self, member: Member, now: float) -> list[Action]:
        """Welcome `member` and add it (or refuse it), in one step."""
        name = member.name
        connections = self._members.setdefault(name, [])
        actions: list[Action] = []
        if not member.operator and same_name(name, self.operator_name):
            self._drop_if_empty(name)
            return [Close(member, f"the name {name!r} is the server operator's")]
        if member.session is not None:
            for old in [c for c in connections if c.session == member.session and not c.operator]:
                self._remove(old, None)
                actions += self._forget(old, f"{name} reconnected", interrupted=True)
                actions.append(Close(old, "replaced by a reconnect of the same session"))
            connections = self._members.setdefault(name, [])
            if not connections and name in self.presence.announced:
                self.presence.rejoined(name)  # whoever was sending it a file offers it again
        if len(connections) >= MAX_CONNECTIONS_PER_IDENTITY:
            self._drop_if_empty(name)
            return actions + [Close(member, f"{name} has {MAX_CONNECTIONS_PER_IDENTITY} connections here already")]
        actions.append(Send(member, frames.Welcome(you=name, server=self.operator_name,
                                                   members=sorted(n for n in self._members if n != name and
                                                                  self._members[n]))))
        connections.append(member)
        member.in_room = True
        self._everyone = None
        if len(connections) == 1:
            self.presence.arrived(name)
        return actions + self._presence_if_due(now)

    def leave(self, member: Member, reason: str, interrupted: bool, now: float) -> list[Action]:
        """`member`'s connection closed; `interrupted`: it dropped rather than said goodbye."""
        if not member.in_room:
            return []
        self._remove(member, reason)
        settled = self._forget(member, f"{member.name} left ({reason})" if reason else f"{member.name} left",
                               interrupted)
        if settled and member.name not in self._members:
            # Its senders hear it left before they hear their transfers were cut off: a sender
            # offers an interrupted file again at once to anyone still present.
            return self._presence_now(now) + settled
        return settled + self._presence_if_due(now)

    def _remove(self, member: Member, reason: str | None) -> None:
        """`reason` None: replaced by a reconnect, which is no departure."""
        connections = self._members[member.name]
        connections.remove(member)
        member.in_room = False
        self._everyone = None
        if not connections:
            del self._members[member.name]
            if reason is not None:
                self.presence.departed(member.name, reason)

    def _drop_if_empty(self, name: str) -> None:
        if not self._members.get(name):
            self._members.pop(name, None)

    def _forget(self, member: Member, reason: str, interrupted: bool) -> list[Action]:
        """Settle every relay `member` was part of."""
        actions: list[Action] = []
        for (sender, sender_id), relay in list(self._uploads.items()):
            if sender is member:
                del self._uploads[(sender, sender_id)]
                if not relay.finished:
                    actions += self._abort(relay, f"{member.name} left")
        for relay in list(self._relays.values()):
            if relay.pending.get(member.name) is member:
                if member in relay.targets:
                    relay.targets.remove(member)
                actions += self._verdict(relay, member.name, False, reason, None, interrupted)
        return actions

    # ------------------------------------------------------------ presence

    def _presence_if_due(self, now: float) -> list[Action]:
        if not self.presence.due(now):
            return []
        return self._presence_now(now)

    def _presence_now(self, now: float) -> list[Action]:
        message = self.presence.flush(self._members, now)
        if message is None:
            return []
        return [Fanout(self.connections(), frames.encode(message))]

    # ------------------------------------------------------------ what members send

    def handle(self, member: Member, message: frames.Frame, now: float) -> list[Action]:
        """One message from `member`, already checked by its ServerProtocol."""
        if not member.in_room:
            return []
        match message:
            case frames.Chunk():
                return self._chunk(member, message.id, memoryview(message.data))
            case frames.Chat():
                return self._chat(member, message, now)
            case frames.Offer():
                return self._offer(member, message, now)
            case frames.Accept():
                return self._accepted(member, message.id, message.offset)
            case frames.End():
                return self._end(member, message.id, message.sha256)
            case frames.Abort():
                relay = self._uploads.pop((member, message.id), None)
                if relay is None or relay.finished:
                    return []
                return self._abort(relay, message.reason or f"{member.name} stopped sending")
            case frames.Result():
                return self._result(member, message)
            case frames.Who():
                return self._presence_now(now) + [Send(member, frames.Who(names=self.names()))]
        return []  # hello and bye are the loop's

    def _budget(self, name: str, now: float) -> MemberBudget:
        budget = self._budgets.get(name)
        if budget is None:
            budget = self._budgets[name] = MemberBudget.fresh(now)
        return budget

    def _chat(self, member: Member, chat: frames.Chat, now: float) -> list[Action]:
        budget = self._budget(member.name, now)
        if not budget.chat.allow(now):  # a flood of lines is refused; nobody else notices
            if now - budget.warned_at < WARNING_INTERVAL:
                return []
            budget.warned_at = now
            return [Send(member, frames.Notice(text=f"too many lines (limit {CHAT_RATE:.0f} per second): "
                                                    "lines dropped, slow down"))]
        to = chat.to
        if to is not None and (to == member.name or not self._members.get(to)):
            problem = "that is you" if to == member.name else f"nobody named {to!r} is here"
            return [Send(member, frames.Notice(text=f"/msg {to}: {problem}"))]
        actions = self._presence_now(now)  # nobody reads a line from someone not yet announced
        frame = frames.encode(frames.Chat(text=chat.text, to=to, sender=member.name))
        if to is None:
            actions.append(Fanout(self.connections(), frame, skip=member))
        else:
            actions.append(Fanout(list(self._members[to]), frame))
        return actions

    def _receiver(self, name: str) -> Member | None:
        """The connection of `name` that files go to: its newest one that receives files."""
        for member in reversed(self._members.get(name, ())):
            if member.receives_files:
                return member
        return None

    def _offer(self, member: Member, offer: frames.Offer, now: float) -> list[Action]:
        actions: list[Action] = []
        offers = self._budget(member.name, now).offers
        offers.take(now)
        if offers.ready_at(now) > now:
            actions.append(PauseReading(member, offers.ready_at(now)))
        actions += self._presence_now(now)
        to, why_nobody = offer.to, None
        if to is None:
            found = (self._receiver(n) for n in self._members if n != member.name)
            targets = [t for t in found if t is not None]
        elif to == member.name:
            targets, why_nobody = [], "you cannot send a file to yourself"
        elif not self._members.get(to):
            targets, why_nobody = [], f"nobody named {to!r} is here"
        else:
            target = self._receiver(to)
            targets = [] if target is None else [target]
            if target is None:
                why_nobody = f"{to} is connected only to send, not to receive files"
        names = sorted(t.name for t in targets)
        actions.append(Send(member, frames.Recipients(id=offer.id, names=names, reason=why_nobody)))
        if not targets:
            return actions  # over before it began: nothing more comes for its id
        relay_id = self._new_id()
        relay = Relay(relay_id, member, offer.id, offer.name, offer.size, offer.sha256, now + ACCEPT_TIMEOUT,
                      {t.name: t for t in targets}, private=to is not None)
        self._relays[relay_id] = relay
        self._uploads[(member, offer.id)] = relay
        heapq.heappush(self._expiries, (relay.expires, relay_id))
        for target in targets:
            relay.targets.append(target)
            actions.append(Send(target, frames.Offer(id=relay_id, name=offer.name, size=offer.size,
                                                     sha256=offer.sha256, to=target.name if relay.private else None,
                                                     sender=member.name), stream=True))
        return actions

    def _new_id(self) -> int:
        relay_id = next(self._ids) % (frames.MAX_TRANSFER_ID + 1)
        while relay_id in self._relays or relay_id == 0:
            relay_id = next(self._ids) % (frames.MAX_TRANSFER_ID + 1)
        return relay_id

    def _accepted(self, member: Member, relay_id: int, offset: int) -> list[Action]:
        relay = self._relays.get(relay_id)
        if relay is None or relay.pending.get(member.name) is not member or relay.start is not None:
            return []  # late, or for a relay already settled
        relay.offsets.setdefault(member.name, offset)
        return self._maybe_start(relay)

    def _maybe_start(self, relay: Relay) -> list[Action]:
        if relay.start is not None or relay.finished or not relay.pending:
            return []
        if any(name not in relay.offsets for name in relay.pending):
            return []
        relay.start = relay.received = min(relay.offsets[name] for name in relay.pending)
        return [Send(relay.sender, frames.Accept(id=relay.sender_id, offset=relay.start))]

    def _chunk(self, member: Member, sender_id: int, data: memoryview) -> list[Action]:
        relay = self._uploads.get((member, sender_id))
        if relay is None or relay.finished:
            return []  # refused, cancelled or aborted: chunks already on the way are dropped
        position = relay.received
        relay.received += len(data)
        if relay.received > relay.size:
            return self._abort(relay, f"sender sent more than the {relay.size} bytes it declared")
        actions: list[Action] = []
        whole: bytes | None = None
        for target in relay.targets:
            skip = relay.offsets.get(target.name, 0) - position
            if skip >= len(data):
                continue  # it has these bytes already
            if skip > 0:
                actions.append(SendData(target, frames.encode_chunk(relay.id, data[skip:])))
                continue
            if whole is None:
                whole = frames.encode_chunk(relay.id, data)
            actions.append(SendData(target, whole))
        return actions

    def _end(self, member: Member, sender_id: int, sha256: str) -> list[Action]:
        relay = self._uploads.pop((member, sender_id), None)
        if relay is None or relay.finished:
            return []
        relay.finished = True
        targets, relay.targets = relay.targets, []
        actions: list[Action] = [Send(t, frames.End(id=relay.id, sha256=sha256), stream=True) for t in targets]
        if not relay.pending:
            self._relays.pop(relay.id, None)
        return actions

    def _abort(self, relay: Relay, reason: str) -> list[Action]:
        relay.finished = True
        targets, relay.targets = relay.targets, []
        actions: list[Action] = [Send(t, frames.Abort(id=relay.id, reason=reason[:900]), stream=True)
                                 for t in targets]
        for name in list(relay.pending):
            actions += self._verdict(relay, name, False, reason, None)
        return actions

    def _result(self, member: Member, result: frames.Result) -> list[Action]:
        relay = self._relays.get(result.id)
        if relay is None or relay.pending.get(member.name) is not member:
            return []  # late, repeated, or for a relay already settled
        if member in relay.targets:
            relay.targets.remove(member)
        return self._verdict(relay, member.name, result.ok, result.reason, result.sha256 if result.ok else None)

    def _verdict(self, relay: Relay, name: str, ok: bool, reason: str, sha256: str | None,
                 interrupted: bool = False) -> list[Action]:
        relay.pending.pop(name, None)
        actions: list[Action] = [Send(relay.sender, frames.Result(id=relay.sender_id, ok=ok, reason=reason[:900],
                                                                  sha256=sha256, sender=name,
                                                                  interrupted=interrupted))]
        actions += self._maybe_start(relay)
        if not relay.pending:
            if not relay.finished:  # nobody is left to receive it: the sender may stop
                relay.finished = True
                actions.append(Send(relay.sender, frames.Cancel(id=relay.sender_id, reason="no recipient left")))
            self._relays.pop(relay.id, None)
            self._uploads.pop((relay.sender, relay.sender_id), None)
        return actions

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> list[Action]:
        """Whatever is due at `now`: offers nobody answered in time, a batch of presence."""
        actions: list[Action] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, relay_id = heapq.heappop(self._expiries)
            relay = self._relays.get(relay_id)
            if relay is None or relay.start is not None or relay.expires > now:
                continue
            for name, member in list(relay.pending.items()):
                if name in relay.offsets:
                    continue
                if member in relay.targets:  # not after an end (a sender may end before the accept)
                    relay.targets.remove(member)
                    actions.append(Send(member, frames.Abort(id=relay.id, reason="no answer to the offer in time"),
                                        stream=True))
                actions += self._verdict(relay, name, False,
                                         f"did not answer the offer within {ACCEPT_TIMEOUT:.0f} s", None)
        return actions + self._presence_if_due(now)

    def next_deadline(self) -> float | None:
        """When tick() next has something to do, if ever."""
        deadlines = [self._expiries[0][0]] if self._expiries else []
        if self.presence.pending_at is not None:
            deadlines.append(self.presence.pending_at)
        return min(deadlines) if deadlines else None
