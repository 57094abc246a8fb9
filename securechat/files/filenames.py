"""Turning a file name chosen by a peer into a safe basename for our disk.

The offered name is hostile input (croc CVE-2023-43616/43617, scp
CVE-2019-6111, magic-wormhole 0.21's lost basename check). The rules:

1. NFKC-normalise first, so full-width `／` and `．` become the separators
   and dots they look like before we split on them.
2. Drop every control (Cc), format (Cf: bidi overrides, zero-width) and
   surrogate character: they can disguise a name on screen or in a shell.
3. Keep only the last component after `/` or `\\`; refuse `:` and the other
   characters Windows reserves by replacing them with `_`.
4. Strip leading dots (no hidden files, no clash with our `.securechat-`
   temp files) and trailing dots and spaces (Windows drops them silently).
5. Prefix reserved device names (CON, NUL, COM1, LPT1, ...) with `_`.
6. Cut to 255 UTF-8 bytes, keeping the extension.

What is left is never empty, never `.` or `..`, and never contains a separator.
"""

from __future__ import annotations

import unicodedata

MAX_FILENAME_BYTES = 255
FALLBACK_NAME = "unnamed"

_WINDOWS_RESERVED_CHARS = set('<>:"|?*')
_RESERVED_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")
}
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}


def _visible_chars(name: str) -> str:
    return "".join(ch for ch in name if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)


def _truncate_utf8(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > 32:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = limit - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return cut + suffix


def safe_filename(offered: str) -> str:
    """A basename that is safe to create inside the downloads folder."""
    name = unicodedata.normalize("NFKC", offered)
    name = _visible_chars(name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if ch in _WINDOWS_RESERVED_CHARS else ch for ch in name)
    name = name.strip().lstrip(".").rstrip(". ")
    if not name:
        return FALLBACK_NAME
    stem = name.split(".", 1)[0].rstrip(" ")
    if stem.upper() in _RESERVED_DEVICES:
        name = "_" + name
    name = _truncate_utf8(name, MAX_FILENAME_BYTES).rstrip(". ")
    return name or FALLBACK_NAME


def numbered_alternative(name: str, n: int) -> str:
    """`photo.jpg` -> `photo (n).jpg`, kept within the byte limit."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    suffix = f" ({n})" + (f".{ext}" if ext else "")
    budget = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return stem + suffix
