from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.files import jpeg, png
from securechat.files.images import ImageInfo, extension_mismatch, sniff

SAMPLES = {
    "a.png": (png(3, 2), ImageInfo("png", 3, 2)),
    "b.jpg": (jpeg(4032, 3024), ImageInfo("jpeg", 4032, 3024)),
    "c.gif": (b"GIF89a" + struct.pack("<HH", 640, 480) + b"\0" * 20, ImageInfo("gif", 640, 480)),
    "d.bmp": (b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 300, -200) + b"\0" * 30, ImageInfo("bmp", 300, 200)),
    "e.webp": (b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 8 + (799).to_bytes(3, "little") + (599).to_bytes(3, "little"),
               ImageInfo("webp", 800, 600)),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sniff_reads_type_and_size_from_content(tmp_path, name):
    data, expected = SAMPLES[name]
    (tmp_path / name).write_bytes(data)
    assert sniff(tmp_path / name) == expected
    assert extension_mismatch(name, expected) is None


def test_extension_and_content_disagreeing_is_flagged(tmp_path):
    (tmp_path / "invoice.pdf").write_bytes(png(1, 1))
    info = sniff(tmp_path / "invoice.pdf")
    assert info == ImageInfo("png", 1, 1)
    assert "content is PNG" in extension_mismatch("invoice.pdf", info)
    (tmp_path / "photo.jpg").write_bytes(b"MZ\x90\0 not an image")
    assert sniff(tmp_path / "photo.jpg") is None
    assert "not a JPG image" in extension_mismatch("photo.jpg", None)
    assert extension_mismatch("notes.txt", None) is None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ",
                        b"RIFF\0\0\0\0WEBPVP8L", b"BM", b""]), st.binary(max_size=200))
def test_hostile_headers_never_raise(tmp_path_factory, prefix, rest):
    path = tmp_path_factory.mktemp("sniff") / "x"
    path.write_bytes(prefix + rest)
    result = sniff(path)
    assert result is None or isinstance(result, ImageInfo)


def test_received_image_is_reported_with_its_size(room, tmp_path):
    alice = room.join("alice")
    (tmp_path / "cat.png").write_bytes(png(64, 48))
    (tmp_path / "report.pdf").write_bytes(png(2, 2))
    alice.send(f"/send {tmp_path / 'cat.png'}")
    alice.send(f"/send {tmp_path / 'report.pdf'}")
    cat = room.server.wait_event("file_received", name="cat.png")
    assert cat["image"] == {"type": "png", "width": 64, "height": 48} and "warning" not in cat
    disguised = room.server.wait_event("file_received", name="report.pdf")
    assert "content is PNG" in disguised["warning"]
