"""The flow log sink (`sluice.dataplane.flowlog.FlowLog`): rate limit, bounded queue, file, reload."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from sluice.config import AccessLog, Backend, Endpoint, Vip
from sluice.core.flowlog import FlowRecord
from sluice.dataplane.flowlog import FlowLog, open_flow_log, reopen_flow_log
from sluice.dataplane.stats import VipStats

RECORD = FlowRecord(
    vip="web",
    protocol="tcp",
    client="127.0.0.1:40000",
    listen="127.0.0.1:80",
    backend="127.0.0.1:9001",
    start=1_764_637_054.0,
    duration_s=0.5,
    bytes_to_backend=1,
    bytes_from_backend=2,
    reason="done",
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def records(n: int) -> list[FlowRecord]:
    return [replace(RECORD, bytes_to_backend=i) for i in range(n)]


def test_lines_over_the_rate_are_dropped_and_counted(tmp_path: Path) -> None:
    stats, clock, path = VipStats(), FakeClock(), tmp_path / "flows.log"
    flow_log = FlowLog("web", AccessLog(path=str(path), rate=3), stats, clock=clock)
    for record in records(5):
        flow_log.log(record)
    clock.now += 1.0  # three more tokens
    for record in records(4):
        flow_log.log(replace(record, reason="idle_timeout"))
    flow_log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    assert stats.access_log_dropped == 3
    assert [line.count("reason=idle_timeout") for line in lines] == [0, 0, 0, 1, 1, 1]


def test_a_full_queue_drops_instead_of_blocking() -> None:
    stats, written, release = VipStats(), [], threading.Event()

    def slow_write(text: str) -> None:
        release.wait(10)
        written.extend(text.splitlines())

    flow_log = FlowLog("web", AccessLog(rate=1000), stats, queue_lines=2, write=slow_write)
    for record in records(6):
        flow_log.log(record)  # returns at once even though the writer is stuck
    assert stats.access_log_dropped >= 3  # at most 2 queued + 1 being written
    release.set()
    flow_log.close()
    assert len(written) + stats.access_log_dropped == 6


def test_failed_writes_are_counted_dropped() -> None:
    stats, failed = VipStats(), threading.Event()

    def broken(text: str) -> None:
        failed.set()
        raise OSError(28, "No space left on device")

    flow_log = FlowLog("web", AccessLog(), stats, write=broken)
    flow_log.log(RECORD)
    assert failed.wait(10)
    flow_log.close()
    flow_log.log(RECORD)  # the writer's failures are added at the next record (the queue is shut)
    assert stats.access_log_dropped >= 1


def test_file_is_appended_with_mode_0640(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    path.write_text("earlier line\n")
    path.chmod(0o600)
    flow_log = FlowLog("web", AccessLog(path=str(path), format="json"), VipStats())
    flow_log.log(RECORD)
    flow_log.close()
    assert path.read_text().splitlines()[0] == "earlier line"
    assert len(path.read_text().splitlines()) == 2
    fresh = tmp_path / "fresh.log"
    old = os.umask(0)
    try:
        FlowLog("web", AccessLog(path=str(fresh)), VipStats()).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640


def test_a_file_that_cannot_be_opened_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "flows.log"
    with pytest.raises(OSError, match=f"access_log.path {missing}: No such file or directory"):
        FlowLog("web", AccessLog(path=str(missing)), VipStats())


def _vip(access_log: dict[str, object] | None) -> Vip:
    return Vip.model_validate(
        {
            "name": "web",
            "listen": "127.0.0.1:8080",
            "backends": [Backend(address=Endpoint.parse("127.0.0.1:9001"))],
            "access_log": access_log,
        }
    )


def test_reload_keeps_an_unchanged_log_and_replaces_a_changed_one(tmp_path: Path) -> None:
    stats = VipStats()
    assert open_flow_log(_vip(None), stats) is None
    first = open_flow_log(_vip({"path": str(tmp_path / "a.log")}), stats)
    assert first is not None
    assert reopen_flow_log(first, _vip({"path": str(tmp_path / "a.log")}), stats) is first
    second = reopen_flow_log(first, _vip({"path": str(tmp_path / "b.log"), "format": "json"}), stats)
    assert second is not None and second is not first and second.options.format == "json"
    bad = _vip({"path": str(tmp_path / "missing" / "c.log")})
    assert reopen_flow_log(second, bad, stats) is second  # logged; the running log goes on
    assert reopen_flow_log(second, _vip(None), stats) is None
