"""XdpPlane against the real program and pinned maps, with fake neighbours and a recording attacher
(root, no namespaces: nothing is attached to a real interface)."""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sluice.config import Config, ConfigError, parse_config
from sluice.core.flow import FiveTuple, flow_hash
from sluice.core.maglev import build_table
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.loader import XDP_TX
from sluice.dataplane.xdp.maps import BACKEND_F_ACTIVE, NO_BACKEND, CtEntry, Map, flow_key
from sluice.dataplane.xdp.neighbours import InterfaceInfo, NeighbourError
from sluice.dataplane.xdp.plane import CLOCK_PERIOD_S, XdpConfigError, XdpLimits, XdpPlane
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import pinned_cpu
from tests.support.privileged import needs

M = 251
LB_MAC = "02:00:00:00:00:01"


class FakeNeighbours:
    def __init__(self) -> None:
        self.unreachable: set[str] = set()

    def interface(self, name: str) -> InterfaceInfo:
        return InterfaceInfo(name, 4242, LB_MAC)

    async def resolve(self, ip: str, interface: str) -> str:
        if ip in self.unreachable:
            raise NeighbourError(f"no MAC for {ip}")
        return "02:be:00:00:00:" + f"{int(ip.rsplit('.', 1)[1]):02x}"


class RecordingAttacher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def attach(self, ifindex: int, prog_fd: int, mode: loader.AttachMode) -> loader.AttachMode:
        self.calls.append(("attach", ifindex))
        return "generic"

    def detach(self, ifindex: int, mode: loader.AttachMode) -> None:
        self.calls.append(("detach", ifindex))


def config(
    backends: list[str], *, udp_backends: tuple[str, ...] = ("198.18.1.21:53",), validate_only: bool = False
) -> Config:
    """Two dsr VIPs and a proxy one (`validate_only`: the model alone, not the loader's rules)."""
    data: dict[str, Any] = {
        "vips": [
            {
                "name": "web",
                "listen": "198.18.100.1:80",
                "mode": "dsr",
                "maglev_table_size": M,
                "dsr": {"interface": "lb0"},
                "backends": [{"address": a} for a in backends],
            },
            {
                "name": "dns",
                "protocol": "udp",
                "listen": "198.18.100.1:53",
                "mode": "dsr",
                "maglev_table_size": M,
                "timeouts": {"idle": "30s"},
                "dsr": {
                    "interface": "lb0",
                    "forwarding": "ipip",
                    "next_hop_mac": "02:00:00:00:ff:fe",
                    "outer_source": "198.19.0.0/16",
                },
                "backends": [{"address": a} for a in udp_backends],
            },
            {"name": "proxied", "listen": "127.0.0.1:8080", "backends": [{"address": "127.0.0.1:9000"}]},
        ]
    }
    return Config.model_validate(data) if validate_only else parse_config(data)


WEB3 = ["198.18.1.11:80", "198.18.1.12:80", "198.18.1.13:80"]


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[str]:
    needs(root=True, commands=("clang",))
    name = f"test-plane-{os.getpid()}"
    loader.remove_pins(name)
    yield name
    loader.remove_pins(name)


def make_plane(instance: str, tmp_path: Path, attacher: RecordingAttacher | None = None) -> XdpPlane:
    return XdpPlane(
        instance,
        neighbours=FakeNeighbours(),
        attacher=attacher or RecordingAttacher(),
        limits=XdpLimits(max_vips=4, max_backends=64, conntrack_entries=1024),
        cache_dir=tmp_path / "cache",
        refresh_interval_s=0,
    )


def row(plane: XdpPlane, index: int) -> np.ndarray[Any, np.dtype[np.uint32]]:
    values = []
    for s in range(M):
        value = plane.maps.maglev.lookup(ctypes.c_uint32(index * M + s))  # MAGLEV_SIZE = M here
        assert value is not None
        values.append(value.value)
    return np.array(values, dtype=np.uint32)


def slot_of(plane: XdpPlane, vip: str) -> dict[str, int]:
    return dict(next(s for s in plane._vips.values() if s.name == vip).backend_slots)


def vip_index(plane: XdpPlane, vip: str) -> int:
    return next(s for s in plane._vips.values() if s.name == vip).index


