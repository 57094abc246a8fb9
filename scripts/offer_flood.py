#!/usr/bin/env python3
"""Chat latency between two members while a third floods the room with offers.

    python scripts/offer_flood.py                 # 10 s quiet, then 20 s of flood
    python scripts/offer_flood.py --flood 5 --quiet 3

The attack is the one that was measured against securechat (issue 11 item 6):
one member keeps 16 offers open at a time, sends 1 MiB of each and aborts it,
as fast as the server lets it. alice and bob are real `securechat join --json`
processes (so the flood really lands on their disks and screens); alice says a
line every 50 ms with the time it was typed in it, and bob's JSON event time
gives the latency. Every process is stopped when the script ends, however it
ends. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securechat.pki.certs import generate  # noqa: E402
from securechat.pki.tls import ClientFiles, client_context  # noqa: E402
from securechat.wire import frames  # noqa: E402

OPEN_AT_ONCE = 16
SENT_BEFORE_ABORT = 1024 * 1024


def securechat() -> list[str]:
    script = Path(sys.executable).parent / "securechat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "securechat.ui.cli"]


class Member:
    """A `securechat join --json` process whose events are timestamped as they arrive."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.popen = subprocess.Popen(securechat() + args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.popen.stdout:
            try:
                self.events.append(json.loads(raw))
            except ValueError:
                pass

    def wait(self, name: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("event") == name:
                    return event
            time.sleep(0.02)
        raise RuntimeError(f"no {name} within {timeout} s")

    def say(self, line: str) -> None:
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def flood(port: int, files: ClientFiles, until: float, counts: dict) -> None:
    """Offers, 16 open at a time, each given 1 MiB and aborted: as fast as the server reads them."""
    sock = client_context(files).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                                             server_hostname="127.0.0.1")
    decoder = frames.FrameDecoder()
    sock.sendall(frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION, software="offer-flood")))
    next_id = 0
    chunk = os.urandom(SENT_BEFORE_ABORT)

    def offer() -> None:
        nonlocal next_id
        next_id += 1
        sock.sendall(frames.encode(frames.Offer(id=next_id, name=f"flood{next_id}.bin", size=4 * SENT_BEFORE_ABORT,
                                                sha256=secrets.token_hex(32))))
        counts["offered"] += 1

    for _ in range(OPEN_AT_ONCE):
        offer()
    # The server slows a flooder by not reading it, so writes here block: that is the defence.
    sock.settimeout(1.0)
    while time.monotonic() < until:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            counts["closed"] = True
            return
        decoder.feed(data)
        try:
            while (frame := decoder.next_frame()) is not None and time.monotonic() < until:
                if isinstance(frame, frames.Accept):
                    sock.sendall(frames.encode_chunk(frame.id, chunk) + frames.encode(frames.Abort(id=frame.id)))
                    counts["aborted"] += 1
                    offer()
                elif isinstance(frame, frames.Recipients) and not frame.names or isinstance(frame, frames.Cancel):
                    offer()
        except TimeoutError:
            counts["blocked"] += 1  # not read for a second: paced
    sock.close()


def latencies(alice: Member, bob: Member, seconds: float, tag: str) -> list[float]:
    """alice says a line every 50 ms for `seconds`; bob's receive times minus the send times, in ms."""
    sent = {}
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        text = f"{tag}-{n}"
        sent[text] = time.time()
        alice.say(text)
        n += 1
        time.sleep(0.05)
    time.sleep(2.0)
    got = {e["text"]: e["time"] for e in list(bob.events) if e.get("event") == "message" and e.get("text") in sent}
    lost = len(sent) - len(got)
    if lost:
        print(f"  {tag}: {lost} of {len(sent)} lines not received", file=sys.stderr)
    return sorted(1000 * (got[t] - sent[t]) for t in got)


def describe(values: list[float]) -> str:
    if not values:
        return "no lines arrived"
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return f"{len(values)} lines, p50 {statistics.median(values):.1f} ms, p99 {p99:.1f} ms, max {values[-1]:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of chat without the flood")
    parser.add_argument("--flood", type=float, default=20.0, help="seconds of chat during the flood")
    args = parser.parse_args()
    members: list[Member] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        certs = folder / "certs"
        generate(certs, ["alice", "bob", "mallory"], [])
        try:
            server = Member(["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(certs),
                             "--downloads", str(folder / "server-dl"), "--json"], folder)
            members.append(server)
            port = server.wait("listening")["port"]
            for name in ("alice", "bob"):
                members.append(Member(["join", "127.0.0.1", "--port", str(port), "--certs", str(certs), "--name", name,
                                       "--downloads", str(folder / f"{name}-dl"), "--json"], folder))
                members[-1].wait("connected")
            alice, bob = members[1], members[2]
            quiet = latencies(alice, bob, args.quiet, "quiet")
            counts = {"offered": 0, "aborted": 0, "blocked": 0, "closed": False}
            until = time.monotonic() + args.flood
            flooder = threading.Thread(target=flood, args=(port, ClientFiles.from_certs_dir(certs, "mallory"), until,
                                                           counts), daemon=True)
            flooder.start()
            loud = latencies(alice, bob, args.flood, "flood")
            flooder.join(args.flood + 10)
            incoming = sum(1 for e in list(bob.events) if e.get("event") == "file_incoming")
            print(f"without flood: {describe(quiet)}")
            print(f"during flood:  {describe(loud)}")
            print(f"flood: {counts['offered']} offers made, {counts['aborted']} accepted and aborted in "
                  f"{args.flood:.0f} s; bob was offered {incoming} files; the flooder's writes waited over 1 s "
                  f"{counts['blocked']} times"
                  + ("; the flooder was disconnected" if counts["closed"] else ""))
        finally:
            for member in reversed(members):
                member.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
