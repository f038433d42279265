"""XdpPlane writes a QUIC VIP's vip_meta.quic_bits and quic_ids (only backends that take new flows),
and reports the program's quic counters in its stats."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from sluice.config import Config, parse_config
from sluice.core.quic import build_short_header_cid
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.loader import XDP_TX
from sluice.dataplane.xdp.maps import QuicIdKey, vip_key
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import pinned_cpu
from tests.dataplane.xdp.test_plane import LB_MAC, M, instance, make_plane, slot_of, vip_index

__all__ = ["instance"]  # the fixture

H3 = ["198.18.1.31:443", "198.18.1.32:443", "198.18.1.33:443"]


def config(weights: tuple[int, ...] = (1, 1, 1), *, with_vip: bool = True) -> Config:
    vips: list[dict[str, Any]] = [
        {
            "name": "web",
            "listen": "198.18.100.1:80",
            "mode": "dsr",
            "maglev_table_size": M,
            "dsr": {"interface": "lb0"},
            "backends": [{"address": "198.18.1.11:80"}],
        },
    ]
    if with_vip:
        vips.append(
            {
                "name": "h3",
                "protocol": "udp",
                "listen": "198.18.100.1:443",
                "mode": "dsr",
                "maglev_table_size": M,
                "dsr": {"interface": "lb0"},
                "quic": {"server_id_bits": 8},
                "backends": [
                    {"address": a, "server_id": 10 + i, "weight": w}
                    for i, (a, w) in enumerate(zip(H3, weights, strict=True))
                ],
            }
        )
    return parse_config({"vips": vips})


def quic_ids(plane: Any, index: int) -> dict[int, int]:
    out = {}
    for server_id in range(256):
        slot = plane.maps.quic_ids.lookup(QuicIdKey(index, server_id))
        if slot is not None:
            out[server_id] = slot.value
    return out


async def test_plane_writes_quic_ids_of_usable_backends(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    await plane.apply(config())
    try:
        index = vip_index(plane, "h3")
        slots = slot_of(plane, "h3")
        meta = plane.maps.vips.lookup(vip_key("198.18.100.1", 443, 17))
        assert meta is not None and meta.quic_bits == 8
        assert quic_ids(plane, index) == {10 + i: slots[a] for i, a in enumerate(H3)}

        for _ in pinned_cpu():  # a short-header packet naming server 12 goes to H3[2]
            payload = b"\x41" + build_short_header_cid(12, 8) + b"data"
            frame = P.eth(
                LB_MAC,
                "02:00:00:00:00:aa",
                P.ETH_IPV4,
                P.ipv4("198.18.0.10", "198.18.100.1", 17, P.udp(50000, 443, payload)),
            )
            assert plane._obj is not None
            r = loader.test_run(plane._obj.programs["sluice_xdp"], frame)
            assert r.verdict == XDP_TX and P.mac_str(r.data[:6]) == "02:be:00:00:00:21"
        stats = plane.stats()["h3"]
        assert (stats.quic_routed, stats.quic_fallback) == (1, 0)

        await plane.apply(config((1, 0, 1)))  # H3[1] down: effective weight 0
        assert quic_ids(plane, index) == {10: slots[H3[0]], 12: slots[H3[2]]}
        await plane.apply(config(with_vip=False))
        assert quic_ids(plane, index) == {}
    finally:
        await plane.close()


async def test_a_restarted_plane_drops_quic_ids_it_did_not_write(instance: str, tmp_path: Path) -> None:
    first = make_plane(instance, tmp_path)
    await first.apply(config())
    index = vip_index(first, "h3")
    first.maps.quic_ids.update(QuicIdKey(index, 99), ctypes.c_uint32(0))  # a server id since removed
    await first.close(detach=False)

    second = make_plane(instance, tmp_path)
    await second.apply(config())
    try:
        assert sorted(quic_ids(second, index)) == [10, 11, 12]
    finally:
        await second.close()