def expected_row(plane: XdpPlane, vip: str, backends: list[str]) -> np.ndarray[Any, np.dtype[np.uint32]]:
    table = build_table([(b, 1) for b in backends], M)
    slots = slot_of(plane, vip)
    return np.array(
        [slots[table.backends[i]] if i >= 0 else NO_BACKEND for i in table.slots], dtype=np.uint32
    )


async def test_apply_writes_vips_backends_and_maglev(instance: str, tmp_path: Path) -> None:
    attacher = RecordingAttacher()
    plane = make_plane(instance, tmp_path, attacher)
    await plane.apply(config(WEB3))
    try:
        assert sorted(s.name for s in plane._vips.values()) == ["dns", "web"]
        assert attacher.calls == [("attach", 4242)]
        assert (row(plane, vip_index(plane, "web")) == expected_row(plane, "web", WEB3)).all()
        for identity, slot in slot_of(plane, "web").items():
            entry = plane.maps.backends.lookup(ctypes.c_uint32(slot))
            assert entry is not None and entry.flags == BACKEND_F_ACTIVE
            assert (
                P.mac_str(entry.mac) == f"02:be:00:00:00:{int(identity.split(':')[0].rsplit('.', 1)[1]):02x}"
            )
        (dns_slot,) = slot_of(plane, "dns").values()
        entry = plane.maps.backends.lookup(ctypes.c_uint32(dns_slot))
        assert entry is not None and P.mac_str(entry.mac) == "02:00:00:00:ff:fe"  # ipip: the next hop
        assert (plane.pin_dir / "conntrack").exists()
    finally:
        await plane.close()
    assert attacher.calls[-1] == ("detach", 4242)


