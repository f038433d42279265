"""The native engine's source layout (issue 9, STYLE.md): small files, and Python only in the module's.

Every .c/.h file of src/sluice/dataplane/engine/ is at most MAX_LINES lines, and only the Python
module's files (module.h, module*.c) include Python.h or module.h, so the engine's core links into a
plain C test or a libFuzzer target (tests/dataplane/engine/cbuild.py, tests/fuzz/).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.dataplane.engine.cbuild import ENGINE_DIR

MAX_LINES = 500
PENDING_SPLIT: frozenset[str] = frozenset()
"""Files still over MAX_LINES whose split is under way (issue 9); each must still be over, so the
entry goes when its split lands."""
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)
PYTHON_HEADERS = frozenset({"Python.h", "module.h"})
"""Including either brings in Python."""
MODULE_FILE = re.compile(r"module(_[a-z0-9_]+)?\.[ch]\Z")


def c_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".c", ".h"))


def too_long(folder: Path) -> dict[str, int]:
    """The .c/.h files of `folder` over MAX_LINES: name -> lines."""
    lines = {p.name: len(p.read_text().splitlines()) for p in c_files(folder)}
    return {name: n for name, n in lines.items() if n > MAX_LINES}


def python_includers(folder: Path) -> dict[str, set[str]]:
    """The .c/.h files of `folder` that include Python.h or module.h: name -> which."""
    found = {p.name: set(INCLUDE.findall(p.read_text())) & PYTHON_HEADERS for p in c_files(folder)}
    return {name: headers for name, headers in found.items() if headers}


def test_no_engine_file_is_over_500_lines() -> None:
    over = too_long(ENGINE_DIR)
    assert set(over) - PENDING_SPLIT == set(), f"split these along a real seam: {over}"
    done = sorted(PENDING_SPLIT - set(over))
    assert done == [], f"split done: drop {done} from PENDING_SPLIT"


def test_only_the_module_files_include_python() -> None:
    includers = python_includers(ENGINE_DIR)
    strays = {name: headers for name, headers in includers.items() if not MODULE_FILE.match(name)}
    assert strays == {}, "Python.h only in module.h / module*.c (engine.h)"
    assert "Python.h" in includers["module.h"]  # the check sees the one real include
    assert {name for name in includers if name.endswith(".c")} >= {"module.c"}


@pytest.mark.parametrize(
    ("name", "text", "long", "python"),
    [
        ("tcp.c", "x\n" * 501, {"tcp.c": 501}, {}),
        ("tcp.c", "x\n" * 500, {}, {}),
        ("loop.c", '#include "engine.h"\n#  include <Python.h>\n', {}, {"loop.c": {"Python.h"}}),
        ("vip.c", '#include "module.h"\n', {}, {"vip.c": {"module.h"}}),
        ("module_x.c", '#include "module.h"\n', {}, {"module_x.c": {"module.h"}}),
        ("pick.h", "/* Python.h only in module.c */\n", {}, {}),
    ],
)
def test_the_checks_see_long_files_and_python_includes(
    tmp_path: Path, name: str, text: str, long: dict[str, int], python: dict[str, set[str]]
) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / "notes.py").write_text("x\n" * 600)  # not C: not counted
    assert too_long(tmp_path) == long
    assert python_includers(tmp_path) == python
    assert bool(MODULE_FILE.match(name)) == name.startswith("module")
