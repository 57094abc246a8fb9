"""A real terminal: a program run inside a tmux server of its own, whose screen a test reads."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path


class Tmux:
    def __init__(self, command: list[str], cwd) -> None:
        self.session = f"sc-{uuid.uuid4().hex[:8]}"
        # A tmux server of its own (not the user's, nor another test run's): kill() stops it
        # and everything in it, and nothing else.
        self.tmux = ["tmux", "-L", f"securechat-test-{self.session}"]
        # The pane outlives the program (tmux would destroy it, and its screen, on exit)
        # and shows how it ended; kill() ends the sleep.
        shell = f'{shlex.join(command)}; echo "[exited $?]"; sleep 600'
        try:
            subprocess.run([*self.tmux, "new-session", "-d", "-s", self.session, "-x", "200", "-y", "50",
                            "-c", str(cwd), shell], check=True, timeout=10)
        except BaseException:
            self.kill()  # nobody else holds this object to do it
            raise

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.session], capture_output=True,
                              text=True, timeout=10).stdout

    def title(self) -> str:
        return subprocess.run([*self.tmux, "display-message", "-p", "-t", self.session, "#{pane_title}"],
                              capture_output=True, text=True, timeout=10).stdout.strip()

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen:\n{screen}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=10)
        # tmux leaves its socket behind
        (Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / self.tmux[-1]).unlink(missing_ok=True)
