"""Which certificates and names the server admits, and which server a client trusts; pure rules.

DESIGN.md section 5: the server accepts the profile it issues (certs.py), and
checks it rather than trusting whoever holds the CA key to have used
`gen-certs`. OpenSSL verified chain, dates, signatures and the CRL; these
rules add what it does not check:

* leaves only: a certificate with basicConstraints CA:TRUE is not a member;
* the right EKU: clientAuth for a member, serverAuth for a server (OpenSSL
  accepts a certificate with no EKU at all for either role);
* an ECDSA P-256 key, as gen-certs makes;
* a name a person can read and nobody can confuse with another: 1-64 bytes
  of UTF-8 in NFC, letters, digits, combining marks and `.`, `_`, `-` only
  (no spaces, controls, bidi or zero-width characters, no path separators),
  starting with a letter or digit, and not the operator's name compared
  NFKC-casefolded (`SERVER`, full-width `ｓｅｒｖｅｒ`).

Each check returns the reason for a refusal (a sentence for the operator's
log and the refused client), or None. A profile the DER reader cannot parse
is refused too.
"""

from __future__ import annotations

import unicodedata

from securechat.pki import der

MAX_NAME_BYTES = 64  # docs/protocol.md: an identity is at most 64 bytes of UTF-8
_NAME_PUNCTUATION = frozenset("._-")
_NAME_CATEGORIES = ("L", "N", "M")  # letters, numbers, combining marks


def same_name(a: str, b: str) -> bool:
    """Would a person read these as the same name? (case and compatibility forms folded)"""
    return _fold(a) == _fold(b)


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def name_problem(name: str, operator: str) -> str | None:
    """Why `name` cannot be a member's identity, or None."""
    if not name:
        return "the certificate's name is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"the certificate's name is longer than {MAX_NAME_BYTES} bytes"
    for char in name:
        if char in _NAME_PUNCTUATION:
            continue
        if not unicodedata.category(char).startswith(_NAME_CATEGORIES):
            return f"the certificate's name contains {_describe(char)}; names are letters, digits, '.', '_' and '-'"
    if not unicodedata.category(name[0]).startswith(("L", "N")):
        return "the certificate's name must start with a letter or digit"
    if unicodedata.normalize("NFC", name) != name:
        return "the certificate's name is not in Unicode normal form C"
    if same_name(name, operator):
        return f"the certificate's name is the server operator's ({operator!r})"
    return None


def _describe(char: str) -> str:
    category = unicodedata.category(char)
    kind = {"Cc": "a control character", "Cf": "an invisible formatting character (bidi or zero-width)",
            "Zs": "a space", "Zl": "a line separator", "Zp": "a paragraph separator"}.get(category, "the character")
    return f"{kind} U+{ord(char):04X}"


def _profile(certificate_der: bytes) -> der.CertificateProfile | str:
    try:
        return der.certificate_profile(certificate_der)
    except der.DERError as exc:
        return f"the certificate could not be checked ({exc})"


def _key_problem(profile: der.CertificateProfile) -> str | None:
    if profile.key_algorithm != der.EC_PUBLIC_KEY or profile.curve != der.P256:
        return "the certificate's key is not ECDSA P-256"
    return None


def client_certificate_problem(certificate_der: bytes) -> str | None:
    """Why a member's certificate does not fit the profile, or None."""
    profile = _profile(certificate_der)
    if isinstance(profile, str):
        return profile
    if profile.is_ca:
        return "the certificate is a CA certificate (CA:TRUE), not a member's"
    if profile.extended_key_usage is None:
        return "the certificate has no extended key usage; a member's must allow clientAuth"
    if der.CLIENT_AUTH not in profile.extended_key_usage:
        return "the certificate's extended key usage does not allow clientAuth (it is not a client certificate)"
    return _key_problem(profile)


def server_certificate_problem(certificate_der: bytes) -> str | None:
    """Why a server's certificate does not fit the profile, or None."""
    profile = _profile(certificate_der)
    if isinstance(profile, str):
        return profile
    if profile.is_ca:
        return "the server's certificate is a CA certificate (CA:TRUE), not a server's"
    if profile.extended_key_usage is None or der.SERVER_AUTH not in profile.extended_key_usage:
        return "the server's certificate does not allow serverAuth (it is not a server certificate)"
    return _key_problem(profile)
