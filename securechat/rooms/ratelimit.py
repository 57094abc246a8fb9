"""Token buckets with the clock passed in (pure, so their rules are tested without sleeping), and a member's budgets."""

from __future__ import annotations

import threading
from dataclasses import dataclass


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up.

    `take(now)` always takes a token and may leave the bucket in debt; the
    caller decides what debt means: chat drops the line (`allow`), offers are
    taken and the member's connection is then not read until `ready_at` (a
    flood is slowed down, and nothing a member sent is lost).
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now
        # One member's connections share a bucket, and each has its own I/O thread.
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)

    def allow(self, now: float) -> bool:
        """Take a token if there is one; False (nothing taken) if there is none."""
        with self._lock:
            self._refill(now)
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

    def take(self, now: float) -> None:
        """Take a token, going into debt if there is none."""
        with self._lock:
            self._refill(now)
            self._tokens -= 1

    def ready_at(self, now: float) -> float:
        """When the bucket is out of debt again (`now` if it is not in debt)."""
        with self._lock:
            self._refill(now)
            return now if self._tokens >= 0 else now + (-self._tokens) / self.rate


CHAT_RATE = 20.0  # lines per second a member may send, on average
CHAT_BURST = 60  # lines a member may send at once
# Offers a member may make per second, and at once. Each offer puts a line on every
# screen and a partial on every disk: a flood (70/s measured) is slowed to this by not
# reading the member's connection until the bucket is out of debt; nothing is refused.
OFFER_RATE = 2.0
OFFER_BURST = 16
WARNING_INTERVAL = 1.0  # seconds between two "too many lines" notices to one member


@dataclass
class MemberBudget:
    """One identity's budgets (shared by all its connections: 32 of them must not buy 32 times as much)."""

    chat: TokenBucket
    offers: TokenBucket
    warned_at: float = -WARNING_INTERVAL

    @classmethod
    def fresh(cls, now: float) -> "MemberBudget":
        return cls(TokenBucket(CHAT_RATE, CHAT_BURST, now), TokenBucket(OFFER_RATE, OFFER_BURST, now))
