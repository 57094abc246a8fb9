from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from securechat.files.checksums import SUMS_FILENAME, verify_paths


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "dl"
    d.mkdir()
    for name, data in (("a.txt", b"alpha"), ("b.bin", b"beta")):
        (d / name).write_bytes(data)
        with open(d / SUMS_FILENAME, "a") as f:
            f.write(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return d


def test_all_verified(folder):
    outcomes = verify_paths([folder / "a.txt", folder / "b.bin"])
    assert all(o.ok for o in outcomes)


def test_tampered_unknown_and_missing(folder):
    (folder / "a.txt").write_bytes(b"alphA")
    (folder / "new.txt").write_bytes(b"?")
    (folder / "b.bin").unlink()
    by_name = {o.path.name: o for o in verify_paths([folder])}
    assert not by_name["a.txt"].ok and "MODIFIED" in by_name["a.txt"].detail
    assert by_name["b.bin"].detail == "missing"
    unknown = verify_paths([folder / "new.txt"])[0]
    assert not unknown.ok and unknown.detail.startswith("unknown")


def test_downloads_option_resolves_bare_names(folder, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert verify_paths([Path("a.txt")], downloads=folder)[0].ok


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_coreutils_reads_our_format(folder):
    result = subprocess.run(["sha256sum", "-c", SUMS_FILENAME], cwd=folder, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout
