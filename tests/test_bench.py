"""The scripts in scripts/: their smoke modes run in CI so they cannot rot (no timings are
asserted), every wait in them is bounded, and nothing they start outlives them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers.processes import processes_of_this_run, run_script, stop_leftovers, stop_process_group
from securechat.pki.certs import generate

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


@pytest.mark.timeout(240)
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    # The script's own deadline (150 s in --smoke mode) ends it well before run_script gives up.
    result = run_script([sys.executable, str(SCRIPTS / "bench.py"), "--smoke", "--json-out", str(out)], timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 1: securechat" in result.stdout
    summary = json.loads(out.read_text())["summary"]
    for key in ("securechat_MB_per_s", "receiver_peak_rss_mib", "sender_peak_rss_mib", "join_to_connected_s",
                "chat_during_transfer_p99_ms", "handshakes_per_s"):
        assert summary[key] is not None and summary[key] > 0, key


@pytest.mark.timeout(240)
def test_load_smoke(tmp_path):
    out = tmp_path / "load.json"
    result = run_script([sys.executable, str(SCRIPTS / "load.py"), "--members", "8", "--workers", "2",
                         "--messages", "20", "--rate", "20", "--fanout-size", "4MiB", "--fanout-recipients", "3",
                         "--deadline", "150", "--json-out", str(out)], timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["connect"]["ready"] == 8 and report["connect"]["slowest_handshake_and_welcome_s"] > 0
    chat = report["chat"]
    # Counted by the raw members in two worker processes: each line reaches the other 7, and the operator.
    assert chat["deliveries"] == chat["deliveries_expected"] == 20 * 7
    assert chat["operator_deliveries"] == 20
    # Every delivery was timed (the send time travels in the line), not only some.
    assert chat["latency_p50_ms"] is not None and chat["latency_max_ms"] >= chat["latency_p99_ms"] > 0
    # Both costs are reported so a reader can see the generator is not the bottleneck; their
    # ratio is for the benchmark to print, not for a smoke test on a shared machine to assert.
    for key in ("server_cpu_us_per_delivery", "generator_cpu_us_per_delivery"):
        assert chat[key] >= 0, key
    assert chat["server"]["peak_rss_mib"] > 0 and chat["server"]["peak_threads"] >= 1
    # Protocol 3 presence: every member's count of the room, from welcome and the batches, converged.
    presence = report["presence"]
    assert presence["frames"] > 0 and presence["names"] >= presence["frames"]
    assert presence["roster_min"] == presence["roster_max"] == chat["roster_min"] == chat["roster_max"] == 8
    assert presence["converged"]
    fanout = report["fanout"]
    assert fanout["all_verified"] and fanout["verified_by_raw_members"] == 3 and fanout["delivered"] == 4


@pytest.mark.timeout(240)
def test_load_find_max_steps_the_rate_and_shares_source_addresses(tmp_path):
    out = tmp_path / "load.json"
    # 12 members from 3 addresses, at most 2 handshakes at once from each: the per-source cap path.
    result = run_script([sys.executable, str(SCRIPTS / "load.py"), "--members", "12", "--workers", "2",
                         "--sources", "3", "--per-source", "2", "--find-max", "--rate", "10", "--step-seconds", "1",
                         "--step-factor", "2", "--max-steps", "2", "--skip-fanout", "--deadline", "150",
                         "--json-out", str(out)], timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["connect"]["ready"] == 12 and report["connect"]["seconds"] > 0
    found = report["find_max"]
    assert [step["rate_per_s"] for step in found["steps"]] == [10, 20][: len(found["steps"])]
    for step in found["steps"]:
        assert step["deliveries"] == step["deliveries_expected"] == step["lines_sent"] * 11
        assert step["late_deliveries"] == 0  # each step counts its own lines only
    assert found["best_deliveries_per_s"] == max(step["delivered_per_s"] for step in found["steps"])
    assert "highest room throughput" in result.stdout


@pytest.mark.timeout(120)
def test_sigterm_stops_the_load_run_its_server_and_its_member_workers(tmp_path):
    _sigterm_stops_everything([str(SCRIPTS / "load.py"), "--members", "20", "--rate", "5", "--seconds", "600",
                               "--skip-fanout", "--deadline", "100"], {"securechat", "load_members.py"}, wait=60)


@pytest.mark.timeout(240)
def test_resume_bench_smoke(tmp_path):
    out = tmp_path / "resume.json"
    # 256 MiB: the second half takes long enough that the receiver is surely killed before the end.
    result = run_script([sys.executable, str(SCRIPTS / "resume_bench.py"), "--size", "256MiB", "--deadline", "150",
                         "--json-out", str(out)], timeout=200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["sha256_ok"] and report["sender_told"]
    assert 0 < report["resumed_from"] < report["size_bytes"]


@needs_openssl
@pytest.mark.timeout(120)
def test_openssl_round_never_hangs(tmp_path):
    # It used to hang about one round in six (see scripts/bench.py): forty rounds in a row
    # would all but certainly have caught it. The budget makes a hang fail, not stall.
    import bench
    import children

    certs = tmp_path / "certs"
    generate(certs, ["sender"], [])
    payload = tmp_path / "payload.bin"
    bench.make_payload(payload, 1024 * 1024)
    children.start_budget(90)
    try:
        for _ in range(40):
            result = bench.openssl_round(tmp_path, certs, payload)
            assert result["MB_per_s"] > 0
    finally:
        children.start_budget(None)
        children.stop_all()


def _wait_for_children(pid: int, names: set[str], timeout: float = 60) -> None:
    """Until the process `pid` has had a child running each of `names` (by command line),
    and has one running now."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while True:
        running = set()
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read().decode("utf-8", "replace")
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                running |= {name for name in names if name in command}
        seen |= running
        if seen == names and running:
            return
        assert time.monotonic() < deadline, f"children seen: {seen}, wanted {names}"
        time.sleep(0.02)


