"""The terminal a person types in: a steady input line, colours, progress bars.

Used when stdin and stdout are a terminal and --json is off; scripts and
pipes keep the plain line mode. prompt_toolkit owns the bottom of the screen:
incoming lines are printed above the input line (patch_stdout), so a half-
typed line is never garbled. The bottom toolbar shows one rich progress bar
per transfer in flight, read every 0.25 s from counters the data path keeps
anyway (no per-chunk cost); a finished transfer's bar gives way to its
one-line ✓/✗ summary. Every string from the network is still made visible by
console.visible() before any colour is added around it.
"""

from __future__ import annotations

import io
import sys
import threading
import time
import zlib
from typing import Callable, Iterator

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, PathCompleter, WordCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import ANSI
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.patch_stdout import patch_stdout
from rich.console import Console as RichConsole
from rich.progress_bar import ProgressBar

from securechat.files.transfer import human_size
from securechat.ui.console import Console, _render, visible

# A progress bar: key, (file name, "to"/"from", names), bytes done, size, arrow.
Row = tuple[str, tuple[str, str, list[str]], int, int, str]
_COLOURS = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96]
_RESET = "\x1b[0m"
COMMAND_WORDS = ["/send", "/msg", "/who", "/help", "/quit", "SEND_IMAGE", "exit"]


def colour(name: str) -> str:
    """The same colour for the same name in every session (crc32, not hash(): that is salted)."""
    code = _COLOURS[zlib.crc32(name.encode("utf-8", "replace")) % len(_COLOURS)]
    return f"\x1b[{code}m{visible(name)}{_RESET}"


class InteractiveConsole(Console):
    """Timestamped, coloured lines, printed above the prompt."""

    def _print_event(self, event: str, fields: dict) -> None:
        line = _render(event, fields)
        if line is None:
            return
        if event == "message":
            target = f" → {colour(fields['to'])}" if fields.get("to") else ""
            line = f"<{colour(fields['from'])}{target}> {visible(fields['text'], emoji_sequences=True)}"
        elif event in ("file_received", "file_delivered"):
            line = f"\x1b[32m{line[0]}\x1b[0m{line[1:]}"
        elif event in ("file_rejected", "file_failed", "error"):
            line = f"\x1b[31m{line}\x1b[0m"
        elif event == "picture":
            with self._lock:
                sys.stdout.write(f"      {line}\n")
            return
        stamp = time.strftime("%H:%M")
        with self._lock:
            # sys.stdout at call time: inside the prompt it is patch_stdout's proxy.
            sys.stdout.write(f"\x1b[2m{stamp}\x1b[0m {line}\n")
            sys.stdout.flush()

    def error(self, message: str) -> None:
        self._print_event("error", {"message": message})


class ChatCompleter(Completer):
    """Command names after '/', file paths after /send (and SEND_IMAGE)."""

    def __init__(self) -> None:
        self._paths = PathCompleter(expanduser=True)
        self._words = WordCompleter(COMMAND_WORDS, sentence=True)

    def get_completions(self, document: Document, complete_event):
        text = document.text_before_cursor
        for prefix in ("/send ", "SEND_IMAGE "):
            if text.startswith(prefix):
                rest = text[len(prefix):]
                if rest.startswith("@"):
                    if " " not in rest:
                        return
                    rest = rest.split(" ", 1)[1]
                yield from self._paths.get_completions(Document(rest, len(rest)), complete_event)
                return
        if " " not in text:
            yield from self._words.get_completions(document, complete_event)


