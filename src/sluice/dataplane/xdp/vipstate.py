"""The XDP plane's bookkeeping of one dsr VIP (its slots and what its Maglev row holds), the checks a
dsr VIP must pass before the plane writes anything for it, and the read side (counters, where a flow goes)."""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Final

import numpy as np
import numpy.typing as npt

from sluice.config import Backend, Vip
from sluice.config.rules import dsr_vip_errors
from sluice.core.flow import FiveTuple, HashKey, flow_hash
from sluice.core.maglev import MaglevTable
from sluice.dataplane.stats import BackendStats, VipStats
from sluice.dataplane.xdp.instance import XdpConfigError
from sluice.dataplane.xdp.maps import (
    FWD_IPIP,
    FWD_L2,
    VIP_F_HASH_KEYED,
    BackendEntry,
    QuicIdKey,
    VipMeta,
    XdpMaps,
    addr16,
    flow_key,
    mac_bytes,
)

PROTO_NUMBERS: Final = {"tcp": 6, "udp": 17}


@dataclass
class VipState:
    name: str
    index: int
    key: tuple[bytes, int, int]
    backend_slots: dict[str, int] = field(default_factory=dict)  # identity -> backend index
    row: npt.NDArray[np.uint32] | None = None  # what the Maglev row holds now (backend slot ids)
    table: MaglevTable | None = None  # the Maglev table `row` was written from
    slots_changed: int = 0  # Maglev slots whose backend changed, over the updates after the first write
    protocol: str = "tcp"
    hash_key: HashKey | None = None  # what the VIP entry's flow hash is keyed with (None: unkeyed)
    quic_ids: dict[int, int] | None = None  # QUIC server ID -> backend slot written (None: not yet)

    def write_quic_ids(self, maps: XdpMaps, vip: Vip | None, usable: Iterable[Backend]) -> None:
        """Make the `quic_ids` entries of this VIP those of its `usable` backends (a slot, weight > 0):
        a server ID of a backend that is down, drained or gone has none, so its packets fall back to the
        hash. Only changed entries are written; `vip` None removes them all. The first call for a
        state also removes what the pinned map holds for this VIP index (a restart adopts the maps)."""
        weight = {b.address: b.weight for b in usable}
        wanted = {
            server_id: self.backend_slots[str(address)]
            for server_id, address in (vip.server_ids if vip is not None else ())
            if weight.get(address, 0) > 0 and str(address) in self.backend_slots
        }
        if self.quic_ids is None:
            self.quic_ids = {k.server_id: -1 for k, _ in maps.quic_ids.items() if k.vip_index == self.index}
        for server_id in [s for s in self.quic_ids if s not in wanted]:
            maps.quic_ids.delete(QuicIdKey(self.index, server_id))
        for server_id, slot in wanted.items():
            if self.quic_ids.get(server_id) != slot:
                maps.quic_ids.update(QuicIdKey(self.index, server_id), ctypes.c_uint32(slot))
        self.quic_ids = wanted


def identity_of(entry: BackendEntry) -> str:
    raw = bytes(entry.addr)
    ip: IPv4Address | IPv6Address = (
        IPv4Address(raw[12:]) if raw[:12] == b"\0" * 10 + b"\xff\xff" else IPv6Address(raw)
    )
    port = socket.ntohs(entry.port)
    return f"[{ip}]:{port}" if isinstance(ip, IPv6Address) else f"{ip}:{port}"


def key_tuple(vip: Vip) -> tuple[bytes, int, int]:
    return addr16(vip.listen.ip), vip.listen.port, PROTO_NUMBERS[vip.protocol]


def check_vip(vip: Vip) -> None:
    """The dsr rules `sluice check` reports (config/rules.py), for a config that skipped the loader."""
    if errors := dsr_vip_errors(vip):
        raise XdpConfigError(f"vips[{vip.name}].{errors[0]}")


