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
    entry = world.maps.conntrack.lookup(flow_key(CLIENT4, v.addr, 5000, v.port, v.proto))
    assert entry is not None and entry.backend == hashed.index
    c = world.counters()
    assert (c["vip.v4udp.ct_hits"], c["vip.v4udp.expired"], c["vip.v4udp.new_flows"]) == (1, 1, 1)


def test_tcp_entry_expires_after_the_idle_timeout(world: World) -> None:
    """Issue 15.4: a TCP entry idle longer than the VIP's idle timeout is not used (a client port
    reused much later must not meet a stale entry): Maglev decides again and the entry is rewritten."""
    v = world.vips["v4tcp"]  # idle timeout 1 s
    first = model_backend(v, CLIENT4, 5001)
    t = 2000 * S
    world.maps.set_clock(t)
    world.run(tcp_frame(v, 5001, P.TCP_SYN))
    world.write_slots(v, rotate(v))
    moved = model_backend(v, CLIENT4, 5001)
    t += S  # idle exactly the timeout: still the entry's backend
    world.maps.set_clock(t)
    assert dst_mac(world.run(tcp_frame(v, 5001, P.TCP_ACK)).data) == first.mac
    t += S + 1  # idle longer than the timeout
    world.maps.set_clock(t)
    assert dst_mac(world.run(tcp_frame(v, 5001, P.TCP_ACK)).data) == moved.mac
    entry = world.maps.conntrack.lookup(flow_key(CLIENT4, v.addr, 5001, v.port, v.proto))
    assert entry is not None and (entry.backend, entry.last_seen_ns) == (moved.index, t)
    c = world.counters()
    assert (c["vip.v4tcp.ct_hits"], c["vip.v4tcp.expired"], c["vip.v4tcp.ct_misses"]) == (1, 1, 1)


def test_syn_never_uses_the_entry_of_a_backend_without_slots(world: World) -> None:
    """A backend that is down or at weight 0 has no Maglev slots; its fresh entries still serve their
    established flow, but a SYN of the same tuple always goes where Maglev says."""
    v = world.vips["v4tcp"]
    idle = v.backends[0]
    world.write_slots(v, [b.index for b in v.backends[1:]] * 7)
    world.maps.set_clock(3000 * S)
    _ct_write(world, v, 5004, idle.index, 3000 * S)
    assert dst_mac(world.run(tcp_frame(v, 5004, P.TCP_ACK)).data) == idle.mac  # established: kept
    r = world.run(tcp_frame(v, 5004, P.TCP_SYN))
    assert dst_mac(r.data) == model_backend(v, CLIENT4, 5004).mac != idle.mac
    entry = world.maps.conntrack.lookup(flow_key(CLIENT4, v.addr, 5004, v.port, v.proto))
    assert entry is not None and entry.backend != idle.index


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


def _two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")  # every machine this runs on has two; documented, not a privilege skip
    return cpus[0], cpus[1]


def test_a_syn_wins_on_every_cpu(world: World) -> None:
    """The lab's drain story on veth (no RSS: one flow's packets on either CPU). A first connection
    opens on CPU 0 and sends data on CPU 1; the Maglev table changes; a new connection reusing the
    5-tuple opens on CPU 0 (the new backend): its data on CPU 1 must follow that SYN, not what CPU 1
    saw of the old connection. BPF_PROG_TEST_RUN runs the program on the caller's CPU (XDP test runs
    take no BPF_F_TEST_RUN_ON_CPU), so the test moves itself."""
    cpu0, cpu1 = _two_cpus()
    v = world.vips["v4tcp"]
    old = model_backend(v, CLIENT4, 41010)
    os.sched_setaffinity(0, {cpu0})
    assert dst_mac(world.run(tcp_frame(v, 41010, P.TCP_SYN)).data) == old.mac
    os.sched_setaffinity(0, {cpu1})
    assert dst_mac(world.run(tcp_frame(v, 41010, P.TCP_ACK, b"first")).data) == old.mac
    world.write_slots(v, rotate(v))  # e.g. a drain: the tuple now hashes elsewhere
    new = model_backend(v, CLIENT4, 41010)
    assert new != old
    os.sched_setaffinity(0, {cpu0})
    assert dst_mac(world.run(tcp_frame(v, 41010, P.TCP_SYN)).data) == new.mac
    for cpu in (cpu1, cpu0, cpu1):
        os.sched_setaffinity(0, {cpu})
        r = world.run(tcp_frame(v, 41010, P.TCP_ACK, b"second"))
        assert r.verdict == XDP_TX and dst_mac(r.data) == new.mac
    c = world.counters()
    assert (c["vip.v4tcp.new_flows"], c["vip.v4tcp.ct_hits"], c["vip.v4tcp.ct_misses"]) == (2, 4, 0)


