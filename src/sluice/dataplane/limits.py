"""Process limits the data planes need: as many file descriptors as this process may have.

An idle TCP flow holds 2 descriptors (its client and backend sockets), 6 while bytes move through
pipes (one pipe pair per direction, held only then); a UDP session 1. The usual soft limit of 1024
refuses flows long before memory runs out, so `raise_nofile_limit` lifts the soft limit to the hard
one at start (what HAProxy and NGINX do with their own settings) and says so in the log.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["NR_OPEN", "raise_nofile_limit"]

log = logging.getLogger(__name__)

NR_OPEN: Final = Path("/proc/sys/fs/nr_open")
"""The kernel's ceiling on one process's descriptors (used when the hard limit is unlimited)."""
_DEFAULT_NR_OPEN: Final = 1 << 20


def _nr_open() -> int:
    try:
        return int(NR_OPEN.read_text())
    except (OSError, ValueError):
        return _DEFAULT_NR_OPEN


def raise_nofile_limit(
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
    nr_open: Callable[[], int] = _nr_open,
) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the kernel's nr_open when that is unlimited);
    log one line saying what it is now. Returns the soft limit in force. Never raises: when the
    kernel refuses, the limit stays and the log says so."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("file descriptor limit stays at %d (raising it to %d failed: %s)", soft, target, exc)
            return soft
        log.info(
            "file descriptor limit raised from %d to %d (the hard limit): about %d idle TCP flows",
            soft,
            target,
            target // 2,
        )
        return target
    log.info("file descriptor limit: %d (already the hard limit)", soft)
    return soft


class EveryFewSeconds:
    """Says whether to log now: at most once per `interval_s`; counts the events in between."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = float("-inf")
        self.since_last = 0
        """Events since the last time `due` said yes, that one included."""

    def due(self, now: float) -> bool:
        if now < self._next:
            self.since_last += 1
            return False
        self._next = now + self.interval_s
        self.since_last += 1
        return True

    def logged(self) -> None:
        self.since_last = 0
