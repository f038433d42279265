"""The backend-side decap program: strips the outer header the LB added, passes the rest untouched."""

from __future__ import annotations

import pytest

from sluice.core.flow import IPPROTO_TCP, FiveTuple
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.loader import XDP_PASS
from sluice.dataplane.xdp.maps import DecapStats, Map, sum_fields
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import (
    CLIENT4,
    CLIENT6,
    CLIENT_MAC,
    LB_MAC,
    NEXT_HOP_MAC,
    model_ipip,
    standard_vips,
)

VIPS = standard_vips()


def _counters(obj: loader.LoadedObject) -> dict[str, int]:
    import ctypes

    m = Map(obj.maps["decap_stats"], ctypes.c_uint32, DecapStats, percpu=True)
    return sum_fields(m.lookup_percpu(ctypes.c_uint32(0)) or [])


def _inner(vip: str, vlan: int | None) -> bytes:
    v = VIPS[vip]
    client = CLIENT4 if ":" not in v.addr else CLIENT6
    packet = P.ip_packet(client, v.addr, IPPROTO_TCP, P.tcp(43000, v.port, P.TCP_SYN, b"hello"))
    return P.eth(LB_MAC, CLIENT_MAC, P.ethertype_of(client), packet, vlan=vlan)


@pytest.mark.parametrize(
    ("vip", "backend_of", "vlan"),
    [
        ("ipip4", "ipip4", None),
        ("ipip6", "ipip6", None),
        ("ipip4", "ipip6", None),
        ("ipip6", "ipip4", None),
        ("ipip4", "ipip4", 9),
    ],
    ids=["4in4", "6in6", "4in6", "6in4", "4in4-vlan"],
)
def test_decap_strips_outer_header(
    decap: loader.LoadedObject, vip: str, backend_of: str, vlan: int | None
) -> None:
    v = VIPS[vip]
    frame = _inner(vip, vlan)
    client = CLIENT4 if ":" not in v.addr else CLIENT6
    flow = FiveTuple.of((client, 43000), (v.addr, v.port), IPPROTO_TCP)
    encapsulated = model_ipip(frame, VIPS[backend_of], VIPS[backend_of].backends[0], flow, vlan=vlan)
    r = loader.test_run(decap.programs["sluice_decap"], encapsulated)
    assert r.verdict == XDP_PASS
    # inner packet intact; MACs are those of the encapsulated frame (next hop, LB)
    assert r.data.hex() == (P.mac(NEXT_HOP_MAC) + P.mac(LB_MAC) + frame[12:]).hex()
    assert _counters(decap)["decapsulated"] == 1


@pytest.mark.parametrize(
    "frame",
    [
        _inner("ipip4", None),
        P.arp_request(CLIENT_MAC, CLIENT4, "198.18.0.1"),
        P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.0.2", 4, b"\0" * 20, frag=0x2000)),
        P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.0.2", 4, b"\0" * 20, tot_len=200)),
        P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.0.2", 4, b"\0" * 20, version=6)),
    ],
    ids=["plain-tcp", "arp", "ipip-fragment", "ipip-length-beyond-frame", "ipip-bad-version"],
)
def test_decap_passes_other_frames_unchanged(decap: loader.LoadedObject, frame: bytes) -> None:
    r = loader.test_run(decap.programs["sluice_decap"], frame)
    assert (r.verdict, r.data) == (XDP_PASS, frame)
    assert _counters(decap) == {"decapsulated": 0, "passed": 1, "dropped": 0}


def test_pass_stub(pass_stub: loader.LoadedObject) -> None:
    frame = _inner("ipip4", None)
    assert loader.test_run(pass_stub.programs["sluice_pass"], frame) == loader.TestRunResult(XDP_PASS, frame)
