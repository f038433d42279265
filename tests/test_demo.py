"""`sluice demo` (what `make demo` runs) completes with every connection and datagram intact."""

from __future__ import annotations

import pytest

from sluice.demo import run_demo


def test_demo_runs_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(connections=300, live=False)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "300 TCP connections and 1500 UDP round trips through sluice" in out
    assert "no errors." in out
    for vip in ("demo-tcp", "demo-udp"):
        assert vip in out
