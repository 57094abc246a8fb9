#!/usr/bin/env python3
"""Load test of the room: N members on one real server, chat fan-out and a file fan-out.

    python scripts/load.py --members 500 --rate 20 --seconds 20 --skip-fanout
    python scripts/load.py --members 500 --find-max --rate 20 --skip-fanout     # highest rate, p99 < 250 ms
    python scripts/load.py --members 5000 --rate 2 --seconds 30 --skip-fanout --deadline 900
    python scripts/load.py --skip-chat --fanout-size 1GiB --fanout-recipients 10   # MB/s per recipient
    python scripts/load.py --members 20 --messages 50 --fanout-size 8MiB   # quick

The server is the real `securechat serve --json` in its own process, so its CPU
time, RSS and threads are read from /proc/<pid>. The members are raw protocol
clients (scripts/load_members.py), each with its own certificate, spread over
--workers processes of one selectors loop each: the generator must cost well under
the server per delivery, or it measures itself (issue 12: the old one, a
securechat.member.client.Client with threads per member, used more CPU than the server
and reported p99 of seconds at 500 members). Both costs are printed.

Connect: every member from its own loopback address 127.x.y.z (or --sources of
them), at most --per-source handshakes in flight per address (the server's cap is 16)
and --max-handshakes over all workers (its global cap is 256); the open-file limit is
raised for the members (and inherited by the server). Connect time is first TCP
connect to last welcome, over all workers.

Chat: --rate lines a second to the whole room, spread round-robin over the members,
each line carrying its send time; every member timestamps every line it receives.
Deliveries expected = lines x (members - 1) to the members; the operator (the
server's own console) receives each line once more, counted apart. Server CPU per
delivery = the server's CPU time during the lines / all deliveries.
--find-max: rounds of --step-seconds, the rate times --step-factor each round, until
p99 reaches --p99-target-ms or a line is lost; reports the best round.
Presence (protocol 3): batches may name many members; each member counts the room it
sees, and the report says whether every member's count converged (roster min = max).
File fan-out: one `securechat send` to --fanout-recipients raw members that hash
what they receive and answer `result` (and the operator, who saves it); "all
verified" = a verified result from every one of them, as `send` reports.

Every wait is bounded by --deadline; every process runs in its own process group
and is stopped on any exit, SIGTERM included (scripts/children.py). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import children  # noqa: E402
from load_processes import Server, Workers, raise_open_files, running_server  # noqa: E402

from securechat.errors import UsageError  # noqa: E402
from securechat.files.transfer import parse_size  # noqa: E402
from securechat.pki.certs import generate  # noqa: E402

FANOUT_SENDER = "fanout-sender"
# Every member gets each line at once, so one loop reads a line's copies one after another and the
# last is timestamped late: the fewer members a loop serves, the less it adds to the latency it
# reports. 5,000 members get 4 processes (not yet measured against a server that can hold them).
MEMBERS_PER_WORKER = 1250


def size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def connect_summary(reports: list[dict], members: int) -> dict:
    """First TCP connect to last welcome, over every worker (CLOCK_MONOTONIC is shared by processes)."""
    ready = sum(r["ready"] for r in reports)
    slowest = [r["slowest_s"] for r in reports if r["slowest_s"] is not None]
    firsts = [r["first_connect"] for r in reports if r["first_connect"] is not None]
    lasts = [r["last_welcome"] for r in reports if r["last_welcome"] is not None]
    seconds = max(lasts) - min(firsts) if firsts and lasts else 0.0
    return {"members": members, "ready": ready, "failed": members - ready,
            "failures": sorted({f for r in reports for f in r["failures"]})[:5],
            "seconds": round(seconds, 2), "per_s": round(ready / max(seconds, 1e-9), 1),
            "slowest_handshake_and_welcome_s": round(max(slowest), 3) if slowest else None}


def latencies_of(workers: "Workers", round_: int) -> list[float]:
    latencies = array("d")
    for path in workers.latency_files:
        with open(f"{path}.{round_}", "rb") as f:
            latencies.frombytes(f.read())
    return sorted(latencies)


def play_round(args: argparse.Namespace, server: Server, workers: Workers, round_: int, rate: float,
               lines: int) -> dict:
    """`lines` chat lines at `rate` a second to the whole room, and what it cost and took."""
    before, operator_before = server.status(), server.operator_messages
    cpu_before = sum(os.times()[:2])
    start = time.monotonic() + 0.5
    workers.tell(f"go {round_} {start} {rate} {lines}")
    drained = workers.collect("drained", lines / rate + args.drain_timeout + 60)
    elapsed = time.monotonic() - start
    after = server.status()
    time.sleep(0.1)  # the operator's last lines, read by another thread
    operator = server.operator_messages - operator_before
    ordered = latencies_of(workers, round_)
    sent = sum(d["sent"] for d in drained)
    counted = sum(d["counted"] for d in drained)  # ready when the lines began (late joiners are not counted)
    delivered = sum(d["deliveries"] for d in drained)
    server_cpu = after["cpu_s"] - before["cpu_s"]
    generator_cpu = sum(d["cpu_s"] for d in drained) + sum(os.times()[:2]) - cpu_before
    all_deliveries = delivered + operator
    ms = (lambda p: round(percentile(ordered, p), 1)) if ordered else (lambda p: None)
    rosters = [d["roster"] for d in drained]
    return {
        "members": counted, "lines_offered": lines, "lines_sent": sent, "rate_per_s": rate,
        "seconds": round(elapsed, 2),
        "deliveries_expected": sent * (counted - 1), "deliveries": delivered, "late_deliveries": sum(
            d["late"] for d in drained),
        "operator_deliveries": operator,
        "offered_deliveries_per_s": round(rate * (counted - 1), 1),
        "delivered_per_s": round(delivered / max(elapsed, 1e-9), 1),
        "latency_p50_ms": ms(50), "latency_p99_ms": ms(99),
        "latency_max_ms": round(ordered[-1], 1) if ordered else None,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_delivery": round(server_cpu / max(all_deliveries, 1) * 1e6, 1),
        "generator_cpu_s": round(generator_cpu, 2),
        "generator_cpu_us_per_delivery": round(generator_cpu / max(all_deliveries, 1) * 1e6, 1),
        "roster_min": min((r["min"] for r in rosters if r["min"] is not None), default=None),
        "roster_max": max((r["max"] for r in rosters if r["max"] is not None), default=None),
        "server": after,
    }


def complete(step: dict) -> bool:
    return step["deliveries"] == step["deliveries_expected"] and step["lines_sent"] == step["lines_offered"]


def find_max(args: argparse.Namespace, server: Server, workers: Workers) -> dict:
    """Step the room's line rate up until p99 reaches the target or a delivery is lost; the best step."""
    steps, rate = [], args.rate
    for round_ in range(1, args.max_steps + 1):
        lines = max(1, int(round(rate * args.step_seconds)))
        step = play_round(args, server, workers, round_, rate, lines)
        steps.append(step)
        print(f"step {round_}: {rate:g} lines/s, {step['delivered_per_s']:g} deliveries/s, "
              f"p50 {step['latency_p50_ms']} ms, p99 {step['latency_p99_ms']} ms, "
              f"{step['deliveries']}/{step['deliveries_expected']} delivered, "
              f"server {step['server_cpu_us_per_delivery']} us/delivery", flush=True)
        if not complete(step) or step["latency_p99_ms"] is None or step["latency_p99_ms"] >= args.p99_target_ms:
            break
        children.budget.check("stepping the rate up")
        rate *= args.step_factor
    good = [s for s in steps if complete(s) and s["latency_p99_ms"] is not None
            and s["latency_p99_ms"] < args.p99_target_ms]
    best = max(good, key=lambda s: s["delivered_per_s"], default=None)
    return {"p99_target_ms": args.p99_target_ms, "steps": steps,
            "best_rate_per_s": best["rate_per_s"] if best else None,
            "best_deliveries_per_s": best["delivered_per_s"] if best else None,
            "best_p99_ms": best["latency_p99_ms"] if best else None,
            "limited_by": ("p99" if steps and complete(steps[-1]) else "lost deliveries") if len(good) < len(steps)
            else f"--max-steps {args.max_steps}"}


