#!/usr/bin/env python3
"""securechat against `openssl s_server | s_client`, in interleaved rounds.

    python scripts/bench.py --size 1GiB --rounds 3
    python scripts/bench.py --smoke                 # 4 MiB, one round: CI runs this

Each round runs (a) securechat: `securechat serve` and `securechat join` as the
user runs them, `/send FILE` typed into the client, timed from the send until
the sender holds the verified confirmation (`file_delivered`); then (b) the
same file through `openssl s_client -quiet -no_ign_eof -nocommands < FILE`
into `openssl s_server -naccept 1 -quiet -num_tickets 0 > NEWFILE` with the
same certificates, TLS 1.3. Rounds alternate so that both see the same machine
state.

The openssl pair moves the file from client to server on purpose. s_server
reads the socket with a blocking SSL_read whenever select() saw it readable; fed
the file on its stdin, it sometimes saw the ClientHello readable in the same
select() as the file, finished the handshake inside SSL_write, and then blocked
in SSL_read for data the client never sends (s_client waited for the rest of
the file: a hang, one run in six here). As the reader, s_server only ever
SSL_reads what the client sends and ends at its close_notify; s_client, with no
session tickets coming, never has anything to read. -quiet also stops s_server
from treating the file's bytes as commands ('Q' at the start of a read).

Every wait is bounded by --deadline (150 s in --smoke mode); the servers and
clients run in their own process groups and are stopped on any exit, SIGTERM
included (scripts/children.py).

Also measured: the receiver's and sender's peak RSS and CPU seconds per GiB,
chat latency (idle, and during the transfer), time from starting `join` to
`connected`, and how many mutual-TLS handshakes per second the server takes.
Prints every round, the medians and the ratio; writes JSON (--json-out) and a
plot of MB/s per round (--plot, needs matplotlib). Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import children  # noqa: E402

from securechat.errors import SecureChatError, UsageError  # noqa: E402
from securechat.files.transfer import parse_size  # noqa: E402
from securechat.member.connection import connect  # noqa: E402
from securechat.pki.certs import generate  # noqa: E402
from securechat.pki.tls import ClientFiles, client_context  # noqa: E402

MB = 1_000_000
HANDSHAKE_TIMEOUT = 10.0
SMOKE_DEADLINE_S = 150.0  # tests/test_bench.py allows its run more than this


def securechat_command() -> list[str]:
    script = Path(sys.executable).parent / "securechat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "securechat"]


def proc_stats(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


class Events:
    """A securechat --json process, its events collected by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.started = time.time()
        self.proc = children.spawn(securechat_command() + args, cwd=cwd, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.events: list[dict] = []
        self.stderr_tail = ""
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stderr(self) -> None:
        # Drained so that a chatty child never blocks on a full pipe.
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + line)[-2000:]

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["_seen"] = time.time()
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def wait(self, name: str, timeout: float = 600, **match) -> dict:
        timeout = children.budget.wait_s(timeout)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.events:
                    if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                        return event
                if self.proc.poll() is not None and not self.cond.wait(0.2):
                    raise RuntimeError(f"{name}: process ended: {self.stderr_tail[-500:]}")
                if time.monotonic() > deadline:
                    children.budget.check(f"waiting for {name}")
                    raise RuntimeError(f"no {name} within {timeout:.0f} s")
                self.cond.wait(0.5)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        children.stop(self.proc)


def chat_latencies(sender: Events, receiver: Events, count: int, gap: float, tag: str) -> list[float]:
    sent = {}
    for i in range(count):
        text = f"{tag} {i}"
        sent[text] = time.time()
        sender.send(text)
        time.sleep(gap)
    out = []
    for text, at in sent.items():
        event = receiver.wait("message", timeout=120, text=text)
        out.append(event["_seen"] - at)
    return out


