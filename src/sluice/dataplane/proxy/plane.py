"""ProxyPlane: one listener per proxy-mode VIP, started, updated and stopped from the config."""

from __future__ import annotations

import logging

from sluice.config import Config, Endpoint, Vip
from sluice.core.scheduler import maglev_slots_changed
from sluice.dataplane.listener import Listener, ListenerFactory
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener
from sluice.dataplane.stats import VipStats

__all__ = ["Listener", "ListenerFactory", "ProxyPlane", "maglev_slots_changed"]
"""`Listener`, `ListenerFactory` and `maglev_slots_changed` are re-exported for older imports: their
homes are `sluice.dataplane.listener` and `sluice.core.scheduler`."""

log = logging.getLogger(__name__)


def _default_factories() -> dict[str, ListenerFactory]:
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
