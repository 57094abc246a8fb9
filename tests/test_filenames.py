from __future__ import annotations

import pytest

from securechat.files.filenames import FALLBACK_NAME, MAX_FILENAME_BYTES, numbered_alternative, safe_filename


@pytest.mark.parametrize(
    "offered,expected",
    [
        ("photo.jpg", "photo.jpg"),
        ("file..png", "file..png"),
        ("../../.ssh/authorized_keys", "authorized_keys"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\x", "x"),
        ("a/b", "b"),
        ("C:\\x", "x"),
        ("C:x", "C_x"),
        ("\\\\srv\\share\\x", "x"),
        (".", FALLBACK_NAME),
        ("..", FALLBACK_NAME),
        ("", FALLBACK_NAME),
        ("a\0b.txt", "ab.txt"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("COM1", "_COM1"),
        ("lpt9.tar.gz", "_lpt9.tar.gz"),
        ("report.", "report"),
        ("report ", "report"),
        ("ｆｏｏ／．．／bar", "bar"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("zero\u200bwidth\u200d.txt", "zerowidth.txt"),
        (".bashrc", "bashrc"),
        ("\x1b[2Jevil.png", "[2Jevil.png"),
        ("你好.png", "你好.png"),
        ("a|b?c*.txt", "a_b_c_.txt"),
    ],
)
def test_safe_filename(offered, expected):
    assert safe_filename(offered) == expected


def test_long_names_are_cut_to_255_bytes_keeping_the_extension():
    name = safe_filename("é" * 300 + ".jpeg")
    assert len(name.encode()) <= MAX_FILENAME_BYTES
    assert name.endswith(".jpeg")
    assert len(safe_filename("x" * 1000).encode()) <= MAX_FILENAME_BYTES


def test_result_never_has_a_separator_or_is_special():
    for offered in ["/", "\\", "/..", "../", "....", " . ", "\u202e", "．．"]:
        name = safe_filename(offered)
        assert "/" not in name and "\\" not in name
        assert name not in ("", ".", "..")


def test_numbered_alternative():
    assert numbered_alternative("photo.jpg", 1) == "photo (1).jpg"
    assert numbered_alternative("README", 2) == "README (2)"
    assert len(numbered_alternative("x" * 255, 12).encode()) <= MAX_FILENAME_BYTES
