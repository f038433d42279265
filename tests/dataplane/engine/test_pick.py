"""Differential tests of pick.c against core/flow.py and core/scheduler.py (the oracle)."""

from __future__ import annotations

import ctypes
import json
import random
from collections import Counter
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import numpy as np
import pytest

from sluice.config import Backend, Endpoint
from sluice.core.flow import FiveTuple, flow_hash
from sluice.core.maglev import build_table
from sluice.core.scheduler import Scheduler, SchedulerName, build_scheduler

from .cbuild import FLOW_KEY_LEN, SCHED_KINDS, SchedTable, engine_c

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "flow_hash.json"


def _ip16(ip: IPv4Address | IPv6Address) -> bytes:
    return IPv6Address(f"::ffff:{ip}").packed if ip.version == 4 else ip.packed


def c_flow_key(flow: FiveTuple) -> bytes:
    key = (ctypes.c_uint8 * FLOW_KEY_LEN)()
    src = (ctypes.c_uint8 * 16).from_buffer_copy(_ip16(flow.src_ip))
    dst = (ctypes.c_uint8 * 16).from_buffer_copy(_ip16(flow.dst_ip))
    engine_c().flow_key_build(key, src, dst, flow.src_port, flow.dst_port, flow.proto)
    return bytes(key)


def c_flow_hash(flow: FiveTuple) -> int:
    key = (ctypes.c_uint8 * FLOW_KEY_LEN).from_buffer_copy(c_flow_key(flow))
    return int(engine_c().flow_hash(key))


def test_c_flow_hash_equals_python_on_every_vector() -> None:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    assert len(vectors) > 1000
    families = set()
    for v in vectors:
        flow = FiveTuple.of((v["src_ip"], v["src_port"]), (v["dst_ip"], v["dst_port"]), v["proto"])
        families.add(flow.src_ip.version)
        assert c_flow_key(flow).hex() == v["key_hex"], v
        assert c_flow_hash(flow) == flow_hash(flow) == v["hash"], v
    assert families == {4, 6}


# ------------------------------------------------------------------------------------- schedulers

FLOWS = 10_000
"""Picks per scheduler and seed."""
SEEDS = (1, 2)
WEIGHTS = (0, 0, 1, 1, 1, 2, 3, 5, 7, 100, 65535)
"""Weights drawn for backends: 0 (takes no new flow) often, ties often, the config's maximum."""
TABLE_SIZES = (7, 13, 101, 1009, 65537)
"""Maglev M: small primes make the exclusion walk wrap around the table."""


def make_scheduler(
    name: SchedulerName, backends: list[tuple[Endpoint, int]], table_size: int, rng: random.Random | None
) -> Scheduler:
    """The one place that knows how core/scheduler.py takes its backends."""
    return build_scheduler(name, [Backend(address=a, weight=w) for a, w in backends], table_size, rng)


class CScheduler:
    """pick.c's sched_pick over the same backends, with its own round-robin and active arrays."""

    def __init__(self, name: SchedulerName, backends: list[tuple[Endpoint, int]], table_size: int) -> None:
        n = len(backends)
        self.n = n
        self.weights = (ctypes.c_uint32 * n)(*(w for _, w in backends))
        self.rr_current = (ctypes.c_int64 * n)()
        self.active = (ctypes.c_int64 * n)()
        self.table = SchedTable(kind=SCHED_KINDS[name], n=n, weights=self.weights)
        if name == "maglev":
            # core/maglev.py indexes its sorted identities; pick.h wants config order
            maglev = build_table([(str(a), w) for a, w in backends], table_size)
            config_index = {str(a): i for i, (a, _) in enumerate(backends)}
            lut = np.array([config_index[name] for name in maglev.backends] + [-1], dtype=np.int32)
            self.slots = np.ascontiguousarray(lut[maglev.slots], dtype=np.int32)
            self.table.m = len(self.slots)
            self.table.slots = self.slots.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))

    def pick(self, flow_hash: int, exclude: list[int], r1: float = 0.0, r2: float = 0.0) -> int:
        excluded = (ctypes.c_uint32 * max(1, len(exclude)))(*exclude)
        return int(
            engine_c().sched_pick(
                ctypes.byref(self.table),
                flow_hash,
                excluded,
                len(exclude),
                self.rr_current,
                self.active,
                r1,
                r2,
            )
        )


