"""The load balancer's own CPU time: user+sys of its whole process tree, from psutil."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psutil


def tree_cpu_seconds(pid: int) -> float:
    """user+sys of `pid` and all its live descendants, plus its reaped children.

    A child that exited and was reaped is in the parent's children_* times; a live one is counted
    on its own, so nothing is counted twice.
    """
    root = psutil.Process(pid)
    t = root.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


class CpuMeter:
    """Measure CPU seconds of a process tree over a `with` block; `None` pid measures nothing."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seconds: float | None = None
        self._start = 0.0

    def __enter__(self) -> CpuMeter:
        if self.pid is not None:
            self._start = tree_cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            self.seconds = max(0.0, tree_cpu_seconds(self.pid) - self._start)


class CoreMeter:
    """Busy seconds (everything but idle/iowait/steal) of each core over a `with` block: the LB's
    share of its core versus colleagues' noise, recorded with every round."""

    def __init__(self) -> None:
        self.busy: list[float] = []
        self.wall = 0.0
        self._t0: list[Any] = []
        self._w0 = 0.0

    @staticmethod
    def _busy(t: Any) -> float:
        return float(t.user + t.nice + t.system + t.irq + t.softirq)

    def __enter__(self) -> CoreMeter:
        self._t0 = psutil.cpu_times(percpu=True)
        self._w0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        t1 = psutil.cpu_times(percpu=True)
        self.wall = time.monotonic() - self._w0
        self.busy = [round(self._busy(b) - self._busy(a), 3) for a, b in zip(self._t0, t1, strict=True)]
