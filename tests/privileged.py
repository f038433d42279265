"""Shim: the helpers moved to tests/support/privileged.py. Import from there; this file goes once no
test imports ``tests.privileged`` any more."""

from __future__ import annotations

from tests.support.privileged import REQUIRE_PRIVILEGED, needs

__all__ = ["REQUIRE_PRIVILEGED", "needs"]
