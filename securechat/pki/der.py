"""Just enough DER to check a certificate's profile and read a CRL; pure, no cryptography import.

Why not cryptography.x509: importing it costs ~11 MiB of RSS in `join` and
`serve` (measured: VmRSS before/after `import cryptography.x509` in a fresh
interpreter), against an interactive budget of ~40 MiB (docs/performance.md).
OpenSSL has already verified every signature by the time this runs; what it
does not check for us is the certificate's *profile* (CA flag, EKU, key type)
and, between two reloads of its context, the CRL on disk.

Strict on purpose: definite lengths only, minimal length octets, lengths that
fit the input, no trailing bytes. Anything this reader cannot parse raises
DERError, and the callers treat that as "refuse", never as "accept".
"""

from __future__ import annotations

from dataclasses import dataclass

from securechat.errors import CertificateError

SEQUENCE, SET, INTEGER, BOOLEAN, OCTET_STRING, BIT_STRING, OID = 0x30, 0x31, 0x02, 0x01, 0x04, 0x03, 0x06
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
EXPLICIT_0, EXPLICIT_3 = 0xA0, 0xA3
MAX_LENGTH_OCTETS = 4  # a length needing more than 4 octets (4 GiB) is not a certificate

BASIC_CONSTRAINTS = "2.5.29.19"
EXTENDED_KEY_USAGE = "2.5.29.37"
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
P256 = "1.2.840.10045.3.1.7"


class DERError(CertificateError):
    """A certificate or CRL is not DER this reader understands."""


@dataclass(frozen=True)
class TLV:
    tag: int
    data: bytes  # the contents octets


def read_tlv(data: bytes, offset: int = 0) -> tuple[TLV, int]:
    """The element starting at `offset`, and the offset just past it."""
    if offset + 2 > len(data):
        raise DERError("truncated DER element")
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise DERError("high tag numbers are not used in certificates")
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > MAX_LENGTH_OCTETS:
            raise DERError("indefinite or oversized DER length")
        if offset + count > len(data):
            raise DERError("truncated DER length")
        length = int.from_bytes(data[offset:offset + count], "big")
        if length < 0x80 or data[offset] == 0:
            raise DERError("DER length not in its shortest form")
        offset += count
    end = offset + length
    if end > len(data):
        raise DERError("DER element longer than its input")
    return TLV(tag, bytes(data[offset:end])), end


def children(data: bytes) -> list[TLV]:
    """The elements inside a constructed element's contents, all of them."""
    found, offset = [], 0
    while offset < len(data):
        element, offset = read_tlv(data, offset)
        found.append(element)
    return found


def expect(element: TLV, tag: int, what: str) -> TLV:
    if element.tag != tag:
        raise DERError(f"{what}: expected tag 0x{tag:02x}, found 0x{element.tag:02x}")
    return element


def single(data: bytes, tag: int, what: str) -> TLV:
    """`data` is exactly one element with this tag: no trailing bytes."""
    element, end = read_tlv(data)
    if end != len(data):
        raise DERError(f"{what}: trailing bytes")
    return expect(element, tag, what)


def decode_oid(data: bytes) -> str:
    if not data or data[-1] & 0x80:
        raise DERError("malformed object identifier")
    arcs, value, fresh = [], 0, True
    for byte in data:
        if fresh and byte == 0x80:
            raise DERError("object identifier arc not in its shortest form")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def decode_integer(data: bytes) -> int:
    if not data or (len(data) > 1 and (data[0] == 0 and data[1] < 0x80 or data[0] == 0xFF and data[1] >= 0x80)):
        raise DERError("malformed INTEGER")
    return int.from_bytes(data, "big", signed=True)


def decode_boolean(data: bytes) -> bool:
    if data not in (b"\x00", b"\xff"):
        raise DERError("malformed BOOLEAN")
    return data == b"\xff"


@dataclass(frozen=True)
class CertificateProfile:
    """What the admission checks need from a certificate."""

    serial: int
    is_ca: bool  # basicConstraints cA; absent means False
    extended_key_usage: frozenset[str] | None  # None: no EKU extension at all
    key_algorithm: str
    curve: str | None


