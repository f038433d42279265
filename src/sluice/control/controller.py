"""The controller: turns the desired state (config + health + runtime overrides) into data-plane calls.

It never branches on which data plane it drives: each VIP goes to the plane registered for its mode.

The data planes get the *effective* config (`control/effective.py`): the file's config with
unusable backends (down, ejected, draining, maintenance) at weight 0, runtime weights and slow start
folded in. The health `Monitor` runs beside it; every batch of transitions makes the controller
recompute the effective config and hand the planes only what changed.

Runtime overrides (admin state, weight) live here, never in the config object:

- admin states stay across reloads for backends that stay;
- a runtime weight stays across reloads unless the file changes that backend's weight (the newer
  intent wins) or removes the backend.
- ``drain`` / ``maintenance``: no new flows; established flows continue until ``drain_timeout``,
  then the data plane closes them (reason ``drain_timeout``).
- ``on_backend_down: close``: when health takes a backend out, its established flows are closed
  (reason ``backend_down``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sluice import __version__
from sluice.config import Config, ConfigError, Endpoint, Mode, Vip, load_config
from sluice.control.effective import BackendView, effective_config
from sluice.control.monitor import BackendTransition, Monitor
from sluice.control.reload_diff import ReloadDiff, diff_configs, runtime_notes
from sluice.control.snapshot import BackendSnapshot as BackendSnapshot
from sluice.control.snapshot import ServerInfo, counters
from sluice.control.snapshot import VipSnapshot as VipSnapshot
from sluice.core.health import USABLE, Admin, State
from sluice.dataplane import DataPlane
from sluice.dataplane.stats import BackendStats, VipStats
from sluice.dataplane.tasks import cancel_and_wait

if TYPE_CHECKING:
    from sluice.control.announce import Announcer

log = logging.getLogger(__name__)

RELOAD_PARSE_TIMEOUT_S = 60.0
"""Longest a reload may spend reading and validating the file (in a worker thread)."""

PlaneFactory = Callable[[], DataPlane]


@runtime_checkable
class Discards(Protocol):
    """A data plane whose state outlives the process (pinned maps): `discard` closes it and removes
    the state this process created (after a failed start)."""

    async def discard(self) -> None: ...


SHUTDOWN_POLL_S = 0.05
"""Seconds between two looks at the active flow count during a graceful shutdown."""


@runtime_checkable
class ClosesBackendFlows(Protocol):
    """A data plane that can end the established flows of one backend (the proxy plane can;
    a DSR plane owns no connections)."""

    def close_backend_flows(self, vip_name: str, backend: Endpoint, reason: str) -> int: ...


@runtime_checkable
class StopsAccepting(Protocol):
    """A data plane that can stop taking new flows while established ones continue."""

    async def stop_accepting(self) -> None: ...


class UnknownBackend(KeyError):
    """No such VIP, or no such backend in it."""


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


@dataclass(frozen=True)
class ReloadResult:
    """What `Controller.reload` read and what it changed (or, for a dry run, would change)."""

    config: Config
    diff: ReloadDiff
    runtime: list[str]
    """State set at runtime that this reload undoes, or keeps until a restart (`runtime_notes`)."""
    applied: bool


class Controller:
    """Holds the running config, the data planes and the health monitor."""

    def __init__(
        self,
        config: Config,
        planes: dict[Mode, PlaneFactory] | None = None,
        *,
        monitor: Monitor | None = None,
        clock: Callable[[], float] = time.monotonic,
        announcer: Announcer | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        """The desired config (as read from the file)."""
        self.effective = config
        """What the data planes were last given."""
        self._factories = planes if planes is not None else _default_planes()
        self._planes: dict[Mode, DataPlane] = {}
        self.clock = clock
        self.monitor = monitor if monitor is not None else Monitor(self.stats, clock=clock)
        self._weights: dict[tuple[str, Endpoint], int] = {}
        # passive ejection never takes the last backend that takes new flows: weight 0 ones do not
        self.monitor.runtime_weights = lambda vip, backend: self._weights.get((vip, backend))
        self._drains: dict[tuple[str, Endpoint], asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._monitor_task: asyncio.Task[None] | None = None
        self.reloads: Counter[str] = Counter()
        """Reloads by result: ok, invalid, failed."""
        self.wall_clock = wall_clock
        self.started_at = wall_clock()
        self._started = clock()
        self.last_reload: tuple[float, str, str | None] | None = None
        """(Unix time, result, error) of the last reload."""
        self.last_good_reload: float | None = None
        """Unix time of the last reload applied (result ok)."""
        self.closed_by_control: Counter[tuple[str, str]] = Counter()
        """(vip, reason) -> flows the controller had the data plane close."""
        self.announcer = announcer
        """BGP announcement of the dsr VIPs; told after every push (control/announce.py)."""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.announcer is not None:
            await self.announcer.start()
        await self.apply(self.config)
        if self._monitor_task is None:
            self._monitor_task = asyncio.create_task(self.monitor.run(self.on_health), name="sluice-monitor")

    async def apply(self, config: Config) -> None:
        """Make the data planes match `config`; each plane applies only the difference."""
        async with self._lock:
            self._prune_overrides(config)
            self.monitor.configure(config)
            await self._push(config)
            self.config = config

    async def reload(
        self,
        path: str | Path,
        load: Callable[[Path], Config] = load_config,
        timeout_s: float = RELOAD_PARSE_TIMEOUT_S,
        *,
        dry_run: bool = False,
    ) -> ReloadResult:
        """Re-read `path` and apply it; on ConfigError the running config stays untouched.

        The file is read, parsed and validated by `load` in a worker thread, bounded by `timeout_s`,
        so a slow or huge config never stops traffic on the event loop. `reloads` counts the result;
        each change is logged on a line of its own, a refused or failed reload on one line.
        `dry_run`: read, validate and tell the difference; apply, count and log nothing."""
        try:
            try:
                config = await asyncio.wait_for(asyncio.to_thread(load, Path(path)), timeout_s)
            except TimeoutError:
                raise ConfigError(
                    [f"{path}: reading and validating took over {timeout_s:.0f}s; not applied"]
                ) from None
        except ConfigError as exc:
            if not dry_run:
                # one line, whatever the YAML parser's message spans
                errors = "; ".join(" ".join(e.split()) for e in exc.errors)
                self._reloaded("invalid", errors)
                log.error("reload of %s rejected, keeping the running config: %s", path, errors)
            raise
        except Exception as exc:
            if not dry_run:
                self._reloaded("failed", str(exc))
                log.exception("reload of %s failed while reading it", path)
            raise
        if dry_run:
            return ReloadResult(config, self.plan(config), self._runtime(config), applied=False)
        old, old_effective, runtime = self.config, self.effective, self._runtime(config)
        try:
            await self.apply(config)
        except Exception as exc:
            self._reloaded("failed", str(exc))
            # an OSError (a port taken, a map full) is one line; anything else is a bug: its traceback
            log.error(
                "reload of %s failed while applying: %s", path, exc, exc_info=not isinstance(exc, OSError)
            )
            raise
        self._reloaded("ok", None)
        diff = diff_configs(old, config, old_effective, self.effective)
        log.info("reloaded %s: %d VIPs, %d changes", path, len(config.vips), len(diff.lines()))
        for line in diff.lines():
            log.info("reload: %s", line)
        for line in runtime:
            log.info("reload: %s", line)
        return ReloadResult(config, diff, runtime, applied=True)

    def plan(self, config: Config) -> ReloadDiff:
        """What applying `config` would change now (health and runtime state as they are)."""
        dropped = self._pruned_weights(config)
        views = {
            k: dataclasses.replace(v, weight=None) if k in dropped else v for k, v in self._views().items()
        }
        return diff_configs(
            self.config, config, self.effective, effective_config(config, views, self.clock())
        )

    def _runtime(self, config: Config) -> list[str]:
        """`runtime_notes` for a reload to `config` (call before applying it)."""
        admin = {(r.vip, r.address): str(r.health.admin) for r in self.monitor.records()}
        admin = {k: a for k, a in admin.items() if a != str(Admin.ACTIVE)}
        return runtime_notes(config, admin, self._weights, self._pruned_weights(config))

    def _reloaded(self, result: str, error: str | None) -> None:
        self.reloads[result] += 1
        self.last_reload = (self.wall_clock(), result, error)
        if result == "ok":
            self.last_good_reload = self.last_reload[0]

    def server_info(self) -> ServerInfo:
        at, result, error = self.last_reload if self.last_reload is not None else (None, None, None)
        return ServerInfo(
            version=__version__,
            started_at=self.started_at,
            uptime_s=max(0.0, self.clock() - self._started),
            last_reload_at=at,
            last_reload_result=result,
            last_reload_error=error,
            reloads=dict(self.reloads),
        )

    async def shutdown(self, timeout_s: float) -> int:
        """Graceful stop: take no new flows, let established ones finish for up to `timeout_s`, then
        close everything. Returns the flows that were still open at the deadline. BGP withdraws first."""
        if self.announcer is not None:
            await self.announcer.shutdown()
        await self._stop_monitor()
        for plane in self._planes.values():
            if isinstance(plane, StopsAccepting):
                await plane.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := self.active_flows()) > 0 and loop.time() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_S)
        if left:
            log.warning("shutdown: closing %d flows still open after %.1fs", left, timeout_s)
        await self.close()
        return left

    async def close(self, *, discard: bool = False) -> None:
        """Stop the monitor and the data planes; `discard` (a failed start) also removes the state a
        plane created to outlive the process (the XDP plane's pinned maps)."""
        if self.announcer is not None:
            await self.announcer.close()  # traffic leaves before the data planes stop
        await self._stop_monitor()
        for task in self._drains.values():
            task.cancel()
        self._drains.clear()
        planes, self._planes = self._planes, {}
        for plane in planes.values():
            if discard and isinstance(plane, Discards):
                await plane.discard()
            else:
                await plane.close()

    # ------------------------------------------------------------ observation

    def stats(self) -> dict[str, VipStats]:
        out: dict[str, VipStats] = {}
        for plane in self._planes.values():
            out.update(plane.stats())
        return out

    def plane(self, mode: Mode) -> DataPlane | None:
        """The data plane serving `mode` VIPs; None before one was needed."""
        return self._planes.get(mode)

    def active_flows(self) -> int:
        return sum(s.active for s in self.stats().values())

    def snapshot(self) -> list[VipSnapshot]:
        """Every VIP and backend with state and counters (the API's and the CLI's view)."""
        stats = self.stats()
        now = self.clock()
        out = []
        for vip in self.config.vips:
            vstats = stats.get(vip.name, VipStats())
            eff = {b.address: b.weight for b in self._effective_vip(vip.name).backends}
            backends = []
            for b in vip.backends:
                bs = vstats.backends.get(str(b.address), BackendStats())
                try:
                    record = self.monitor.record(vip.name, b.address)
                except KeyError:
                    continue
                h, last = record.health, record.last_result
                backends.append(
                    BackendSnapshot(
                        address=str(b.address),
                        state=str(h.state),
                        admin=str(h.admin),
                        weight=self._weights.get((vip.name, b.address), b.weight),
                        effective_weight=eff.get(b.address, 0),
                        **counters(bs),
                        suspect=h.suspect,
                        last_check=last.detail if last is not None else None,
                        last_check_latency_s=last.latency_s if last is not None else None,
                        since_s=max(0.0, now - h.last_change),
                    )
                )
            out.append(
                VipSnapshot(
                    name=vip.name,
                    protocol=vip.protocol,
                    listen=str(vip.listen),
                    mode=vip.mode,
                    scheduler=vip.scheduler,
                    active=vstats.active,
                    flows_total=vstats.flows_total,
                    sessions=vstats.sessions,
                    refused=dict(vstats.refused),
                    closed=dict(vstats.closed),
                    rebalanced=vstats.rebalanced,
                    access_log_dropped=vstats.access_log_dropped,
                    backends=backends,
                    quic_routed=vstats.quic_routed,
                    quic_fallback=vstats.quic_fallback,
                    announced=None if self.announcer is None else self.announcer.vip_announced(vip.name),
                )
            )
        return out

    def effective_weights(self) -> dict[tuple[str, str], int]:
        return {(v.name, str(b.address)): b.weight for v in self.effective.vips for b in v.backends}

    # ------------------------------------------------------------ runtime control

    async def set_admin(self, vip_name: str, address: Endpoint, admin: Admin) -> None:
        """drain / maintenance / active for one backend; raises UnknownBackend."""
        vip = self._backend(vip_name, address)
        async with self._lock:
            self.monitor.set_admin(vip_name, address, admin)
            key = (vip_name, address)
            if (task := self._drains.pop(key, None)) is not None:
                task.cancel()
            if admin is not Admin.ACTIVE:
                self._drains[key] = asyncio.create_task(
                    self._drain_deadline(vip_name, address, vip.drain_timeout),
                    name=f"drain {vip_name} {address}",
                )
            await self._push(self.config)

    async def set_weight(self, vip_name: str, address: Endpoint, weight: int) -> None:
        """Runtime weight (0..65535) for one backend; raises UnknownBackend or ValueError."""
        self._backend(vip_name, address)
        if not 0 <= weight <= 65535:
            raise ValueError(f"weight must be 0..65535, got {weight}")
        async with self._lock:
            self._weights[(vip_name, address)] = weight
            log.info("vip %s backend %s: weight %d (runtime)", vip_name, address, weight)
            await self._push(self.config)

    def close_backend_flows(self, vip_name: str, address: Endpoint, reason: str) -> int:
        """Have the data plane close the established flows of one backend; returns how many."""
        closed = 0
        for plane in self._planes.values():
            if isinstance(plane, ClosesBackendFlows):
                closed += plane.close_backend_flows(vip_name, address, reason)
        if closed:
            self.closed_by_control[(vip_name, reason)] += closed
            log.info("vip %s backend %s: closed %d flows (%s)", vip_name, address, closed, reason)
        return closed

    # ------------------------------------------------------------ internals

    def _backend(self, vip_name: str, address: Endpoint) -> Vip:
        try:
            vip = self.config.vip(vip_name)
        except KeyError:
            raise UnknownBackend(f"no VIP named {vip_name!r}") from None
        if not any(b.address == address for b in vip.backends):
            raise UnknownBackend(f"VIP {vip_name!r} has no backend {address}")
        return vip

    def _effective_vip(self, name: str) -> Vip:
        try:
            return self.effective.vip(name)
        except KeyError:
            return self.config.vip(name)

    def _views(self) -> dict[tuple[str, Endpoint], BackendView]:
        return {
            (r.vip, r.address): BackendView(
                usable=r.health.usable,
                admin_active=r.health.admin is Admin.ACTIVE,
                usable_since=r.health.usable_since,
                weight=self._weights.get((r.vip, r.address)),
            )
            for r in self.monitor.records()
        }

    async def _push(self, config: Config) -> None:
        """Compute the effective config and hand it to the planes when it changed. Holds the lock."""
        effective = effective_config(config, self._views(), self.clock())
        if effective == self.effective and set(self._planes) >= {v.mode for v in config.vips}:
            return
        modes = {v.mode for v in effective.vips} | set(self._planes)
        for mode in sorted(modes):
            plane = self._planes.get(mode)
            if plane is None:
                factory = self._factories.get(mode)
                if factory is None:
                    raise RuntimeError(f"no data plane for mode {mode!r} in this build")
                plane = self._planes[mode] = factory()
            await plane.apply(effective)
        self.effective = effective
        if self.announcer is not None:
            await self.announcer.update(effective)

    def _pruned_weights(self, config: Config) -> set[tuple[str, Endpoint]]:
        """Backends whose runtime weight a reload to `config` drops: the file changes that backend's
        weight or removes it."""
        old = {(v.name, b.address): b.weight for v in self.config.vips for b in v.backends}
        new = {(v.name, b.address): b.weight for v in config.vips for b in v.backends}
        return {k for k in self._weights if k not in new or old.get(k) != new[k]}

    def _prune_overrides(self, config: Config) -> None:
        """Runtime weights survive a reload unless the file changed that backend or removed it."""
        for key in self._pruned_weights(config):
            del self._weights[key]
        new = {(v.name, b.address) for v in config.vips for b in v.backends}
        for key in list(self._drains):
            if key not in new:
                self._drains.pop(key).cancel()

    async def on_health(self, changes: list[BackendTransition]) -> None:
        for bt in changes:
            t = bt.transition
            if t.old in USABLE and t.new in (State.DOWN, State.EJECTED):
                try:
                    vip = self.config.vip(bt.vip)
                except KeyError:
                    continue
                if vip.on_backend_down == "close":
                    self.close_backend_flows(bt.vip, bt.backend, "backend_down")
        async with self._lock:
            await self._push(self.config)

    async def _drain_deadline(self, vip_name: str, address: Endpoint, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        self._drains.pop((vip_name, address), None)
        self.close_backend_flows(vip_name, address, "drain_timeout")

    async def _stop_monitor(self) -> None:
        task, self._monitor_task = self._monitor_task, None
        if task is not None:
            await cancel_and_wait(task)
