"""What the room asks the server's loop to do. Plain data: the room decides, the loop acts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from securechat.wire import frames

if TYPE_CHECKING:
    from securechat.rooms.room import Member


@dataclass(frozen=True, slots=True)
class Send:
    """One message to one connection, through its ServerProtocol (which tracks transfers).

    `stream`: in order with file data (offer, end, abort); otherwise it may overtake it."""

    to: "Member"
    message: frames.Message
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Fanout:
    """One frame, encoded once, to many connections (chat, presence): no per-connection state."""

    to: list["Member"]
    frame: bytes
    skip: "Member | None" = None


@dataclass(frozen=True, slots=True)
class SendData:
    """A CHUNK frame for one recipient; queued behind the file data before it."""

    to: "Member"
    frame: bytes


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Read nothing more from this connection until `until` (rate limits)."""

    member: "Member"
    until: float


@dataclass(frozen=True, slots=True)
class Close:
    """Say goodbye with `reason` (and `code`, for programs) after what is queued, then close."""

    member: "Member"
    reason: str
    code: str | None = None


Action = Union[Send, Fanout, SendData, PauseReading, Close]
