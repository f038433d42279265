"""The core stays sans-IO: no module under src/sluice/core imports I/O, clocks or the kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "sluice" / "core"
FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "os",
    "select",
    "selectors",
    "subprocess",
    "threading",
    "ctypes",
    "uvloop",
}
FORBIDDEN_PREFIXES = ("sluice.dataplane", "sluice.control", "sluice.checks", "sluice.server", "sluice.lab")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_is_sans_io(path: Path) -> None:
    bad = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN_PREFIXES)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import os.path\nfrom time import monotonic\n")
    assert imported_modules(sample) == {"os.path", "time"}
