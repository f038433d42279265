"""Fixed-bucket histograms (Prometheus style) and the bucket bounds every plane uses.

A `Histogram` counts observations per bucket (not cumulative: `counts[i]` holds the values in
``(bounds[i-1], bounds[i]]``, the last entry the values above the largest bound), their sum and
count. The bounds are fixed per kind, so the python engine, the native engine (its C copy in
``dataplane/engine/counters.h``, checked by a test) and the metrics agree on them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

CONNECT_LATENCY_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""TCP backend connects (seconds from ``connect()`` to the connection established), 0.5 ms .. 10 s."""

FLOW_DURATION_BUCKETS_S: Final = (
    0.001,
    0.01,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    86400.0,
)
"""Flows (seconds from a TCP accept or a UDP session's first datagram to the close), 1 ms .. 1 day."""

CHECK_LATENCY_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Active health checks (seconds a check took, up to its timeout)."""


@dataclass
class Histogram:
    """Observations per bucket, their sum and count."""

    bounds: tuple[float, ...]
    """Upper bounds (inclusive), ascending; +Inf is implied after the last."""
    counts: list[int] = field(default_factory=list)
    """Per bucket, ``len(bounds) + 1`` entries (the last above every bound)."""
    total: float = 0.0
    """Sum of the observed values."""
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"histogram bounds must be strictly ascending, got {self.bounds}")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        elif len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"{len(self.bounds)} bounds need {len(self.bounds) + 1} counts, got {len(self.counts)}"
            )

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, +Inf last: Prometheus's ``le`` series."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    @classmethod
    def of_counts(cls, bounds: Sequence[float], counts: Sequence[int], total: float) -> Histogram:
        """A histogram from bucket counts read elsewhere (the native engine's counters)."""
        return cls(tuple(bounds), list(counts), total, sum(counts))
