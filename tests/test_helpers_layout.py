"""Shared test code lives in tests/helpers/ (and fixtures in conftest.py): test modules never
import one another, nor conftest, so moving or deleting a test never breaks another file."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules `path` imports, anywhere in it (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another_test_module_or_conftest():
    offenders = {}
    for path in sorted(TESTS.glob("*.py")):
        wrong = {name for name in imported_modules(path) if name.startswith("test_")}
        if path.name != "conftest.py" and "conftest" in imported_modules(path):
            wrong.add("conftest")
        if wrong:
            offenders[path.name] = sorted(wrong)
    assert offenders == {}, f"import these from tests/helpers/ instead: {offenders}"


def test_helpers_import_no_test_module():
    for path in sorted((TESTS / "helpers").glob("*.py")):
        assert not {n for n in imported_modules(path) if n.startswith("test_") or n == "conftest"}, path.name
