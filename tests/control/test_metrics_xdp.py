"""The XDP plane's counters reach /metrics: the real program (BPF_PROG_TEST_RUN) and its pinned maps
(root and clang), frames of each kind in, the ``sluice_xdp_*`` series out; the DSR VIP shows no
proxy series."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.control.metrics import Sources, build_registry, xdp_counters
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.loader import XDP_DROP, XDP_PASS, XDP_TX
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import pinned_cpu
from tests.dataplane.xdp.test_plane import LB_MAC, WEB3, config, make_plane
from tests.support.privileged import needs

CLIENT, VIP, ROUTER = "198.18.0.10", "198.18.100.1", "198.18.0.1"


@pytest.fixture
def instance() -> Iterator[str]:
    needs(root=True, commands=("clang",))
    name = f"test-metrics-{os.getpid()}"
    loader.remove_pins(name)
    yield name
    loader.remove_pins(name)


def frame(payload: bytes, ethertype: int = P.ETH_IPV4) -> bytes:
    return P.eth(LB_MAC, "02:00:00:00:00:aa", ethertype, payload)


def too_big(client_port: int) -> bytes:
    """A router's "fragmentation needed" about the backend's reply VIP:80 -> CLIENT:client_port."""
    quoted = P.ipv4(VIP, CLIENT, 6, P.tcp(80, client_port, P.TCP_ACK))[:28]
    return frame(P.ipv4(ROUTER, VIP, 1, P.icmp(3, 4, 1400, quoted)))


async def test_global_vip_and_backend_counters_reach_metrics(instance: str, tmp_path: Path) -> None:
    plane = make_plane(instance, tmp_path)
    cfg = config(WEB3)
    await plane.apply(cfg)
    try:
        assert plane._obj is not None
        program = plane._obj.programs["sluice_xdp"]
        cases = [
            (frame(P.ipv4(CLIENT, VIP, 6, P.tcp(50000, 80))), XDP_TX),  # SYN: a new flow
            (frame(P.ipv4(CLIENT, VIP, 6, P.tcp(50000, 80, P.TCP_ACK))), XDP_TX),  # its entry
            (frame(P.ipv4(CLIENT, VIP, 6, P.tcp(50001, 80, P.TCP_ACK))), XDP_TX),  # no entry: Maglev
            (too_big(50000), XDP_TX),
            (P.arp_request("02:00:00:00:00:aa", CLIENT, VIP), XDP_PASS),
            (frame(P.ipv4(CLIENT, "198.18.100.2", 6, P.tcp(50002, 80))), XDP_PASS),  # not a VIP
            (frame(P.ipv4(CLIENT, VIP, 6, P.tcp(50003, 80)))[: 14 + 10], XDP_DROP),  # IP header cut
        ]
        for _ in pinned_cpu():  # one CPU: the connection entry of the SYN is seen by its ACK
            for data, verdict in cases:
                assert loader.test_run(program, data).verdict == verdict
        sources = Sources(stats=plane.stats, config=lambda: cfg, xdp=lambda: xdp_counters(plane))
        text = generate_latest(build_registry(sources, process=False)).decode()
    finally:
        await plane.close()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    web = ("vip", "web")
    assert got[("sluice_xdp_packets_total", ())] == len(cases)
    assert got[("sluice_xdp_passed_total", (("reason", "not_ip"),))] == 1
    assert got[("sluice_xdp_passed_total", (("reason", "not_vip"),))] == 1
    assert got[("sluice_xdp_dropped_total", (("reason", "truncated_l3"),))] == 1
    assert got[("sluice_xdp_vip_packets_total", (web,))] == 4
    assert got[("sluice_xdp_vip_new_flows_total", (web,))] == 1
    assert got[("sluice_xdp_vip_conntrack_hits_total", (web,))] >= 1
    assert got[("sluice_xdp_vip_conntrack_misses_total", (web,))] == 1
    assert got[("sluice_xdp_vip_icmp_too_big_total", (web,))] == 1
    per_backend = {
        dict(labels)["backend"]: v
        for (name, labels), v in got.items()
        if name == "sluice_xdp_backend_new_flows_total"
    }
    assert set(per_backend) >= set(WEB3) and sum(per_backend.values()) == 1
    assert sum(v for (name, _), v in got.items() if name == "sluice_xdp_backend_packets_total") == 4
    proxy_only = {name for name, labels in got if dict(labels).get("vip") in ("web", "dns")} & {
        "sluice_backend_connect_attempts_total",
        "sluice_backend_connects_established_total",
        "sluice_vip_flows_active",
        "sluice_backend_bytes_total",
    }
    assert proxy_only == set()
