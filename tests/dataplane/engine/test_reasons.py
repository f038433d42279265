"""The native engine's reason enums (reasons.h, exposed by `_engine`) are core/reasons.py's tables."""

from __future__ import annotations

import pytest

from sluice.core import reasons
from tests.dataplane.proxy.helpers import needs_native_engine


@pytest.mark.parametrize("table", ["REFUSED", "CLOSED", "CONNECT_ERRORS", "QUIC"])
def test_c_enum_names_equal_the_python_table(table: str) -> None:
    needs_native_engine()
    from sluice.dataplane.engine import _engine

    assert getattr(_engine, table) == getattr(reasons, table)


def test_proxy_header_max_is_the_python_parsers_bound() -> None:
    needs_native_engine()
    from sluice.core.proxy_protocol import DEFAULT_MAX_LENGTH
    from sluice.dataplane.engine import _engine

    assert _engine.PROXY_HEADER_MAX == DEFAULT_MAX_LENGTH