def test_udp_flow_seen_on_two_cpus_has_one_backend(world: World) -> None:
    cpu0, cpu1 = _two_cpus()
    v = world.vips["v4udp"]
    first = model_backend(v, CLIENT4, 5010)
    os.sched_setaffinity(0, {cpu0})
    assert dst_mac(world.run(udp_frame(v, 5010)).data) == first.mac
    world.write_slots(v, rotate(v))
    os.sched_setaffinity(0, {cpu1})
    assert dst_mac(world.run(udp_frame(v, 5010)).data) == first.mac  # the flow's entry, not the new slot
    c = world.counters()
    assert (c["vip.v4udp.new_flows"], c["vip.v4udp.ct_hits"]) == (1, 1)


S = 1_000_000_000


def test_udp_idle_expiry_follows_the_coarse_clock(world: World) -> None:
    """The control plane's coarse clock (not the clock source) times UDP idleness: a packet within the
    idle timeout of the flow's last packet keeps the entry (and restamps it), one after it re-hashes."""
    v = world.vips["v4udp"]  # idle timeout 1 s
    first = model_backend(v, CLIENT4, 5020)
    t = 1000 * S
    world.maps.set_clock(t)
    assert dst_mac(world.run(udp_frame(v, 5020)).data) == first.mac
    world.write_slots(v, rotate(v))  # from now on a re-hashed flow goes elsewhere
    moved = model_backend(v, CLIENT4, 5020)
    assert moved != first
    for step in (S - 1, S - 1, S):  # each within 1 s of the previous packet: 3 s in all, never idle 1 s
        t += step
        world.maps.set_clock(t)
        assert dst_mac(world.run(udp_frame(v, 5020)).data) == first.mac
    entry = world.maps.conntrack.lookup(flow_key(CLIENT4, v.addr, 5020, v.port, v.proto))
    assert entry is not None and entry.last_seen_ns == t  # stamped with the coarse clock
    t += S + 1  # idle longer than 1 s
    world.maps.set_clock(t)
    assert dst_mac(world.run(udp_frame(v, 5020)).data) == moved.mac
    c = world.counters()
    assert (c["vip.v4udp.ct_hits"], c["vip.v4udp.expired"], c["vip.v4udp.new_flows"]) == (3, 1, 2)


def test_entries_are_stamped_with_the_coarse_clock(world: World) -> None:
    v = world.vips["v4tcp"]
    key = flow_key(CLIENT4, v.addr, 41020, v.port, v.proto)
    world.maps.set_clock(7 * S)
    world.run(tcp_frame(v, 41020, P.TCP_SYN))
    entry = world.maps.conntrack.lookup(key)
    assert entry is not None and entry.last_seen_ns == 7 * S
    world.maps.set_clock(8 * S)
    world.run(tcp_frame(v, 41020, P.TCP_ACK))
    entry = world.maps.conntrack.lookup(key)
    assert entry is not None and entry.last_seen_ns == 8 * S
    world.maps.set_clock(0)  # not written: the program reads bpf_ktime_get_ns()
    before = time.monotonic_ns()
    world.run(tcp_frame(v, 41020, P.TCP_ACK))
    entry = world.maps.conntrack.lookup(key)
    assert entry is not None and before <= entry.last_seen_ns <= time.monotonic_ns()


def test_hit_forwards_with_the_entrys_hash(world: World) -> None:
    """ipip takes the outer source from the flow hash: on a hit it comes from the entry (no hashing),
    so an entry written by the program gives the same outer header as the SYN."""
    v = world.vips["ipip4"]
    syn = world.run(tcp_frame(v, 41030, P.TCP_SYN))
    ack = world.run(tcp_frame(v, 41030, P.TCP_ACK))
    assert syn.verdict == ack.verdict == XDP_TX
    assert syn.data[14 + 12 : 14 + 20] == ack.data[14 + 12 : 14 + 20]  # outer source and destination
    key = flow_key(CLIENT4, v.addr, 41030, v.port, v.proto)
    entry = world.maps.conntrack.lookup(key)
    assert entry is not None
    entry.hash ^= 0xFF  # the stored hash is what a hit uses
    world.maps.conntrack.update(key, entry)
    changed = world.run(tcp_frame(v, 41030, P.TCP_ACK))
    assert changed.data[14 + 15] == syn.data[14 + 15] ^ 0xFF  # last byte of the outer source
