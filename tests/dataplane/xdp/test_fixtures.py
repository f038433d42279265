"""The XDP program as a table of (description, input frame, expected verdict, expected output, counter),
run through BPF_PROG_TEST_RUN with fresh maps for every case (root, no namespaces)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple
from sluice.dataplane.xdp.loader import XDP_DROP, XDP_PASS, XDP_TX
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import (
    CLIENT4,
    CLIENT6,
    CLIENT_MAC,
    LB_MAC,
    World,
    model_backend,
    model_ipip,
    model_l2,
    standard_vips,
)

VIPS = standard_vips()
V4, U4, V6, IP4, IP6 = (VIPS[n] for n in ("v4tcp", "v4udp", "v6tcp", "ipip4", "ipip6"))


def e4(payload: bytes, *, vlan: int | None = None) -> bytes:
    return P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, payload, vlan=vlan)


def e6(payload: bytes, *, vlan: int | None = None) -> bytes:
    return P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV6, payload, vlan=vlan)


def syn4(
    dst: str = V4.addr,
    dport: int = 80,
    sport: int = 40001,
    *,
    flags: int = P.TCP_SYN,
    vlan: int | None = None,
) -> bytes:
    return e4(P.ipv4(CLIENT4, dst, IPPROTO_TCP, P.tcp(sport, dport, flags)), vlan=vlan)


def syn6(dst: str = V6.addr, dport: int = 80, sport: int = 40001, *, vlan: int | None = None) -> bytes:
    return e6(P.ipv6(CLIENT6, dst, IPPROTO_TCP, P.tcp(sport, dport)), vlan=vlan)


Expect = bytes | None | Callable[[bytes], bytes]


@dataclass(frozen=True)
class Case:
    description: str
    frame: bytes
    verdict: int
    output: bytes | None  # None: the frame must come back unchanged
    counter: str  # this counter (see World.counters) must grow by exactly 1


def _l2(frame: bytes, vip_name: str, src: str, sport: int) -> bytes:
    return model_l2(frame, model_backend(VIPS[vip_name], src, sport))


def _ipip(frame: bytes, vip_name: str, src: str, sport: int, vlan: int | None = None) -> bytes:
    v = VIPS[vip_name]
    flow = FiveTuple.of((src, sport), (v.addr, v.port), v.proto)
    return model_ipip(frame, v, model_backend(v, src, sport), flow, vlan=vlan)


def _icmp4_too_big(
    quoted_src: str,
    quoted_sport: int,
    client_port: int,
    *,
    proto: int = IPPROTO_TCP,
    cut: int | None = None,
    outer_dst: str | None = None,
) -> bytes:
    """A router's "fragmentation needed" about the backend's reply quoted_src:quoted_sport -> client,
    addressed to `outer_dst` (default: the reply's source, as a router sends it)."""
    l4 = (
        P.tcp(quoted_sport, client_port, P.TCP_ACK)
        if proto == IPPROTO_TCP
        else P.udp(quoted_sport, client_port)
    )
    quoted = P.ipv4(quoted_src, CLIENT4, proto, l4)[: 28 if cut is None else cut]
    return e4(P.ipv4("198.18.0.1", outer_dst or quoted_src, 1, P.icmp(3, 4, 1400, quoted)))


def _icmp6_too_big(
    quoted_src: str, quoted_sport: int, client_port: int, *, outer_dst: str | None = None
) -> bytes:
    quoted = P.ipv6(quoted_src, CLIENT6, IPPROTO_TCP, P.tcp(quoted_sport, client_port, P.TCP_ACK))[:48]
    return e6(P.ipv6("2001:db8:1::1", outer_dst or quoted_src, 58, P.icmp(2, 0, 1280, quoted)))


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    f = syn4(sport=40001)
    add(
        Case(
            "tcp syn to ipv4 vip: l2 rewrite",
            f,
            XDP_TX,
            _l2(f, "v4tcp", CLIENT4, 40001),
            "vip.v4tcp.new_flows",
        )
    )
    f = syn4(sport=40002, flags=P.TCP_ACK)
    add(
        Case(
            "tcp ack without entry: maglev, counted miss",
            f,
            XDP_TX,
            _l2(f, "v4tcp", CLIENT4, 40002),
            "vip.v4tcp.ct_misses",
        )
    )
    f = e4(
        P.ipv4(
            CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40003, 80, P.TCP_ACK | P.TCP_PSH, b"GET / HTTP/1.0\r\n\r\n")
        )
    )
    add(Case("tcp data with payload", f, XDP_TX, _l2(f, "v4tcp", CLIENT4, 40003), "vip.v4tcp.packets"))
    f = syn4(sport=40004, flags=P.TCP_SYN | P.TCP_ACK)
    add(Case("syn-ack is not a new flow", f, XDP_TX, _l2(f, "v4tcp", CLIENT4, 40004), "vip.v4tcp.ct_misses"))
    f = e4(P.ipv4(CLIENT4, U4.addr, IPPROTO_UDP, P.udp(5353, 53, b"\x12\x34query")))
    add(Case("udp to ipv4 vip", f, XDP_TX, _l2(f, "v4udp", CLIENT4, 5353), "vip.v4udp.new_flows"))
    f = syn6(sport=40005)
    add(Case("tcp syn to ipv6 vip", f, XDP_TX, _l2(f, "v6tcp", CLIENT6, 40005), "vip.v6tcp.new_flows"))
    f = syn4(sport=40006, vlan=42)
    add(Case("802.1Q-tagged syn: tag kept", f, XDP_TX, _l2(f, "v4tcp", CLIENT4, 40006), "vip.v4tcp.packets"))
    f = syn6(sport=40007, vlan=7)
    add(Case("802.1Q-tagged ipv6 syn", f, XDP_TX, _l2(f, "v6tcp", CLIENT6, 40007), "vip.v6tcp.packets"))
    f = syn4(IP4.addr, sport=40008)
    add(Case("ipip: ipv4-in-ipv4", f, XDP_TX, _ipip(f, "ipip4", CLIENT4, 40008), "vip.ipip4.new_flows"))
    f = syn4(IP4.addr, sport=40009, vlan=100)
    add(
        Case(
            "ipip: tagged frame keeps its tag",
            f,
            XDP_TX,
            _ipip(f, "ipip4", CLIENT4, 40009, 100),
            "vip.ipip4.packets",
        )
    )
    f = syn6(IP6.addr, sport=40010)
    add(Case("ipip: ipv6-in-ipv6", f, XDP_TX, _ipip(f, "ipip6", CLIENT6, 40010), "vip.ipip6.new_flows"))
    f = syn6(IP6.addr, sport=40011, vlan=5)
    add(
        Case(
            "ipip: tagged ipv6-in-ipv6", f, XDP_TX, _ipip(f, "ipip6", CLIENT6, 40011, 5), "vip.ipip6.packets"
        )
    )
    f = syn4(IP4.addr, sport=40012) + b"\0" * 6
    add(
        Case(
            "ipip: ethernet padding stays behind the packet",
            f,
            XDP_TX,
            _ipip(f, "ipip4", CLIENT4, 40012),
            "vip.ipip4.packets",
        )
    )
    f = syn4(sport=40013) + b"\0" * 6
    add(
        Case("l2: padded minimum-size frame", f, XDP_TX, _l2(f, "v4tcp", CLIENT4, 40013), "vip.v4tcp.packets")
    )
    # not for a VIP
    add(Case("tcp to another address", syn4("198.18.100.9"), XDP_PASS, None, "global.pass_not_vip"))
    add(Case("vip address, other port", syn4(dport=81), XDP_PASS, None, "global.pass_not_vip"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_UDP, P.udp(40014, 80)))
    add(Case("vip address and port, other protocol", f, XDP_PASS, None, "global.pass_not_vip"))
    add(Case("ipv6 to another address", syn6("2001:db8::999"), XDP_PASS, None, "global.pass_not_vip"))
    add(
        Case(
            "arp request for the vip",
            P.arp_request(CLIENT_MAC, CLIENT4, V4.addr),
            XDP_PASS,
            None,
            "global.pass_not_ip",
        )
    )
    f = P.eth("01:80:c2:00:00:0e", CLIENT_MAC, P.ETH_LLDP, b"\x02\x07\x04" + b"\0" * 40)
    add(Case("lldp", f, XDP_PASS, None, "global.pass_not_ip"))
    f = P.eth(
        LB_MAC,
        CLIENT_MAC,
        P.ETH_VLAN,
        struct.pack("!HH", 20, P.ETH_IPV4) + P.ipv4(CLIENT4, V4.addr, 6, P.tcp(1, 80)),
        vlan=10,
    )
    add(Case("two 802.1Q tags (QinQ) are not parsed", f, XDP_PASS, None, "global.pass_not_ip"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40015, 80), frag=0x2000))
    add(Case("ipv4 first fragment (MF)", f, XDP_PASS, None, "global.pass_ipv4_fragment"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, b"\0" * 24, frag=0x0010))
    add(Case("ipv4 later fragment (offset)", f, XDP_PASS, None, "global.pass_ipv4_fragment"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40016, 80), options=b"\x01\x01\x01\x00"))
    add(Case("ipv4 options", f, XDP_PASS, None, "global.pass_ipv4_options"))
    f = e6(P.ipv6(CLIENT6, V6.addr, 0, b"\x06\x00" + b"\x01\x04\0\0\0\0" + P.tcp(40017, 80)))
    add(Case("ipv6 hop-by-hop extension header", f, XDP_PASS, None, "global.pass_ipv6_ext"))
    f = e4(P.ipv4(CLIENT4, V4.addr, 1, P.icmp(8, 0, 0x00010001, b"ping")))
    add(Case("icmp echo to the vip", f, XDP_PASS, None, "global.pass_icmp_other"))
    f = e4(P.ipv4(CLIENT4, V4.addr, 47, b"\0" * 8))
    add(Case("gre to the vip address", f, XDP_PASS, None, "global.pass_other_proto"))
    # malformed / truncated: dropped
    f = P.eth(LB_MAC, CLIENT_MAC, P.ETH_VLAN, b"\x00\x2a")
    add(Case("truncated 802.1Q tag", f, XDP_DROP, None, "global.drop_truncated_l2"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40018, 80))[:12])
    add(Case("truncated ipv4 header", f, XDP_DROP, None, "global.drop_truncated_l3"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40019, 80), tot_len=200))
    add(Case("ipv4 total length beyond the frame", f, XDP_DROP, None, "global.drop_truncated_l3"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40020, 80), ihl=4))
    add(Case("ipv4 ihl below 5", f, XDP_DROP, None, "global.drop_bad_l3"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40021, 80), version=6))
    add(Case("ipv6 version in an ipv4 ethertype", f, XDP_DROP, None, "global.drop_bad_l3"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40022, 80)[:12]))
    add(Case("truncated tcp header", f, XDP_DROP, None, "global.drop_truncated_l4"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40023, 80, doff=3)))
    add(Case("tcp data offset below 5", f, XDP_DROP, None, "global.drop_bad_l4"))
    f = e4(P.ipv4(CLIENT4, U4.addr, IPPROTO_UDP, P.udp(40024, 53)[:6]))
    add(Case("truncated udp header", f, XDP_DROP, None, "global.drop_truncated_l4"))
    f = e4(P.ipv4(CLIENT4, U4.addr, IPPROTO_UDP, P.udp(40025, 53, length=4)))
    add(Case("udp length below 8", f, XDP_DROP, None, "global.drop_bad_l4"))
    f = e6(P.ipv6(CLIENT6, V6.addr, IPPROTO_TCP, P.tcp(40026, 80))[:30])
    add(Case("truncated ipv6 header", f, XDP_DROP, None, "global.drop_truncated_l3"))
    f = e6(P.ipv6(CLIENT6, V6.addr, IPPROTO_TCP, P.tcp(40027, 80), payload_len=400))
    add(Case("ipv6 payload length beyond the frame", f, XDP_DROP, None, "global.drop_truncated_l3"))
    f = e6(P.ipv6(CLIENT6, V6.addr, IPPROTO_TCP, P.tcp(40028, 80)[:10]))
    add(Case("truncated tcp header over ipv6", f, XDP_DROP, None, "global.drop_truncated_l4"))
    f = e4(P.ipv4(CLIENT4, V4.addr, 1, b"\x03\x04"))
    add(Case("truncated icmp header", f, XDP_DROP, None, "global.drop_truncated_l4"))
    f = _icmp4_too_big(V4.addr, 80, 40029, cut=22)
    add(Case("icmp too-big quoting a cut tcp header", f, XDP_DROP, None, "global.drop_truncated_l4"))
    f = _icmp4_too_big(V4.addr, 80, 40030, cut=12)
    add(Case("icmp too-big quoting a cut ip header", f, XDP_DROP, None, "global.drop_truncated_l4"))
    # ICMP "too big" about a VIP flow goes to the flow's backend
    f = _icmp4_too_big(V4.addr, 80, 40031)
    add(
        Case(
            "icmp frag-needed about a vip flow",
            f,
            XDP_TX,
            _l2(f, "v4tcp", CLIENT4, 40031),
            "vip.v4tcp.icmp_forwarded",
        )
    )
    f = _icmp4_too_big(U4.addr, 53, 40032, proto=IPPROTO_UDP)
    add(
        Case(
            "icmp frag-needed about a udp vip flow",
            f,
            XDP_TX,
            _l2(f, "v4udp", CLIENT4, 40032),
            "vip.v4udp.icmp_forwarded",
        )
    )
    f = _icmp4_too_big(IP4.addr, 80, 40033)
    add(
        Case(
            "icmp frag-needed over ipip",
            f,
            XDP_TX,
            _ipip(f, "ipip4", CLIENT4, 40033),
            "vip.ipip4.icmp_forwarded",
        )
    )
    f = _icmp6_too_big(V6.addr, 80, 40034)
    add(
        Case(
            "icmpv6 packet-too-big about a vip flow",
            f,
            XDP_TX,
            _l2(f, "v6tcp", CLIENT6, 40034),
            "vip.v6tcp.icmp_forwarded",
        )
    )
    f = _icmp4_too_big("198.18.100.9", 80, 40035)
    add(Case("icmp frag-needed about another address", f, XDP_PASS, None, "global.pass_not_vip"))
    f = e4(P.ipv4("198.18.0.1", V4.addr, 1, P.icmp(3, 1, 0, P.ipv4(V4.addr, CLIENT4, 6, P.tcp(80, 1))[:28])))
    add(Case("icmp host unreachable is not forwarded", f, XDP_PASS, None, "global.pass_icmp_other"))
    # issue 12.12: only ICMP addressed to the VIP itself is redirected
    f = _icmp4_too_big(V4.addr, 80, 40037, outer_dst="198.18.0.2")
    add(Case("icmp frag-needed to the lb's own address", f, XDP_PASS, None, "global.pass_not_vip"))
    f = _icmp4_too_big(V4.addr, 80, 40038, outer_dst="198.18.7.7")
    add(Case("icmp frag-needed to another host", f, XDP_PASS, None, "global.pass_not_vip"))
    f = _icmp6_too_big(V6.addr, 80, 40039, outer_dst="2001:db8::2")
    add(Case("icmpv6 too-big to the lb's own address", f, XDP_PASS, None, "global.pass_not_vip"))
    # issue 12.13: every header checked against the IP length
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40040, 80, P.TCP_ACK, b"x" * 40), tot_len=30))
    add(
        Case("ipv4 total length shorter than ip + tcp headers", f, XDP_DROP, None, "global.drop_truncated_l4")
    )
    f = e4(P.ipv4(CLIENT4, U4.addr, IPPROTO_UDP, P.udp(40041, 53, b"q" * 8), tot_len=24))
    add(
        Case("ipv4 total length shorter than ip + udp headers", f, XDP_DROP, None, "global.drop_truncated_l4")
    )
    f = e4(P.ipv4(CLIENT4, U4.addr, IPPROTO_UDP, P.udp(40042, 53, b"query", length=200)))
    add(Case("udp length beyond the datagram", f, XDP_DROP, None, "global.drop_bad_l4"))
    f = e4(P.ipv4(CLIENT4, U4.addr, IPPROTO_UDP, P.udp(40043, 53, b"query"), tot_len=30) + b"\0" * 8)
    add(Case("udp length beyond the ip packet (frame padded)", f, XDP_DROP, None, "global.drop_bad_l4"))
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40044, 80, P.TCP_ACK, doff=15)))
    add(Case("tcp data offset beyond the packet", f, XDP_DROP, None, "global.drop_bad_l4"))
    f = e6(P.ipv6(CLIENT6, V6.addr, IPPROTO_TCP, P.tcp(40045, 80, P.TCP_ACK, doff=8)))
    add(Case("tcp data offset beyond the ipv6 payload", f, XDP_DROP, None, "global.drop_bad_l4"))
    f = e6(P.ipv6(CLIENT6, V6.addr, IPPROTO_TCP, P.tcp(40046, 80), payload_len=12) + b"\0" * 8)
    add(
        Case("ipv6 payload length shorter than the tcp header", f, XDP_DROP, None, "global.drop_truncated_l4")
    )
    f = e4(P.ipv4(CLIENT4, V4.addr, IPPROTO_TCP, P.tcp(40047, 80, P.TCP_ACK, b"data", doff=6)))
    add(
        Case(
            "tcp options within the packet are fine",
            f,
            XDP_TX,
            _l2(f, "v4tcp", CLIENT4, 40047),
            "vip.v4tcp.packets",
        )
    )
    add(
        Case(
            "vip without backends",
            syn4(VIPS["empty"].addr, sport=40036),
            XDP_DROP,
            None,
            "vip.empty.drop_no_backend",
        )
    )
    return c


CASES = _cases()


def test_table_is_large_and_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.description for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_case(world: World, case: Case) -> None:
    before = world.counters()
    result = world.run(case.frame)
    assert result.verdict == case.verdict
    expected = case.frame if case.output is None else case.output
    assert result.data.hex() == expected.hex()
    after = world.counters()
    changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert changed.pop("global.rx_packets") == 1
    assert changed.get(case.counter) == 1, changed
    if case.verdict != XDP_TX:
        # nothing forwarded: no vip/backend packet counts
        assert not any(k.endswith(".packets") for k in changed), changed
