"""The installed `securechat` command, as a user runs it: to completion (run) or live (Proc)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

EVENT_TIMEOUT = 20.0


def securechat_command() -> list[str]:
    """The installed console script (next to this interpreter), as a user would run it."""
    script = Path(sys.executable).parent / "securechat"
    if script.exists():
        return [str(script)]
    found = shutil.which("securechat")
    if found is None:
        pytest.fail("the securechat command is not installed; run: pip install '.[test]'")
    return [found]


def run(args: list[str], cwd, timeout: float = 60, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`securechat ARGS` to completion, output captured as text; `env` adds to ours. Its stdin is
    empty unless given (`input=`/`stdin=`): a command that reads it must not wait on the test's."""
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(securechat_command() + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kwargs)


def _lines(stream):
    """The stream's lines until EOF, or until stop() closes it under the reading thread."""
    try:
        yield from stream
    except (ValueError, OSError):
        return


class Proc:
    """A securechat subprocess whose stdout --json events are collected by a thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None, **popen_kwargs) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            securechat_command() + args,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            **popen_kwargs,
        )
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        self.stderr_lines: list[str] = []
        self._pumps = [threading.Thread(target=self._pump_stdout, daemon=True),
                       threading.Thread(target=self._pump_stderr, daemon=True)]
        for pump in self._pumps:
            pump.start()

    def _pump_stdout(self) -> None:
        for raw in _lines(self.popen.stdout):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "_text", "line": line}
            self.events.append(event)
            self._queue.put(event)

    def _pump_stderr(self) -> None:
        for raw in _lines(self.popen.stderr):
            self.stderr_lines.append(raw.decode("utf-8", "replace"))

    def send(self, line: str) -> None:
        self.popen.stdin.write((line + "\n").encode("utf-8"))
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        try:
            self.popen.stdin.close()
        except BrokenPipeError:
            pass

    def mark(self) -> int:
        """A point in the event stream, for wait_event(after=...)."""
        return len(self.events)

    def wait_event(self, event_name: str, timeout: float = EVENT_TIMEOUT, after: int = 0, **match) -> dict:
        """The first event called `event_name` whose fields include `match` (seen before or arriving),
        among the events since `after` (a mark())."""
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for event in self.events[seen:]:
                seen += 1
                if event.get("event") == event_name and all(event.get(k) == v for k, v in match.items()):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {event_name} {match} within {timeout} s from {self.args[:1]}; events: {self.events[-15:]}; "
                    f"stderr: {''.join(self.stderr_lines)[-2000:]}"
                )
            try:
                self._queue.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                pass

    def count(self, event_name: str, **match) -> int:
        return sum(1 for e in self.events if e.get("event") == event_name and all(e.get(k) == v for k, v in match.items()))

    def wait_exit(self, timeout: float = EVENT_TIMEOUT) -> int:
        """Its exit status, once it has exited and everything it printed is in events/stderr_lines."""
        status = self.popen.wait(timeout)
        for pump in self._pumps:
            pump.join(5)  # the pipes are at EOF unless something it started still holds them
        return status

    def stderr_after_exit(self, grace: float = 0.3) -> str:
        """Everything the (exited) process wrote on stderr, once the reader thread has caught up."""
        deadline = time.monotonic() + 5
        while not self.stderr_lines and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(grace)  # the reader thread: a second line would be here by now
        return "".join(self.stderr_lines)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                stream.close()
            except OSError:
                pass

