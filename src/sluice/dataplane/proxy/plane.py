"""ProxyPlane: one listener per proxy-mode VIP, started, updated and stopped from the config.

The config's `engine` picks who serves the VIPs, TCP and UDP alike: the native engine (C, `workers`
threads) or the python one (asyncio). A reload that changes `engine` or `workers` applies to listeners it starts; running ones keep theirs.
"""

from __future__ import annotations

import functools
import logging
import os

from sluice.config import Config, Endpoint, EngineName, Vip
from sluice.dataplane import engine
from sluice.dataplane.listener import Listener, ListenerFactory
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener
from sluice.dataplane.stats import VipStats

log = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """`engine: native` was asked for and the extension is not built."""


def resolve_engine(asked: EngineName | None, native_available: bool = engine.AVAILABLE) -> EngineName:
    """The engine a config runs on: as asked, or native when unset and the extension is built."""
    if asked == "native" and not native_available:
        raise EngineUnavailable("engine: native, but the native engine extension is not built")
    if asked is not None:
        return asked
    return "native" if native_available else "python"


def factories_for(config: Config) -> dict[str, ListenerFactory]:
    """Listener factories by protocol for `config`'s engine and worker count."""
    if resolve_engine(config.engine) == "python":
        return {"tcp": TcpListener, "udp": UdpListener}
    workers = None if config.workers == "auto" else config.workers
    return {
        "tcp": functools.partial(engine.NativeTcpListener, workers=workers),
        "udp": functools.partial(engine.NativeUdpListener, workers=workers),
    }


def describe_engine(config: Config) -> str:
    """Who serves what, in words: "TCP and UDP on the native engine (2 workers)"."""
    if resolve_engine(config.engine) == "python":
        return "TCP and UDP on the python engine"
    workers = len(os.sched_getaffinity(0)) if config.workers == "auto" else config.workers
    return f"TCP and UDP on the native engine ({workers} worker{'s' if workers != 1 else ''})"


class ProxyPlane:
    """The `DataPlane` for VIPs with ``mode: proxy``."""

    def __init__(self, factories: dict[str, ListenerFactory] | None = None) -> None:
        self._fixed = factories
        """Injected factories (tests); None: chosen from each config's engine and workers."""
        self._factories = factories or {}
        self._engine: tuple[EngineName, object] | None = None
        self._listeners: dict[str, tuple[Vip, Listener]] = {}

    def _choose_factories(self, config: Config) -> None:
        if self._fixed is not None:
            return
        chosen = (resolve_engine(config.engine), config.workers)
        if chosen == self._engine:
            return
        if self._engine is None:
            if config.engine is None and chosen[0] == "python":
                log.warning("the native engine extension is not built: the python engine serves every VIP")
            log.info("proxy engine: %s (workers: %s)", chosen[0], chosen[1])
        else:
            log.warning("proxy engine now %s (workers: %s): running listeners keep theirs", *chosen)
        self._engine = chosen
        self._factories = factories_for(config)

    @property
    def engine(self) -> EngineName | None:
        """The engine new listeners run on (None before the first apply, or with injected factories)."""
        return None if self._engine is None else self._engine[0]

    async def apply(self, config: Config) -> None:
        self._choose_factories(config)
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
                try:
                    await listener.start()
                except OSError as exc:
                    where = f"vip {name}: cannot listen on {vip.protocol}/{vip.listen}"
                    raise OSError(exc.errno, f"{where}: {exc.strerror or exc}") from exc
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
