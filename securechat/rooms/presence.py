"""Who joined and who left, announced in batches (protocol 3, docs/protocol.md §5 Presence).

One `presence` frame per batch, encoded once for everyone, instead of one
`joined` per arrival per member: a reconnect storm of N members costs N
frames to each member rather than N squared lines in all. Pure: the time is
an argument.
"""

from __future__ import annotations

from collections.abc import Container

from securechat.wire import frames

# A change is announced at once unless a batch went out less than this ago;
# then it waits until this much time has passed since that batch.
PRESENCE_INTERVAL = 0.5


class Presence:
    def __init__(self, now: float) -> None:
        self.announced: set[str] = set()  # present, as everyone was last told
        self._changed: set[str] = set()
        self._departed: dict[str, str] = {}  # name -> reason, for identities whose last connection went
        self._rejoined: set[str] = set()  # only connection replaced by a reconnect: announce it again
        self._sent_at = now - PRESENCE_INTERVAL

    def arrived(self, name: str) -> None:
        self._changed.add(name)

    def departed(self, name: str, reason: str) -> None:
        self._changed.add(name)
        self._departed[name] = reason

    def rejoined(self, name: str) -> None:
        self._changed.add(name)
        self._rejoined.add(name)

    @property
    def pending_at(self) -> float | None:
        """When the open batch is due, or None if nothing changed."""
        return self._sent_at + PRESENCE_INTERVAL if self._changed else None

    def due(self, now: float) -> bool:
        return bool(self._changed) and now >= self._sent_at + PRESENCE_INTERVAL

    def flush(self, present: Container[str], now: float) -> frames.Presence | None:
        """The batch to send now (None if it says nothing); `present`: who is in the room now."""
        if not self._changed:
            return None
        joined, left = [], []
        for name in sorted(self._changed):
            was, is_here = name in self.announced, name in present
            bounced = name in self._departed
            if was and bounced:
                reason = self._departed[name]
                left.append({"name": name, "reason": reason} if reason else {"name": name})
            if is_here and (not was or bounced or name in self._rejoined):
                joined.append(name)
            if is_here:
                self.announced.add(name)
            else:
                self.announced.discard(name)
        self._changed.clear()
        self._departed.clear()
        self._rejoined.clear()
        self._sent_at = now
        if not joined and not left:
            return None
        return frames.Presence(joined=joined, left=left)
