"""The processes of a scripts/load.py run: the real server, and the member workers (load_members.py).

The server is the real `securechat serve --json` in its own process, so its CPU time,
RSS and threads are read from /proc/<pid>; the workers report JSON lines on stdout and
take commands on stdin (the protocol is in load_members.py). Every process is started
by children.spawn, in its own process group, and stopped with what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import children

MEMBERS_SCRIPT = Path(__file__).resolve().parent / "load_members.py"

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
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def lines_of(stream, into: queue.Queue) -> None:
    threading.Thread(target=lambda: [into.put(line) for line in stream] + [into.put("")], daemon=True).start()


class Server:
    """A real `securechat serve --json`; counts the chat lines its operator receives; samples its threads."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.operator_messages = 0
        self.peak_threads = 0
        self.sampling = True

    def count(self, lines: queue.Queue) -> None:
        while (line := lines.get()) != "":
            if '"event": "message"' in line or '"event":"message"' in line:
                self.operator_messages += 1

    def sample(self) -> None:
        while self.sampling:
            with contextlib.suppress(OSError):
                self.peak_threads = max(self.peak_threads, proc_status(self.pid)["threads"])
            time.sleep(0.25)

    def status(self) -> dict:
        status = proc_status(self.pid)
        return {"cpu_s": round(status["cpu_s"], 2), "peak_rss_mib": round(status["peak_rss_kib"] / 1024, 1),
                "rss_mib": round(status["rss_kib"] / 1024, 1), "threads": status["threads"],
                "peak_threads": max(self.peak_threads, status["threads"])}


@contextlib.contextmanager
def running_server(certs: Path, downloads: Path) -> Iterator[Server]:
    process = children.spawn(
        [sys.executable, "-m", "securechat", "serve", "--host", "127.0.0.1", "--port", "0",
         "--certs", str(certs), "--downloads", str(downloads), "--json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )
    server = None
    try:
        lines: queue.Queue = queue.Queue()
        lines_of(process.stdout, lines)  # drained for as long as it runs: a full pipe would stall it
        try:
            first = lines.get(timeout=children.budget.wait_s(30))
        except queue.Empty:
            children.budget.check("starting the server")
            raise RuntimeError("securechat serve did not start within 30 s") from None
        if not first:
            raise RuntimeError(f"securechat serve exited ({process.wait(5)}) before listening")
        server = Server(process.pid, json.loads(first)["port"])
        threading.Thread(target=server.count, args=(lines,), daemon=True).start()
        threading.Thread(target=server.sample, daemon=True).start()
        yield server
    finally:
        if server is not None:
            server.sampling = False
        children.stop(process, grace=30)


class Workers:
    """The member processes: start them with their share of names, read their JSON lines."""

    def __init__(self, args: argparse.Namespace, port: int, certs: Path, names: list[str], folder: Path,
                 answer_offers: bool) -> None:
        count = max(1, min(args.workers, len(names)))
        # The server refuses handshakes over its global cap (admission.py): all workers together stay under it.
        concurrency = max(1, min(args.connect_concurrency, args.max_handshakes // count))
        self.procs, self.queues, self.latency_files = [], [], []
        for w in range(count):
            share = names[w::count]
            latency_file = folder / f"latencies-{w}.bin"
            job = {"port": port, "certs": str(certs), "names": share, "worker": w, "workers": count,
                   "answer_offers": answer_offers, "concurrency": concurrency,
                   "sources_per_worker": -(-args.sources // count) if args.sources else 0,
                   "per_source": args.per_source, "connect_timeout": args.connect_timeout,
                   "drain_timeout": args.drain_timeout, "latency_file": str(latency_file)}
            proc = children.spawn([sys.executable, str(MEMBERS_SCRIPT), json.dumps(job)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            self.queues.append(queue.Queue())
            lines_of(proc.stdout, self.queues[-1])
            self.latency_files.append(latency_file)

    def collect(self, key: str, wanted_s: float) -> list[dict]:
        """The `key` report of every worker, within the budget."""
        reports = []
        for proc, lines in zip(self.procs, self.queues):
            deadline = time.monotonic() + children.budget.wait_s(wanted_s)
            while True:
                try:
                    line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
                except queue.Empty:
                    children.budget.check(f"waiting for the members' {key!r} report")
                    raise RuntimeError(f"a member worker sent no {key!r} report within {wanted_s:g} s") from None
                if not line:
                    raise RuntimeError(f"a member worker exited ({proc.wait(5)}) before its {key!r} report")
                message = json.loads(line)
                if key in message:
                    reports.append(message[key])
                    break
        return reports

    def tell(self, command: str) -> None:
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()

    def stop(self) -> None:
        for proc in self.procs:
            children.stop(proc)


def raise_open_files(members: int) -> None:
    wanted = members + 256  # one socket per member in the workers; the server raises its own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise RuntimeError(f"{members} members need {wanted} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