class ProgressView:
    """Renders the bars for the transfers in flight, with speed and time left."""

    def __init__(self, sources: list[Callable[[], list[Row]]]) -> None:
        self._sources = sources
        self._seen: dict[str, tuple[float, int, float]] = {}  # key -> (time, bytes, bytes/s)

    def _speed(self, key: str, done: int) -> float:
        now = time.monotonic()
        last = self._seen.get(key)
        if last is None or (last[1] == 0 and done > 0):
            # A resumed transfer jumps from 0 to its offset at once: those bytes were
            # already there, so the speed is measured from the first count above 0.
            self._seen[key] = (now, done, 0.0)
            return 0.0
        then, before, speed = last
        if now - then >= 0.2:
            current = (done - before) / (now - then)
            speed = current if speed == 0 else 0.7 * speed + 0.3 * current
            self._seen[key] = (now, done, speed)
        return speed

    def render(self) -> ANSI:
        rows = [row for source in self._sources for row in source()]
        if not rows:
            return ANSI("")
        out = io.StringIO()
        rich = RichConsole(file=out, force_terminal=True, color_system="standard", width=40)
        lines = []
        for key, label, done, total, arrow in rows:
            speed = self._speed(key, done)
            out.seek(0)
            out.truncate()
            rich.print(ProgressBar(total=max(total, 1), completed=done, width=20), end="")
            percent = 100 * done / total if total else 100
            eta = f"{(total - done) / speed:3.0f} s left" if speed > 0 else "       ..."
            label = fit_label(*label, f" ({human_size(total)})", 28)
            # 80 columns: arrow, label, bar, percent, speed, time left.
            lines.append(f"{arrow} {label:<28} {out.getvalue()} {percent:3.0f}% {human_size(int(speed)) + '/s':>11} {eta}")
        return ANSI("\n".join(lines))


def _people(n: int) -> str:
    return "1 person" if n == 1 else f"{n} people"


def fit_label(name: str, preposition: str, names: list[str], size: str, width: int) -> str:
    """`photo.jpg to bob, carol (1.2 MB)` in at most `width` columns.

    The size is never cut and a name in the list is shown whole or counted
    (`bob +2`); only the file name is shortened, with an ellipsis.
    """
    name, names = visible(name), [visible(n) for n in names]
    for shown in range(len(names), -1, -1):
        hidden = len(names) - shown
        who = ", ".join(names[:shown]) + (f" +{hidden}" if hidden and shown else _people(hidden) if hidden else "")
        tail = f" {preposition} {who or '…'}{size}"
        room = width - len(tail)
        if room >= min(len(name), 8):
            break
    if len(name) > room:
        name = name[: max(room - 1, 1)] + "…"
    return name + tail


class Prompt:
    """The input line. `lines()` yields what is typed; `stop()` (any thread) ends it."""

    def __init__(self, rows: list[Callable[[], list[Row]]]) -> None:
        self.session: PromptSession = PromptSession(
            history=InMemoryHistory(), completer=ChatCompleter(), complete_while_typing=False,
            bottom_toolbar=ProgressView(rows).render, refresh_interval=0.25, key_bindings=_shell_keys(),
        )
        self._stopped = threading.Event()
        self.interrupted = False  # ended by Ctrl-C (not `exit` or Ctrl-D)

    def lines(self) -> Iterator[str]:
        """Typed lines until Ctrl-D (end of input) or stop(); printing elsewhere goes above the prompt.

        prompt_toolkit reads Ctrl-C as a key, so no SIGINT reaches us: on a
        half-typed line it clears the line, as in a shell; on an empty line it
        is turned into the line `/quit`, which leaves (join) or shuts down (serve).
        """
        with patch_stdout(raw=True):
            while not self._stopped.is_set():
                try:
                    yield self.session.prompt(ANSI("\x1b[1m>\x1b[0m "))
                except EOFError:
                    return
                except KeyboardInterrupt:
                    self.interrupted = True
                    yield "/quit"
                    return

    def stop(self) -> None:
        self._stopped.set()
        app = self.session.app
        loop = getattr(app, "loop", None)
        if app.is_running and loop is not None:
            loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()) if app.is_running else None)


def _shell_keys() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("c-c")
    def _(event) -> None:
        buffer = event.app.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    return keys


def progress_rows(incoming, outgoing) -> Callable[[], list[Row]]:
    """A progress source over one member's IncomingFiles and OutgoingFiles."""

    def rows() -> list[Row]:
        incoming_rows = [(f"in{tid}", (name, "from", [sender]), done, size, "↓")
                         for tid, name, sender, done, size in incoming.progress()]
        outgoing_rows = [(f"out{tid}", (name, "to", to), done, size, "↑")
                         for tid, name, to, done, size in outgoing.progress()]
        return incoming_rows + outgoing_rows

    return rows