def certificate_profile(der: bytes) -> CertificateProfile:
    """Parse an X.509 certificate far enough to read serial, CA flag, EKU and key type."""
    certificate = children(single(der, SEQUENCE, "certificate").data)
    if len(certificate) != 3:
        raise DERError("a certificate has three parts")
    tbs = children(expect(certificate[0], SEQUENCE, "tbsCertificate").data)
    if tbs and tbs[0].tag == EXPLICIT_0:
        tbs = tbs[1:]  # version
    if len(tbs) < 6:
        raise DERError("tbsCertificate is too short")
    serial = decode_integer(expect(tbs[0], INTEGER, "serialNumber").data)
    spki = children(expect(tbs[5], SEQUENCE, "subjectPublicKeyInfo").data)
    if len(spki) != 2:
        raise DERError("subjectPublicKeyInfo has two parts")
    algorithm = children(expect(spki[0], SEQUENCE, "algorithm").data)
    if not algorithm:
        raise DERError("empty key algorithm")
    key_algorithm = decode_oid(expect(algorithm[0], OID, "algorithm").data)
    curve = None
    if len(algorithm) > 1 and algorithm[1].tag == OID:
        curve = decode_oid(algorithm[1].data)
    extensions = [e for e in tbs[6:] if e.tag == EXPLICIT_3]
    is_ca, eku = False, None
    seen: set[str] = set()
    for extension in children(single(extensions[0].data, SEQUENCE, "extensions").data) if extensions else []:
        parts = children(expect(extension, SEQUENCE, "extension").data)
        if len(parts) not in (2, 3):
            raise DERError("malformed extension")
        oid = decode_oid(expect(parts[0], OID, "extnID").data)
        if oid in seen:
            raise DERError(f"extension {oid} appears twice")
        seen.add(oid)
        if len(parts) == 3:
            decode_boolean(expect(parts[1], BOOLEAN, "critical").data)
        value = expect(parts[-1], OCTET_STRING, "extnValue").data
        if oid == BASIC_CONSTRAINTS:
            fields = children(single(value, SEQUENCE, "basicConstraints").data)
            is_ca = bool(fields) and fields[0].tag == BOOLEAN and decode_boolean(fields[0].data)
        elif oid == EXTENDED_KEY_USAGE:
            purposes = children(single(value, SEQUENCE, "extKeyUsage").data)
            eku = frozenset(decode_oid(expect(p, OID, "keyPurposeId").data) for p in purposes)
    return CertificateProfile(serial, is_ca, eku, key_algorithm, curve)


def crl_serials(der: bytes) -> frozenset[int]:
    """The serial numbers a DER CertificateList revokes (its signature is OpenSSL's to check)."""
    crl = children(single(der, SEQUENCE, "CRL").data)
    if len(crl) != 3:
        raise DERError("a CRL has three parts")
    tbs = children(expect(crl[0], SEQUENCE, "tbsCertList").data)
    if tbs and tbs[0].tag == INTEGER:
        tbs = tbs[1:]  # version
    if len(tbs) < 3:
        raise DERError("tbsCertList is too short")
    expect(tbs[1], SEQUENCE, "issuer")
    rest = tbs[3:]  # after signature, issuer, thisUpdate
    if rest and rest[0].tag in (UTC_TIME, GENERALIZED_TIME):
        rest = rest[1:]  # nextUpdate
    if not rest or rest[0].tag != SEQUENCE:
        return frozenset()  # no revokedCertificates: nobody revoked
    serials = set()
    for entry in children(rest[0].data):
        fields = children(expect(entry, SEQUENCE, "revoked entry").data)
        if len(fields) < 2:
            raise DERError("malformed revoked entry")
        serials.add(decode_integer(expect(fields[0], INTEGER, "userCertificate").data))
    return frozenset(serials)


def pem_blocks(text: str, label: str) -> list[bytes]:
    """The DER inside each `-----BEGIN label-----` block of a PEM text."""
    import base64
    import binascii

    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    blocks, rest = [], text
    while begin in rest:
        body, sep, rest = rest.split(begin, 1)[1].partition(end)
        if not sep:
            raise DERError(f"unterminated PEM {label}")
        try:
            blocks.append(base64.b64decode("".join(body.split()), validate=True))
        except binascii.Error as exc:
            raise DERError(f"bad base64 in PEM {label}") from exc
    return blocks
