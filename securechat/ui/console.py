"""Everything a person (or a script) sees.

Each thing that happens is one event with a name and fields. With --json it
is printed as one JSON object per line; otherwise as a line for people.
Everything that came from the network is hostile when printed: escape
sequences in chat text or file names could rewrite the terminal (croc
CVE-2023-43620), and bidi overrides can make `exe.pdf` read as `pdf.exe`.
`visible()` turns every control, format and bidi character into a visible
escape such as `\\x1b` or `\\u202e`, and leaves ordinary text (Chinese,
emoji) as itself. In chat text a zero-width joiner between two emoji stays
(`👨‍👩‍👧` is one picture, not three and two escapes); anywhere else, file
names included, it is escaped like every other format character. JSON
output is ASCII-only, so it is safe to print too.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import unicodedata
from typing import Any, Callable, TextIO

from securechat.files.transfer import human_size
from securechat.wire import frames

_HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_ZWJ = "\u200d"
_EMOJI_MODIFIERS = {"\ufe0f", *map(chr, range(0x1F3FB, 0x1F400))}  # emoji presentation, skin tones


def _is_emoji(ch: str) -> bool:
    """Close enough for joining: pictographs and symbols outside the Latin ranges, and their modifiers."""
    return ch in _EMOJI_MODIFIERS or (ord(ch) >= 0x2100 and unicodedata.category(ch) == "So")


def visible(text: str, emoji_sequences: bool = False) -> str:
    """`text` with every character that is not plain visible text escaped.

    With `emoji_sequences` (chat text), a zero-width joiner between two emoji
    is kept: it cannot reorder or hide text, it only glues pictures together.
    """
    out = []
    for i, ch in enumerate(text):
        if ch == " " or unicodedata.category(ch) not in _HIDDEN_CATEGORIES:
            out.append(ch)
        elif (emoji_sequences and ch == _ZWJ and 0 < i < len(text) - 1
              and _is_emoji(text[i - 1]) and _is_emoji(text[i + 1])):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def _short_hash(sha256: str) -> str:
    return f"{sha256[:4]}…{sha256[-4:]}"


def _render(event: str, f: dict[str, Any], chat_hints: bool = True) -> str | None:
    """The human line for an event, with every network-supplied string made visible."""
    v = {k: visible(x) if isinstance(x, str) else x for k, x in f.items()}
    privately = f", privately to {v['to']}" if f.get("to") and event.startswith("file_") else ""
    match event:
        case "listening":
            return f"securechat server listening on {v['host']}:{v['port']} as {v['name']} (TLS 1.3, client certificates required)"
        case "connected":
            here = ", ".join(visible(n) for n in f.get("members") or ()) or "nobody else yet"
            hint = " Type /help for commands." if chat_hints else ""
            return f"connected to {v['peer']} as {v['name']} (TLS 1.3). Here: {here}.{hint}"
        case "error":
            return f"error: {v['message']}"
        case "waiting":
            return f"* {v['text']}"
        case "joined":
            return f"* {v['name']} joined"
        case "left":
            reason = f" ({v['reason']})" if v.get("reason") else ""
            return f"* {v['name']} left{reason}"
        case "message":
            target = f" → {v['to']}" if v.get("to") else ""
            return f"<{v['from']}{target}> {visible(f['text'], emoji_sequences=True)}"
        case "who":
            return "* here: " + ", ".join(visible(n) for n in f["names"])
        case "file_sending":
            to = ", ".join(visible(n) for n in f["to"]) or "nobody"
            return f"→ sending {v['name']} ({human_size(f['size'])}) to {to}"
        case "file_incoming":
            if f["offset"]:
                return (f"← resuming {v['name']} from {v['from']} at {100 * f['offset'] // max(1, f['size'])}% "
                        f"({human_size(f['offset'])} of {human_size(f['size'])} already here, checked){privately}")
            return f"← receiving {v['name']} ({human_size(f['size'])}) from {v['from']}{privately}"
        case "file_resuming":
            return (f"→ {v['name']}: the receivers have {human_size(f['offset'])} already; "
                    f"sending the remaining {human_size(f['size'] - f['offset'])}")
        case "file_interrupted":
            who = f" to {v['to']}" if v.get("to") else ""
            return f"⏸ {v['name']}{who} interrupted ({v['reason']}); it resumes when the connection is back"
        case "file_received":
            line = (f"✓ {v['name']} {human_size(f['size'])} from {v['from']}{privately}, "
                    f"SHA-256 {_short_hash(f['sha256'])} verified, saved {v['path']}")
            if f.get("image"):
                line += f" — {f['image']['type'].upper()} {f['image']['width']}×{f['image']['height']}"
            if f.get("warning"):
                line += f" (warning: {v['warning']})"
            return line
        case "file_rejected":
            return f"✗ {v['name']} from {v['from']}{privately} rejected: {v['reason']}"
        case "file_delivered":
            return f"✓ {v['name']} delivered to {v['to']}, SHA-256 {_short_hash(f['sha256'])} verified"
        case "file_failed":
            who = f" to {v['to']}" if v.get("to") else ""
            return f"✗ {v['name']} not delivered{who}: {v['reason']}"
        case "refused":
            return f"* refused a connection from {v['peer']}: {v['reason']}"
        case "notice":
            return f"* {v['text']}"
        case "disconnected":
            return f"* disconnected: {v['reason']}" + ("; reconnecting" if f.get("reconnecting") else "")
        case "reconnecting":
            return f"* reconnecting in {f['seconds']} s (attempt {f['attempt']}; {v['reason']}). Lines you type are kept until then."
        case "queued":
            return f"* not connected: line kept, it goes out when the connection is back ({f['waiting']} waiting)"
        case "shutdown":
            said = v.get("reason") or ""
            # The server's own default reason is this very sentence: say it once.
            return "* server shutting down" + (f": {said}" if said and said != "server shutting down" else "")
        case "help":
            return f["text"]
        case "picture":
            return f["line"]  # made here, from pixels: the only escapes we ever print
        case _:
            return f"* {event}: " + ", ".join(f"{k}={x}" for k, x in v.items())


# Events the working code reports by name and fields; shown (text and --json) as these.
_WORDED = {
    "file_changed": ("notice", "{name} changed since it was interrupted; sending it afresh"),
    "send_waits": ("notice", "not connected: {name} will be sent when the connection is back"),
    "send_to_self": ("error", "{to} is you: /send @NAME sends to someone else in the room"),
    "who_offline": ("error", "not connected: /who needs the server"),
    "line_not_sent": ("error", "not connected: this line was NOT sent"),
    "backlog_full": ("error", "not connected and {limit} lines are waiting already: this line was NOT sent"),
}


class Console:
    """Prints events; safe to call from any thread."""

    def __init__(self, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None,
                 preview: bool = False, open_images: bool = False, chat_hints: bool = True) -> None:
        self.json_mode = json_mode
        self.chat_hints = chat_hints  # off for one-shot `send`: nobody types commands there
        self.preview = preview and not json_mode  # pictures in a JSON stream would break it
        self.open_images = open_images
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self._lock = threading.Lock()
        # A line redrawn in place on a terminal (send's progress) is wiped before each event
        # line, under the same lock, so the two never end up on one line; it is redrawn later.
        self.wipe_status: Callable[[], None] | None = None

    def event(self, event: str, **fields: Any) -> None:
        self._print_event(event, fields)
        if event == "file_received" and fields.get("image") and (self.preview or self.open_images):
            self._show_image(fields)

    def _show_image(self, fields: dict[str, Any]) -> None:
        from securechat.ui.preview import half_block_lines, open_in_viewer  # Pillow: only when asked for

        path = fields["path"]
        notes = []
        if self.preview:
            try:
                for line in half_block_lines(path):
                    self._print_event("picture", {"line": line})
            except ValueError as exc:
                notes.append(f"no preview of {fields['name']}: {exc}; the file is saved, its SHA-256 verified")
        if self.open_images:
            note = open_in_viewer(path)
            if note:
                notes.append(f"cannot open {fields['name']}: {note}")
        for note in notes:
            self._print_event("notice", {"text": note})

    def _print_event(self, event: str, fields: dict[str, Any]) -> None:
        if self.json_mode:
            line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, ensure_ascii=True)
            stream = self._out
        else:
            line = _render(event, fields, self.chat_hints)
            if line is None:
                return
            stream = self._out
        with self._lock:
            try:
                if self.wipe_status is not None:
                    self.wipe_status()
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # whoever reads our output has gone; keep running

    def report(self, event: str, **fields: Any) -> None:
        """An event from the code that does the work (member, files): `error` is the local user's,
        and the events in _WORDED become the notice or error they are shown as."""
        if event in _WORDED:
            event, words = _WORDED[event]
            fields = {"message" if event == "error" else "text": words.format(**fields)}
        if event == "error":
            self.error(fields["message"])
        else:
            self.event(event, **fields)

    def error(self, message: str) -> None:
        """A problem the local user should see; on stderr in human mode."""
        if self.json_mode:
            self.event("error", message=message)
            return
        with self._lock:
            try:
                if self.wipe_status is not None:
                    self.wipe_status()
                self._err.write(f"error: {visible(message)}\n")
                self._err.flush()
            except (BrokenPipeError, ValueError):
                pass


def describe_waiting(awaited, hint: str) -> str:
    """What `exit` waits for, in words: `waiting for big.bin to reach bob (45 %); <hint>`."""
    parts = [f"{a.name} (being read)" if a.percent is None
             else f"{a.name} to reach {', '.join(a.recipients) or 'the room'} ({a.percent} %)" for a in awaited]
    return f"waiting for {'; '.join(parts)}; {hint}"


def describe_undelivered(failures) -> str:
    """`not delivered: a.bin to bob: reason; b.bin: not sent`, from OutgoingFiles.failures()."""
    parts = [f"{f.name} to {f.to or 'anyone'}: {f.reason}" if f.offered else f"{f.name}: {f.reason}" for f in failures]
    return "not delivered: " + "; ".join(parts)


def show_message(console: Console, message: frames.Frame) -> bool:
    """Report a room message (chat, arrivals, departures...); False if it is not one."""
    from securechat.member.local import room_events  # member/local.py never imports the console: it only makes events

    events = room_events(message)
    for event, fields in events or ():
        console.event(event, **fields)
    return events is not None
