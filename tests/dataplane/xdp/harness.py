"""A small, fixed world for the XDP fixtures: VIPs, backends and Maglev rows written straight into
the maps, plus the expected-output model (written independently of the C)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address, ip_network

import numpy as np

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple, HashKey, flow_hash
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.maps import (
    BACKEND_F_ACTIVE,
    FAMILY_V4,
    FAMILY_V6,
    FWD_IPIP,
    FWD_L2,
    NO_BACKEND,
    VIP_F_HASH_KEYED,
    BackendEntry,
    VipMeta,
    XdpMaps,
    addr16,
    be16,
    vip_key,
)
from tests.dataplane.xdp import packets as P

DEFINES = {"MAX_VIPS": 8, "MAX_BACKENDS": 512, "MAGLEV_SIZE": 257, "CT_SIZE": 4096}
LB_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:aa"
NEXT_HOP_MAC = "02:00:00:00:ff:fe"
CLIENT4 = "198.18.0.10"
CLIENT6 = "2001:db8:1::10"
M = 13


@dataclass(frozen=True)
class TBackend:
    index: int
    addr: str
    mac: str


@dataclass
class TVip:
    name: str
    index: int
    addr: str
    port: int
    proto: int
    fwd: int
    backends: list[TBackend]
    outer: str = "0.0.0.0/32"
    idle_s: float = 1.0
    maglev_size: int = M
    slots: list[int] = field(default_factory=list)  # backend index per Maglev slot
    hash_key: HashKey | None = None  # hash_key: new flows hash with SipHash-1-3 under it

    def outer_prefix_and_mask(self) -> tuple[bytes, int]:
        net = ip_network(self.outer)
        host_bits = min(32, net.max_prefixlen - net.prefixlen)
        return addr16(net.network_address), (1 << host_bits) - 1 if host_bits else 0


def _backends(first: int, addrs: list[str], mac_base: str, shared_mac: str | None = None) -> list[TBackend]:
    return [TBackend(first + i, a, shared_mac or f"{mac_base}:{i + 1:02x}") for i, a in enumerate(addrs)]


def standard_vips() -> dict[str, TVip]:
    vips = [
        TVip(
            "v4tcp",
            0,
            "198.18.100.1",
            80,
            IPPROTO_TCP,
            FWD_L2,
            _backends(0, ["198.18.1.11", "198.18.1.12", "198.18.1.13"], "02:00:00:00:01"),
        ),
        TVip(
            "v4udp",
            1,
            "198.18.100.1",
            53,
            IPPROTO_UDP,
            FWD_L2,
            _backends(3, ["198.18.1.21", "198.18.1.22", "198.18.1.23"], "02:00:00:00:02"),
        ),
        TVip(
            "v6tcp",
            2,
            "2001:db8::100",
            80,
            IPPROTO_TCP,
            FWD_L2,
            _backends(6, ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13"], "02:00:00:00:03"),
        ),
        TVip(
            "ipip4",
            3,
            "198.18.100.2",
            80,
            IPPROTO_TCP,
            FWD_IPIP,
            _backends(9, ["198.18.2.11", "198.18.2.12", "198.18.2.13"], "", NEXT_HOP_MAC),
            outer="198.19.0.0/16",
        ),
        TVip(
            "ipip6",
            4,
            "2001:db8::200",
            80,
            IPPROTO_TCP,
            FWD_IPIP,
            _backends(12, ["2001:db8:2::11", "2001:db8:2::12", "2001:db8:2::13"], "", NEXT_HOP_MAC),
            outer="2001:db8:ff::/64",
        ),
        TVip("empty", 5, "198.18.100.3", 80, IPPROTO_TCP, FWD_L2, []),
    ]
    for v in vips:
        v.slots = [v.backends[s % len(v.backends)].index if v.backends else NO_BACKEND for s in range(M)]
    return {v.name: v for v in vips}


class World:
    """Loaded program + its maps, filled with `standard_vips()`."""

    def __init__(self, obj: loader.LoadedObject) -> None:
        self.obj = obj
        self.prog = obj.programs["sluice_xdp"]
        self.maps = XdpMaps.from_fds(obj.maps)
        self.vips = standard_vips()
        for v in self.vips.values():
            self.add_vip(v)

    def add_vip(self, v: TVip) -> None:
        meta = VipMeta(index=v.index, maglev_size=v.maglev_size, idle_ns=int(v.idle_s * 1e9), fwd=v.fwd)
        meta.src_mac[:] = P.mac(LB_MAC)
        prefix, mask = v.outer_prefix_and_mask()
        meta.outer_src[:] = prefix
        meta.outer_hash_mask = mask
        if v.hash_key is not None:
            meta.flags = VIP_F_HASH_KEYED
            meta.hash_key[:] = (v.hash_key.k0, v.hash_key.k1)
        self.maps.vips.update(vip_key(v.addr, v.port, v.proto), meta)
        for b in v.backends:
            self.set_backend(v, b)
        self.write_slots(v, v.slots)

    def set_backend(self, v: TVip, b: TBackend, *, active: bool = True) -> None:
        entry = BackendEntry(
            family=FAMILY_V4 if isinstance(ip_address(b.addr), IPv4Address) else FAMILY_V6,
            flags=BACKEND_F_ACTIVE if active else 0,
            vip_index=v.index,
            port=be16(v.port),
        )
        entry.addr[:] = addr16(b.addr)
        entry.mac[:] = P.mac(b.mac)
        self.maps.backends.update(ctypes.c_uint32(b.index), entry)

    def write_slots(self, v: TVip, slots: list[int]) -> None:
        v.slots = list(slots)
        self.maps.write_maglev(
            v.index,
            DEFINES["MAGLEV_SIZE"],
            np.arange(len(slots), dtype=np.uint32),
            np.array(slots, dtype=np.uint32),
        )

    def run(self, frame: bytes) -> loader.TestRunResult:
        return loader.test_run(self.prog, frame)

    def backend(self, index: int) -> TBackend:
        for v in self.vips.values():
            for b in v.backends:
                if b.index == index:
                    return b
        raise KeyError(index)

    def counters(self) -> dict[str, int]:
        """Every counter flattened: global.<f>, vip.<name>.<f>, backend.<index>.<f>."""
        out = {f"global.{k}": n for k, n in self.maps.global_counters().items()}
        for v in self.vips.values():
            out.update({f"vip.{v.name}.{k}": n for k, n in self.maps.vip_counters(v.index).items()})
            for b in v.backends:
                out.update(
                    {f"backend.{b.index}.{k}": n for k, n in self.maps.backend_counters(b.index).items()}
                )
        return out


def pinned_cpu() -> Iterator[None]:
    """Keep the test on one CPU (BPF_PROG_TEST_RUN runs where we are; the counters are per CPU)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------- expected-output model