def securechat_round(folder: Path, certs: Path, payload: Path, size: int, fanout: int, chat: bool) -> dict:
    server = Events(["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(certs),
                     "--downloads", str(folder / "recv-server"), "--json"], folder)
    clients: list[Events] = []
    try:
        port = server.wait("listening", timeout=30)["port"]
        names = ["sender"] + [f"r{i}" for i in range(fanout)]
        join_s = []
        for name in names:
            client = Events(["join", "127.0.0.1", "--port", str(port), "--certs", str(certs), "--name", name,
                             "--downloads", str(folder / f"recv-{name}"), "--json"], folder)
            join_s.append(client.wait("connected", timeout=30)["_seen"] - client.started)
            clients.append(client)
        sender = clients[0]
        idle = chat_latencies(sender, server, 20, 0.01, "idle") if chat else []
        before = {p.proc.pid: proc_stats(p.proc.pid) for p in [server, *clients]}
        started = time.time()
        sender.send(f"/send {payload}")
        busy: list[float] = []
        if chat:  # lines typed while the file is in flight
            busy = chat_latencies(sender, server, 20, min(0.02, size / 400 / MB / 40), "busy")
        for name in ["server", *names[1:]]:
            delivered = sender.wait("file_delivered", timeout=900, to=name)
        elapsed = delivered["_seen"] - started
        after = {p.proc.pid: proc_stats(p.proc.pid) for p in [server, *clients]}
        cpu = {pid: after[pid]["cpu_s"] - before[pid]["cpu_s"] for pid in after}
        gib = size / 2**30
        return {
            "seconds": round(elapsed, 3),
            "MB_per_s": round(size / elapsed / MB, 1),
            "receiver_peak_rss_mib": after[server.proc.pid]["peak_rss_mib"],
            "sender_peak_rss_mib": after[sender.proc.pid]["peak_rss_mib"],
            "receiver_cpu_s_per_gib": round(cpu[server.proc.pid] / gib, 2),
            "sender_cpu_s_per_gib": round(cpu[sender.proc.pid] / gib, 2),
            "join_to_connected_s": [round(s, 3) for s in join_s],
            "chat_idle_ms": [round(x * 1000, 2) for x in idle],
            "chat_busy_ms": [round(x * 1000, 2) for x in busy],
        }
    finally:
        for p in [*clients, server]:
            p.stop()
        for sub in folder.glob("recv-*"):
            shutil.rmtree(sub, ignore_errors=True)


def listening_port(proc: subprocess.Popen, timeout: float) -> int:
    """The port `proc` listens on, read from /proc: it binds port 0 itself, so no other
    process can take the port between our choosing it and its binding it."""
    deadline = time.monotonic() + children.budget.wait_s(timeout)
    while True:
        inodes = set()
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:["):-1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                        return int(fields[1].rsplit(":", 1)[1], 16)
        if proc.poll() is not None:
            raise RuntimeError(f"openssl s_server exited ({proc.returncode}) before listening")
        if time.monotonic() > deadline:
            children.budget.check("waiting for openssl s_server to listen")
            raise RuntimeError("openssl s_server did not start listening")
        time.sleep(0.01)


def openssl_round(folder: Path, certs: Path, payload: Path) -> dict:
    out = folder / "openssl-received.bin"
    common = ["-CAfile", str(certs / "ca.pem"), "-tls1_3"]
    started_procs: list[subprocess.Popen] = []
    try:
        with open(out, "wb") as sink:
            # stdin: a pipe nobody writes to, so s_server never has terminal input to send.
            server = children.spawn(
                ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-quiet", "-Verify", "1",
                 "-num_tickets", "0", "-cert", str(certs / "server.pem"), "-key", str(certs / "server.key"),
                 *common],
                stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.DEVNULL,
            )
        started_procs.append(server)
        port = listening_port(server, 10)
        started = time.time()
        with open(payload, "rb") as source:
            client = children.spawn(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-no_ign_eof", "-nocommands",
                 "-cert", str(certs / "clients" / "sender.pem"), "-key", str(certs / "clients" / "sender.key"),
                 *common],
                stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        started_procs.append(client)
        try:
            client.wait(children.budget.wait_s(900))
            server.wait(children.budget.wait_s(30))  # it ends at the client's close_notify
        except subprocess.TimeoutExpired:
            children.budget.check("waiting for openssl")
            raise RuntimeError("openssl s_server | s_client did not finish") from None
        elapsed = time.time() - started
        received = out.stat().st_size
        if client.returncode != 0 or received != payload.stat().st_size:
            raise RuntimeError(f"openssl moved {received} bytes, rc {client.returncode}/{server.returncode}")
        return {"seconds": round(elapsed, 3), "MB_per_s": round(received / elapsed / MB, 1)}
    finally:
        for proc in started_procs:
            if proc.stdin:
                proc.stdin.close()
            children.stop(proc)
        out.unlink(missing_ok=True)


def handshakes_per_second(folder: Path, certs: Path, seconds: float, workers: int = 4) -> dict:
    server = Events(["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(certs),
                     "--downloads", str(folder / "recv-hs"), "--json"], folder)
    try:
        port = server.wait("listening", timeout=30)["port"]
        context = client_context(ClientFiles.from_certs_dir(certs, "sender"))
        deadline = time.monotonic() + seconds
        counts = [0] * workers

        def hammer(i: int) -> None:
            # A handshake may take its whole timeout: none starts that could outlast the budget.
            while time.monotonic() < deadline and children.budget.left() > HANDSHAKE_TIMEOUT:
                connect("127.0.0.1", port, context, timeout=HANDSHAKE_TIMEOUT).close()
                counts[i] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(hammer, range(workers)))
        elapsed = time.monotonic() - started
        if children.budget.left() <= HANDSHAKE_TIMEOUT:
            raise children.BudgetSpent(f"--deadline of {children.budget.seconds:g} s spent while measuring handshakes")
        return {"handshakes": sum(counts), "per_s": round(sum(counts) / elapsed, 1)}
    finally:
        server.stop()