def _start_script(args: list[str], marker: str) -> subprocess.Popen:
    name, value = marker.split("=")
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, name: value})


@needs_openssl
@pytest.mark.timeout(120)
def test_sigterm_stops_the_bench_and_everything_it_started(tmp_path):
    # {"securechat", "openssl"}: some round of each is running when the signal comes.
    _sigterm_stops_everything([str(SCRIPTS / "bench.py"), "--size", "64MiB", "--rounds", "50"],
                              {"securechat", "openssl"}, wait=30)


def _sigterm_stops_everything(args: list[str], children: set[str], wait: float) -> None:
    """Start the script, SIGTERM it once `children` run: it exits with 128+SIGTERM, and nothing it
    started is left (checked at once: the script returns only after its children are gone)."""
    marker = f"SECURECHAT_TEST_SCRIPT={uuid.uuid4().hex}"  # inherited by all it starts
    script = _start_script(args, marker)
    try:
        _wait_for_children(script.pid, children)
        script.send_signal(signal.SIGTERM)
        assert script.wait(wait) == 128 + signal.SIGTERM
        assert processes_of_this_run(marker) == {}
    finally:
        stop_process_group(script)
        stop_leftovers(grace=0, marker=marker)


@pytest.mark.timeout(120)
def test_deadline_ends_a_run_with_one_line_and_nothing_left(tmp_path):
    marker = f"SECURECHAT_TEST_SCRIPT={uuid.uuid4().hex}"
    script = _start_script([str(SCRIPTS / "bench.py"), "--size", "64MiB", "--rounds", "50", "--deadline", "3"],
                           marker)
    try:
        _, err = script.communicate(timeout=60)
        assert script.returncode == 1
        assert err.strip().splitlines()[-1].startswith("error: --deadline of 3 s spent while"), err[-2000:]
        assert "Traceback" not in err
        assert processes_of_this_run(marker) == {}
    finally:
        stop_process_group(script)
        stop_leftovers(grace=0, marker=marker)


def test_an_orphaned_process_is_still_found_and_stopped(tmp_path):
    # What the per-test and end-of-session checks in conftest rely on: a grandchild whose
    # parent has exited (reparented away from us) still carries the run's marker.
    marker = f"SECURECHAT_TEST_SCRIPT={uuid.uuid4().hex}"
    name, value = marker.split("=")
    subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], env={**os.environ, name: value},
                   check=True, timeout=10, capture_output=True)
    found = processes_of_this_run(marker)
    try:
        assert [cmd for cmd in found.values()] == ["sleep 60"]
    finally:
        killed = stop_leftovers(grace=0, marker=marker)
    assert killed == found
    deadline = time.monotonic() + 10
    while processes_of_this_run(marker):
        assert time.monotonic() < deadline, "SIGKILL did not stop it"
        time.sleep(0.05)
