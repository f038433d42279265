"""The core stays sans-IO and depends on nothing: a module under src/sluice/core imports only other
core modules, the pure parts of the standard library, and numpy (the Maglev table is a numpy array).
No I/O, clocks, threads or processes, no config model (pydantic, yaml), no data plane."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "sluice" / "core"
FORBIDDEN_STDLIB = {
    "asyncio",
    "socket",
    "time",
    "os",
    "select",
    "selectors",
    "subprocess",
    "threading",
    "multiprocessing",
    "concurrent",
    "signal",
    "ctypes",
    "logging",
    "pathlib",
    "shutil",
    "tempfile",
    "io",
}
"""Standard library modules that do I/O, read clocks or start threads/processes."""
ALLOWED_THIRD_PARTY = {"numpy"}
"""The only package outside the standard library core may use: Maglev tables are numpy arrays."""


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports are reported as '.')."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def is_allowed(name: str) -> bool:
    top = name.split(".")[0]
    if name == "sluice.core" or name.startswith(("sluice.core.", ".")):
        return not name.startswith("..")  # a relative import that leaves core is not allowed
    if top in ALLOWED_THIRD_PARTY or top == "__future__":
        return True
    return top in sys.stdlib_module_names and top not in FORBIDDEN_STDLIB


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_only_core_stdlib_and_numpy(path: Path) -> None:
    bad = sorted(name for name in imported_modules(path) if not is_allowed(name))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("sluice.core.flow", True),
        ("numpy.typing", True),
        ("dataclasses", True),
        ("os.path", False),
        ("time", False),
        ("asyncio", False),
        ("sluice.config", False),
        ("sluice.dataplane.stats", False),
        ("pydantic", False),
        ("yaml", False),
        ("..config", False),
    ],
)
def test_the_rule(name: str, allowed: bool) -> None:
    assert is_allowed(name) is allowed


def test_the_check_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import os.path\nfrom time import monotonic\nfrom . import flow\n")
    assert imported_modules(sample) == {"os.path", "time", "."}


def test_importing_core_loads_nothing_outside_it() -> None:
    """What the interpreter actually loads (catches imports the file scan cannot see)."""
    modules = sorted(f"sluice.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    code = f"import sys; import {', '.join(modules)}; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    names = loaded.stdout.split()
    sluice = {n for n in names if n.startswith("sluice.") and not n.startswith("sluice.core")}
    assert not sluice, sluice
    assert not {n for n in names if n.split(".")[0] in {"pydantic", "yaml", "asyncio", "uvloop"}}
