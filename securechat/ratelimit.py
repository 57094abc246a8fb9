"""A token bucket with the clock passed in: pure, so its rules are tested without sleeping."""

from __future__ import annotations

import threading


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
