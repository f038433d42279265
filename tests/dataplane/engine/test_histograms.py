"""The native engine's histogram bounds (counters.c, exposed by `_engine`) are core/histogram.py's."""

from __future__ import annotations

import pytest

from sluice.core import histogram
from tests.dataplane.proxy.helpers import needs_native_engine


@pytest.mark.parametrize(
    ("c_name", "python_name"),
    [
        ("CONNECT_LATENCY_BOUNDS_US", "CONNECT_LATENCY_BUCKETS_S"),
        ("FLOW_DURATION_BOUNDS_US", "FLOW_DURATION_BUCKETS_S"),
    ],
)
def test_c_bounds_equal_the_python_buckets(c_name: str, python_name: str) -> None:
    needs_native_engine()
    from sluice.dataplane.engine import _engine

    assert getattr(_engine, c_name) == tuple(round(b * 1e6) for b in getattr(histogram, python_name))