def vip_meta(vip: Vip, index: int, src_mac: str, clock_period_s: float) -> VipMeta:
    """The `vips` map value of a dsr VIP in slot `index`; the idle timeout one clock period longer."""
    assert vip.dsr is not None
    meta = VipMeta(
        index=index,
        maglev_size=vip.maglev_table_size,
        idle_ns=int((vip.idle_timeout_s + clock_period_s) * 1e9),
        fwd=FWD_IPIP if vip.dsr.forwarding == "ipip" else FWD_L2,
    )
    meta.src_mac[:] = mac_bytes(src_mac)
    if vip.dsr.outer_source is not None:
        net = ip_network(vip.dsr.outer_source)
        host_bits = min(32, net.max_prefixlen - net.prefixlen)
        meta.outer_src[:] = addr16(net.network_address)
        meta.outer_hash_mask = (1 << host_bits) - 1
    if vip.quic is not None:
        meta.quic_bits = vip.quic.server_id_bits
    if vip.hash_key is not None:
        meta.flags |= VIP_F_HASH_KEYED
        meta.hash_key[:] = (vip.hash_key.k0, vip.hash_key.k1)
    return meta


def hash_key_of(meta: VipMeta) -> HashKey | None:
    """The key a `vips` map value hashes new flows with (None: unkeyed): how a restarted plane that
    adopts the pinned maps answers `flow_backend` before the config is applied again."""
    if not meta.flags & VIP_F_HASH_KEYED:
        return None
    return HashKey(b"".join(int(k).to_bytes(8, "little") for k in meta.hash_key))


def raw_counters(maps: XdpMaps, states: Iterable[VipState]) -> dict[str, dict[str, int]]:
    """Raw counters: 'global', 'vip:<name>', 'backend:<vip>/<identity>'."""
    out = {"global": maps.global_counters()}
    for state in states:
        out[f"vip:{state.name}"] = maps.vip_counters(state.index)
        for identity, slot in state.backend_slots.items():
            out[f"backend:{state.name}/{identity}"] = maps.backend_counters(slot)
    return out


def vip_stats(maps: XdpMaps, states: Iterable[VipState]) -> dict[str, VipStats]:
    """The program's counters in the planes' common vocabulary (dataplane/stats.py)."""
    out = {}
    for state in states:
        c = maps.vip_counters(state.index)
        vs = VipStats(
            flows_total=c["new_flows"],
            table_slots_changed=state.slots_changed,
            quic_routed=c["quic_routed"],
            quic_fallback=c["quic_fallback"],
        )
        for reason in ("no_backend", "encap"):
            if c[f"drop_{reason}"]:
                vs.dropped[reason] = c[f"drop_{reason}"]
        for identity, slot in state.backend_slots.items():
            bc = maps.backend_counters(slot)
            bs = BackendStats(flows_total=bc["new_flows"], bytes_to_backend=bc["bytes"])
            if state.protocol == "udp":
                bs.datagrams_to_backend = bc["packets"]
            else:
                bs.connect_attempts = bc["new_flows"]
            vs.backends[identity] = bs
        out[state.name] = vs
    return out


def flow_backend(maps: XdpMaps, state: VipState, flow: FiveTuple) -> tuple[str, str] | None:
    """Where the program sends `flow` of `state`'s VIP: (identity, "conntrack" or "maglev") or None."""
    by_slot = {slot: identity for identity, slot in state.backend_slots.items()}
    key = flow_key(str(flow.src_ip), str(flow.dst_ip), flow.src_port, flow.dst_port, flow.proto)
    entry = maps.conntrack.lookup(key)
    if entry is not None and entry.backend in by_slot:
        return by_slot[entry.backend], "conntrack"
    if state.row is None:
        return None
    slot = int(state.row[flow_hash(flow, state.hash_key) % len(state.row)])
    return (by_slot[slot], "maglev") if slot in by_slot else None
