"""XdpPlane: the DataPlane for ``mode: dsr`` VIPs, driving the XDP program through its maps.

apply(config) turns the desired VIPs into map contents and touches only what differs:
VIP slots and backend slots are stable (a kept backend keeps its slot, so connection entries stay
valid), Maglev rows are rewritten only where a slot's backend changed (batch update), a removed
backend's slot is marked inactive only after no Maglev slot points to it. Order of writes keeps the
program consistent at every moment: backends, then Maglev rows, then the VIP entry; removal in reverse.
Every write goes through one asyncio.Lock: apply() and the periodic MAC refresh (which re-applies
the latest config while some backend has no MAC) never interleave over the maps or the slots.

The maps are pinned (see loader.py) in /sys/fs/bpf/sluice/<instance>/ (instance.py: the config's
``instance:``, else the dsr interfaces), locked while the plane runs: a restarted process finds its VIP
and backend slots in the pinned maps, so the connection table keeps pointing at the right backends,
and a second process with the same instance is refused. Each interface is attached as its VIPs'
``dsr.attach`` says; `status()` tells which mode is in use.

The clock: while the plane runs it writes CLOCK_MONOTONIC into the program's coarse_clock map every
CLOCK_PERIOD_S, and the program stamps connection entries with that value instead of reading the clock
source per packet. A VIP's idle timeout (TCP and UDP alike) is written one period longer (idle_ns), so
a flow never expires early because of the coarse clock and at most two periods late. close() writes
0: the program then reads bpf_ktime_get_ns() again (a process that died without close() leaves the
clock stopped: entries stop expiring, forwarding is unaffected).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from sluice.config import Config, Vip
from sluice.core.flow import FiveTuple
from sluice.core.maglev import DEFAULT_TABLE_SIZE, build_table, count_slots_changed
from sluice.dataplane.stats import VipStats
from sluice.dataplane.tasks import cancel_and_wait
from sluice.dataplane.xdp import build, checkroutes, loader
from sluice.dataplane.xdp.instance import (
    Attacher,
    AttachSetting,
    InstanceInUse,
    PinLock,
    XdpConfigError,
    attach_settings,
    default_instance,
)
from sluice.dataplane.xdp.maps import (
    BACKEND_F_ACTIVE,
    FAMILY_V4,
    FAMILY_V6,
    NO_BACKEND,
    BackendEntry,
    VipKey,
    XdpMaps,
    addr16,
    be16,
    mac_bytes,
    vip_key,
)
from sluice.dataplane.xdp.neighbours import Neighbours, NetlinkNeighbours
from sluice.dataplane.xdp.vipstate import (
    PROTO_NUMBERS,
    VipState,
    check_vip,
    flow_backend,
    hash_key_of,
    identity_of,
    key_tuple,
    raw_counters,
    vip_meta,
    vip_stats,
)

__all__ = [
    "CLOCK_PERIOD_S",
    "PROTO_NUMBERS",
    "Attacher",
    "InstanceInUse",
    "XdpConfigError",
    "XdpLimits",
    "XdpPlane",
]

log = logging.getLogger(__name__)

PROGRAM: Final = "sluice_xdp"
CLOCK_PERIOD_S: Final = 0.25  # seconds between two writes of the coarse clock


@dataclass(frozen=True)
class XdpLimits:
    """Map bounds; the program is compiled with these (-D), so they are fixed while it runs."""

    max_vips: int = 64
    max_backends: int = 4096
    conntrack_entries: int = 65536  # one table for all CPUs (as many flows as the per-CPU table held)


class XdpPlane:
    """DataPlane for dsr VIPs (proxy VIPs in the config are ignored: another plane serves them)."""

    def __init__(
        self,
        instance: str | None = None,
        *,
        neighbours: Neighbours | None = None,
        attacher: Attacher | None = None,
        attach_mode: AttachSetting | None = None,
        limits: XdpLimits | None = None,
        cache_dir: Path | None = None,
        refresh_interval_s: float = 30.0,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        # None until the first apply: then the config's `instance:` or the dsr interfaces (instance.py)
        self.instance = instance
        self.neighbours: Neighbours = neighbours or NetlinkNeighbours()
        self.attacher = attacher or Attacher()
        self.attach_mode = attach_mode  # None: each interface as its VIPs' dsr.attach says
        self._lock: PinLock | None = None
        self._private_bpffs = False
        self.limits = limits or XdpLimits()
        self.cache_dir = cache_dir
        self.refresh_interval_s = refresh_interval_s
        self._obj: loader.LoadedObject | None = None
        self._maps: XdpMaps | None = None
        self._defines: dict[str, int] = {}
        self._vips: dict[tuple[bytes, int, int], VipState] = {}
        self._attached: dict[str, tuple[int, loader.AttachMode, AttachSetting]] = {}
        self._config: Config | None = None
        self._refresh: asyncio.Task[None] | None = None
        self.clock_ns = clock_ns  # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
        self._clock: asyncio.Task[None] | None = None
        # Serialises every write to the maps and the slot allocation: apply() (the controller's
        # reloads and health changes) and the MAC refresh rounds.
        self._apply_lock = asyncio.Lock()
        self._next_backend = 0
        self._freed: set[int] = set()  # backend slots freed by this apply; their entries go at its end
        self._unresolved: set[tuple[str, str]] = set()  # (vip name, backend) without a MAC yet
        self.check_forwarding = checkroutes.CheckForwarding(cache_dir=cache_dir)  # dsr checks via the VIP

    @property
    def pin_dir(self) -> Path:
        if self.instance is None:
            raise RuntimeError("XdpPlane: the instance is known after the first apply()")
        return loader.pin_dir(self.instance)

    def _choose_instance(self, config: Config, vips: Sequence[Vip]) -> None:
        wanted = config.instance or default_instance(v.dsr.interface for v in vips if v.dsr is not None)
        if self.instance is None:
            self.instance = wanted
        elif config.instance is not None and wanted != self.instance and self._lock is not None:
            log.warning(
                "instance %s -> %s: applies at the next start (the pins stay in %s)",
                self.instance,
                wanted,
                self.pin_dir,
            )

    @property
    def maps(self) -> XdpMaps:
        if self._maps is None:
            raise RuntimeError("XdpPlane: apply() a config first")
        return self._maps

    # ------------------------------------------------------------ loading

    def _defines_for(self, vips: Sequence[Vip]) -> dict[str, int]:
        return {
            "MAX_VIPS": max(self.limits.max_vips, len(vips)),
            "MAX_BACKENDS": max(self.limits.max_backends, 2 * sum(len(v.backends) for v in vips)),
            "MAGLEV_SIZE": max((v.maglev_table_size for v in vips), default=DEFAULT_TABLE_SIZE),
            "CT_SIZE": self.limits.conntrack_entries,
        }

    def _ensure_loaded(self, defines: dict[str, int]) -> None:
        if self._obj is not None and defines == self._defines:
            return
        if self._obj is not None:
            log.warning("XDP map sizes change %s -> %s: reloading the program", self._defines, defines)
            self._close_object()
            self._vips.clear()
            self._freed.clear()
        path = build.compile_object("sluice_xdp.bpf.c", defines, self.cache_dir)
        if self._lock is None:
            self._private_bpffs = loader.ensure_bpffs()
            self._lock = PinLock(str(self.instance), self.pin_dir)
        self._obj = loader.load_object(path, (PROGRAM,), pins=self.pin_dir)
        self._maps = XdpMaps.from_fds(self._obj.maps)
        self._maps.set_clock(self.clock_ns())
        self._defines = dict(defines)
        self._recover()
        for ifname, (ifindex, _mode, setting) in list(self._attached.items()):
            mode = self.attacher.attach(ifindex, self._obj.programs[PROGRAM], setting)
            self._attached[ifname] = (ifindex, mode, setting)

    def _recover(self) -> None:
        """Rebuild VIP and backend slot allocations from pinned maps (after a restart)."""
        maps = self.maps
        by_index: dict[int, VipState] = {}
        for key, meta in maps.vips.items():
            kt = (bytes(key.addr), socket.ntohs(key.port), int(key.proto))
            state = VipState(name=f"#{meta.index}", index=meta.index, key=kt, hash_key=hash_key_of(meta))
            self._vips[kt] = by_index[meta.index] = state
        for i in range(self._defines["MAX_BACKENDS"]):
            entry = maps.backends.lookup(ctypes.c_uint32(i))
            if entry is None or not entry.flags & BACKEND_F_ACTIVE:
                continue
            owner = by_index.get(entry.vip_index)
            if owner is None:
                maps.backends.update(ctypes.c_uint32(i), BackendEntry())  # orphan: free it
                continue
            owner.backend_slots[identity_of(entry)] = i
        if self._vips:
            log.info("recovered %d VIPs from pinned maps in %s", len(self._vips), self.pin_dir)

    # ------------------------------------------------------------ apply

    async def apply(self, config: Config) -> None:
        """Make the maps serve `config`'s dsr VIPs (waits for a MAC refresh round in progress)."""
        async with self._apply_lock:
            await self._apply_locked(config)
        if self._refresh is None and self.refresh_interval_s > 0:
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())
        if self._clock is None:
            self._clock = asyncio.get_running_loop().create_task(self._clock_loop())

    async def _apply_locked(self, config: Config) -> None:
        assert self._apply_lock.locked()
        vips = [v for v in config.vips if v.mode == "dsr"]
        for v in vips:
            check_vip(v)
        settings = attach_settings(vips)
        if self.attach_mode is not None:
            settings = dict.fromkeys(settings, self.attach_mode)
        self._choose_instance(config, vips)
        self._ensure_loaded(self._defines_for(vips))
        wanted = {key_tuple(v): v for v in vips}
        for kt in [k for k in self._vips if k not in wanted]:
            self._remove_vip(self._vips.pop(kt))
        for kt, vip in wanted.items():
            await self._apply_vip(kt, vip)
        self._attach_interfaces(settings)
        await asyncio.to_thread(self.check_forwarding.apply_config, config)
        self._config = config
        if self._freed:  # a removed backend's connection entries end now (not at their idle timeout)
            n = await asyncio.to_thread(
                self.maps.forget_backends, self._freed, 2 * self.limits.conntrack_entries
            )
            log.info("%d connection entries of %d removed backends dropped", n, len(self._freed))
            self._freed.clear()

    def _free_vip_index(self) -> int:
        used = {s.index for s in self._vips.values()}
        for i in range(self._defines["MAX_VIPS"]):
            if i not in used:
                return i
        raise XdpConfigError(f"more than {self._defines['MAX_VIPS']} dsr VIPs")

    def _allocate_backend(self) -> int:
        """A free backend slot, round robin so a just-freed slot is reused as late as possible."""
        used = {i for s in self._vips.values() for i in s.backend_slots.values()} | self._freed
        total = self._defines["MAX_BACKENDS"]
        for step in range(total):
            i = (self._next_backend + step) % total
            if i not in used:
                self._next_backend = (i + 1) % total
                return i
        raise XdpConfigError(f"more than {total} dsr backends")

    async def _backend_mac(self, vip: Vip, ip: str) -> bytes:
        assert vip.dsr is not None
        if vip.dsr.forwarding == "ipip":
            assert vip.dsr.next_hop_mac is not None
            return mac_bytes(vip.dsr.next_hop_mac)
        return mac_bytes(await self.neighbours.resolve(ip, vip.dsr.interface))

    async def _apply_vip(self, kt: tuple[bytes, int, int], vip: Vip) -> None:
        assert vip.dsr is not None
        maps = self.maps
        state = self._vips.get(kt)
        if state is None:
            state = VipState(vip.name, self._free_vip_index(), kt)
            self._vips[kt] = state
            maps.reset_counters(state.index, vip=True)
        state.name, state.protocol = vip.name, vip.protocol
        # 1. backends (new slots get zeroed counters; kept ones keep their slot). A backend whose MAC
        #    cannot be resolved keeps its old entry if it has one, else it stays out of the table
        #    until a later round (the refresh task retries) resolves it.
        wanted = {str(b.address): b for b in vip.backends}
        macs = await asyncio.gather(
            *(self._backend_mac(vip, b.address.host) for b in wanted.values()), return_exceptions=True
        )
        usable = []
        for (identity, b), mac in zip(wanted.items(), macs, strict=True):
            slot = state.backend_slots.get(identity)
            if isinstance(mac, BaseException):
                log.warning("vip %s: backend %s: %s", vip.name, identity, mac)
                self._unresolved.add((vip.name, identity))
                if slot is not None:
                    usable.append(b)
                continue
            self._unresolved.discard((vip.name, identity))
            if slot is None:
                slot = state.backend_slots[identity] = self._allocate_backend()
                maps.reset_counters(slot, vip=False)
            entry = BackendEntry(
                family=FAMILY_V4 if b.address.ip.version == 4 else FAMILY_V6,
                flags=BACKEND_F_ACTIVE,
                vip_index=state.index,
                port=be16(b.address.port),
            )
            entry.addr[:] = addr16(b.address.ip)
            entry.mac[:] = mac
            maps.backends.update(ctypes.c_uint32(slot), entry)
            usable.append(b)
        # 2. Maglev row: only the slots whose backend changed
        table = build_table([(str(b.address), b.weight) for b in usable], vip.maglev_table_size)
        lut = np.array([state.backend_slots[i] for i in table.backends] + [NO_BACKEND], dtype=np.uint32)
        slots = np.asarray(table.slots, dtype=np.int64)
        row = lut[np.where(slots >= 0, slots, len(table.backends))]
        if state.row is not None and len(state.row) == len(row):
            changed = np.nonzero(state.row != row)[0].astype(np.uint32)
        else:
            changed = np.arange(len(row), dtype=np.uint32)
        maps.write_maglev(state.index, self._defines["MAGLEV_SIZE"], changed, row[changed])
        if state.table is not None:  # a new hash key moves flows as a new table would
            same_key = state.hash_key == vip.hash_key
            state.slots_changed += count_slots_changed(state.table, table) if same_key else len(row)
        state.row, state.table, state.hash_key = row, table, vip.hash_key
        log.debug("vip %s: %d Maglev slots written", vip.name, len(changed))
        state.write_quic_ids(maps, vip, usable)
        # 3. the VIP entry
        maps.vips.update(
            vip_key(vip.listen.host, vip.listen.port, PROTO_NUMBERS[vip.protocol]),
            vip_meta(vip, state.index, self.neighbours.interface(vip.dsr.interface).mac, CLOCK_PERIOD_S),
        )
        # 4. backends no longer wanted: inactive once no slot points at them
        for identity in [i for i in state.backend_slots if i not in wanted]:
            self._freed.add(slot := state.backend_slots.pop(identity))
            maps.backends.update(ctypes.c_uint32(slot), BackendEntry())

    def _remove_vip(self, state: VipState) -> None:
        maps = self.maps
        addr, port, proto = state.key
        key = VipKey(port=be16(port), proto=proto)
        key.addr[:] = addr
        maps.vips.delete(key)
        size = self._defines["MAGLEV_SIZE"]
        maps.write_maglev(
            state.index, size, np.arange(size, dtype=np.uint32), np.full(size, NO_BACKEND, dtype=np.uint32)
        )
        state.write_quic_ids(maps, None, ())
        for slot in state.backend_slots.values():
            maps.backends.update(ctypes.c_uint32(slot), BackendEntry())
        self._freed.update(state.backend_slots.values())
        log.info("vip %s removed", state.name)

    def _attach_interfaces(self, settings: dict[str, AttachSetting]) -> None:
        assert self._obj is not None
        for name in sorted(set(self._attached) - set(settings)):
            ifindex, mode, _ = self._attached.pop(name)
            self.attacher.detach(ifindex, mode)
        for name, setting in sorted(settings.items()):
            if name in self._attached and self._attached[name][2] == setting:
                continue
            if name in self._attached:  # dsr.attach changed: leave the old mode first
                ifindex, mode, _ = self._attached.pop(name)
                self.attacher.detach(ifindex, mode)
            info = self.neighbours.interface(name)
            mode = self.attacher.attach(info.index, self._obj.programs[PROGRAM], setting)
            self._attached[name] = (info.index, mode, setting)
            log.info("XDP program attached to %s (%s mode, dsr.attach: %s)", name, mode, setting)

    async def _clock_loop(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_PERIOD_S)
            self.tick_clock()

    def tick_clock(self) -> None:
        """Write the coarse clock (the periodic task does it every CLOCK_PERIOD_S)."""
        if self._maps is not None:
            self._maps.set_clock(self.clock_ns())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            await self.refresh_macs()

    async def refresh_macs(self) -> None:
        """One refresh round (the periodic task runs one every `refresh_interval_s`): retry the
        backends without a MAC, re-resolve l2 backends' MACs and write a changed MAC to its slot.
        Holds the apply lock and works on the latest applied config, so a reload never interleaves
        with it and a backend the reload removed cannot come back."""
        async with self._apply_lock:
            config = self._config
            if config is None or self._maps is None:
                return
            if self._unresolved:
                try:
                    await self._apply_locked(config)  # retries the backends without a MAC
                except Exception as exc:
                    log.warning("re-applying for unresolved backends failed: %s", exc)
            if self._maps is not None:
                await self._refresh_known_macs(config, self._maps)

    async def _refresh_known_macs(self, config: Config, maps: XdpMaps) -> None:
        assert self._apply_lock.locked()
        for vip in config.vips:
            if vip.mode != "dsr" or vip.dsr is None or vip.dsr.forwarding != "l2":
                continue
            state = self._vips.get(key_tuple(vip))
            for b in vip.backends:
                slot = state.backend_slots.get(str(b.address)) if state else None
                if slot is None:
                    continue
                try:
                    mac = await self._backend_mac(vip, b.address.host)
                except Exception as exc:  # keep the old MAC; report and retry next round
                    log.warning("vip %s: backend %s: %s", vip.name, b.address, exc)
                    continue
                entry = maps.backends.lookup(ctypes.c_uint32(slot))
                if entry is not None and bytes(entry.mac) != mac:
                    entry.mac[:] = mac
                    maps.backends.update(ctypes.c_uint32(slot), entry)
                    log.info("vip %s: backend %s MAC is now %s", vip.name, b.address, mac.hex(":"))

    # ------------------------------------------------------------ read

    def status(self) -> dict[str, object]:
        """What `sluice status` should show of this plane: the instance, its pin directory (and whether
        it lives on a private bpffs that vanishes with the process), each interface's attach mode."""
        return {
            "instance": self.instance,
            "pin_dir": str(self.pin_dir) if self.instance is not None else None,
            "private_bpffs": self._private_bpffs,
            "interfaces": {
                name: {"mode": mode, "attach": setting}
                for name, (_, mode, setting) in sorted(self._attached.items())
            },
        }

    @property
    def unresolved(self) -> set[tuple[str, str]]:
        """(VIP name, backend) pairs left out of the Maglev table because their MAC is unknown."""
        return set(self._unresolved)

    def xdp_counters(self) -> dict[str, dict[str, int]]:
        """Raw counters: 'global', 'vip:<name>', 'backend:<vip>/<identity>'."""
        return raw_counters(self.maps, self._vips.values())

    def stats(self) -> dict[str, VipStats]:
        return {} if self._maps is None else vip_stats(self._maps, self._vips.values())

    def flow_backend(self, flow: FiveTuple) -> tuple[str, str] | None:
        """Where the program sends `flow` now (for `sluice flow`): (backend identity, "conntrack" or
        "maglev"), or None if the flow is not for a dsr VIP or its slot is empty."""
        state = self._vips.get((addr16(flow.dst_ip), flow.dst_port, flow.proto))
        return None if state is None or self._maps is None else flow_backend(self._maps, state, flow)

    # ------------------------------------------------------------ stop

    def _close_object(self) -> None:
        if self._obj is not None:
            self._obj.close()
        self._obj = None
        self._maps = None

    async def discard(self) -> None:
        """`close` after a failed start: the maps this process pinned in a fresh directory go too."""
        await self.close(discard=True)

    async def close(self, *, detach: bool = True, discard: bool = False) -> None:
        """Stop: detach the program (unless `detach` is False: forwarding continues without us);
        the pinned maps stay, so a restart keeps the connection table (`discard`, after a failed
        start: maps this process pinned in a fresh directory are removed)."""
        for task in (self._refresh, self._clock):
            if task is not None:
                await cancel_and_wait(task)
        self._refresh = self._clock = None
        async with self._apply_lock:
            if self._maps is not None:
                self._maps.set_clock(0)  # the program reads bpf_ktime_get_ns() again
            await asyncio.to_thread(self.check_forwarding.close)
            if detach:
                for ifindex, mode, _ in self._attached.values():
                    self.attacher.detach(ifindex, mode)
            self._attached.clear()
            self._close_object()
            if self._lock is not None:
                if discard and self._lock.fresh:
                    loader.remove_pins(str(self.instance))
                self._lock.release()
                self._lock = None
