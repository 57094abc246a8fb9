"""The benchmark's smoke mode runs in CI so the script cannot rot (it asserts no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--smoke", "--json-out", str(out)],
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 1: securechat" in result.stdout
    summary = json.loads(out.read_text())["summary"]
    for key in ("securechat_MB_per_s", "receiver_peak_rss_mib", "sender_peak_rss_mib", "join_to_connected_s",
                "chat_during_transfer_p99_ms", "handshakes_per_s"):
        assert summary[key] is not None and summary[key] > 0, key


@pytest.mark.timeout(300)
def test_load_smoke(tmp_path):
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "load.py"), "--clients", "8", "--messages", "20",
                             "--fanout-size", "4MiB", "--fanout-recipients", "3", "--json-out", str(out)],
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["chat"]["deliveries"] == report["chat"]["deliveries_expected"] == 20 * 7
    assert report["fanout"]["all_verified"]
