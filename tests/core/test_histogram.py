"""Fixed-bucket histograms: inclusive upper bounds, cumulative view, bad bounds refused."""

from __future__ import annotations

import pytest

from sluice.core.histogram import CONNECT_LATENCY_BUCKETS_S, FLOW_DURATION_BUCKETS_S, Histogram


def test_a_value_equal_to_a_bound_counts_in_that_bucket() -> None:
    """Prometheus ``le`` semantics, as counters.h does in the native engine."""
    h = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 3.0):
        h.observe(value)
    assert h.counts == [2, 2, 1]
    assert h.cumulative() == [(1.0, 2), (2.0, 4), (float("inf"), 5)]
    assert (h.count, h.total) == (5, 8.0)


def test_from_counts_read_elsewhere() -> None:
    h = Histogram.of_counts((1.0, 2.0), [1, 0, 3], 9.5)
    assert (h.count, h.total, h.cumulative()[-1]) == (4, 9.5, (float("inf"), 4))


@pytest.mark.parametrize(
    ("bounds", "counts", "message"),
    [
        ((2.0, 1.0), [], "strictly ascending"),
        ((1.0, 1.0), [], "strictly ascending"),
        ((1.0, 2.0), [0, 0], "2 bounds need 3 counts"),
    ],
)
def test_bad_bounds_or_counts_are_refused(bounds: tuple[float, ...], counts: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram(bounds, counts)


def test_the_documented_ranges() -> None:
    assert (CONNECT_LATENCY_BUCKETS_S[0], CONNECT_LATENCY_BUCKETS_S[-1]) == (0.0005, 10.0)
    assert (FLOW_DURATION_BUCKETS_S[0], FLOW_DURATION_BUCKETS_S[-1]) == (0.001, 86400.0)
