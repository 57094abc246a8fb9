#!/usr/bin/env python3
"""Standalone certificate generator: the same as `securechat gen-certs`.

For a machine where the securechat command is not on PATH but the package
is importable (e.g. run from a checkout with `cryptography` installed):

    python scripts/gen_certs.py --out certs --client alice --client bob

It calls securechat.pki.certs, so the CA, server and client certificates are
exactly the ones the CLI makes (see certs/README.md for the layout).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without pip install

from securechat.ui.cli import app  # noqa: E402

if __name__ == "__main__":
    app(args=["gen-certs", *sys.argv[1:]], prog_name="gen_certs.py")