class ScriptedRandom(random.Random):
    """A `random.Random` whose `random()` returns the values a test queued (the C pick gets the same)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.script: list[float] = []

    def random(self) -> float:
        return self.script.pop(0)


def random_backends(rng: random.Random, *, long_run: bool) -> list[tuple[Endpoint, int]]:
    """1 to 12 backends (`long_run`: 4 to 8, two of them with a weight > 0)."""
    n = rng.randint(4, 8) if long_run else rng.choice((1, 2, 2, 3, 4, 5, 8, 12))
    hosts = rng.sample(range(1, 250), n)
    backends = []
    for k, host in enumerate(hosts):
        text = f"10.0.0.{host}:{rng.randrange(1, 65536)}" if rng.random() < 0.7 else f"[fd00::{host:x}]:80"
        weight = rng.choice(WEIGHTS[2:] if long_run and k < 2 else WEIGHTS)
        backends.append((Endpoint.parse(text), weight))
    return backends


def random_flow(rng: random.Random) -> FiveTuple:
    if rng.random() < 0.7:
        src: IPv4Address | IPv6Address = IPv4Address(rng.getrandbits(32))
        dst: IPv4Address | IPv6Address = IPv4Address(rng.getrandbits(32))
    else:
        src, dst = IPv6Address(rng.getrandbits(128)), IPv6Address(rng.getrandbits(128))
    return FiveTuple(src, dst, rng.randrange(65536), rng.randrange(65536), rng.choice((6, 17)))


def random_exclusion(rng: random.Random, n: int) -> list[int]:
    """No exclusion half of the time, else a random subset (sometimes every backend)."""
    if rng.random() < 0.5:
        return []
    return rng.sample(range(n), rng.randint(1, n))


def random_draw(rng: random.Random) -> float:
    """A uniform draw in [0, 1), with the edges and exact fractions (bisect ties) well represented."""
    shape = rng.random()
    if shape < 0.05:
        return 0.0
    if shape < 0.1:
        return 1.0 - 2.0**-53
    if shape < 0.3:
        denominator = rng.randint(1, 40)
        return rng.randrange(denominator) / denominator
    return rng.random()


def churn_active(
    rng: random.Random, python: Scheduler, c: CScheduler, backends: list[tuple[Endpoint, int]]
) -> None:
    """Open and close a few flows on random backends, on both sides."""
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(backends))
        if rng.random() < 0.55:
            python.on_open(backends[i][0])
            c.active[i] += 1
        else:
            python.on_close(backends[i][0])
            c.active[i] = max(0, c.active[i] - 1)


def compare_picks(name: SchedulerName, seed: int, configs: int) -> Counter[str]:
    """FLOWS picks split over `configs` random backend sets; returns how the picks went."""
    rng = random.Random(seed)
    seen: Counter[str] = Counter()
    for _ in range(configs):
        backends = random_backends(rng, long_run=configs == 1)
        table_size = rng.choice(TABLE_SIZES)
        scripted = ScriptedRandom()
        python = make_scheduler(name, backends, table_size, scripted)
        c = CScheduler(name, backends, table_size)
        index = {a: i for i, (a, _) in enumerate(backends)}
        for _ in range(FLOWS // configs):
            flow = random_flow(rng)
            exclude = random_exclusion(rng, len(backends))
            r1, r2 = random_draw(rng), random_draw(rng)
            scripted.script = [r1, r2]
            got = python.pick(flow, {backends[i][0] for i in exclude})
            want = -1 if got is None else index[got]
            assert c.pick(c_flow_hash(flow), exclude, r1, r2) == want, (backends, flow, exclude, r1, r2)
            candidates = sum(1 for i, (_, w) in enumerate(backends) if w > 0 and i not in exclude)
            if name == "random_two":
                assert len(scripted.script) == (0 if candidates >= 2 else 2)
            seen["none" if got is None else "excluded" if exclude else "picked"] += 1
            if got is not None:
                python.on_open(got)
                c.active[want] += 1
            churn_active(rng, python, c, backends)
    return seen


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["maglev", "least_conn", "random_two"])
def test_c_picks_equal_python_schedulers(name: SchedulerName, seed: int) -> None:
    seen = compare_picks(name, seed, configs=50)
    assert seen["picked"] > 1000 and seen["excluded"] > 1000 and seen["none"] > 100, seen


@pytest.mark.parametrize("seed", SEEDS)
def test_c_round_robin_equals_python_over_one_long_run(seed: int) -> None:
    """Smooth weighted round robin keeps state: one backend set, all the picks in a row."""
    seen = compare_picks("round_robin", seed, configs=1)
    assert seen["picked"] > 1000 and seen["excluded"] > 1000, seen
