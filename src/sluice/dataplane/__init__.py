"""Data planes: where packets and connections are actually moved.

A data plane implements `DataPlane`: the controller hands it the desired state (the config) and reads
its counters; it never branches on which data plane it drives.
"""

from __future__ import annotations

from typing import Protocol

from sluice.config import Config
from sluice.dataplane.stats import VipStats


class DataPlane(Protocol):
    async def apply(self, config: Config) -> None:
        """Make the running state match `config`, touching only what differs."""

    def stats(self) -> dict[str, VipStats]:
        """Counters per VIP name."""

    async def close(self) -> None:
        """Stop accepting and close every flow."""
