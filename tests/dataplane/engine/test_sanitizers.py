"""The native engine once more, built with -fsanitize=address,undefined, runs its data-plane tests.

A copy of the source tree gets the sanitized `_engine` built in place; pytest runs the native-engine
tests of tests/dataplane/proxy/test_tcp.py, test_udp.py, tests/dataplane/engine/ (the native TCP and UDP
files and test_udp_send.py, whose LB child inherits the sanitized build) and the flow log's
(tests/dataplane/test_flowlog_flows.py) against it in a subprocess
with the ASan runtime preloaded (Python itself is not built with ASan). UBSan does not recover: any
undefined behaviour aborts the run. Leak detection is on at exit; CPython's own allocations are never
freed at exit, so a leak fails the run only when a frame of its allocation stack is engine code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.privileged import needs

ROOT = Path(__file__).resolve().parents[3]
SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
ENGINE_FRAME = re.compile(r"dataplane/engine/[a-z_]+\.c")


def _sanitized_tree(tmp: Path) -> Path:
    """A copy of src/ whose `_engine` extension is rebuilt with the sanitizers (the flags of setup.py's
    build plus SANITIZE; the other extensions are copied as built)."""
    shutil.copytree(ROOT / "src", tmp / "src", ignore=shutil.ignore_patterns("_engine*.so", "__pycache__"))
    engine = tmp / "src/sluice/dataplane/engine"
    target = engine / f"_engine{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = ["gcc", "-shared", "-fPIC", "-O1", *SANITIZE.split(), "-Wall", "-Wextra", "-Werror", "-std=gnu11"]
    cmd += [
        "-pthread",
        f"-I{sysconfig.get_paths()['include']}",
        *map(str, sorted(engine.glob("*.c"))),
        "-o",
        str(target),
    ]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return tmp / "src"


def _engine_leaks(log_dir: Path) -> list[str]:
    """LeakSanitizer reports whose allocation stack passes through engine code."""
    found = []
    for log in log_dir.glob("asan.*"):
        for block in log.read_text(errors="replace").split("\n\n"):
            if ("Direct leak" in block or "Indirect leak" in block) and ENGINE_FRAME.search(block):
                found.append(block)
    return found


def _asan_errors(log_dir: Path) -> list[str]:
    """AddressSanitizer / UBSan error reports (anything but leak reports)."""
    found = []
    for log in log_dir.glob("asan.*"):
        text = log.read_text(errors="replace")
        for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: UndefinedBehaviorSanitizer"):
            if marker in text:
                found.append(text[text.index(marker) :][:4000])
    return found


@pytest.mark.privileged
def test_native_engine_tests_pass_under_asan_and_ubsan(tmp_path: Path) -> None:
    needs(commands=("gcc",))
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    libasan = runtime.stdout.strip()
    if not os.path.isabs(libasan):
        needs(commands=("libasan.so (gcc's ASan runtime)",))
    src = _sanitized_tree(tmp_path / "tree")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": f"detect_leaks=1:exitcode=0:log_path={logs}/asan:abort_on_error=0",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={logs}/asan",
    }
    which = subprocess.run(
        [sys.executable, "-c", "import sluice.dataplane.engine._engine as e; print(e.__file__)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert which.stdout.strip().startswith(str(src)), which.stdout + which.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "(native or test_udp_send) and not asan",
            "tests/dataplane/proxy/test_tcp.py",
            "tests/dataplane/engine/test_native_tcp.py",
            "tests/dataplane/proxy/test_udp.py",
            "tests/dataplane/engine/test_native_udp.py",
            "tests/dataplane/engine/test_udp_send.py",
            "tests/dataplane/test_flowlog_flows.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = run.stdout[-3000:] + run.stderr[-3000:]
    assert not _asan_errors(logs), "\n".join(_asan_errors(logs))
    assert run.returncode == 0, tail
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 20, tail
    leaks = _engine_leaks(logs)
    assert not leaks, "\n\n".join(leaks[:5])