def run_chat(args: argparse.Namespace, certs: Path, names: list[str], folder: Path) -> dict:
    lines = args.messages if args.messages is not None else int(round(args.rate * args.seconds))
    with running_server(certs, folder / "server-downloads") as server:
        workers = Workers(args, server.port, certs, names, folder, answer_offers=False)
        try:
            connect = connect_summary(workers.collect("connected", args.connect_timeout + 60), len(names))
            connect["server"] = server.status()
            print(f"connected {connect['ready']}/{len(names)} members in {connect['seconds']} s "
                  f"(first TCP connect to last welcome; slowest {connect['slowest_handshake_and_welcome_s']} s)",
                  flush=True)
            if connect["failed"]:
                print(f"  failures: {connect['failures']}", flush=True)
            results = {"connect": connect}
            if args.find_max:
                results["find_max"] = find_max(args, server, workers)
            else:
                results["chat"] = play_round(args, server, workers, 0, args.rate, lines)
            workers.tell("stop")
            done = workers.collect("done", 60)
        finally:
            workers.stop()
    rounds = [results["chat"]] if "chat" in results else results["find_max"]["steps"]
    for step in rounds:
        step["members_dropped"] = sum(d["dropped"] for d in done)
        step["dropped_reasons"] = sorted({r for d in done for r in d["dropped_reasons"]})[:5]
        step["lines_dropped_notices"] = sum(d["notices"] for d in done)
    results["presence"] = {"frames": sum(d["presence_frames"] for d in done),
                           "names": sum(d["presence_names"] for d in done),
                           # As seen after the last round drained, with everyone still here: at "stop"
                           # one worker's members may already have said bye while another counts.
                           "roster_min": rounds[-1]["roster_min"] if rounds else None,
                           "roster_max": rounds[-1]["roster_max"] if rounds else None}
    # Each member sees the others and the operator: as many as there are members, when all got in.
    presence = results["presence"]
    presence["converged"] = presence["roster_min"] == presence["roster_max"] == len(names)
    return results