def model_backend(v: TVip, src: str, sport: int) -> TBackend:
    """Which backend Maglev gives a new flow: slot = flow_hash % M, as core/flow.py defines it."""
    h = flow_hash(FiveTuple.of((src, sport), (v.addr, v.port), v.proto), v.hash_key)
    index = v.slots[h % v.maglev_size]
    return next(b for b in v.backends if b.index == index)


def model_l2(frame: bytes, be: TBackend) -> bytes:
    return P.mac(be.mac) + P.mac(LB_MAC) + frame[12:]


def model_ipip(frame: bytes, v: TVip, be: TBackend, flow: FiveTuple, *, vlan: int | None = None) -> bytes:
    """Outer header in front of the IP packet (any trailing padding stays at the end)."""
    l2_len = 18 if vlan is not None else 14
    inner = frame[l2_len:]
    inner_v4 = inner[0] >> 4 == 4
    ip_len = int.from_bytes(inner[2:4]) if inner_v4 else 40 + int.from_bytes(inner[4:6])
    h = flow_hash(flow, v.hash_key)
    net = ip_network(v.outer)
    _, mask = v.outer_prefix_and_mask()
    outer_src = str(ip_address(int(net.network_address) | (h & mask)))
    nexthdr = 4 if inner_v4 else 41
    if isinstance(ip_address(be.addr), IPv4Address):
        outer = P.ipv4(outer_src, be.addr, nexthdr, inner, ttl=64, ident=0, tot_len=20 + ip_len)
        return P.eth(be.mac, LB_MAC, P.ETH_IPV4, outer, vlan=vlan)
    outer = P.ipv6(outer_src, be.addr, nexthdr, inner, hop=64, flow=h & 0xFFFFF, payload_len=ip_len)
    return P.eth(be.mac, LB_MAC, P.ETH_IPV6, outer, vlan=vlan)
