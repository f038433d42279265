"""pytest configuration shared by every test folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.loopback import Backends


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    """Named echo backends on 127.0.0.1 (tests/support/loopback.py); every one is killed afterwards."""
    from tests.support.loopback import Backends  # here, so collecting core tests imports no config

    async with Backends() as pool:
        yield pool
