"""--preview and --open for received images: the optional `securechat[images]` extra (Pillow).

A preview is drawn with the upper half block "▀": its foreground colour is one
pixel and its background the pixel below, so any 24-bit-colour terminal shows
two pixel rows per text row, no graphics protocol needed. Decoding is bounded:
Pillow refuses images over MAX_PIXELS (a decompression bomb) before decoding,
and a file that does not decode gets a note instead; it stays saved, because
its SHA-256 verified, and what is in it is the sender's business.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from securechat.errors import UsageError

MAX_PIXELS = 50_000_000
PREVIEW_COLUMNS = 48


def require_pillow() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise UsageError("--preview needs Pillow: pip install 'securechat[images]'") from exc


def half_block_lines(path: Path, columns: int = PREVIEW_COLUMNS) -> list[str]:
    """The image as lines of coloured half blocks; ValueError says why it cannot be shown."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{image.width}×{image.height} is over the {MAX_PIXELS:,} pixel limit")
            image.draft("RGB", (columns * 2, columns * 2))  # JPEG: decode at a fraction of full size
            image = image.convert("RGB")
            image.thumbnail((columns, columns * 2))
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode it ({exc})") from exc
    pixels = image.load()
    width, height = image.size
    lines = []
    for y in range(0, height - 1, 2):
        cells = []
        for x in range(width):
            (r1, g1, b1), (r2, g2, b2) = pixels[x, y], pixels[x, y + 1]
            cells.append(f"\x1b[38;2;{r1};{g1};{b1}m\x1b[48;2;{r2};{g2};{b2}m▀")
        lines.append("".join(cells) + "\x1b[0m")
    return lines


def open_in_viewer(path: Path) -> str | None:
    """Open with the desktop's viewer; returns a note if there is none."""
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        return f"no {opener} here to open it with"
    subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return None
