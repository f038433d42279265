"""ProxyPlane: one listener per proxy-mode VIP, started, updated and stopped from the config."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from sluice.config import Config, Endpoint, Vip
from sluice.core.scheduler import MaglevScheduler, Scheduler
from sluice.dataplane.stats import VipStats

log = logging.getLogger(__name__)


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


def maglev_slots_changed(old: Scheduler, new: Scheduler) -> int:
    """Maglev slots whose backend differs between the tables of two schedulers (a listener's
    `update`): what ``core.maglev.diff_tables(old, new).slots_changed`` counts, without building the
    per-slot diff (~20x faster at M = 65537). Every slot when the table size changed; 0 unless both
    schedulers are Maglev."""
    if not (isinstance(old, MaglevScheduler) and isinstance(new, MaglevScheduler)):
        return 0
    a, b = old.table, new.table
    if a.size != b.size:
        return b.size
    if a.backends == b.backends:
        return int(np.count_nonzero(a.slots != b.slots))
    # old index -> new index of the same identity (-2: gone); the extra last entry maps empty (-1) to -1
    index = {name: i for i, name in enumerate(b.backends)}
    lut = np.array([index.get(name, -2) for name in a.backends] + [-1], dtype=np.int32)
    return int(np.count_nonzero(lut[a.slots] != b.slots))


def _default_factories() -> dict[str, ListenerFactory]:
    from sluice.dataplane.proxy.tcp import TcpListener
    from sluice.dataplane.proxy.udp import UdpListener

    return {"tcp": TcpListener, "udp": UdpListener}


class ProxyPlane:
    """The `DataPlane` for VIPs with ``mode: proxy``."""

    def __init__(self, factories: dict[str, ListenerFactory] | None = None) -> None:
        self._factories = factories if factories is not None else _default_factories()
        self._listeners: dict[str, tuple[Vip, Listener]] = {}

    async def apply(self, config: Config) -> None:
        wanted = {v.name: v for v in config.vips if v.mode == "proxy"}
        for name in list(self._listeners):
            old, listener = self._listeners[name]
            new = wanted.get(name)
            if new is None or (new.listen, new.protocol) != (old.listen, old.protocol):
                log.info("vip %s: stopping listener on %s/%s", name, old.protocol, old.listen)
                del self._listeners[name]
                await listener.close()
        for name, vip in wanted.items():
            current = self._listeners.get(name)
            if current is None:
                listener = self._factories[vip.protocol](vip)
                await listener.start()
                log.info("vip %s: listening on %s/%s", name, vip.protocol, vip.listen)
                self._listeners[name] = (vip, listener)
            elif current[0] != vip:
                current[1].update(vip)
                self._listeners[name] = (vip, current[1])
                log.info("vip %s: updated", name)

    def stats(self) -> dict[str, VipStats]:
        return {name: listener.stats for name, (_, listener) in self._listeners.items()}

    async def stop_accepting(self) -> None:
        for _, listener in self._listeners.values():
            await listener.stop_accepting()

    def close_backend_flows(self, vip_name: str, backend: Endpoint, reason: str) -> int:
        current = self._listeners.get(vip_name)
        return 0 if current is None else current[1].close_backend_flows(backend, reason)

    async def close(self) -> None:
        listeners, self._listeners = self._listeners, {}
        for _, listener in listeners.values():
            await listener.close()
