"""The bench's per-path timing (bench/xdp_paths.py): every run of a timed path took that path."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bench.xdp_paths import net_of_empty, time_path

from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.loader import XDP_PASS, XDP_TX
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import World
from tests.dataplane.xdp.test_scenarios import tcp_frame, udp_frame

RUNS = 200


def test_timed_ipip_hits_are_all_forwarded(world: World) -> None:
    v = world.vips["ipip4"]
    world.run(tcp_frame(v, 43000, P.TCP_SYN))
    before = world.counters()
    timing = time_path(
        world.prog,
        [tcp_frame(v, 43000, P.TCP_ACK)] * RUNS,
        verdict=XDP_TX,
        counter=lambda: world.counters()["vip.ipip4.ct_hits"],
    )
    after = world.counters()
    assert timing.runs == timing.counted == RUNS
    assert timing.mean_ns > 0
    assert after["vip.ipip4.packets"] - before["vip.ipip4.packets"] == RUNS  # every run forwarded
    assert after["global.pass_other_proto"] == before["global.pass_other_proto"]


def test_repeat_reuses_the_buffer_so_ipip_times_the_pass_path(world: World) -> None:
    """Why the bench times one run per frame: with repeat > 1 the 2nd run on sees the encapsulated
    output (outer IPv4, protocol 4) and passes it."""
    v = world.vips["ipip4"]
    world.run(tcp_frame(v, 43001, P.TCP_SYN))
    before = world.counters()
    loader.test_run(world.prog, tcp_frame(v, 43001, P.TCP_ACK), repeat=50)
    after = world.counters()
    assert after["vip.ipip4.packets"] - before["vip.ipip4.packets"] == 1
    assert after["global.pass_other_proto"] - before["global.pass_other_proto"] == 49


def test_a_run_off_the_timed_path_is_an_error(world: World) -> None:
    v = world.vips["v4tcp"]
    hits = lambda: world.counters()["vip.v4tcp.ct_hits"]  # noqa: E731
    with pytest.raises(RuntimeError, match="counter grew by 0"):
        time_path(world.prog, [tcp_frame(v, 43002, P.TCP_SYN)] * 5, verdict=XDP_TX, counter=hits)
    not_vip = tcp_frame(replace(v, addr="198.18.100.99"), 43003, P.TCP_SYN)
    with pytest.raises(RuntimeError, match=f"returned {XDP_PASS}, expected {XDP_TX}"):
        time_path(world.prog, [not_vip], verdict=XDP_TX)


def test_net_of_empty_runs_both_programs_on_every_frame(world: World, pass_stub: loader.LoadedObject) -> None:
    v = world.vips["v4udp"]
    before = world.counters()
    net, floor = net_of_empty(
        world.prog, pass_stub.programs["sluice_pass"], [udp_frame(v, 43010)] * RUNS, verdict=XDP_TX
    )
    after = world.counters()
    assert floor > 0 and net + floor > 0
    assert after["vip.v4udp.packets"] - before["vip.v4udp.packets"] == RUNS
    assert after["global.rx_packets"] - before["global.rx_packets"] == RUNS  # the stub ran the others
