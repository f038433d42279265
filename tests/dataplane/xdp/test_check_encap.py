"""The tc egress program that encapsulates ipip health checks (bpf/sluice_check_encap.bpf.c), run
through BPF_PROG_TEST_RUN with skb->mark set: (description, frame, mark, expected frame, verdict)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP
from sluice.dataplane.xdp import build, loader
from sluice.dataplane.xdp.checkroutes import CheckStatsC, CheckTargetC
from sluice.dataplane.xdp.maps import Map, mac_bytes, sum_fields
from sluice.dataplane.xdp.tcloader import TC_ACT_OK, TC_ACT_SHOT, test_run_skb
from tests.dataplane.xdp import packets as P
from tests.support.privileged import needs

VIP = "198.18.100.1"
LB, LB_MAC = "198.18.0.2", "02:00:00:00:00:02"
BACKEND, BACKEND_MAC = "198.18.0.11", "02:00:00:00:00:11"
ROUTER_MAC = "02:00:00:00:00:fe"
OUTER = "198.19.0.1"
MARK = 0x5CAB0001


@pytest.fixture(scope="module")
def encap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[loader.LoadedObject]:
    needs(root=True, commands=("clang",))
    path = build.compile_object(
        "sluice_check_encap.bpf.c", {"MAX_CHECK_PATHS": 16}, tmp_path_factory.mktemp("ce")
    )
    obj = loader.load_object(path, ("sluice_check_encap",))
    target = CheckTargetC()
    target.backend[:] = IPv4Address(BACKEND).packed
    target.source[:] = IPv4Address(OUTER).packed
    target.mac[:] = mac_bytes(ROUTER_MAC)
    loader.map_update(obj.maps["check_targets"], ctypes.c_uint32(MARK), target)
    try:
        yield obj
    finally:
        obj.close()


def check_ip(proto: int = IPPROTO_TCP) -> bytes:
    """A check from the LB to the VIP: a SYN, or a DNS-sized UDP datagram."""
    payload = P.tcp(40000, 80, P.TCP_SYN) if proto == IPPROTO_TCP else P.udp(40001, 53, b"q" * 30)
    return P.ipv4(LB, VIP, proto, payload)


def frame(ip: bytes, ethertype: int = 0x0800) -> bytes:
    """As the stack sends it on the l2 route: to the next hop's MAC (here the backend's)."""
    return P.eth(BACKEND_MAC, LB_MAC, ethertype, ip)


def encapsulated(ip: bytes) -> bytes:
    return P.eth(ROUTER_MAC, LB_MAC, 0x0800, P.ipv4(OUTER, BACKEND, 4, ip, ident=0))


V6 = P.ipv6("2001:db8::2", "2001:db8::1", IPPROTO_TCP, P.tcp(40000, 80, P.TCP_SYN))
CASES = [
    (
        "a marked TCP check is wrapped to the backend",
        frame(check_ip()),
        MARK,
        encapsulated(check_ip()),
        TC_ACT_OK,
    ),
    (
        "a marked UDP check too",
        frame(check_ip(IPPROTO_UDP)),
        MARK,
        encapsulated(check_ip(IPPROTO_UDP)),
        TC_ACT_OK,
    ),
    ("an unmarked packet passes untouched", frame(check_ip()), 0, frame(check_ip()), TC_ACT_OK),
    ("another mark passes untouched", frame(check_ip()), MARK + 1, frame(check_ip()), TC_ACT_OK),
    ("a marked non-IPv4 packet is dropped, never sent bare", frame(V6, 0x86DD), MARK, None, TC_ACT_SHOT),
]


@pytest.mark.parametrize(("what", "data", "mark", "expected", "verdict"), CASES, ids=[c[0] for c in CASES])
def test_check_encap(
    encap: loader.LoadedObject, what: str, data: bytes, mark: int, expected: bytes | None, verdict: int
) -> None:
    stats = Map(encap.maps["check_stats"], ctypes.c_uint32, CheckStatsC, percpu=True)
    before = sum_fields(stats.lookup_percpu(ctypes.c_uint32(0)) or [])
    result = test_run_skb(encap.programs["sluice_check_encap"], data, mark)
    after = sum_fields(stats.lookup_percpu(ctypes.c_uint32(0)) or [])
    assert result.verdict == verdict, what
    if expected is not None:
        assert result.data == expected, what
    counted = {k: after[k] - before.get(k, 0) for k in after}
    if mark != MARK:
        assert counted == {"encapsulated": 0, "failed": 0}
    else:
        assert counted == (
            {"encapsulated": 1, "failed": 0} if verdict == TC_ACT_OK else {"encapsulated": 0, "failed": 1}
        )


def test_the_backends_decap_program_gives_back_the_check(encap: loader.LoadedObject, tmp_path: Path) -> None:
    decap_path = build.compile_object("sluice_decap.bpf.c", {}, tmp_path)
    decap = loader.load_object(decap_path, ("sluice_decap",))
    try:
        wrapped = test_run_skb(encap.programs["sluice_check_encap"], frame(check_ip()), MARK).data
        out = loader.test_run(decap.programs["sluice_decap"], wrapped)
    finally:
        decap.close()
    assert out.verdict == loader.XDP_PASS
    assert out.data == P.eth(ROUTER_MAC, LB_MAC, 0x0800, check_ip())
