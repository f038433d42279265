"""The interface one VIP's listener implements, whichever engine runs it (python or native)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sluice.config import Endpoint, Vip
from sluice.dataplane.stats import VipStats


class Listener(Protocol):
    """One VIP's listening socket and its flows."""

    stats: VipStats

    async def start(self) -> None:
        """Bind and start serving; raises OSError when the address cannot be bound."""

    def update(self, vip: Vip) -> None:
        """Take a new config for the same listen address (backends, weights, limits);
        established flows keep their backend."""

    async def stop_accepting(self) -> None:
        """Take no new flows; established ones continue (graceful shutdown)."""

    def close_backend_flows(self, backend: Endpoint, reason: str) -> int:
        """Close the established flows on `backend`; returns how many."""

    async def close(self) -> None:
        """Stop accepting and close every flow."""


ListenerFactory = Callable[[Vip], Listener]
"""Builds the listener of one VIP (one factory per protocol)."""


def check_udp_vip(vip: Vip, listener: str) -> None:
    """What every UDP listener (`listener` names it in the message) refuses, refused the same way."""
    if vip.protocol != "udp":
        raise ValueError(f"vip {vip.name}: {listener} serves protocol udp, not {vip.protocol}")
    if vip.proxy_protocol == "v1":
        raise ValueError(f"vip {vip.name}: PROXY protocol v1 cannot carry UDP; use v2")
    if vip.udp.per_packet and len({b.address.family_v6 for b in vip.backends}) > 1:
        raise ValueError(f"vip {vip.name}: udp.per_packet needs every backend in one address family")
