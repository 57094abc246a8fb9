"""Child processes for the scripts in scripts/: started in their own process group,
waited for within an overall budget, and always stopped.

A test runs each script with a timeout. If a wait inside the script outlived that
timeout, the test would kill the script and leave its children running (it did:
two openssl processes survived a timed-out bench). So:

- `Budget`: one deadline for the whole run (`start_budget(--deadline)`); every
  wait asks `budget.wait_s(wanted)` how long it may take, and `budget.check(what)`
  raises BudgetSpent once it is spent.
- `spawn()`: Popen in a new session, so that stopping a child stops whatever it
  started too; every child is remembered until `stop()`.
- `stop()`: SIGTERM to the group, a short wait, then SIGKILL to the group.
- `stopped_on_exit()`: turns SIGTERM/SIGHUP into SystemExit so `finally` blocks run,
  and stops every child still running when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

STOP_GRACE_S = 5.0

_running: list[subprocess.Popen] = []
_spawning = False
_signal_during_spawn: int | None = None


class BudgetSpent(RuntimeError):
    pass


class Budget:
    """An overall deadline (None: unbounded) that every wait in a run stays inside."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self._end is None else self._end - time.monotonic()

    def wait_s(self, wanted: float) -> float:
        """How long a wait that wants `wanted` seconds may take (at least a moment)."""
        return max(0.05, min(wanted, self.left()))

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BudgetSpent(f"--deadline of {self.seconds:g} s spent while {what}")


budget = Budget(None)  # the run's; main() replaces it with its --deadline


def start_budget(seconds: float | None) -> Budget:
    global budget
    budget = Budget(seconds)
    return budget


def spawn(args: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start a child in a new session (its own process group), remembered until stop()."""
    global _spawning
    # A SIGTERM between fork and remembering the child would leave it running: it waits.
    _spawning = True
    try:
        proc = subprocess.Popen(args, start_new_session=True, **popen_kwargs)
        _running.append(proc)
    finally:
        _spawning = False
    if _signal_during_spawn is not None:
        raise SystemExit(128 + _signal_during_spawn)
    return proc


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Stop `proc` and everything in its process group; returns once it has exited."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Also when the leader has exited: something it started may still hold the group.
    _signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ValueError):
        _running.remove(proc)


def stop_all() -> None:
    for proc in reversed(list(_running)):
        stop(proc)


def _exit_on_signal(signum, frame) -> None:
    global _signal_during_spawn
    if _spawning:
        _signal_during_spawn = signum
        return
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def stopped_on_exit() -> Iterator[None]:
    """Run the block; on its end, a SIGTERM/SIGHUP (made SystemExit) or an error, stop every child."""
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        # A second SIGTERM must not cut the clean-up short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
