"""raise_nofile_limit: the soft descriptor limit goes up to the hard one, and the log says so."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.dataplane.limits import raise_nofile_limit

ROOT = Path(__file__).resolve().parents[2]


class FakeLimits:
    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise OSError(1, "Operation not permitted")
        self.limits = limits


def _raise(fake: FakeLimits, nr_open: int = 1 << 20) -> int:
    return raise_nofile_limit(getrlimit=fake.get, setrlimit=fake.set, nr_open=lambda: nr_open)


def test_soft_limit_goes_up_to_the_hard_limit_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeLimits(1024, 524288)
    with caplog.at_level(logging.INFO, logger="sluice.dataplane.limits"):
        assert _raise(fake) == 524288
    assert fake.limits == (524288, 524288)
    assert "raised from 1024 to 524288" in caplog.text


def test_unlimited_hard_limit_means_the_kernels_ceiling() -> None:
    fake = FakeLimits(1024, resource.RLIM_INFINITY)
    assert _raise(fake, nr_open=65536) == 65536
    assert fake.limits == (65536, resource.RLIM_INFINITY)


def test_already_at_the_hard_limit_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeLimits(4096, 4096)
    with caplog.at_level(logging.INFO, logger="sluice.dataplane.limits"):
        assert _raise(fake) == 4096
    assert "already the hard limit" in caplog.text


def test_a_refused_raise_keeps_the_limit_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeLimits(1024, 4096, refuse=True)
    assert _raise(fake) == 1024
    assert fake.limits == (1024, 4096)
    assert "stays at 1024" in caplog.text


def test_real_process_limit_is_raised() -> None:
    # in a child whose soft limit starts low: the real getrlimit/setrlimit
    code = (
        "import resource; from sluice.dataplane.limits import raise_nofile_limit;"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE);"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard));"
        "raise_nofile_limit();"
        "ceiling = int(open('/proc/sys/fs/nr_open').read()) if hard == resource.RLIM_INFINITY else hard;"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == ceiling)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stdout + done.stderr
