"""Typed access to the XDP program's maps: ctypes mirrors of bpf/xdp_structs.h and a small map wrapper.

Every structure here mirrors the C struct of the same name in ``bpf/xdp_structs.h`` field for field;
tests/dataplane/xdp/test_layout.py checks sizes and offsets against the compiled object's BTF.
Fields marked "network order" hold bytes as they appear on the wire; use `be16` to fill ports.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from sluice.dataplane.xdp import loader

# Copies of bpf/xdp_consts.h #defines (tests/dataplane/xdp/test_consts.py checks them against the header).
NO_BACKEND: Final = 0xFFFFFFFF
FWD_L2: Final = 0
FWD_IPIP: Final = 1
BACKEND_F_ACTIVE: Final = 0x1
VIP_F_HASH_KEYED: Final = 0x1
FAMILY_V4: Final = 4
FAMILY_V6: Final = 6

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class FlowKey(ctypes.Structure):
    """struct flow_key: the connection-table key and the 40-byte flow-hash key."""

    _fields_ = (
        ("src", _u8 * 16),  # network order, IPv4-mapped
        ("dst", _u8 * 16),
        ("sport", _u16),  # network order
        ("dport", _u16),  # network order
        ("proto", _u8),
        ("pad", _u8 * 3),
    )


class CtEntry(ctypes.Structure):
    """struct ct_entry (one for all CPUs)."""

    _fields_ = (("backend", _u32), ("hash", _u32), ("last_seen_ns", _u64))


class VipKey(ctypes.Structure):
    """struct vip_key."""

    _fields_ = (("addr", _u8 * 16), ("port", _u16), ("proto", _u8), ("pad", _u8))


class VipMeta(ctypes.Structure):
    """struct vip_meta."""

    _fields_ = (
        ("index", _u32),
        ("maglev_size", _u32),
        ("idle_ns", _u64),
        ("fwd", _u8),
        ("flags", _u8),
        ("src_mac", _u8 * 6),
        ("outer_src", _u8 * 16),  # network order, IPv4-mapped
        ("outer_hash_mask", _u32),  # host order
        ("quic_bits", _u32),  # QUIC connection-ID routing: server ID bits, 0 = off
        ("hash_key", _u64 * 2),  # host order: k0, k1 (VIP_F_HASH_KEYED only)
    )


class BackendEntry(ctypes.Structure):
    """struct backend: one backend slot of the `backends` map (the config's backend is config.Backend)."""

    _fields_ = (
        ("addr", _u8 * 16),  # network order, IPv4-mapped
        ("mac", _u8 * 6),
        ("family", _u8),
        ("flags", _u8),
        ("vip_index", _u32),
        ("port", _u16),  # network order
        ("pad", _u16),
    )


class GlobalStats(ctypes.Structure):
    """struct global_stats (per CPU): why packets were passed or dropped before a VIP matched."""

    _fields_ = tuple(
        (name, _u64)
        for name in (
            "rx_packets",
            "pass_not_ip",
            "pass_other_proto",
            "pass_not_vip",
            "pass_ipv4_fragment",
            "pass_ipv4_options",
            "pass_ipv6_ext",
            "pass_icmp_other",
            "drop_truncated_l2",
            "drop_truncated_l3",
            "drop_bad_l3",
            "drop_truncated_l4",
            "drop_bad_l4",
        )
    )


class VipStatsC(ctypes.Structure):
    """struct vip_stats (per CPU)."""

    _fields_ = tuple(
        (name, _u64)
        for name in (
            "packets",
            "bytes",
            "new_flows",
            "ct_hits",
            "ct_misses",
            "expired",
            "icmp_forwarded",
            "drop_no_backend",
            "drop_encap",
            "quic_routed",
            "quic_fallback",
        )
    )


class QuicIdKey(ctypes.Structure):
    """struct quic_id_key (host order)."""

    _fields_ = (("vip_index", _u32), ("server_id", _u32))


class BackendStatsC(ctypes.Structure):
    """struct backend_stats (per CPU)."""

    _fields_ = (("packets", _u64), ("bytes", _u64), ("new_flows", _u64))


class DecapStats(ctypes.Structure):
    """struct decap_stats (per CPU)."""

    _fields_ = (("decapsulated", _u64), ("passed", _u64), ("dropped", _u64))


# C struct name -> ctypes mirror, for the layout test.
STRUCTS: Final[dict[str, type[ctypes.Structure]]] = {
    "flow_key": FlowKey,
    "ct_entry": CtEntry,
    "vip_key": VipKey,
    "vip_meta": VipMeta,
    "backend": BackendEntry,
    "global_stats": GlobalStats,
    "vip_stats": VipStatsC,
    "backend_stats": BackendStatsC,
    "decap_stats": DecapStats,
}


# ---------------------------------------------------------------- value helpers


def be16(port: int) -> int:
    """A port as the u16 whose memory holds it in network order."""
    return socket.htons(port)


def addr16(ip: IPv4Address | IPv6Address | str) -> bytes:
    """16-byte form used in every map: IPv4-mapped for IPv4 (as core/flow.py hashes)."""
    ip = ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(ip, IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def flow_key(src: str, dst: str, sport: int, dport: int, proto: int) -> FlowKey:
    key = FlowKey()
    key.src[:] = addr16(src)
    key.dst[:] = addr16(dst)
    key.sport, key.dport, key.proto = be16(sport), be16(dport), proto
    return key


def vip_key(addr: str, port: int, proto: int) -> VipKey:
    key = VipKey()
    key.addr[:] = addr16(addr)
    key.port, key.proto = be16(port), proto
    return key


def fields(value: ctypes.Structure) -> dict[str, int]:
    return {name: int(getattr(value, name)) for name, *_ in value._fields_}


def sum_fields(values: Sequence[ctypes.Structure]) -> dict[str, int]:
    """Add per-CPU copies of a counter struct field by field."""
    total: dict[str, int] = {}
    for v in values:
        for name, n in fields(v).items():
            total[name] = total.get(name, 0) + n
    return total


# ---------------------------------------------------------------- typed map


K = TypeVar("K", bound="ctypes.Structure | ctypes.c_uint32")
V = TypeVar("V", bound="ctypes.Structure | ctypes.c_uint32 | ctypes.c_uint64")


class Map(Generic[K, V]):
    """One BPF map with typed keys and values. Per-CPU maps read and write one value per CPU."""

    def __init__(self, fd: int, key_type: type[K], value_type: type[V], *, percpu: bool = False) -> None:
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = percpu
        self.ncpus = loader.num_possible_cpus() if percpu else 1
        if percpu and ctypes.sizeof(value_type) % 8:
            raise TypeError(f"per-CPU value {value_type.__name__} must be a multiple of 8 bytes")

    def _values(self) -> Any:
        return (self.value_type * self.ncpus)()

    def lookup(self, key: K) -> V | None:
        """The value (per-CPU maps: the first CPU's; use `lookup_percpu`)."""
        values = self.lookup_percpu(key)
        return None if values is None else values[0]

    def lookup_percpu(self, key: K) -> list[V] | None:
        """One value per possible CPU (a single-element list for ordinary maps)."""
        values = self._values()
        if not loader.map_lookup(self.fd, key, values):
            return None
        out: list[V] = []
        for i in range(self.ncpus):
            value = self.value_type()
            ctypes.memmove(
                ctypes.addressof(value),
                ctypes.addressof(values) + i * ctypes.sizeof(value),
                ctypes.sizeof(value),
            )
            out.append(value)
        return out

    def update(self, key: K, value: V, flags: int = loader.BPF_ANY) -> None:
        """Write `value` (per-CPU maps: the same value on every CPU)."""
        if self.percpu:
            values = self._values()
            for i in range(self.ncpus):
                values[i] = value
            loader.map_update(self.fd, key, values, flags)
        else:
            loader.map_update(self.fd, key, value, flags)

    def delete(self, key: K) -> bool:
        return loader.map_delete(self.fd, key)

    def keys(self) -> Iterator[K]:
        prev: K | None = None
        while True:
            nxt = self.key_type()
            if not loader.map_next_key(self.fd, prev, nxt):
                return
            yield nxt
            prev = nxt

    def items(self) -> Iterator[tuple[K, V]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value


def update_u32_batch(
    m: Map[ctypes.c_uint32, ctypes.c_uint32], keys: npt.NDArray[np.uint32], values: npt.NDArray[np.uint32]
) -> None:
    """Write many u32 -> u32 entries with bpf_map_update_batch (used for Maglev slots)."""
    if len(keys) != len(values):
        raise ValueError("keys and values differ in length")
    if len(keys) == 0:
        return
    k = np.ascontiguousarray(keys, dtype=np.uint32)
    v = np.ascontiguousarray(values, dtype=np.uint32)
    loader.map_update_batch(m.fd, k.ctypes.data, v.ctypes.data, len(k))


# ---------------------------------------------------------------- the program's maps


@dataclass
class XdpMaps:
    """The sluice_xdp maps, typed."""

    vips: Map[VipKey, VipMeta]
    maglev: Map[ctypes.c_uint32, ctypes.c_uint32]
    backends: Map[ctypes.c_uint32, BackendEntry]
    conntrack: Map[FlowKey, CtEntry]
    global_stats: Map[ctypes.c_uint32, GlobalStats]
    vip_stats: Map[ctypes.c_uint32, VipStatsC]
    backend_stats: Map[ctypes.c_uint32, BackendStatsC]
    coarse_clock: Map[ctypes.c_uint32, ctypes.c_uint64]
    quic_ids: Map[QuicIdKey, ctypes.c_uint32]

    @classmethod
    def from_fds(cls, fds: dict[str, int]) -> XdpMaps:
        """Typed views of a loaded object's map fds (the object owns and closes them)."""
        u32 = ctypes.c_uint32
        return cls(
            vips=Map(fds["vips"], VipKey, VipMeta),
            maglev=Map(fds["maglev"], u32, u32),
            backends=Map(fds["backends"], u32, BackendEntry),
            conntrack=Map(fds["conntrack"], FlowKey, CtEntry),
            global_stats=Map(fds["global_stats"], u32, GlobalStats, percpu=True),
            vip_stats=Map(fds["vip_stats"], u32, VipStatsC, percpu=True),
            backend_stats=Map(fds["backend_stats"], u32, BackendStatsC, percpu=True),
            coarse_clock=Map(fds["coarse_clock"], u32, ctypes.c_uint64),
            quic_ids=Map(fds["quic_ids"], QuicIdKey, u32),
        )

    def set_clock(self, now_ns: int) -> None:
        """Write the coarse clock the program stamps connection entries with (CLOCK_MONOTONIC ns)."""
        self.coarse_clock.update(ctypes.c_uint32(0), ctypes.c_uint64(now_ns))

    def global_counters(self) -> dict[str, int]:
        values = self.global_stats.lookup_percpu(ctypes.c_uint32(0))
        return sum_fields(values or [])

    def vip_counters(self, index: int) -> dict[str, int]:
        values = self.vip_stats.lookup_percpu(ctypes.c_uint32(index))
        return sum_fields(values or [])

    def backend_counters(self, index: int) -> dict[str, int]:
        values = self.backend_stats.lookup_percpu(ctypes.c_uint32(index))
        return sum_fields(values or [])

    def reset_counters(self, index: int, *, vip: bool) -> None:
        """Zero a VIP's (or backend slot's) counters, e.g. when the slot is given to another."""
        if vip:
            self.vip_stats.update(ctypes.c_uint32(index), VipStatsC())
        else:
            self.backend_stats.update(ctypes.c_uint32(index), BackendStatsC())

    def forget_backends(self, slots: set[int], max_steps: int) -> int:
        """Delete the connection entries that point at backend `slots` (just freed: a later backend in
        the same slot must not inherit their flows); returns how many. The walk is bounded by
        `max_steps` keys (the program inserts while we walk)."""
        doomed = []
        for steps, (key, entry) in enumerate(self.conntrack.items()):
            if steps >= max_steps:
                break
            if entry.backend in slots:
                doomed.append(key)
        return sum(self.conntrack.delete(key) for key in doomed)

    def write_maglev(
        self, vip_index: int, row_size: int, slots: npt.NDArray[np.uint32], values: npt.NDArray[np.uint32]
    ) -> None:
        """Write `values` into Maglev slots `slots` of one VIP's row (batch update)."""
        keys = (np.asarray(slots, dtype=np.uint64) + np.uint64(vip_index * row_size)).astype(np.uint32)
        update_u32_batch(self.maglev, keys, np.asarray(values, dtype=np.uint32))