async def test_packet_goes_where_maglev_says(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    await plane.apply(config(WEB3))
    try:
        table = build_table([(b, 1) for b in WEB3], M)
        for _ in pinned_cpu():
            for sport in range(50000, 50020):
                frame = P.eth(
                    LB_MAC,
                    "02:00:00:00:00:aa",
                    P.ETH_IPV4,
                    P.ipv4("198.18.0.10", "198.18.100.1", 6, P.tcp(sport, 80)),
                )
                assert plane._obj is not None
                r = loader.test_run(plane._obj.programs["sluice_xdp"], frame)
                h = flow_hash(FiveTuple.of(("198.18.0.10", sport), ("198.18.100.1", 80), 6))
                owner = table.backends[table.slots[h % M]]
                assert r.verdict == XDP_TX
                assert (
                    P.mac_str(r.data[:6])
                    == f"02:be:00:00:00:{int(owner.split(':')[0].rsplit('.', 1)[1]):02x}"
                )
        stats = plane.stats()
        assert stats["web"].flows_total == 20
        assert sum(b.flows_total for b in stats["web"].backends.values()) == 20
    finally:
        await plane.close()


async def test_removing_a_backend_rewrites_only_its_slots(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    await plane.apply(config(WEB3))
    try:
        index = vip_index(plane, "web")
        before_slots = slot_of(plane, "web")
        before = row(plane, index)
        assert plane.stats()["web"].table_slots_changed == 0  # the first write is no change
        await plane.apply(config(WEB3[:2]))
        after = row(plane, index)
        assert (after == expected_row(plane, "web", WEB3[:2])).all()
        assert plane.stats()["web"].table_slots_changed == int((before != after).sum())
        gone = before_slots[WEB3[2]]
        # the removed backend's slots all changed; Maglev moves only a few others (M=251 here, so allow 5%)
        assert (after != gone).all()
        kept = before != gone
        assert (before[kept] != after[kept]).sum() <= 0.05 * kept.sum()
        assert slot_of(plane, "web") == {k: v for k, v in before_slots.items() if k != WEB3[2]}
        entry = plane.maps.backends.lookup(ctypes.c_uint32(gone))
        assert entry is not None and entry.flags == 0
        # adding a backend back takes a fresh slot, not the one just freed
        await plane.apply(config([*WEB3[:2], "198.18.1.14:80"]))
        assert slot_of(plane, "web")["198.18.1.14:80"] != gone
    finally:
        await plane.close()


async def test_restart_keeps_slots_and_connection_table(instance: str, tmp_path: Path) -> None:
    first = make_plane(instance, tmp_path)
    await first.apply(config(WEB3))
    slots = slot_of(first, "web")
    key = flow_key("198.18.0.10", "198.18.100.1", 50100, 80, 6)
    first.maps.conntrack.update(key, CtEntry(backend=slots[WEB3[1]], last_seen_ns=123))
    await first.close(detach=False)

    second = make_plane(instance, tmp_path)
    await second.apply(config(WEB3))
    try:
        assert slot_of(second, "web") == slots
        entry = second.maps.conntrack.lookup(key)
        assert entry is not None and entry.backend == slots[WEB3[1]]
    finally:
        await second.close()


async def test_removed_vip_is_cleared(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    await plane.apply(config(WEB3))
    try:
        dns_slots = slot_of(plane, "dns")
        data = config(WEB3).model_dump(mode="json")
        data["vips"] = [v for v in data["vips"] if v["name"] != "dns"]
        await plane.apply(parse_config(data))
        assert [s.name for s in plane._vips.values()] == ["web"]
        assert len(list(plane.maps.vips.keys())) == 1
        for slot in dns_slots.values():
            entry = plane.maps.backends.lookup(ctypes.c_uint32(slot))
            assert entry is not None and entry.flags == 0
    finally:
        await plane.close()


@pytest.mark.parametrize(
    ("backends", "udp", "message"),
    [
        (["198.18.1.11:8080"], ("198.18.1.21:53",), "must listen on the VIP.s port 80"),
        (["[2001:db8::1]:80"], ("198.18.1.21:53",), "address family"),
        (WEB3, ("[2001:db8::5]:53",), "address family of dsr.outer_source"),
    ],
)
async def test_unservable_config_is_refused(
    instance: str, tmp_path: Path, backends: list[str], udp: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config(backends, udp_backends=udp)  # what `sluice check` reports
    plane = make_plane(instance, tmp_path)
    with pytest.raises(XdpConfigError, match=message):
        await plane.apply(config(backends, udp_backends=udp, validate_only=True))
    await plane.close()


async def test_flow_backend_answers_like_the_program(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    await plane.apply(config(WEB3))
    try:
        table = build_table([(b, 1) for b in WEB3], M)
        flow = FiveTuple.of(("198.18.0.10", 50200), ("198.18.100.1", 80), 6)
        maglev_owner = table.backends[table.slots[flow_hash(flow) % M]]
        assert plane.flow_backend(flow) == (maglev_owner, "maglev")
        other = next(b for b in WEB3 if b != maglev_owner)
        key = flow_key("198.18.0.10", "198.18.100.1", 50200, 80, 6)
        plane.maps.conntrack.update(key, CtEntry(backend=slot_of(plane, "web")[other], last_seen_ns=5))
        assert plane.flow_backend(flow) == (other, "conntrack")
        assert plane.flow_backend(FiveTuple.of(("198.18.0.10", 1), ("198.18.100.9", 80), 6)) is None
    finally:
        await plane.close()


async def test_backend_without_mac_stays_out_until_resolved(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    neighbours = plane.neighbours
    assert isinstance(neighbours, FakeNeighbours)
    neighbours.unreachable.add("198.18.1.13")
    await plane.apply(config(WEB3))
    try:
        assert plane.unresolved == {("web", WEB3[2])}
        assert set(slot_of(plane, "web")) == set(WEB3[:2])
        assert (row(plane, vip_index(plane, "web")) == expected_row(plane, "web", WEB3[:2])).all()
        neighbours.unreachable.clear()
        await plane.apply(config(WEB3))  # what the refresh task does while some are unresolved
        assert plane.unresolved == set()
        assert (row(plane, vip_index(plane, "web")) == expected_row(plane, "web", WEB3)).all()
    finally:
        await plane.close()


class HeldNeighbours(FakeNeighbours):
    """Resolving an address in `held` waits until `release` is set (and sets `entered` first)."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held = held
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def resolve(self, ip: str, interface: str) -> str:
        if ip in self.held:
            self.entered.set()
            await self.release.wait()
        return await super().resolve(ip, interface)


async def test_refresh_and_reload_never_interleave(instance: str, tmp_path: Path) -> None:
    """A MAC refresh round stuck resolving a backend while a reload removes that backend: the
    reload waits for the round, then the removed backend gets no new flow."""
    removed = WEB3[2]
    neighbours = HeldNeighbours(held=set())
    plane = XdpPlane(
        instance,
        neighbours=neighbours,
        attacher=RecordingAttacher(),
        limits=XdpLimits(max_vips=4, max_backends=64, conntrack_entries=1024),
        cache_dir=tmp_path / "cache",
        refresh_interval_s=0,
    )
    neighbours.unreachable.add(removed.split(":")[0])
    await plane.apply(config(WEB3))
    try:
        assert plane.unresolved == {("web", removed)}
        neighbours.unreachable.clear()
        neighbours.held.add(removed.split(":")[0])
        refresh = asyncio.create_task(plane.refresh_macs())  # retries the unresolved backend...
        await neighbours.entered.wait()  # ...and is now stuck resolving it
        reload = asyncio.create_task(plane.apply(config(WEB3[:2])))  # the reload removes it
        for _ in range(100):  # let the reload run as far as it can (without the lock: to its end)
            if reload.done():
                break
            await asyncio.sleep(0)
        neighbours.release.set()
        await asyncio.gather(refresh, reload)

        assert set(slot_of(plane, "web")) == set(WEB3[:2])
        assert (row(plane, vip_index(plane, "web")) == expected_row(plane, "web", WEB3[:2])).all()
        removed_mac = f"02:be:00:00:00:{int(removed.split(':')[0].rsplit('.', 1)[1]):02x}"
        assert plane._obj is not None
        for _ in pinned_cpu():
            for sport in range(51000, 51064):
                syn = P.ipv4("198.18.0.10", "198.18.100.1", 6, P.tcp(sport, 80))
                frame = P.eth(LB_MAC, "02:00:00:00:00:aa", P.ETH_IPV4, syn)
                r = loader.test_run(plane._obj.programs["sluice_xdp"], frame)
                assert r.verdict == XDP_TX
                assert P.mac_str(r.data[:6]) != removed_mac, sport
    finally:
        await plane.close()


async def test_plane_owns_the_coarse_clock(instance: str, tmp_path: Path) -> None:
    """The plane writes the program's coarse clock (from its injected clock), gives UDP idle timeouts
    one clock period of margin, and hands the time back to the kernel's clock (0) when it stops."""
    now = [5_000_000_000]
    plane = XdpPlane(
        instance,
        neighbours=FakeNeighbours(),
        attacher=RecordingAttacher(),
        limits=XdpLimits(max_vips=4, max_backends=64, conntrack_entries=1024),
        cache_dir=tmp_path / "cache",
        refresh_interval_s=0,
        clock_ns=lambda: now[0],
    )
    await plane.apply(config(WEB3))
    try:
        clock = plane.maps.coarse_clock
        value = clock.lookup(ctypes.c_uint32(0))
        assert value is not None and value.value == 5_000_000_000
        now[0] += 250_000_000
        plane.tick_clock()
        value = clock.lookup(ctypes.c_uint32(0))
        assert value is not None and value.value == 5_250_000_000
        (meta,) = [m for _k, m in plane.maps.vips.items() if m.index == vip_index(plane, "dns")]
        assert meta.idle_ns == int((30 + CLOCK_PERIOD_S) * 1e9)  # timeouts: idle 30s
    finally:
        await plane.close(detach=False)
    fd = loader.obj_get(plane.pin_dir / "coarse_clock")
    try:
        value = Map(fd, ctypes.c_uint32, ctypes.c_uint64).lookup(ctypes.c_uint32(0))
        assert value is not None and value.value == 0
    finally:
        os.close(fd)


async def test_removed_backends_connection_entries_end_at_once(instance: str, tmp_path: Path) -> None:
    """Issue 15.4: a reload that removes a backend drops its connection entries at once (a later
    backend given the same slot must not inherit them); other backends' entries stay."""
    plane = make_plane(instance, tmp_path)
    await plane.apply(config(WEB3))
    try:
        slots = slot_of(plane, "web")
        keys = {b: flow_key("198.18.0.10", "198.18.100.1", 50200 + i, 80, 6) for i, b in enumerate(WEB3)}
        for b, key in keys.items():
            plane.maps.conntrack.update(key, CtEntry(backend=slots[b], last_seen_ns=5))
        await plane.apply(config(WEB3[:2]))
        assert plane.maps.conntrack.lookup(keys[WEB3[2]]) is None
        for b in WEB3[:2]:
            entry = plane.maps.conntrack.lookup(keys[b])
            assert entry is not None and entry.backend == slots[b]
        # removing the whole VIP drops the rest
        full = config(WEB3)
        await plane.apply(full.model_copy(update={"vips": tuple(v for v in full.vips if v.name != "web")}))
        assert all(plane.maps.conntrack.lookup(k) is None for k in keys.values())
    finally:
        await plane.close()
