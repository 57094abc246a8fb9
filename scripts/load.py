#!/usr/bin/env python3
"""Load test of the room: N participants on one server, chat fan-out and a file fan-out.

    python scripts/load.py --clients 500 --messages 400 --rate 20
    python scripts/load.py --clients 20 --messages 50 --fanout-size 8MiB   # quick

The server is the real `securechat serve` in its own process (so its peak RSS
and thread count can be read from /proc). The participants all live in this
process and use the package's own client code (securechat.client.Client:
real TLS 1.3 handshakes, hello, the Connection I/O threads). Prints the
numbers and, with --json-out, writes them to a file. Loopback only.

Every wait is bounded by --deadline; the server runs in its own process group
and is stopped on any exit, SIGTERM included (scripts/children.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import children  # noqa: E402
from securechat.certs import generate  # noqa: E402
from securechat.client import Client  # noqa: E402
from securechat.commands import Say, SendFile  # noqa: E402
from securechat.console import Console  # noqa: E402
from securechat.tls import ClientFiles  # noqa: E402
from securechat.errors import UsageError  # noqa: E402
from securechat.transfer import Downloads, parse_size  # noqa: E402


def size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class RecordingConsole(Console):
    """Keeps (monotonic time, event, fields) instead of printing."""

    def __init__(self) -> None:
        super().__init__(json_mode=True, out=open(os.devnull, "w"))
        self.events: list[tuple[float, str, dict]] = []
        self.changed = threading.Condition()

    def event(self, event: str, **fields) -> None:
        with self.changed:
            self.events.append((time.monotonic(), event, fields))
            self.changed.notify_all()

    def error(self, message: str) -> None:
        self.event("error", message=message)


def proc_status(pid: int) -> dict[str, float]:
    """Peak and current RSS, threads, and CPU seconds used so far, from /proc."""
    wanted = {"VmHWM": "peak_rss_kib", "VmRSS": "rss_kib", "Threads": "threads"}
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    return out


@contextlib.contextmanager
def running_server(certs: Path, downloads: Path) -> Iterator[tuple[int, int]]:
    """A real `securechat serve` for the block: yields its (pid, port); always stopped."""
    server = children.spawn(
        [sys.executable, "-m", "securechat", "serve", "--host", "127.0.0.1", "--port", "0",
         "--certs", str(certs), "--downloads", str(downloads), "--json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in server.stdout] + [lines.put("")],
                         daemon=True).start()  # drains it for as long as it runs
        try:
            first = lines.get(timeout=children.budget.wait_s(30))
        except queue.Empty:
            children.budget.check("starting the server")
            raise RuntimeError("securechat serve did not start within 30 s") from None
        if not first:
            raise RuntimeError(f"securechat serve exited ({server.wait(5)}) before listening")
        yield server.pid, json.loads(first)["port"]
    finally:
        children.stop(server, grace=30)


def close_all(clients) -> None:
    for client, _ in clients:
        client.conn.close("load test done")


def join_all(names: list[str], port: int, certs: Path, downloads: Path, workers: int = 8):
    def join(name: str) -> tuple[Client, RecordingConsole]:
        console = RecordingConsole()
        # A folder each, as on separate machines: one shared folder would hold one partial
        # per incoming file, and the others would be refused it ("arriving already").
        client = Client("127.0.0.1", port, ClientFiles.from_certs_dir(certs, name), Downloads(downloads / name),
                        console)
        client.connect()
        return client, console

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        joined = list(pool.map(join, names))
    return joined, time.monotonic() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def chat_fanout(clients, server_pid: int, messages: int, rate: float, drain_timeout: float) -> dict:
    n = len(clients)
    sent_at: dict[str, float] = {}
    peak = proc_status(server_pid)
    server_cpu_before, own_cpu_before = peak["cpu_s"], sum(os.times()[:2])
    interval = 1.0 / rate
    start = time.monotonic()
    for i in range(messages):
        target = start + i * interval
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client, _ = random.choice(clients)
        text = f"load {i}"
        sent_at[text] = time.monotonic()
        client.handle(Say(text))
        if i % max(1, int(rate)) == 0:
            status = proc_status(server_pid)
            peak["threads"] = max(peak["threads"], status["threads"])
    expected = messages * (n - 1)
    deadline = time.monotonic() + children.budget.wait_s(drain_timeout)
    while time.monotonic() < deadline:
        got = sum(sum(1 for _, e, _ in console.events if e == "message") for _, console in clients)
        if got >= expected:
            break
        time.sleep(0.2)
    latencies = []
    last = start
    for _, console in clients:
        for t, event, fields in console.events:
            if event == "message" and fields["text"] in sent_at:
                latencies.append(t - sent_at[fields["text"]])
                last = max(last, t)
    send_span = messages * interval
    wall = max(last - start, 1e-9)
    server_now = proc_status(server_pid)
    return {
        "clients": n,
        "messages": messages,
        "rate_per_s": rate,
        "deliveries_expected": expected,
        "deliveries": len(latencies),
        "deliveries_per_s": round(len(latencies) / max(last - start, 1e-9), 1),
        "offered_deliveries_per_s": round(expected / send_span, 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "latency_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "server_threads_peak": peak["threads"],
        "server_cpu_share": round((server_now["cpu_s"] - server_cpu_before) / wall, 2),
        "load_process_cpu_share": round((sum(os.times()[:2]) - own_cpu_before) / wall, 2),
        "server": server_now,
    }


def file_fanout(clients, server_pid: int, size: int, folder: Path, timeout: float) -> dict:
    sender, sender_console = clients[0]
    recipients = [c for c in clients[1:]]
    path = folder / "fanout.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(1024 * 1024)
        for i in range(size // len(block)):
            piece = block[:8] + i.to_bytes(8, "big") + block[16:]
            f.write(piece)
            digest.update(piece)
    expected_names = {c.name for c, _ in recipients} | {"server"}
    started = time.monotonic()
    sender.handle(SendFile(path))
    deadline = started + children.budget.wait_s(timeout)
    with sender_console.changed:
        while time.monotonic() < deadline:
            answered = [f for _, e, f in sender_console.events
                        if e in ("file_delivered", "file_failed", "file_interrupted")]
            if len(answered) >= len(expected_names):
                break
            sender_console.changed.wait(0.5)
    elapsed = time.monotonic() - started
    delivered = [f for _, e, f in sender_console.events if e == "file_delivered"]
    failed = [f for _, e, f in sender_console.events if e in ("file_failed", "file_interrupted")]
    all_verified = (
        {f["to"] for f in delivered} == expected_names
        and all(f["sha256"] == digest.hexdigest() for f in delivered)
    )
    path.unlink()
    return {
        "size_bytes": size,
        "recipients": len(expected_names),
        "seconds": round(elapsed, 2),
        "MB_per_s_per_recipient": round(size / elapsed / 1e6, 1),
        "delivered": len(delivered),
        "failed": [(f["to"], f["reason"]) for f in failed],
        "all_verified": all_verified,
        "server": proc_status(server_pid),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second across the room")
    parser.add_argument("--fanout-size", type=size_argument, default=parse_size("256MiB"))
    parser.add_argument("--fanout-recipients", type=int, default=10, help="clients receiving the file (+ the operator)")
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take, every wait included")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    children.start_budget(args.deadline)
    with children.stopped_on_exit():
        try:
            results = run(args)
        except (RuntimeError, OSError) as exc:  # BudgetSpent included
            return children.fail(str(exc))
    return report(args, results)


def run(args: argparse.Namespace) -> dict:
    results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="securechat-load-") as tmp:
        folder = Path(tmp)
        certs = folder / "certs"
        total = max(args.clients, args.fanout_recipients + 1)
        names = [f"p{i:04d}" for i in range(total)]
        t = time.monotonic()
        generate(certs, names, [])
        results["cert_generation_s"] = round(time.monotonic() - t, 2)
        downloads = folder / "client-downloads"

        if not args.skip_chat:
            with running_server(certs, folder / "server-downloads") as (pid, port):
                clients, connect_s = join_all(names[: args.clients], port, certs, downloads)
                results["connect"] = {"clients": args.clients, "seconds": round(connect_s, 2),
                                      "per_s": round(args.clients / connect_s, 1), "server": proc_status(pid)}
                print(f"connected {args.clients} clients in {connect_s:.2f} s", flush=True)
                results["chat"] = chat_fanout(clients, pid, args.messages, args.rate, drain_timeout=60)
                print(json.dumps(results["chat"], indent=2), flush=True)
                close_all(clients)

        if not args.skip_fanout:
            with running_server(certs, folder / "server-downloads-fanout") as (pid, port):
                clients, _ = join_all(names[: args.fanout_recipients + 1], port, certs, downloads)
                results["fanout"] = file_fanout(clients, pid, args.fanout_size, folder, timeout=600)
                print(json.dumps(results["fanout"], indent=2), flush=True)
                close_all(clients)
    return results


def report(args: argparse.Namespace, results: dict) -> int:
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    chat = results.get("chat")
    if chat and chat["deliveries"] != chat["deliveries_expected"]:
        print(f"LOST: {chat['deliveries_expected'] - chat['deliveries']} deliveries", file=sys.stderr)
        return 1
    fanout = results.get("fanout")
    if fanout and not fanout["all_verified"]:
        print(f"FAN-OUT: not every recipient verified the file: delivered {fanout['delivered']}, "
              f"failed {fanout['failed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
