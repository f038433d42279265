"""Stateful behaviour of the XDP program through BPF_PROG_TEST_RUN: the connection table against
Maglev changes, UDP idle timeouts, removed backends, ICMP routed to the flow's backend, counters."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP
from sluice.dataplane.xdp.loader import XDP_TX
from sluice.dataplane.xdp.maps import CtEntry, flow_key
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import CLIENT4, CLIENT_MAC, LB_MAC, TVip, World, model_backend


def tcp_frame(v: TVip, sport: int, flags: int, payload: bytes = b"") -> bytes:
    return P.eth(
        LB_MAC,
        CLIENT_MAC,
        P.ETH_IPV4,
        P.ipv4(CLIENT4, v.addr, IPPROTO_TCP, P.tcp(sport, v.port, flags, payload)),
    )


def udp_frame(v: TVip, sport: int) -> bytes:
    return P.eth(
        LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, v.addr, IPPROTO_UDP, P.udp(sport, v.port, b"q"))
    )


def dst_mac(out: bytes) -> str:
    return ":".join(f"{b:02x}" for b in out[:6])


def rotate(v: TVip) -> list[int]:
    """Every slot moves to the next backend: a Maglev change that moves every flow."""
    order = [b.index for b in v.backends]
    return [order[(order.index(s) + 1) % len(order)] for s in v.slots]


def test_established_flow_keeps_backend_after_table_change(world: World) -> None:
    v = world.vips["v4tcp"]
    first = model_backend(v, CLIENT4, 41000)
    assert dst_mac(world.run(tcp_frame(v, 41000, P.TCP_SYN)).data) == first.mac
    world.write_slots(v, rotate(v))
    moved = model_backend(v, CLIENT4, 41000)
    assert moved != first
    for flags in (P.TCP_ACK, P.TCP_ACK | P.TCP_PSH, P.TCP_FIN | P.TCP_ACK):
        r = world.run(tcp_frame(v, 41000, flags, b"data"))
        assert r.verdict == XDP_TX
        assert dst_mac(r.data) == first.mac
    # a new flow follows the new table, and a new SYN of the same tuple is re-hashed
    assert dst_mac(world.run(tcp_frame(v, 41001, P.TCP_SYN)).data) == model_backend(v, CLIENT4, 41001).mac
    assert dst_mac(world.run(tcp_frame(v, 41000, P.TCP_SYN)).data) == moved.mac
    c = world.counters()
    assert c["vip.v4tcp.ct_hits"] == 3
    assert c["vip.v4tcp.new_flows"] == 3
    assert c["vip.v4tcp.ct_misses"] == 0


def test_miss_creates_entry(world: World) -> None:
    v = world.vips["v4tcp"]
    before = model_backend(v, CLIENT4, 41002)
    world.run(tcp_frame(v, 41002, P.TCP_ACK))  # mid-flow packet, no entry (e.g. after an LB restart)
    world.write_slots(v, rotate(v))
    assert dst_mac(world.run(tcp_frame(v, 41002, P.TCP_ACK)).data) == before.mac
    c = world.counters()
    assert (c["vip.v4tcp.ct_misses"], c["vip.v4tcp.ct_hits"], c["vip.v4tcp.new_flows"]) == (1, 1, 0)


def _ct_write(world: World, v: TVip, sport: int, backend: int, last_seen_ns: int) -> None:
    key = flow_key(CLIENT4, v.addr, sport, v.port, v.proto)
    world.maps.conntrack.update(key, CtEntry(backend=backend, last_seen_ns=last_seen_ns))


def test_udp_entry_older_than_idle_timeout_is_rehashed(world: World) -> None:
    v = world.vips["v4udp"]  # idle timeout 1 s
    hashed = model_backend(v, CLIENT4, 5000)
    other = next(b for b in v.backends if b != hashed)
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
    _ct_write(world, v, 5000, other.index, now)  # fresh: kept
    assert dst_mac(world.run(udp_frame(v, 5000)).data) == other.mac
    _ct_write(world, v, 5000, other.index, now - 5_000_000_000)  # idle 5 s > 1 s: re-hashed
    assert dst_mac(world.run(udp_frame(v, 5000)).data) == hashed.mac
    entries = world.maps.conntrack.lookup_percpu(flow_key(CLIENT4, v.addr, 5000, v.port, v.proto))
    (cpu,) = os.sched_getaffinity(0)  # the program rewrote this CPU's entry only
    assert entries is not None and entries[cpu].backend == hashed.index
    c = world.counters()
    assert (c["vip.v4udp.ct_hits"], c["vip.v4udp.udp_expired"], c["vip.v4udp.new_flows"]) == (1, 1, 1)


def test_tcp_entries_do_not_expire(world: World) -> None:
    v = world.vips["v4tcp"]
    other = next(b for b in v.backends if b != model_backend(v, CLIENT4, 5001))
    _ct_write(world, v, 5001, other.index, 1)
    assert dst_mac(world.run(tcp_frame(v, 5001, P.TCP_ACK)).data) == other.mac


def test_entry_of_removed_backend_is_rehashed(world: World) -> None:
    v = world.vips["v4tcp"]
    gone = v.backends[0]
    world.set_backend(v, gone, active=False)
    world.write_slots(v, [b.index for b in v.backends[1:]] * 7)
    _ct_write(world, v, 5002, gone.index, time.monotonic_ns())
    r = world.run(tcp_frame(v, 5002, P.TCP_ACK))
    assert dst_mac(r.data) == model_backend(v, CLIENT4, 5002).mac != gone.mac
    assert world.counters()["vip.v4tcp.ct_misses"] == 1


def test_entry_pointing_at_another_vips_backend_is_ignored(world: World) -> None:
    v, u = world.vips["v4tcp"], world.vips["v4udp"]
    _ct_write(world, v, 5003, u.backends[0].index, time.monotonic_ns())
    assert dst_mac(world.run(tcp_frame(v, 5003, P.TCP_ACK)).data) == model_backend(v, CLIENT4, 5003).mac


def test_icmp_too_big_follows_the_connection_entry(world: World) -> None:
    v = world.vips["v4tcp"]
    owner = model_backend(v, CLIENT4, 41003)
    world.run(tcp_frame(v, 41003, P.TCP_SYN))
    world.write_slots(v, rotate(v))
    quoted = P.ipv4(v.addr, CLIENT4, IPPROTO_TCP, P.tcp(80, 41003, P.TCP_ACK))[:28]
    icmp = P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4("198.18.0.1", v.addr, 1, P.icmp(3, 4, 1400, quoted)))
    r = world.run(icmp)
    assert r.verdict == XDP_TX and dst_mac(r.data) == owner.mac
    c = world.counters()
    assert c["vip.v4tcp.icmp_forwarded"] == 1 and c["vip.v4tcp.new_flows"] == 1  # ICMP creates no flow


def test_counters_per_vip_and_backend(world: World) -> None:
    v = world.vips["v4tcp"]
    sizes = {}
    for sport in range(42000, 42030):
        frame = tcp_frame(v, sport, P.TCP_SYN)
        world.run(frame)
        world.run(tcp_frame(v, sport, P.TCP_ACK, b"x" * 10))
        sizes[sport] = (len(frame), len(frame) + 10)
    c = world.counters()
    assert c["vip.v4tcp.packets"] == 60
    assert c["vip.v4tcp.bytes"] == sum(a + b for a, b in sizes.values())
    assert (c["vip.v4tcp.new_flows"], c["vip.v4tcp.ct_hits"]) == (30, 30)
    for b in v.backends:
        mine = [s for s in sizes if model_backend(v, CLIENT4, s) == b]
        assert c[f"backend.{b.index}.new_flows"] == len(mine)
        assert c[f"backend.{b.index}.packets"] == 2 * len(mine)
        assert c[f"backend.{b.index}.bytes"] == sum(sum(sizes[s]) for s in mine)
    assert c["global.rx_packets"] == 60


def test_maglev_slot_written_by_batch_is_read_back(world: World) -> None:
    v = world.vips["v4tcp"]
    key = ctypes.c_uint32(v.index * 257 + 5)
    value = world.maps.maglev.lookup(key)
    assert value is not None and value.value == v.slots[5]


def test_connection_entries_are_per_cpu(world: World) -> None:
    """An entry written on one CPU reads back zeroed on another: that CPU falls back to Maglev
    (counted as a miss) instead of using backend 0 (on real NICs RSS keeps a flow on one CPU)."""
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")  # every machine this runs on has two; documented, not a privilege skip
    v = world.vips["v4tcp"]
    hashed = model_backend(v, CLIENT4, 41010)
    os.sched_setaffinity(0, {cpus[0]})
    world.run(tcp_frame(v, 41010, P.TCP_SYN))
    world.write_slots(v, rotate(v))
    os.sched_setaffinity(0, {cpus[1]})
    r = world.run(tcp_frame(v, 41010, P.TCP_ACK))
    assert dst_mac(r.data) == model_backend(v, CLIENT4, 41010).mac != hashed.mac
    assert world.counters()["vip.v4tcp.ct_misses"] == 1
    os.sched_setaffinity(0, {cpus[0]})
    assert dst_mac(world.run(tcp_frame(v, 41010, P.TCP_ACK)).data) == hashed.mac