def run_fanout(args: argparse.Namespace, certs: Path, names: list[str], folder: Path) -> dict:
    path = folder / "fanout.bin"
    with open(path, "wb") as f:
        block = os.urandom(1024 * 1024)
        for i in range(args.fanout_size // len(block)):
            f.write(i.to_bytes(8, "big") + block[8:])
        f.write(block[: args.fanout_size % len(block)])
    with running_server(certs, folder / "server-downloads-fanout") as server:
        workers = Workers(args, server.port, certs, names, folder, answer_offers=True)
        try:
            connect = connect_summary(workers.collect("connected", args.connect_timeout + 60), len(names))
            workers.tell("serve")
            started = time.monotonic()
            sender = children.spawn(
                [sys.executable, "-m", "securechat", "send", f"127.0.0.1:{server.port}", "--certs", str(certs),
                 "--name", FANOUT_SENDER, "--downloads", str(folder / "sender-downloads"), "--json",
                 "--no-reconnect", str(path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = sender.communicate(timeout=children.budget.wait_s(args.fanout_timeout))
            except subprocess.TimeoutExpired:
                children.budget.check("waiting for the file fan-out")
                raise RuntimeError(f"the file fan-out took over {args.fanout_timeout:g} s") from None
            finally:
                children.stop(sender)
            elapsed = time.monotonic() - started
            status = server.status()
            workers.tell("stop")
            done = workers.collect("done", 60)
        finally:
            workers.stop()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    delivered = [e for e in events if e.get("event") == "file_delivered"]
    failed = [e for e in events if e.get("event") == "file_failed"]
    expected = set(names) | {"server"}
    verified = sum(d["verified"] for d in done)
    return {
        "size_bytes": args.fanout_size, "recipients": len(expected), "members_ready": connect["ready"],
        "seconds": round(elapsed, 2), "MB_per_s_per_recipient": round(args.fanout_size / elapsed / 1e6, 1),
        "delivered": len(delivered), "failed": [(e.get("to"), e.get("reason")) for e in failed],
        "verified_by_raw_members": verified, "send_exit": sender.returncode,
        "send_stderr": err.strip()[-500:],
        "all_verified": sender.returncode == 0 and {e.get("to") for e in delivered} == expected
        and verified == len(names),
        "server": status,
    }


def run(args: argparse.Namespace) -> dict:
    results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "workers": args.workers,
                     "loadavg_before": os.getloadavg()}
    needed = max(0 if args.skip_chat else args.members, 0 if args.skip_fanout else args.fanout_recipients)
    raise_open_files(needed)
    with tempfile.TemporaryDirectory(prefix="securechat-load-") as tmp:
        folder = Path(tmp)
        certs = folder / "certs"
        names = [f"m{i:05d}" for i in range(needed)]
        t = time.monotonic()
        generate(certs, names + [FANOUT_SENDER], [])
        results["cert_generation_s"] = round(time.monotonic() - t, 2)
        results["certificates"] = len(names) + 1
        print(f"{len(names) + 1} certificates in {results['cert_generation_s']} s", flush=True)
        if not args.skip_chat:
            results.update(run_chat(args, certs, names[: args.members], folder))
            print(json.dumps({k: results[k] for k in ("chat", "find_max", "presence") if k in results}, indent=2),
                  flush=True)
        if not args.skip_fanout:
            results["fanout"] = run_fanout(args, certs, names[: args.fanout_recipients], folder)
            print(json.dumps(results["fanout"], indent=2), flush=True)
    results["loadavg_after"] = os.getloadavg()
    return results


def report(args: argparse.Namespace, results: dict) -> int:
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    status = 0
    connect = results.get("connect")
    if connect:
        server = connect["server"]
        print(f"connect: {connect['ready']}/{connect['members']} in {connect['seconds']} s; server RSS "
              f"{server['rss_mib']} MiB, {server['threads']} threads", flush=True)
        if connect["failed"]:
            print(f"CONNECT: {connect['failed']} members failed to connect: {connect['failures']}", file=sys.stderr)
            status = 1
    chat = results.get("chat")
    if chat:
        print(f"chat: {chat['deliveries']}/{chat['deliveries_expected']} delivered, {chat['delivered_per_s']} "
              f"deliveries/s, p50 {chat['latency_p50_ms']} ms, p99 {chat['latency_p99_ms']} ms, max "
              f"{chat['latency_max_ms']} ms; server {chat['server_cpu_us_per_delivery']} us CPU per delivery, "
              f"generator {chat['generator_cpu_us_per_delivery']} us; server peak RSS "
              f"{chat['server']['peak_rss_mib']} MiB", flush=True)
        if not complete(chat):
            print(f"LOST: sent {chat['lines_sent']} of {chat['lines_offered']} lines, "
                  f"delivered {chat['deliveries']} of {chat['deliveries_expected']}", file=sys.stderr)
            status = 1
    presence = results.get("presence")
    if presence:
        print(f"presence: {presence['frames']} frames naming {presence['names']} members in all; every member "
              f"sees {presence['roster_min']}..{presence['roster_max']} others", flush=True)
        if not presence["converged"]:
            print("PRESENCE: the members' views of the room did not converge", file=sys.stderr)
            status = 1
    found = results.get("find_max")
    if found:
        print(f"highest room throughput with p99 < {found['p99_target_ms']:g} ms: "
              f"{found['best_deliveries_per_s']} deliveries/s ({found['best_rate_per_s']} lines/s, p99 "
              f"{found['best_p99_ms']} ms); the next step was limited by {found['limited_by']}", flush=True)
        if found["best_deliveries_per_s"] is None:
            status = 1
    fanout = results.get("fanout")
    if fanout:
        print(f"fan-out: {fanout['size_bytes'] / 2**20:g} MiB to {fanout['recipients']} recipients in "
              f"{fanout['seconds']} s: {fanout['MB_per_s_per_recipient']} MB/s per recipient", flush=True)
        if not fanout["all_verified"]:
            print(f"FAN-OUT: not every recipient verified the file: delivered {fanout['delivered']}, "
                  f"failed {fanout['failed']}", file=sys.stderr)
            status = 1
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", "--clients", type=int, default=500)
    parser.add_argument("--workers", type=int, help="member processes, one selectors loop each "
                        f"(default: one per {MEMBERS_PER_WORKER} members, at least 2)")
    parser.add_argument("--rate", type=float, default=20.0, help="chat lines per second to the whole room")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to send (unless --messages)")
    parser.add_argument("--messages", type=int, help="lines to send in all (instead of --seconds)")
    parser.add_argument("--connect-concurrency", type=int, default=64, help="handshakes in flight per worker")
    parser.add_argument("--max-handshakes", type=int, default=200,
                        help="handshakes in flight over all workers (the server refuses over 256 at once)")
    parser.add_argument("--sources", type=int, default=0,
                        help="distinct source addresses 127.x.y.z (0: one per member)")
    parser.add_argument("--per-source", type=int, default=16,
                        help="handshakes in flight from one address (the server's cap is 16)")
    parser.add_argument("--find-max", action="store_true",
                        help="step the line rate up from --rate until p99 reaches --p99-target-ms")
    parser.add_argument("--p99-target-ms", type=float, default=250.0)
    parser.add_argument("--step-seconds", type=float, default=10.0, help="how long each --find-max step sends")
    parser.add_argument("--step-factor", type=float, default=1.5, help="rate of a step over the one before")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--connect-timeout", type=float, default=300.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="wait for late lines after the last send")
    parser.add_argument("--fanout-size", type=size_argument, default=parse_size("256MiB"))
    parser.add_argument("--fanout-recipients", type=int, default=10, help="members receiving the file (+ the operator)")
    parser.add_argument("--fanout-timeout", type=float, default=600.0)
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--deadline", type=float, help="seconds the whole run may take, every wait included")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.workers is None:
        args.workers = max(2, -(-args.members // MEMBERS_PER_WORKER))
    if args.members < 2 or args.workers < 1 or args.rate <= 0 or args.fanout_recipients < 1:
        return children.fail("--members must be at least 2, --workers and --fanout-recipients at least 1, "
                             "--rate over 0")
    if not 1 <= args.per_source <= 16 or args.sources < 0 or args.max_handshakes < 1 or args.step_factor <= 1:
        return children.fail("--per-source must be 1 to 16 (the server's cap), --sources at least 0, "
                             "--max-handshakes at least 1, --step-factor over 1")
    children.start_budget(args.deadline)
    with children.stopped_on_exit():
        try:
            results = run(args)
        except (RuntimeError, OSError) as exc:  # BudgetSpent included
            return children.fail(str(exc))
    return report(args, results)


if __name__ == "__main__":
    sys.exit(main())
