"""Names and sizes the config shares with the core, in a module that imports nothing heavy (no
numpy), so that ``sluice check`` and ``--help`` start fast. `maglev` and `scheduler` re-export them."""

from __future__ import annotations

from typing import Literal

SchedulerName = Literal["maglev", "round_robin", "least_conn", "random_two"]
"""The schedulers of `sluice.core.scheduler.REGISTRY`."""

DEFAULT_TABLE_SIZE = 65537
"""Maglev lookup table size M when the config gives none (a prime)."""


def is_prime(n: int) -> bool:
    """Trial division; table sizes are at most ~1e6."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True
