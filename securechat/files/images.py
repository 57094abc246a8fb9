"""What kind of image a received file is, by its content, not its name.

Reads at most the first 64 KiB and parses only headers (PNG, JPEG, GIF, WebP,
BMP) to get the pixel size: no decoding, no Pillow, nothing a crafted file can
blow up. The file came from the network, so every parser here returns None on
anything unexpected instead of raising. A name whose extension says another
type than the content is flagged: `invoice.pdf` that is really a PNG, or
`photo.jpg` that is really something else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SNIFF_BYTES = 64 * 1024

_EXTENSIONS = {
    "png": {"png"},
    "jpeg": {"jpg", "jpeg", "jpe", "jfif"},
    "gif": {"gif"},
    "webp": {"webp"},
    "bmp": {"bmp", "dib"},
}
_ALL_IMAGE_EXTENSIONS = set().union(*_EXTENSIONS.values())


@dataclass(frozen=True)
class ImageInfo:
    kind: str
    width: int
    height: int

    def describe(self) -> str:
        return f"{self.kind.upper()} {self.width}×{self.height}"


def _png(head: bytes) -> ImageInfo | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return ImageInfo("png", width, height)
    return None


def _gif(head: bytes) -> ImageInfo | None:
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return ImageInfo("gif", width, height)
    return None


def _bmp(head: bytes) -> ImageInfo | None:
    if head[:2] == b"BM" and len(head) >= 26 and struct.unpack("<I", head[14:18])[0] >= 40:
        width, height = struct.unpack("<ii", head[18:26])
        return ImageInfo("bmp", abs(width), abs(height))
    return None


def _webp(head: bytes) -> ImageInfo | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP" or len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return ImageInfo("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return ImageInfo("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return ImageInfo("webp", width, height)
    return None


def _jpeg(head: bytes) -> ImageInfo | None:
    if head[:3] != b"\xff\xd8\xff":
        return None
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2 : i + 4])
        if length < 2:
            return None
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return ImageInfo("jpeg", width, height)
        i += 2 + length
    return None


def sniff(path: Path) -> ImageInfo | None:
    """The image type and pixel size of the file at `path`, or None if it is not one we know."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return None
    for parse in (_png, _jpeg, _gif, _webp, _bmp):
        try:
            info = parse(head)
        except (struct.error, IndexError, ValueError):
            info = None
        if info is not None:
            return info
    return None


def extension_mismatch(name: str, info: ImageInfo | None) -> str | None:
    """A warning when the name's extension and the content disagree about being an image."""
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    if info is not None:
        if ext not in _EXTENSIONS[info.kind]:
            return f"content is {info.kind.upper()}, but the name ends in {('.' + ext) if ext else 'no extension'}"
        return None
    if ext in _ALL_IMAGE_EXTENSIONS:
        return f"the name ends in .{ext}, but the content is not a {ext.upper()} image"
    return None