def make_payload(path: Path, size: int) -> None:
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            f.write(piece)
            written += len(piece)
            block = block[1:] + block[:1]  # no two MiB alike


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 2)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    rounds = range(1, len(results["rounds"]) + 1)
    ax.plot(rounds, [r["securechat"]["MB_per_s"] for r in results["rounds"]], "o-", label="securechat (verified)")
    if all(r.get("openssl") for r in results["rounds"]):
        ax.plot(rounds, [r["openssl"]["MB_per_s"] for r in results["rounds"]], "s--", label="openssl s_server|s_client")
    ax.set_xlabel("round")
    ax.set_ylabel("MB/s")
    ax.set_title(f"{results['size_bytes'] / 2**20:.0f} MiB over TLS 1.3 on loopback")
    ax.set_ylim(bottom=0)
    ax.set_xticks(list(rounds))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="file size, e.g. 1GiB, 256MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fanout", type=int, default=0, help="extra clients that also receive (through the room)")
    parser.add_argument("--handshake-seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="4 MiB, one round, short handshake test")
    parser.add_argument("--deadline", type=float,
                        help=f"seconds the whole run may take, every wait included (--smoke: {SMOKE_DEADLINE_S:g})")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.size, args.rounds, args.handshake_seconds = "4MiB", 1, 1.0
        args.deadline = args.deadline or SMOKE_DEADLINE_S
    try:
        size = parse_size(args.size)
    except UsageError as exc:
        parser.error(str(exc))
    children.start_budget(args.deadline)
    with children.stopped_on_exit():
        try:
            results = run(args, size)
        except (RuntimeError, OSError, SecureChatError) as exc:  # BudgetSpent included
            return children.fail(str(exc))
    report(args, results)
    return 0


def run(args: argparse.Namespace, size: int) -> dict:
    have_openssl = shutil.which("openssl") is not None
    if not have_openssl:
        print("openssl not found: measuring securechat only", file=sys.stderr)

    results: dict = {"size_bytes": size, "rounds": [], "fanout": args.fanout, "cpus": os.cpu_count(),
                     "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="securechat-bench-") as tmp:
        folder = Path(tmp)
        certs = folder / "certs"
        generate(certs, ["sender"] + [f"r{i}" for i in range(args.fanout)], [])
        payload = folder / "payload.bin"
        make_payload(payload, size)
        for i in range(args.rounds):
            round_result = {"securechat": securechat_round(folder, certs, payload, size, args.fanout, chat=True)}
            if have_openssl:
                round_result["openssl"] = openssl_round(folder, certs, payload)
            results["rounds"].append(round_result)
            sc = round_result["securechat"]
            line = (f"round {i + 1}: securechat {sc['MB_per_s']:7.1f} MB/s ({sc['seconds']:.2f} s, "
                    f"receiver {sc['receiver_peak_rss_mib']} MiB, sender {sc['sender_peak_rss_mib']} MiB)")
            if have_openssl:
                line += f"   openssl {round_result['openssl']['MB_per_s']:7.1f} MB/s"
            print(line, flush=True)
        results["handshakes"] = handshakes_per_second(folder, certs, args.handshake_seconds)
    return results


def report(args: argparse.Namespace, results: dict) -> None:
    have_openssl = all(r.get("openssl") for r in results["rounds"])
    sc_rounds = [r["securechat"] for r in results["rounds"]]
    summary = {
        "securechat_MB_per_s": median([r["MB_per_s"] for r in sc_rounds]),
        "receiver_peak_rss_mib": max(r["receiver_peak_rss_mib"] for r in sc_rounds),
        "sender_peak_rss_mib": max(r["sender_peak_rss_mib"] for r in sc_rounds),
        "receiver_cpu_s_per_gib": median([r["receiver_cpu_s_per_gib"] for r in sc_rounds]),
        "sender_cpu_s_per_gib": median([r["sender_cpu_s_per_gib"] for r in sc_rounds]),
        "join_to_connected_s": median([s for r in sc_rounds for s in r["join_to_connected_s"]]),
        "chat_idle_p50_ms": p([x for r in sc_rounds for x in r["chat_idle_ms"]], 50),
        "chat_idle_p99_ms": p([x for r in sc_rounds for x in r["chat_idle_ms"]], 99),
        "chat_during_transfer_p50_ms": p([x for r in sc_rounds for x in r["chat_busy_ms"]], 50),
        "chat_during_transfer_p99_ms": p([x for r in sc_rounds for x in r["chat_busy_ms"]], 99),
        "handshakes_per_s": results["handshakes"]["per_s"],
    }
    if have_openssl:
        summary["openssl_MB_per_s"] = median([r["openssl"]["MB_per_s"] for r in results["rounds"]])
        summary["ratio"] = round(summary["securechat_MB_per_s"] / summary["openssl_MB_per_s"], 2)
    results["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        try:
            plot(results, args.plot)
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
