#!/usr/bin/env python3
"""Pull the plug halfway: what a resume costs, measured.

    python scripts/resume_bench.py --size 1GiB

`securechat serve`, a sender and a receiver (`securechat join --json`) on
127.0.0.1. The sender sends a file to the receiver; when the receiver's
partial holds half of it, the receiver is killed with SIGKILL and started
again on the same downloads folder. Printed (and --json-out): bytes the
receiver had written when it died, the offset it resumed from (so the bytes
sent twice), the seconds from restart to the resume (the prefix check), the
seconds to the verified delivery, and whether the SHA-256 matched.

Every wait is bounded by --deadline; every process runs in its own process
group and is stopped on any exit, SIGTERM included (scripts/children.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import children  # noqa: E402
from bench import Events, make_payload  # noqa: E402

from securechat.files.partials import PARTIAL_DIR  # noqa: E402
from securechat.files.transfer import parse_size  # noqa: E402
from securechat.pki.certs import generate  # noqa: E402


def partial_size(folder: Path) -> int:
    return max((p.stat().st_size for p in (folder / PARTIAL_DIR).glob("*.part")), default=0)


def run(folder: Path, size: int) -> dict:
    certs = folder / "certs"
    generate(certs, ["sender", "receiver"], [])
    payload = folder / "archive.bin"
    make_payload(payload, size)
    digest = hashlib.sha256()
    with open(payload, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    server = Events(["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(certs),
                     "--downloads", str(folder / "server-dl"), "--json"], folder)
    procs = [server]
    try:
        port = server.wait("listening", timeout=30)["port"]

        def join(name: str) -> Events:
            proc = Events(["join", "127.0.0.1", "--port", str(port), "--certs", str(certs), "--name", name,
                           "--downloads", str(folder / f"{name}-dl"), "--json"], folder)
            procs.append(proc)
            proc.wait("connected", timeout=30)
            return proc

        sender, receiver = join("sender"), join("receiver")
        started = time.time()
        sender.send(f"/send @receiver {payload}")
        half_by = time.monotonic() + children.budget.wait_s(600)
        while partial_size(folder / "receiver-dl") < size // 2:
            if time.monotonic() > half_by:
                children.budget.check("waiting for half the file")
                raise RuntimeError("the transfer never reached half")
            time.sleep(0.005)
        os.killpg(receiver.proc.pid, signal.SIGKILL)  # pull the plug: no clean-up in the receiver
        receiver.proc.wait(10)
        killed_at = time.time()
        written = partial_size(folder / "receiver-dl")
        restarted = time.time()
        receiver = join("receiver")
        incoming = receiver.wait("file_incoming", timeout=600)
        received = receiver.wait("file_received", timeout=900)
        delivered = [e for e in sender.events if e["event"] == "file_delivered"]
        offset = incoming["offset"]
        return {
            "size_bytes": size,
            "first_attempt_s": round(killed_at - started, 2),
            "written_when_killed": written,
            "resumed_from": offset,
            "lost_then_resent_bytes": written - offset,
            "resent_fraction": round((size - offset) / size, 3),
            "restart_to_resume_s": round(incoming["_seen"] - restarted, 2),
            "restart_to_verified_s": round(received["_seen"] - restarted, 2),
            "sha256_ok": received["sha256"] == digest.hexdigest(),
            "sender_told": bool(delivered) or sender.wait("file_delivered", timeout=60) is not None,
        }
    finally:
        for proc in procs:
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take, every wait included")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    children.start_budget(args.deadline)
    with children.stopped_on_exit(), tempfile.TemporaryDirectory(prefix="securechat-resume-") as tmp:
        try:
            result = run(Path(tmp), args.size)
        except (RuntimeError, OSError) as exc:  # BudgetSpent included
            return children.fail(str(exc))
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["sha256_ok"] and result["lost_then_resent_bytes"] <= 4 * 1024 * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
