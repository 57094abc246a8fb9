"""Admission (issue 11 items 2, 4, 5, 8): who gets past the handshake into the room, over real TLS.

Hostile certificates are issued by the room's real CA through our own builder
(certs._build, explicit extensions), so the chain verifies and only the one
defect under test is left for the server to notice.
"""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers.tls import presenting
from securechat.errors import REVOKED_MESSAGE, ConnectionFailed, FailureKind
from securechat.member.client import _is_final
from securechat.pki.certs import CertsLayout, _build, generate, load_cert, load_key, new_key, save_pair
from securechat.pki.tls import ClientFiles, client_context
from securechat.server.admission import Admissions, source_key
from securechat.server.revocation import revoke
from securechat.wire import frames

ATTEMPT_TIMEOUT = 5.0  # well inside the server's 10 s handshake deadline: a correctness bound, not a benchmark


def issue(certs: Path, common_name: str, folder: Path, *, ca: bool = False, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
          server_names: tuple[str, ...] = ()) -> ClientFiles:
    """A certificate from the room's own CA with exactly the extensions asked for (eku=None: no EKU)."""
    layout = CertsLayout(certs)
    ca_cert, ca_key = load_cert(layout.ca_cert), load_key(layout.ca_key)
    key = new_key()
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    extensions = [
        (x509.BasicConstraints(ca=ca, path_length=None), True),
        (usage, True),  # with CA:TRUE, also keyCertSign: a CA X.509 strict mode accepts, left for us to refuse
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    ]
    if eku is not None:
        extensions.append((x509.ExtendedKeyUsage(list(eku)), False))
    if server_names:
        import ipaddress

        extensions.append((x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(n)) for n in server_names]),
                           False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about a CN over 64 bytes: that is the point
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False)])
    cert = _build(subject, key.public_key(), ca_cert.subject, ca_key, 1, extensions)
    stem = f"cert{len(list(folder.glob('*.pem')))}"
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    save_pair(cert, key, cert_path, key_path, force=True)
    return ClientFiles(layout.ca_cert, cert_path, key_path)


def attempt(port: int, context: ssl.SSLContext, source: str | None = None, timeout: float = ATTEMPT_TIMEOUT):
    """Handshake, hello, and every frame until the server closes or welcomes us.

    Returns ("welcome", Welcome), ("bye", Bye), or ("tls", the SSLError that ended it)."""
    deadline = time.monotonic() + timeout
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if source is not None:
        raw.bind((source, 0))
    raw.settimeout(timeout)
    raw.connect(("127.0.0.1", port))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(frames.encode(frames.Hello(version=frames.PROTOCOL_VERSION, software="admission-test")))
        decoder = frames.FrameDecoder()
        while True:
            frame = decoder.next_frame()
            if isinstance(frame, (frames.Welcome, frames.Bye)):
                return frame.TYPE, frame
            if frame is not None:
                continue
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except ssl.SSLError as exc:
                return "tls", exc
            assert data, "closed with neither a bye nor a TLS alert"
            decoder.feed(data)


# --------------------------------------------------------------------------- item 4


