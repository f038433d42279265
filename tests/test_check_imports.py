"""`sluice check`, `schema` and `--help` import no numpy (nor the data planes): they start fast (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import sys
from sluice.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m == "numpy" or m.startswith("sluice.dataplane"))
print("heavy:" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["schema"], ["check", "CONFIG"], ["check", "--offline", "CONFIG"]]
)
def test_check_imports_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(
        "engine: python\nvips:\n  - name: web\n    listen: 127.0.0.1:0\n    backends: [{address: 127.0.0.1:9}]\n"
    )
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.stdout.splitlines()[-1] == "heavy:", proc.stdout + proc.stderr
