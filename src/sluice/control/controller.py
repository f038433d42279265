"""The controller: turns the desired state (config + runtime overrides) into data-plane calls.

It never branches on which data plane it drives: each VIP goes to the plane registered for its mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sluice.config import Config, Mode, load_config
from sluice.dataplane import DataPlane
from sluice.dataplane.stats import VipStats

log = logging.getLogger(__name__)

PlaneFactory = Callable[[], DataPlane]


def _default_planes() -> dict[Mode, PlaneFactory]:
    from sluice.dataplane.proxy.plane import ProxyPlane

    planes: dict[Mode, PlaneFactory] = {"proxy": ProxyPlane}
    try:
        from sluice.dataplane.xdp.plane import XdpPlane
    except ImportError:  # pragma: no cover - the XDP plane ships with sluice; kept optional for slim builds
        pass
    else:
        planes["dsr"] = XdpPlane
    return planes


class Controller:
    """Holds the running config and the data planes; `apply` and `reload` change both together."""

    def __init__(self, config: Config, planes: dict[Mode, PlaneFactory] | None = None) -> None:
        self.config = config
        self._factories = planes if planes is not None else _default_planes()
        self._planes: dict[Mode, DataPlane] = {}

    async def start(self) -> None:
        await self.apply(self.config)

    async def apply(self, config: Config) -> None:
        """Make the data planes match `config`; each plane applies only the difference."""
        modes = {v.mode for v in config.vips} | set(self._planes)
        for mode in sorted(modes):
            plane = self._planes.get(mode)
            if plane is None:
                factory = self._factories.get(mode)
                if factory is None:
                    raise RuntimeError(f"no data plane for mode {mode!r} in this build")
                plane = self._planes[mode] = factory()
            await plane.apply(config)
        self.config = config

    async def reload(self, path: str | Path) -> Config:
        """Re-read `path` and apply it; on ConfigError the running config stays untouched."""
        config = load_config(path)
        await self.apply(config)
        log.info("reloaded %s: %d VIPs", path, len(config.vips))
        return config

    def stats(self) -> dict[str, VipStats]:
        out: dict[str, VipStats] = {}
        for plane in self._planes.values():
            out.update(plane.stats())
        return out

    async def close(self) -> None:
        planes, self._planes = self._planes, {}
        for plane in planes.values():
            await plane.close()
