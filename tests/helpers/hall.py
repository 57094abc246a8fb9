"""The server's pure core in memory: a Room and one ServerProtocol per connection, a fake clock.

Like h11's paired-connection tests: no sockets, threads or timers. `Hall`
carries out the room's actions the way the server's loop does, and every
connection (`Seat`) records the frames it would have been sent, decoded from
the bytes the protocol produced.
"""

from __future__ import annotations

from securechat.rooms.actions import Close, Fanout, PauseReading, Send, SendData
from securechat.rooms.room import Member, Room
from securechat.wire import frames
from securechat.wire.server_protocol import ServerProtocol

OPERATOR = "server"


class Seat:
    """One connection: what it was sent, whether it was closed, until when it is not read."""

    def __init__(self, hall: "Hall", name: str, operator: bool = False) -> None:
        self.hall = hall
        self.name = name
        self.protocol = ServerProtocol(name, "test")
        self.member = Member(name, operator=operator, link=self)
        self.got: list = []
        self.closed: tuple[str, str | None] | None = None
        self.paused_until = 0.0

    def receive(self, data: bytes) -> None:
        decoder = frames.FrameDecoder()
        decoder.feed(data)
        while (frame := decoder.next_frame()) is not None:
            self.got.append(frame)

    def of(self, kind) -> list:
        return [f for f in self.got if isinstance(f, kind)]

    def last(self, kind):
        found = self.of(kind)
        assert found, f"{self.name} got no {kind.__name__}: {self.got}"
        return found[-1]

    def send(self, message: frames.Frame) -> None:
        self.hall.send(self, message)


class Hall:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.room = Room(OPERATOR, now)
        self.operator = self.connect(OPERATOR, operator=True)

    def connect(self, name: str, session: str | None = None, receive_files: bool = True,
                operator: bool = False) -> Seat:
        seat = Seat(self, name, operator)
        self.send(seat, frames.Hello(version=frames.PROTOCOL_VERSION, session=session, receive_files=receive_files))
        return seat

    def send(self, seat: Seat, message: frames.Frame) -> None:
        """What the loop does with one frame from `seat` (protocol errors propagate to the test)."""
        checked = seat.protocol.receive(message)
        if checked is None:
            return
        if isinstance(checked, frames.Hello):
            seat.member.session, seat.member.receives_files = checked.session, checked.receive_files
            seat.receive(seat.protocol.welcome_hello())
            self.act(self.room.join(seat.member, self.now))
        elif isinstance(checked, frames.Bye):
            self.leave(seat, "", clean=True)
        else:
            self.act(self.room.handle(seat.member, checked, self.now))

    def leave(self, seat: Seat, reason: str = "", clean: bool = True) -> None:
        self.act(self.room.leave(seat.member, "" if clean else reason, not clean, self.now))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.act(self.room.tick(self.now))

    def act(self, actions) -> None:
        for action in actions:
            if isinstance(action, Fanout):
                for member in action.to:
                    if member is not action.skip:
                        member.link.receive(action.frame)
            elif isinstance(action, SendData):
                action.to.link.receive(action.frame)
            elif isinstance(action, Send):
                action.to.link.receive(action.to.link.protocol.send(action.message))
            elif isinstance(action, PauseReading):
                action.member.link.paused_until = action.until
            elif isinstance(action, Close):
                seat = action.member.link
                seat.closed = (action.reason, action.code)
                self.act(self.room.leave(action.member, action.reason, True, self.now))


def presence(received) -> list[tuple[str, str]]:
    """("joined"|"left", name) for every presence change in `received`, in the order a client applies them."""
    changes = []
    for frame in received:
        if isinstance(frame, frames.Presence):
            changes += [("left", d["name"]) for d in frame.left] + [("joined", n) for n in frame.joined]
    return changes