def _squat(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections from 127.0.0.2 that never send a byte."""
    opened = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(s)
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
    return opened


@pytest.mark.timeout(150)
def test_silent_connections_from_one_address_do_not_lock_members_out(room, pki):
    """300 silent connections from 127.0.0.2, reopened before every try; alice from 127.0.0.1 still gets in."""
    alice = client_context(ClientFiles.from_certs_dir(pki, "alice"))
    squatters: list[socket.socket] = []
    times = []
    try:
        for _ in range(4):
            for s in squatters:
                s.close()
            squatters = _squat(room.port, 300)  # queued before alice: the server sees them first
            started = time.monotonic()
            kind, frame = attempt(room.port, alice, source="127.0.0.1")
            times.append(time.monotonic() - started)
            assert kind == "welcome", frame
        bob = room.start_client("bob")
        bob.wait_event("connected", timeout=8)  # a real join, process start-up included
    finally:
        for s in squatters:
            s.close()
    room.server.wait_event("refused", reason="more than 16 connections from this address in the TLS handshake")
    print("join times with 300 silent connections from another address:", ", ".join(f"{t * 1000:.0f} ms" for t in times))


# --------------------------------------------------------------------------- items 5 and 8


@pytest.fixture(scope="module")
def room_certs(tmp_path_factory) -> Path:
    certs = tmp_path_factory.mktemp("admission") / "certs"
    generate(certs, ["alice"], [])
    return certs


BAD_NAMES = {
    "operator": "server",
    "operator, upper case": "SERVER",
    "operator, full width": "\uff53\uff45\uff52\uff56\uff45\uff52",
    "operator look-alike, zero-width space": "serv\u200ber",
    "control character": "ali\x07ce",
    "newline": "alice\nserver",
    "bidi override": "ali\u202ece",
    "zero-width joiner": "ali\u200dce",
    "path": "../x",
    "over 64 bytes": "\u00e9" * 33,
}


@pytest.mark.timeout(120)
def test_certificates_off_the_profile_are_refused_with_a_reason(make_room, room_certs, tmp_path):
    room = make_room(certs=room_certs)
    cases = {label: issue(room_certs, name, tmp_path) for label, name in BAD_NAMES.items()}
    cases["CA:TRUE leaf"] = issue(room_certs, "carla", tmp_path, ca=True)
    cases["no EKU"] = issue(room_certs, "nora", tmp_path, eku=None)
    cases["serverAuth EKU only"] = issue(room_certs, "sam", tmp_path, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    expected = {
        "operator": "operator", "operator, upper case": "operator", "operator, full width": "operator",
        "operator look-alike, zero-width space": "U+200B", "control character": "control character",
        "newline": "control character", "bidi override": "U+202E", "zero-width joiner": "U+200D",
        "path": "U+002F", "over 64 bytes": "longer than 64 bytes", "CA:TRUE leaf": "CA:TRUE",
        "no EKU": "no extended key usage", "serverAuth EKU only": "purpose",
    }
    for label, files in cases.items():
        mark = room.server.mark()
        kind, frame = attempt(room.port, presenting(files))
        assert kind in ("bye", "tls"), f"{label}: {kind} {frame}"
        if kind == "bye":
            assert frame.code == "certificate", label
        refused = room.server.wait_event("refused", after=mark)
        assert expected[label] in refused["reason"], (label, refused)
    alice = room.join("alice")  # the server is still serving
    alice.send("still here")
    room.server.wait_event("message", text="still here")
    joined = [e["name"] for e in room.server.events if e.get("event") == "joined"]
    assert joined == ["alice"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("defect", ["CA:TRUE", "no serverAuth"])
def test_join_refuses_a_server_certificate_off_the_profile(procs, tmp_path, defect):
    certs = tmp_path / "certs"
    generate(certs, ["alice"], [])
    layout = CertsLayout(certs)
    bad = issue(certs, "server", tmp_path, ca=defect == "CA:TRUE",
                eku=(ExtendedKeyUsageOID.SERVER_AUTH,) if defect == "CA:TRUE" else None, server_names=("127.0.0.1",))
    layout.server_cert.write_bytes(bad.cert.read_bytes())
    layout.server_key.write_bytes(bad.key.read_bytes())
    server = procs(["serve", "--host", "127.0.0.1", "--port", "0", "--certs", str(certs), "--json",
                    "--downloads", str(tmp_path / "dl")], tmp_path)
    port = server.wait_event("listening")["port"]
    client = procs(["join", "127.0.0.1", "--port", str(port), "--certs", str(certs), "--name", "alice", "--json",
                    "--downloads", str(tmp_path / "alice-dl")], tmp_path)
    assert client.wait_exit() == 1
    stderr = client.stderr_after_exit()
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    assert ("CA certificate" if defect == "CA:TRUE" else "serverAuth") in stderr
    assert "gen-certs" in stderr and "Traceback" not in stderr
    assert client.count("reconnecting") == 0 and client.count("connected") == 0


# --------------------------------------------------------------------------- item 2


@pytest.mark.timeout(180)
def test_a_client_revoked_just_before_it_connects_never_joins(make_room, tmp_path):
    """Revoke, then connect at once, 30 times: the old server handshook with the CRL it had
    read before its blocking accept(), so these got in for a moment."""
    names = [f"r{i:02d}" for i in range(30)]
    certs = tmp_path / "certs"
    generate(certs, names, [])
    room = make_room(certs=certs)
    outcomes = []
    for name in names:
        files = ClientFiles.from_certs_dir(certs, name)
        context = client_context(files)
        revoke(certs, name)  # in-process: a few ms, so the connection follows the new CRL closely
        kind, frame = attempt(room.port, context)
        assert kind != "welcome", f"{name} was welcomed after being revoked"
        if kind == "bye":
            assert frame.code == "revoked", frame
        else:
            assert frame.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED", frame
        outcomes.append(kind)
    deadline = time.monotonic() + 20
    while room.server.count("refused") < len(names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert room.server.count("refused") == len(names)
    assert all("revoked" in e["reason"] for e in room.server.events if e.get("event") == "refused")
    assert room.server.count("joined") == 0
    print("revoked clients learnt it by:", {k: outcomes.count(k) for k in set(outcomes)})


# --------------------------------------------------------------------------- the rules, without sockets


def test_handshake_slots_are_capped_per_source_and_in_total():
    slots = Admissions(total=20, per_source=16)
    assert all(slots.enter("127.0.0.2") is None for _ in range(16))
    assert "from this address" in slots.enter("127.0.0.2")
    assert all(slots.enter("127.0.0.3") is None for _ in range(4))
    assert "more than 20" in slots.enter("127.0.0.1")  # the total still holds
    slots.leave("127.0.0.2")
    assert slots.enter("127.0.0.1") is None  # a slot freed by one source serves another
    assert "from this address" in slots.enter("127.0.0.2") or "more than 20" in slots.enter("127.0.0.2")


def test_refusals_over_the_cap_are_reported_once_a_second_per_source():
    slots = Admissions()
    assert slots.should_report("a", 100.0) and not slots.should_report("a", 100.5)
    assert slots.should_report("b", 100.5) and slots.should_report("a", 101.0)


@pytest.mark.parametrize("host,key", [
    ("127.0.0.2", "127.0.0.2"), ("::ffff:10.0.0.1", "10.0.0.1"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("2001:db8:1:2:bbbb::9%eth0", "2001:db8:1:2::/64"),
])
def test_an_ipv6_source_is_its_slash_64(host, key):
    assert source_key(host) == key


def test_retrying_is_decided_by_the_kind_not_the_text():
    assert not _is_final(ConnectionFailed("connection lost during the TLS handshake: certificate", FailureKind.LOST))
    assert not _is_final(ConnectionFailed("connection refused", FailureKind.REFUSED))
    assert _is_final(ConnectionFailed(REVOKED_MESSAGE, FailureKind.REVOKED))
    assert _is_final(ConnectionFailed("name taken", FailureKind.CERTIFICATE))
    assert _is_final(ConnectionFailed("version 3", FailureKind.PROTOCOL))
