"""The parts of `securechat send` (and of reading a server address) that are not the command itself.

`send` is for scripts and for people who pass a file on, croc- or wormhole-
style: it waits for its recipient to join rather than failing because they
are a minute late, draws one progress line on stderr when that is a terminal
(and nothing when it is not, so a script's stderr holds errors only), and
never prints chat hints: nobody types commands there.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from securechat.errors import UsageError
from securechat.files.transfer import human_size
from securechat.ui.console import Console, visible

if TYPE_CHECKING:
    from securechat.member.client import Client
    from securechat.member.outgoing import OutgoingFiles


def split_address(host: str, port: int, port_from_flag: bool = False) -> tuple[str, int]:
    """(host, port) from HOST, HOST:PORT or [IPv6]:PORT and --port; anything unusable is a UsageError.

    The server prints its address as HOST:PORT, so that is what people paste.
    A port in the address wins over a default or configured --port, but one
    typed on the command line that disagrees with it is a mistake worth naming.
    """
    given = None
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"{host!r} is not like [IPv6]:PORT")
        host, given = inside, rest[1:] or None
    elif host.count(":") == 1:  # more than one colon: a bare IPv6 address
        host, given = host.split(":")
    if given is not None:
        if not given.isdigit():
            raise UsageError(f"port {given!r} in {host}:{given} is not a number")
        if port_from_flag and int(given) != port:
            raise UsageError(f"two ports given: {given} in the address and --port {port}")
        port = int(given)
    if not host:
        raise UsageError("no host given: use HOST or HOST:PORT")
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range (1 to 65535)")
    return host, port


def duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def wait_for_recipient(client: Client, console: Console, to: str, wait: float) -> None:
    """Return once `to` is in the room; UsageError (after leaving) if not within `wait` seconds."""
    if to in client.present:
        return
    if wait == 0:
        client.leave()
        raise UsageError(f"nobody named {to!r} is here; nothing was sent (--wait SECONDS waits for them to join)")
    console.event("waiting", text=f"waiting for {to} to join (up to {duration(wait)}; Ctrl-C to give up)",
                  name=to, seconds=wait)
    if not client.wait_for(to, wait):
        client.leave()
        raise UsageError(f"{to} did not join within {duration(wait)}; nothing was sent")


class ProgressLine:
    """One line on stderr (a terminal), redrawn in place: each file being sent and how far it got.

    It shares the console's lock and is wiped before every event line, so a
    `✓ delivered` line on the same terminal never lands behind a half-drawn bar.
    """

    INTERVAL = 0.5  # seconds between redraws: often enough to look alive, rarely enough to cost nothing

    def __init__(self, console: Console, outgoing: OutgoingFiles) -> None:
        self._console = console
        self._outgoing = outgoing
        self._stopped = threading.Event()
        self._drawn = False
        console.wipe_status = self._wipe
        threading.Thread(target=self._run, name="progress", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped.wait(self.INTERVAL):
            text = "  ".join(f"↑ {visible(name)} {100 * sent // max(size, 1):3d}% of {human_size(size)}"
                             for _, name, _, sent, size in self._outgoing.progress())
            with self._console._lock:
                if text and not self._stopped.is_set():
                    sys.stderr.write(f"\r\x1b[K{text}")
                    sys.stderr.flush()
                    self._drawn = True

    def _wipe(self) -> None:
        """Clear the drawn line; call with the console's lock held."""
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False

    def stop(self) -> None:
        """Stop and wipe the line, so what follows (an error, the shell prompt) starts clean."""
        self._stopped.set()
        with self._console._lock:
            self._wipe()
            self._console.wipe_status = None
