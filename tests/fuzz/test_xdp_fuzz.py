"""The XDP program on random and mutated frames (BPF_PROG_TEST_RUN) against a small Python model of
its verdict (issue 12, "keep it found").

The model (`expected`) is written from the documented rules, not from the C: a frame addressed to a
VIP with a backend is forwarded (XDP_TX), one to a VIP without backends is dropped, anything not for a
VIP or that sluice does not balance (not IP, fragments, IPv4 options, IPv6 extension headers, other
protocols, ICMP that is not "too big" about a VIP flow addressed to the VIP) passes, and a malformed
or truncated header (checked against the frame and the IP length) is dropped. Frames passed or
dropped must come back unchanged; an l2 VIP's frames must leave towards one of its backends.

Bounded by default (20k frames, seconds); ``SLUICE_FUZZ_FULL=1`` runs 1M, ``SLUICE_XDP_FUZZ_FRAMES``
any count, ``SLUICE_FUZZ_SEED`` another seed. A mismatch is reported with its frame in hex.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP
from sluice.dataplane.xdp import build, loader
from sluice.dataplane.xdp.loader import XDP_DROP, XDP_PASS, XDP_TX
from sluice.dataplane.xdp.maps import FWD_L2, addr16
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import CLIENT4, CLIENT6, CLIENT_MAC, DEFINES, LB_MAC, TVip, World

FULL = os.environ.get("SLUICE_FUZZ_FULL") == "1"
FRAMES = int(os.environ.get("SLUICE_XDP_FUZZ_FRAMES", 1_000_000 if FULL else 20_000))
SEED = int(os.environ.get("SLUICE_FUZZ_SEED", 12))

pytestmark = pytest.mark.timeout(3600 if FULL else 300)

VERDICT_NAMES = {XDP_DROP: "DROP", XDP_PASS: "PASS", XDP_TX: "TX"}


# ---------------------------------------------------------------- the model


def _vip_of(
    vips: dict[tuple[bytes, int, int], TVip], addr: bytes, port: int, proto: int
) -> tuple[int, TVip | None]:
    v = vips.get((addr, port, proto))
    if v is None:
        return XDP_PASS, None
    return (XDP_TX, v) if v.backends else (XDP_DROP, v)


def _l4_verdict(l4: bytes, proto: int) -> int | None:
    """DROP if the TCP/UDP header within the IP length is malformed, else None."""
    if proto == IPPROTO_TCP:
        if len(l4) < 20:
            return XDP_DROP
        doff = l4[12] >> 4
        return XDP_DROP if doff < 5 or doff * 4 > len(l4) else None
    if len(l4) < 8:
        return XDP_DROP
    length = int.from_bytes(l4[4:6])
    return XDP_DROP if length < 8 or length > len(l4) else None


def _mapped(raw4: bytes) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + raw4


def _expected_icmp(
    vips: dict[tuple[bytes, int, int], TVip], l4: bytes, outer_dst: bytes, v6: bool
) -> tuple[int, TVip | None]:
    if len(l4) < 8:
        return XDP_DROP, None
    too_big = (l4[0] == 2) if v6 else (l4[0] == 3 and l4[1] == 4)
    if not too_big:
        return XDP_PASS, None
    inner_len = 40 if v6 else 20
    if len(l4) < 8 + inner_len:
        return XDP_DROP, None
    inner = l4[8:]
    if v6:
        src, proto = inner[8:24], inner[6]
    else:
        if inner[0] != 0x45:
            return XDP_PASS, None
        src, proto = _mapped(inner[12:16]), inner[9]
    if src != outer_dst:
        return XDP_PASS, None  # not addressed to the VIP itself (issue 12.12)
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return XDP_PASS, None
    if len(l4) < 8 + inner_len + 4:
        return XDP_DROP, None
    sport = int.from_bytes(inner[inner_len : inner_len + 2])  # the reply's source port: the VIP's
    return _vip_of(vips, src, sport, proto)


def expected(vips: dict[tuple[bytes, int, int], TVip], frame: bytes) -> tuple[int, TVip | None]:
    """The verdict the program must give `frame`, and the VIP it is forwarded for."""
    if len(frame) < 14:
        return XDP_DROP, None
    ethertype, off = int.from_bytes(frame[12:14]), 14
    if ethertype == P.ETH_VLAN:
        if len(frame) < 18:
            return XDP_DROP, None
        ethertype, off = int.from_bytes(frame[16:18]), 18
    ip = frame[off:]
    if ethertype == P.ETH_IPV4:
        if len(ip) < 20:
            return XDP_DROP, None
        ihl, tot = ip[0] & 15, int.from_bytes(ip[2:4])
        if ip[0] >> 4 != 4 or ihl < 5 or tot < ihl * 4:
            return XDP_DROP, None
        if tot > len(ip):
            return XDP_DROP, None
        if int.from_bytes(ip[6:8]) & 0x3FFF:
            return XDP_PASS, None
        if ihl != 5:
            return XDP_PASS, None
        proto, dst, l4 = ip[9], _mapped(ip[16:20]), ip[20:tot]
        if proto == 1:
            return _expected_icmp(vips, l4, dst, v6=False)
    elif ethertype == P.ETH_IPV6:
        if len(ip) < 40:
            return XDP_DROP, None
        if ip[0] >> 4 != 6:
            return XDP_DROP, None
        plen = int.from_bytes(ip[4:6])
        if 40 + plen > len(ip):
            return XDP_DROP, None
        proto, dst, l4 = ip[6], ip[24:40], ip[40 : 40 + plen]
        if proto == 58:
            return _expected_icmp(vips, l4, dst, v6=True)
    else:
        return XDP_PASS, None
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return XDP_PASS, None
    bad = _l4_verdict(l4, proto)
    if bad is not None:
        return bad, None
    return _vip_of(vips, dst, int.from_bytes(l4[2:4]), proto)


# ---------------------------------------------------------------- frames


OTHER4 = ("198.18.100.9", "198.18.0.2", "10.0.0.1")
OTHER6 = ("2001:db8::999", "2001:db8::2")
PORTS = (80, 53, 81, 443, 0, 65535)


class Frames:
    """Well-formed frames for VIPs and others, then mutated; never shorter than an Ethernet header
    (BPF_PROG_TEST_RUN refuses those, and no driver hands one to XDP)."""

    def __init__(self, vips: list[TVip], rng: random.Random) -> None:
        self.rng = rng
        self.vips = vips
        self.v4 = [v.addr for v in vips if ip_address(v.addr).version == 4] + list(OTHER4)
        self.v6 = [v.addr for v in vips if ip_address(v.addr).version == 6] + list(OTHER6)

    def _l4(self, proto: int, sport: int, dport: int) -> bytes:
        r = self.rng
        payload = r.randbytes(r.choice((0, 0, 1, 8, 40)))
        if proto == IPPROTO_TCP:
            doff = r.choice((5, 5, 5, 6, 8))
            options = b"\x01" * (4 * (doff - 5))
            flags = r.choice((P.TCP_SYN, P.TCP_ACK, P.TCP_ACK | P.TCP_PSH, P.TCP_SYN | P.TCP_ACK, P.TCP_RST))
            return P.tcp(sport, dport, flags, options + payload, doff=doff)
        return P.udp(sport, dport, payload)

    def base(self) -> bytes:
        r = self.rng
        kind = r.random()
        vlan = r.choice((None, None, None, 42))
        if kind < 0.05:
            return r.randbytes(r.randrange(14, 120))
        if kind < 0.08:
            return P.arp_request(CLIENT_MAC, CLIENT4, r.choice(self.v4))
        if r.random() < 0.6:  # aimed at a VIP: its address, port and protocol (or ICMP about it)
            v = r.choice(self.vips)
            v6 = ip_address(v.addr).version == 6
            src, dst, proto, vport = (
                (CLIENT6 if v6 else CLIENT4),
                v.addr,
                r.choice((v.proto, v.proto, 1)),
                v.port,
            )
        else:
            v6 = r.random() < 0.35
            src, dst = (CLIENT6, r.choice(self.v6)) if v6 else (CLIENT4, r.choice(self.v4))
            proto, vport = r.choice((IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, 1, 47)), r.choice(PORTS)
        if proto == 1:  # ICMP "too big" (or another type) about a reply dst:port -> client
            port = vport
            quoted_proto = r.choice((IPPROTO_TCP, IPPROTO_UDP))
            quoted = P.ip_packet(
                dst, src, quoted_proto, self._l4(quoted_proto, port, r.randrange(1024, 65536))
            )
            quoted = quoted[: r.choice((len(quoted), 28 if not v6 else 48, 48 if not v6 else 68))]
            outer_dst = dst if r.random() < 0.7 else r.choice(self.v6 if v6 else self.v4)
            if v6:
                icmp = P.icmp(r.choice((2, 2, 1, 128)), 0, 1280, quoted)
                return P.eth(
                    LB_MAC, CLIENT_MAC, P.ETH_IPV6, P.ipv6("2001:db8:1::1", outer_dst, 58, icmp), vlan=vlan
                )
            icmp = P.icmp(r.choice((3, 3, 8)), r.choice((4, 4, 1)), 1400, quoted)
            return P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4("198.18.0.1", outer_dst, 1, icmp), vlan=vlan)
        l4 = self._l4(proto, r.randrange(1024, 65536), vport) if proto != 47 else r.randbytes(8)
        if v6:
            return P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV6, P.ipv6(src, dst, proto, l4), vlan=vlan)
        return P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(src, dst, proto, l4), vlan=vlan)

    def mutate(self, frame: bytes) -> bytes:
        r = self.rng
        b = bytearray(frame)
        for _ in range(r.choice((1, 1, 2, 3))):
            op = r.random()
            if not b:
                break
            off = 18 if len(b) > 17 and b[12:14] == b"\x81\x00" else 14
            if op < 0.25:
                del b[r.randrange(14, max(15, len(b) + 1)) :]  # truncate (BPF_PROG_TEST_RUN needs 14 bytes)
            elif op < 0.45:
                i = r.randrange(min(len(b), 100))
                b[i] = r.randrange(256)
            elif op < 0.55:
                b += r.randbytes(r.randrange(1, 16))  # padding / garbage behind the packet
            else:  # a header field set to a random or boundary value
                at = r.choice(
                    (
                        off,
                        off + 2,
                        off + 3,
                        off + 4,
                        off + 5,
                        off + 6,
                        off + 9,
                        off + 20,
                        off + 24,
                        off + 26,
                        off + 32,
                        off + 40,
                        off + 44,
                        off + 52,
                    )
                )
                if at < len(b):
                    b[at] = r.choice((0, 1, 4, 5, 0x45, 0x60, 0x0F, 0xF0, 0xFF, r.randrange(256)))
        return bytes(b)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            frame = self.base()
            yield self.mutate(frame) if self.rng.random() < 0.7 else frame


# ---------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.support.privileged import needs

    needs(root=True, commands=("clang",))
    path: Path = build.compile_object("sluice_xdp.bpf.c", DEFINES, tmp_path_factory.mktemp("bpf-fuzz"))
    obj = loader.load_object(path, ("sluice_xdp",))
    try:
        yield World(obj)
    finally:
        obj.close()


def test_model_on_known_frames() -> None:
    """The model itself gives the documented verdicts (so a fuzz pass means something)."""
    from tests.dataplane.xdp.harness import standard_vips

    vips = {(addr16(v.addr), v.port, v.proto): v for v in standard_vips().values()}
    ok = P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.100.1", 6, P.tcp(1234, 80)))
    assert expected(vips, ok)[0] == XDP_TX
    assert expected(vips, ok[:40])[0] == XDP_DROP
    other = P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.100.9", 6, P.tcp(1234, 80)))
    assert expected(vips, other)[0] == XDP_PASS
    empty = P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.100.3", 6, P.tcp(1234, 80)))
    assert expected(vips, empty)[0] == XDP_DROP
    short = P.eth(
        LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, "198.18.100.1", 6, P.tcp(1, 80), tot_len=30)
    )
    assert expected(vips, short)[0] == XDP_DROP


def test_program_agrees_with_the_model(world: World) -> None:
    vips = {(addr16(v.addr), v.port, v.proto): v for v in world.vips.values()}
    rng = random.Random(SEED)
    seen: dict[int, int] = {XDP_TX: 0, XDP_PASS: 0, XDP_DROP: 0}
    mismatches: list[str] = []
    for n, frame in enumerate(Frames(list(world.vips.values()), rng)):
        if n >= FRAMES or len(mismatches) >= 5:
            break
        want, vip = expected(vips, frame)
        r = world.run(frame)
        seen[want] = seen.get(want, 0) + 1
        problem = None
        if r.verdict != want:
            problem = f"verdict {VERDICT_NAMES.get(r.verdict, r.verdict)}, model {VERDICT_NAMES[want]}"
        elif want != XDP_TX and r.data != frame:
            problem = "a frame not forwarded was changed"
        elif want == XDP_TX and vip is not None and vip.fwd == FWD_L2:
            macs = {P.mac(b.mac) for b in vip.backends}
            if r.data[:6] not in macs or r.data[6:12] != P.mac(LB_MAC) or r.data[12:] != frame[12:]:
                problem = f"l2 rewrite not towards a backend of {vip.name}"
        if problem:
            mismatches.append(f"frame #{n} (seed {SEED}): {problem}: {frame.hex()}")
    assert not mismatches, "\n".join(mismatches)
    # the generator reaches every verdict often (a fuzzer that only makes garbage finds nothing)
    total = sum(seen.values())
    assert all(count > total // 20 for count in seen.values()), seen
