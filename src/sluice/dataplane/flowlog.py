"""A VIP's flow log sink: the rate limit, a bounded queue and a writer thread (``access_log:``).

`FlowLog.log` is called on the data plane's thread when a flow ends. It never blocks and never
does I/O: a token bucket (`sluice.core.flowlog.TokenBucket`, ``rate`` lines a second) decides, the
record goes into a queue of at most `queue_lines` records, and one writer thread per VIP formats
the lines and writes them (a batch per write, to a file opened with O_APPEND, or to stderr). A
record over the rate, one that finds the queue full, and one whose write failed are dropped and
counted in the VIP's ``access_log_dropped``.

Ownership: the listener that serves the VIP makes its `FlowLog` at start (or when a reload sets
``access_log``), calls `log` from its own thread, and `close`s it when it stops or the block changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

from sluice.config import AccessLog, Vip
from sluice.core.flowlog import FlowRecord, TokenBucket, format_line
from sluice.dataplane.limits import EveryFewSeconds
from sluice.dataplane.stats import VipStats

__all__ = ["BATCH_LINES", "QUEUE_LINES", "FlowLog", "close_flow_log", "open_flow_log", "reopen_flow_log"]

log = logging.getLogger(__name__)

QUEUE_LINES: Final = 8192
"""Records waiting for the writer thread at most, per VIP; one more is dropped and counted."""
BATCH_LINES: Final = 1024
"""Lines joined into one write."""
CLOSE_WAIT_S: Final = 2.0
"""Seconds `close` waits for the writer to write what is queued."""
IDLE_WAKE_S: Final = 0.5
"""Seconds an idle writer waits before it looks whether the log is closing."""
ERROR_LOG_INTERVAL_S: Final = 10.0
"""Seconds between two log lines about failing writes."""

_STOP: Final = None


def _file_writer(path: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    """(write, close) of `path`, opened now for appending (OSError naming the path if it cannot be)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise OSError(exc.errno, f"access_log.path {path}: {exc.strerror}") from None

    def write(text: str) -> None:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data) :]

    return write, lambda: os.close(fd)


def _stderr_write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


class FlowLog:
    """One VIP's flow log; `stats.access_log_dropped` counts the lines it did not write.

    `write` (tests, or a sink other than the config's `path`) takes a batch of whole lines; `clock`
    is the bucket's monotonic clock."""

    def __init__(
        self,
        vip_name: str,
        options: AccessLog,
        stats: VipStats,
        *,
        queue_lines: int = QUEUE_LINES,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ) -> None:
        if queue_lines < 1:
            raise ValueError(f"queue_lines must be at least 1, got {queue_lines}")
        self.vip_name = vip_name
        self.options = options
        self.stats = stats
        self._clock = clock
        self._bucket = TokenBucket(options.rate)
        self._queue: queue.Queue[FlowRecord | None] = queue.Queue(maxsize=queue_lines)
        self._close_sink: Callable[[], None] = lambda: None
        if write is None:
            if options.path == "stderr":
                write = _stderr_write
            else:
                write, self._close_sink = _file_writer(options.path)
        self._write = write
        self.write_failures = 0
        """Lines whose write failed (written by the writer thread only)."""
        self._failures_counted = 0
        self._stopping = False
        self._error_log = EveryFewSeconds(ERROR_LOG_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name=f"flowlog-{vip_name}", daemon=True)
        self._thread.start()

    def log(self, record: FlowRecord) -> None:
        """Queue `record` for writing, or count it dropped (over the rate, queue full). Never blocks."""
        if self.admit():
            self.submit(record)

    def admit(self) -> bool:
        """Whether one more line is within the rate now (if not, it is counted dropped): a caller
        that has to build its record first asks before it does."""
        if self._failures_counted != self.write_failures:  # the writer's failures, counted here
            failures = self.write_failures
            self.stats.access_log_dropped += failures - self._failures_counted
            self._failures_counted = failures
        if self._bucket.take(self._clock()):
            return True
        self.stats.access_log_dropped += 1
        return False

    def submit(self, record: FlowRecord) -> None:
        """Queue an admitted `record`, or count it dropped when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.stats.access_log_dropped += 1

    def close(self) -> None:
        """Stop taking records; the writer writes what is queued, then closes the file. Waits for it
        at most `CLOSE_WAIT_S` (a writer stuck on a slow disk finishes, and closes, on its own)."""
        self._stopping = True
        with contextlib.suppress(queue.Full):  # full: the writer sees _stopping once it emptied it
            self._queue.put_nowait(_STOP)
        self._thread.join(CLOSE_WAIT_S)

    def _run(self) -> None:
        fmt = self.options.format
        try:
            while True:
                try:
                    batch = [self._queue.get(timeout=IDLE_WAKE_S)]
                except queue.Empty:
                    if self._stopping:
                        return
                    continue
                while batch[-1] is not _STOP and len(batch) < BATCH_LINES:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                records = [r for r in batch if r is not _STOP]
                if records:
                    self._write_lines(records, fmt)
                if batch[-1] is _STOP:
                    return
        finally:
            self._close_sink()

    def _write_lines(self, records: list[FlowRecord], fmt: str) -> None:
        try:
            text = "".join(format_line(r, fmt) + "\n" for r in records)  # type: ignore[arg-type]
            self._write(text)
        except Exception as exc:  # a full disk, a closed stderr: the data plane goes on
            self.write_failures += len(records)
            now = time.monotonic()
            if self._error_log.due(now):
                log.warning(
                    "vip %s: flow log write failed: %s (%d lines lost since the last line)",
                    self.vip_name,
                    exc,
                    self._error_log.since_last,
                    extra={"vip": self.vip_name},
                )
                self._error_log.logged()


def open_flow_log(vip: Vip, stats: VipStats) -> FlowLog | None:
    """The flow log `vip` asks for, or None (no ``access_log:``)."""
    return None if vip.access_log is None else FlowLog(vip.name, vip.access_log, stats)


def close_flow_log(flow_log: FlowLog | None) -> None:
    """Close `flow_log` if there is one (the listener stops)."""
    if flow_log is not None:
        flow_log.close()


def reopen_flow_log(current: FlowLog | None, vip: Vip, stats: VipStats) -> FlowLog | None:
    """After a reload: `current` if ``access_log`` did not change, else the new one (`current` closed).
    When the new file cannot be opened, `current` goes on (logged as an error)."""
    if current is not None and current.options == vip.access_log:
        return current
    try:
        new = open_flow_log(vip, stats)
    except OSError as exc:
        log.error("vip %s: flow log unchanged: %s", vip.name, exc, extra={"vip": vip.name})
        return current
    if current is not None:
        current.close()
    return new
