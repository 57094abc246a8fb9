"""An in-memory room participant for tests: records what the room gives it (no sockets, no threads)."""

from __future__ import annotations

from securechat.room import Participant


class Member(Participant):
    """A participant that records what the room gives it."""

    def __init__(self, name: str, session: str | None = None, receives_files: bool = True) -> None:
        self.name, self.session, self.receives_files = name, session, receives_files
        self.got: list = []
        self.kicked: str | None = None
        self.welcome: list[str] | None = None

    def greet(self, members):
        self.welcome = members

    def deliver(self, message, encoded=None):
        self.got.append(message)

    def offer(self, relay):
        self.got.append(("offer", relay))

    def start_sending(self, relay):
        self.got.append(("start", relay.start))

    def chunk(self, relay, frame, data, pause):
        self.got.append(("chunk", bytes(data)))
        return True

    def end(self, relay, sha256):
        self.got.append(("end", sha256))

    def abort(self, relay, reason):
        self.got.append(("abort", reason))

    def kick(self, reason):
        self.kicked = reason

    def of(self, kind):
        return [m for m in self.got if isinstance(m, kind)]


def presence(received) -> list[tuple[str, str]]:
    """("joined"|"left", name) for every presence change in `received`, in the order a client applies them."""
    from securechat import frames

    changes = []
    for frame in received:
        if isinstance(frame, frames.Presence):
            changes += [("left", d["name"]) for d in frame.left] + [("joined", n) for n in frame.joined]
    return changes
