"""Certificate files vs certificate building: certfiles.py never needs certs.py (nor cryptography).

`join` and `serve` read their own name from a certificate; that must not load the
cryptography package (~11 MiB per process, docs/performance.md), whatever the ssl
module offers, and the two modules must depend on each other one way only.
"""

from __future__ import annotations

import ast
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

import securechat
from securechat.errors import CertificateError
from securechat.pki.certfiles import CertsLayout, common_name

PACKAGE = Path(securechat.__file__).parent


def imported_modules(source: Path) -> set[str]:
    """The securechat modules `source` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level and node.module:  # from .x import y
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level:  # from . import x
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("securechat."):
            found.add(node.module.split(".")[-1])
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[-1] for a in node.names if a.name.startswith("securechat.")}
    return found


def test_certfiles_never_imports_certs_or_cryptography():
    source = PACKAGE / "pki" / "certfiles.py"
    assert "certs" not in imported_modules(source)
    absolute = {alias.name for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.Import)
                for alias in node.names}
    absolute |= {node.module for node in ast.walk(ast.parse(source.read_text()))
                 if isinstance(node, ast.ImportFrom) and not node.level}
    assert not {name for name in absolute if name.split(".")[0] == "cryptography"}
    assert "certfiles" in imported_modules(PACKAGE / "pki" / "certs.py")  # the one direction


def test_reading_a_name_loads_no_cryptography_even_without_the_ssl_helper(pki):
    # The ssl module's private certificate decoder is not there on every Python; without it,
    # certfiles used to fall back to certs.py, and so to cryptography.
    program = (
        "import ssl, sys\n"
        "if hasattr(ssl._ssl, '_test_decode_cert'): del ssl._ssl._test_decode_cert\n"
        "import securechat.ui.cli, securechat.server.serve, securechat.member.client\n"
        "from pathlib import Path\n"
        "from securechat.pki.certfiles import common_name\n"
        f"print(common_name(Path({str(CertsLayout(pki).client_cert('alice'))!r})))\n"
        f"print(common_name(Path({str(CertsLayout(pki).server_cert)!r})))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alice", "server", "[]"]


def _self_signed(tmp_path: Path, name: x509.Name) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("name, expected", [
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zoë ✓")]), "zoë ✓"),
    (x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "org"),
                x509.NameAttribute(NameOID.COMMON_NAME, "printable", _type=_ASN1Type.PrintableString)]), "printable"),
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wide", _type=_ASN1Type.BMPString)]), "wide"),
])
def test_common_name_agrees_with_cryptography(tmp_path, name, expected):
    path = _self_signed(tmp_path, name)
    assert common_name(path) == expected == x509.load_pem_x509_certificate(path.read_bytes()).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value


def test_common_name_of_bad_files_is_one_clear_error(tmp_path):
    with pytest.raises(CertificateError, match="not found"):
        common_name(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        common_name(tmp_path / "junk.pem")
    (tmp_path / "empty.pem").write_text("hello")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        common_name(tmp_path / "empty.pem")
    nameless = _self_signed(tmp_path, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "org")]))
    with pytest.raises(CertificateError, match="no common name"):
        common_name(nameless)


def test_running_serve_and_join_have_not_loaded_cryptography(room):
    alice = room.join("alice")
    for proc in (room.server, alice):
        maps = open(f"/proc/{proc.popen.pid}/maps").read()
        assert "_ssl" in maps or "libssl" in maps  # the reading works: TLS is there
        assert "cryptography" not in maps, proc.args[0]
