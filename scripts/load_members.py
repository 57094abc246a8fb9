#!/usr/bin/env python3
"""One worker process of scripts/load.py: many raw room members in one selectors loop.

Each member is a raw protocol client written from docs/protocol.md: a non-blocking
TLS 1.3 socket with its own client certificate, `hello` with a session id, then chat
lines in and out. No thread per member and no securechat.member.client: the generator must
cost well under the server's CPU per delivery, or it measures itself (issue 12: the
old thread-per-member generator reported p99 of seconds that the server did not cause).

Talks to load.py by JSON lines: argv[1] is the job (JSON); stdout gets
{"connected": ...} after the connect phase, {"drained": ...} after each round of lines
(once every line of the round arrived, or the drain timeout passed) and {"done": ...}
at the end. stdin says "go <round> <monotonic start> <rate> <lines>" (send this worker's
share of a round; load.py may run several, stepping the rate up), or "serve" (only answer
offers: a file fan-out), then "stop" (bye, close, report). The members are served while
waiting for a command. CLOCK_MONOTONIC is one clock for every process, so a line's send
time written into its text by one worker is compared with the receive time in another.

Presence (protocol 3) comes in batches that may name many members: each member keeps a
count of the room it sees (welcome's list, then left/joined of every batch), so load.py
can say whether every member's view of the room converged, and how many presence frames
and names the server sent for it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import selectors
import socket
import ssl
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securechat.pki.tls import ClientFiles, client_context  # noqa: E402
from securechat.wire import frames  # noqa: E402

READ_SIZE = 256 * 1024
CHAT_PREFIX = b'{"type":"chat"'  # the server encodes compactly with "type" first (frames.encode)
PRESENCE_PREFIX = b'{"type":"presence"'
ROSTER_SAMPLE = 64  # members per worker that track exactly whom they see
# A timed line's text is "L <send ns> <round> <worker>.<i>": found with bytes.find, not json.loads,
# so that reading a line costs the generator little next to what sending it cost the server.
TIMED_TEXT = b'"text":"L '


class Member:
    __slots__ = ("name", "context", "sock", "state", "inbuf", "outbuf", "started", "ready_at", "received",
                 "sent", "closed_reason", "transfers", "verified", "mask", "counted", "source", "roster")

    def __init__(self, name: str, context: ssl.SSLContext) -> None:
        self.name, self.context = name, context
        self.sock: ssl.SSLSocket | socket.socket | None = None
        self.state = "idle"  # idle -> connecting -> handshake -> hello -> ready -> closed
        self.inbuf, self.outbuf = bytearray(), bytearray()
        self.started = self.ready_at = 0.0
        self.received = self.sent = 0
        self.closed_reason = ""
        self.transfers: dict[int, list] = {}  # server's id -> [sha256 object, offered size, offered sha256, bytes]
        self.verified = 0
        self.mask = 0  # what the selector waits for on this socket now
        self.counted = False  # ready when the lines started: one that got in later would inflate the count
        self.source = ""  # the local address it connects from
        # Others in the room it sees (the operator included): welcome, then every presence batch.
        # Presence is idempotent (protocol 3), so only a set counts right; sets for all of 5,000
        # members would cost the generator a gigabyte, so a sample of members keeps one.
        self.roster: set[str] | None = None


class Worker:
    def __init__(self, job: dict) -> None:
        self.job = job
        self.port = job["port"]
        self.answer_offers = job["answer_offers"]
        self.selector = selectors.DefaultSelector()
        certs = Path(job["certs"])
        self.members = [Member(name, client_context(ClientFiles.from_certs_dir(certs, name))) for name in job["names"]]
        for member in self.members[:: max(1, len(self.members) // ROSTER_SAMPLE)]:
            member.roster = set()
        self.latencies_ms = array("d")
        self.deliveries = 0  # of the current round's lines
        self.late = 0  # lines of an earlier round that arrived during this one
        self.round = -1
        self.notices = 0
        self.presence_frames = self.presence_names = 0

    # ---------------------------------------------------------------- connections

    def start_connect(self, member: Member, source: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A source address per member: the server caps pending handshakes per address,
        # and 5,000 members would otherwise look like one host flooding it.
        sock.bind((source, 0))
        member.source = source
        member.started = time.monotonic()
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            member.state, member.closed_reason = "closed", f"connect: {os.strerror(code)}"
            return
        member.sock, member.state, member.mask = sock, "connecting", selectors.EVENT_WRITE
        self.selector.register(sock, selectors.EVENT_WRITE, member)

    def close(self, member: Member, reason: str) -> None:
        if member.state == "closed":
            return
        if member.sock is not None:
            self.selector.unregister(member.sock)
            member.sock.close()
        member.state, member.closed_reason = "closed", reason

    def want(self, member: Member, events: int) -> None:
        if member.mask != events:  # one epoll_ctl per change, not per line sent
            member.mask = events
            self.selector.modify(member.sock, events, member)

    def step_handshake(self, member: Member) -> None:
        try:
            member.sock.do_handshake()
        except ssl.SSLWantReadError:
            return self.want(member, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            return self.want(member, selectors.EVENT_WRITE)
        except (ssl.SSLError, OSError) as exc:
            return self.close(member, f"handshake: {exc}")
        member.state = "hello"
        self.want(member, selectors.EVENT_READ)
        session = f"load-{member.name}"[:64]
        self.send(member, frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION, software="load.py",
                                                     session=session, receive_files=self.answer_offers)))

    def on_event(self, member: Member, mask: int) -> None:
        if member.state == "connecting":
            code = member.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return self.close(member, f"connect: {os.strerror(code)}")
            self.selector.unregister(member.sock)
            member.sock = member.context.wrap_socket(member.sock, server_hostname="127.0.0.1",
                                                     do_handshake_on_connect=False)
            self.selector.register(member.sock, selectors.EVENT_READ, member)
            member.state, member.mask = "handshake", selectors.EVENT_READ
            return self.step_handshake(member)
        if member.state == "handshake":
            return self.step_handshake(member)
        if mask & selectors.EVENT_WRITE:
            self.flush(member)
        if mask & selectors.EVENT_READ and member.state != "closed":
            self.read(member)

    # ---------------------------------------------------------------- bytes

    def send(self, member: Member, data: bytes) -> None:
        member.outbuf += data
        self.flush(member)

    def flush(self, member: Member) -> None:
        if member.state == "closed":
            return
        while member.outbuf:
            try:
                n = member.sock.send(member.outbuf)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return self.want(member, selectors.EVENT_READ | selectors.EVENT_WRITE)
            except OSError as exc:
                return self.close(member, f"send: {exc}")
            del member.outbuf[:n]
        self.want(member, selectors.EVENT_READ)

    def read(self, member: Member) -> None:
        now_ns = time.monotonic_ns()
        while True:
            try:
                data = member.sock.recv(READ_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                return self.want(member, selectors.EVENT_READ | selectors.EVENT_WRITE)
            except OSError as exc:
                return self.close(member, f"recv: {exc}")
            if not data:
                return self.close(member, member.closed_reason or "closed by the server without bye")
            member.inbuf += data
        self.frames_in(member, now_ns)

    def frames_in(self, member: Member, now_ns: int) -> None:
        buf, pos, header = member.inbuf, 0, frames.HEADER
        while len(buf) - pos >= header.size:
            kind, length = header.unpack_from(buf, pos)
            limit = frames.MAX_CONTROL_PAYLOAD if kind == frames.KIND_CONTROL else frames.MAX_CHUNK_PAYLOAD
            if kind not in (frames.KIND_CONTROL, frames.KIND_CHUNK) or length > limit:
                del buf[:]
                return self.close(member, f"bad frame header from the server: kind {kind}, length {length}")
            end = pos + header.size + length
            if len(buf) < end:
                break
            start, pos = pos + header.size, end
            if kind == frames.KIND_CHUNK:
                self.chunk_in(member, bytes(buf[start:end]))
            elif buf.startswith(CHAT_PREFIX, start):
                self.chat_in(member, buf, start, end, now_ns)
            elif buf.startswith(PRESENCE_PREFIX, start):
                self.presence_in(member, json.loads(buf[start:end]))
            else:
                self.control_in(member, json.loads(buf[start:end]))
            if member.state == "closed":
                return
        del buf[:pos]

    # ---------------------------------------------------------------- messages

    def chat_in(self, member: Member, buf: bytearray, start: int, end: int, now_ns: int) -> None:
        if not member.counted:
            return
        at = buf.find(TIMED_TEXT, start, end)
        if at < 0:
            return  # not one of ours
        at += len(TIMED_TEXT)
        space = buf.find(b" ", at, end)
        after = buf.find(b" ", space + 1, end)
        if int(buf[space + 1:after]) != self.round:
            self.late += 1
            return
        member.received += 1
        self.deliveries += 1
        self.latencies_ms.append((now_ns - int(buf[at:space])) / 1e6)

    def presence_in(self, member: Member, message: dict) -> None:
        """A batch: apply `left`, then `joined` (docs/protocol.md); one who left and came back is in both."""
        left, joined = message.get("left") or [], message.get("joined") or []
        if member.roster is not None:
            member.roster.difference_update(d["name"] for d in left)
            member.roster.update(n for n in joined if n != member.name)  # its own arrival: ignored
        self.presence_frames += 1
        self.presence_names += len(joined) + len(left)

    def control_in(self, member: Member, message: dict) -> None:
        kind = message.get("type")
        if kind == "welcome":
            member.state, member.ready_at = "ready", time.monotonic()
            if member.roster is not None:
                member.roster = set(message.get("members") or [])
        elif kind == "bye":
            member.closed_reason = f"bye: {message.get('reason', '')}"
        elif kind == "notice":
            self.notices += 1  # e.g. a chat line over the per-member rate: it was dropped
        elif kind == "offer" and self.answer_offers:
            member.transfers[message["id"]] = [hashlib.sha256(), message["size"], message["sha256"], 0]
            self.send(member, frames.encode(frames.Accept(id=message["id"], offset=0)))
        elif kind == "end" and message["id"] in member.transfers:
            digest, size, offered, got = member.transfers.pop(message["id"])
            ok = got == size and digest.hexdigest() == offered == message["sha256"]
            member.verified += ok
            reply = frames.Result(id=message["id"], ok=ok, sha256=offered if ok else None,
                                  reason=None if ok else "size or SHA-256 does not match the offer")
            self.send(member, frames.encode(reply))
        elif kind == "abort":
            member.transfers.pop(message["id"], None)

    def chunk_in(self, member: Member, payload: bytes) -> None:
        (transfer_id,) = frames.CHUNK_ID.unpack_from(payload)
        transfer = member.transfers.get(transfer_id)
        if transfer is not None:
            data = memoryview(payload)[frames.CHUNK_ID.size:]
            transfer[0].update(data)
            transfer[3] += len(data)

    # ---------------------------------------------------------------- phases

    def poll(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            if key.data is not None:  # None: load.py's commands on stdin, read by commands()
                self.on_event(key.data, mask)

    def source_of(self, local_index: int) -> str:
        """The address member `local_index` of this worker connects from: 127.x.y.z, never shared with
        another worker, so each worker alone keeps its sources under the server's per-address cap."""
        job = self.job
        sources = job["sources_per_worker"] or len(self.members)
        n = job["worker"] * sources + local_index % sources + 1
        return f"127.{n // 62500 % 254 + 1}.{n // 250 % 250}.{n % 250 + 1}"

    def connect_all(self, deadline: float) -> dict:
        started = time.monotonic()
        waiting = list(reversed(list(enumerate(self.members))))
        in_flight: set[Member] = set()
        per_source: dict[str, int] = {}  # handshakes + hellos in flight from each address
        while (waiting or in_flight) and time.monotonic() < deadline:
            skipped = []
            while waiting and len(in_flight) < self.job["concurrency"]:
                index, member = waiting.pop()
                source = self.source_of(index)
                if per_source.get(source, 0) >= self.job["per_source"]:
                    skipped.append((index, member))  # its address is busy: another member goes first
                    if len(skipped) > self.job["concurrency"]:
                        break
                    continue
                per_source[source] = per_source.get(source, 0) + 1
                self.start_connect(member, source)
                in_flight.add(member)
            waiting.extend(reversed(skipped))
            self.poll(0.05)
            for member in [m for m in in_flight if m.state in ("ready", "closed")]:
                in_flight.discard(member)
                per_source[member.source] -= 1
        ready = [m for m in self.members if m.state == "ready"]
        times = sorted(m.ready_at - m.started for m in ready)
        failed = [m for m in self.members if m.state != "ready"]
        return {"ready": len(ready), "seconds": time.monotonic() - started,
                "first_connect": min((m.started for m in self.members if m.started), default=None),
                "last_welcome": max((m.ready_at for m in ready), default=None),
                "slowest_s": times[-1] if times else None, "median_s": times[len(times) // 2] if times else None,
                "failed": len(failed), "failures": sorted({m.closed_reason or m.state for m in failed})[:5]}

    def run_schedule(self, round_: int, start: float, rate: float, lines: int, deadline: float) -> None:
        """This worker's share of a round: line i of the room is due at start + i / rate."""
        job, ready = self.job, [m for m in self.members if m.state == "ready"]
        self.round, self.deliveries, self.late = round_, 0, 0
        self.latencies_ms = array("d")
        for member in self.members:
            member.counted, member.sent = member.state == "ready", 0
        mine = range(job["worker"], lines, job["workers"])
        interval = 1.0 / rate
        for count, i in enumerate(mine):
            due = start + i * interval
            while True:
                now = time.monotonic()
                if now >= due or now >= deadline:
                    break
                self.poll(due - now)
            if now >= deadline or not ready:
                break
            member = ready[count % len(ready)]
            if member.state != "ready":
                continue
            text = f"L {time.monotonic_ns()} {round_} {job['worker']}.{i}"
            member.sent += 1
            self.send(member, frames.encode(frames.Chat(text=text)))

    def drain(self, expected: int, deadline: float) -> None:
        while self.deliveries < expected and time.monotonic() < deadline:
            self.poll(0.05)

    def leave(self) -> None:
        bye = frames.encode(frames.Bye(reason="load test done"))
        for member in self.members:
            if member.state == "ready":
                self.send(member, bye)
        end = time.monotonic() + 2.0
        while any(m.outbuf for m in self.members if m.state == "ready") and time.monotonic() < end:
            self.poll(0.05)
        for member in self.members:
            self.close(member, member.closed_reason or "left")


def commands(worker: Worker):
    """Lines from load.py on stdin, while the members keep being served (a file may be arriving)."""
    worker.selector.register(0, selectors.EVENT_READ, None)
    pending = b""
    while True:
        for key, mask in worker.selector.select(0.05):
            if key.data is not None:
                worker.on_event(key.data, mask)
                continue
            data = os.read(0, 4096)
            if not data:
                yield "stop"
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                yield line.decode()


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def report(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def roster_sizes(members: list[Member]) -> dict:
    sizes = [len(m.roster) for m in members if m.state == "ready" and m.roster is not None]
    return {"min": min(sizes, default=None), "max": max(sizes, default=None)}


def play_round(worker: Worker, job: dict, command: list[str]) -> dict:
    round_, start, rate, lines = int(command[1]), float(command[2]), float(command[3]), int(command[4])
    cpu_before = cpu_s()
    worker.run_schedule(round_, start, rate, lines, start + lines / rate + 30)
    # Every line of the room reaches every member but its author (docs/protocol.md §5).
    expected = sum(lines - m.sent for m in worker.members if m.counted)
    worker.drain(expected, time.monotonic() + job["drain_timeout"])
    with open(f"{job['latency_file']}.{round_}", "wb") as f:
        worker.latencies_ms.tofile(f)
    return {"round": round_, "deliveries": worker.deliveries, "expected": expected, "late": worker.late,
            "counted": sum(m.counted for m in worker.members), "sent": sum(m.sent for m in worker.members),
            "cpu_s": cpu_s() - cpu_before, "roster": roster_sizes(worker.members)}


def main() -> int:
    job = json.loads(sys.argv[1])
    worker = Worker(job)
    connected = worker.connect_all(time.monotonic() + job["connect_timeout"])
    report({"connected": connected})
    lines = commands(worker)
    command = next(lines).split() or ["stop"]
    while command[0] != "stop":
        if command[0] == "go":
            report({"drained": play_round(worker, job, command)})
        command = next(lines).split() or ["stop"]  # "serve": the loop in commands() answers the offers
    roster = roster_sizes(worker.members)
    worker.leave()
    members = worker.members
    dropped = [m for m in members if m.ready_at and m.closed_reason != "left"]  # got in, then lost
    report({"done": {
        "verified": sum(m.verified for m in members), "notices": worker.notices,
        "presence_frames": worker.presence_frames, "presence_names": worker.presence_names,
        "roster": roster,
        "dropped": len(dropped), "dropped_reasons": sorted({m.closed_reason for m in dropped})[:5],
    }})
    return 0


if __name__ == "__main__":
    sys.exit(main())
