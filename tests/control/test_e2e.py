"""Health and runtime control end to end: the controller, the TCP proxy data plane, real backends."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import yaml

from sluice.config import Config, Endpoint
from sluice.control.controller import Controller
from sluice.core.health import Admin, State
from tests.support.loopback import Backend, Backends, Held, Load, free_port, probe, vip_config, wait_for

INTERVAL, TIMEOUT, RISE, FALL = 0.2, 0.2, 2, 2
HEALTH = {"type": "tcp", "interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL, "jitter": 0.1}


async def running(config: Config) -> Controller:
    controller = Controller(config)
    await controller.start()
    return controller


def weight(controller: Controller, backend: Backend) -> int:
    return controller.effective_weights()[("web", backend.address)]


def stats(controller: Controller, backend: Backend) -> int:
    return controller.stats()["web"].backends[backend.address].connect_attempts


async def test_failover_and_rise_under_steady_load(backends: Backends) -> None:
    b0, b1, b2 = [await backends.add() for _ in range(3)]
    port = free_port()
    controller = await running(vip_config([b0, b1, b2], port, health=HEALTH, passive="off"))
    load = Load(port)
    held: list[Held] = []
    try:
        held = [await Held.open(port) for _ in range(24)]
        assert {h.backend for h in held} == {"b0", "b1", "b2"}
        load.start()
        await asyncio.sleep(0.3)

        killed_at = time.monotonic()
        await b1.kill()
        down_at = await wait_for(lambda: weight(controller, b1) == 0, timeout_s=5.0)
        convergence = down_at - killed_at
        attempts_after = stats(controller, b1)
        # pings on the survivors' long-lived flows while the kill is detected and afterwards
        for _ in range(5):
            await asyncio.gather(*(h.ping() for h in held if h.backend != "b1"))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert stats(controller, b1) == attempts_after, "new flows still sent to the dead backend"

        revived_at = time.monotonic()
        await b1.start()
        up_at = await wait_for(lambda: weight(controller, b1) == 1, timeout_s=5.0)
        rise_time = up_at - revived_at
        await wait_for(lambda: load.counts(since=up_at)["b1"] >= 3, timeout_s=3.0)
        await load.stop()
    finally:
        await load.stop()
        for h in held:
            h.close()
        await controller.close()

    print(f"\nfailover convergence {convergence:.3f}s, rise {rise_time:.3f}s")
    assert convergence <= INTERVAL * FALL + TIMEOUT + 0.5
    assert (RISE - 1) * INTERVAL * 0.9 - 0.05 <= rise_time <= RISE * INTERVAL * 1.1 + TIMEOUT + 0.5
    survivors = [h for h in held if h.backend != "b1"]
    assert sum(h.errors for h in survivors) == 0 and all(h.pings == 5 for h in survivors)
    # New flows that picked b1 after it died were retried on another backend: no error. Only flows
    # already on b1 at the kill (at most one per load worker, mid-flight or in b1's accept backlog)
    # were reset with it, right then.
    errors = [t for t, name in load.results if name.startswith("error:")]
    assert len(errors) <= load.workers, errors
    assert all(killed_at <= t <= killed_at + 1.0 for t in errors), (killed_at, errors)
    assert load.counts().keys() >= {"b0", "b1", "b2"}
    transitions = controller.monitor.transitions
    assert (
        transitions[("web", b1.address, State.DOWN)] == 1 and transitions[("web", b1.address, State.UP)] == 1
    )


async def test_passive_ejection_without_active_checks(backends: Backends) -> None:
    b0, b1 = [await backends.add() for _ in range(2)]
    port = free_port()
    passive = {"consecutive_failures": 3, "base_ejection_time": "30s"}
    controller = await running(vip_config([b0, b1], port, passive=passive))
    try:
        await b1.kill()
        start = time.monotonic()
        names = Counter([await probe(port) for _ in range(30)])
        ejected_at = await wait_for(lambda: weight(controller, b1) == 0, timeout_s=2.0)
        record = controller.monitor.record("web", Endpoint.parse(b1.address))
        assert record.health.state is State.EJECTED
        assert names == {"b0": 30}  # connect failures were retried on b0
        print(f"\npassive ejection after {ejected_at - start:.3f}s")
    finally:
        await controller.close()


async def test_drain_then_drain_timeout_closes_the_rest(backends: Backends) -> None:
    b0, b1, b2 = [await backends.add() for _ in range(3)]
    port = free_port()
    controller = await running(vip_config([b0, b1, b2], port, drain_timeout="600ms", health=HEALTH))
    held: list[Held] = []
    try:
        held = [await Held.open(port) for _ in range(24)]
        on_b1 = [h for h in held if h.backend == "b1"]
        others = [h for h in held if h.backend != "b1"]
        assert on_b1 and others
        await controller.set_admin("web", Endpoint.parse(b1.address), Admin.DRAIN)
        drained_at = time.monotonic()
        names = Counter([await probe(port) for _ in range(40)])
        assert names["b1"] == 0 and sum(names.values()) == 40
        assert all([await h.ping() for h in held])  # existing flows continue, b1's too
        snapshot = controller.snapshot()[0].backends[1]
        assert (snapshot.state, snapshot.effective_weight, snapshot.active) == ("draining", 0, len(on_b1))
        await wait_for(lambda: controller.stats()["web"].backends[b1.address].active == 0, timeout_s=3.0)
        assert time.monotonic() - drained_at >= 0.55
        assert not any([await h.ping() for h in on_b1])
        assert all([await h.ping() for h in others])
        assert controller.stats()["web"].closed["drain_timeout"] == len(on_b1)
    finally:
        for h in held:
            h.close()
        await controller.close()


def _write(path: Path, config: Config) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))


async def _probe_round(port: int, sources: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    out = {}
    for i in range(0, len(sources), 25):
        batch = sources[i : i + 25]
        names = await asyncio.gather(*(probe(port, source=s, reset=True) for s in batch))
        out.update(zip(batch, names, strict=True))
    return out


async def test_reload_under_load(backends: Backends, tmp_path: Path) -> None:
    """500 long-lived flows and continuous new flows across 20 reloads that add, remove and re-weight
    backends: no failed connection, no cut flow, and only the changed backends' flows move."""
    pool = [await backends.add() for _ in range(6)]
    port = free_port()
    members = {b.name: 1 for b in pool[:4]}  # name -> weight

    def config() -> Config:
        chosen = [b for b in pool if b.name in members]
        cfg = vip_config(chosen, port, max_connections=5000, health=HEALTH)
        backends_ = tuple(
            b.model_copy(update={"weight": members[n.name]})
            for b, n in zip(cfg.vips[0].backends, chosen, strict=True)
        )
        return cfg.model_copy(update={"vips": (cfg.vips[0].model_copy(update={"backends": backends_}),)})

    path = tmp_path / "sluice.yaml"
    _write(path, config())
    controller = Controller(config())
    await controller.start()
    load = Load(port, workers=3)
    held: list[Held] = []
    # fixed client addresses (127.0.0.2, fixed ports) probe which backend each flow maps to
    sources = [("127.0.0.2", p) for p in range(42000, 42300)]
    steps = [
        ("add", "b4"), ("weight", "b0", 3), ("remove", "b2"), ("add", "b5"), ("weight", "b0", 1),
        ("remove", "b4"), ("add", "b2"), ("weight", "b3", 2), ("remove", "b5"), ("add", "b4"),
        ("weight", "b3", 1), ("remove", "b1"), ("add", "b5"), ("weight", "b4", 2), ("remove", "b0"),
        ("add", "b1"), ("weight", "b4", 1), ("remove", "b5"), ("add", "b0"), ("weight", "b2", 2),
    ]  # fmt: skip
    stray_moves = total_moves = 0
    try:
        for _ in range(20):
            held += await asyncio.gather(*(Held.open(port) for _ in range(25)))
        load.start()
        before = await _probe_round(port, sources)
        for step in steps:
            kind, name = step[0], step[1]
            if kind == "add":
                members[name] = 1
            elif kind == "remove":
                del members[name]
            else:
                members[name] = int(step[2])
            _write(path, config())
            await controller.reload(path)
            after = await _probe_round(port, sources)
            for src, old in before.items():
                new = after[src]
                if old != new:
                    total_moves += 1
                    if name not in (old, new):
                        stray_moves += 1
            before = after
        await asyncio.sleep(0.1)
        await load.stop()
        results = await asyncio.gather(*(h.ping() for h in held))
    finally:
        await load.stop()
        for h in held:
            h.close()
        await controller.close()
    assert len(held) == 500 and all(results), f"{results.count(False)} long-lived flows were cut"
    assert load.errors() == 0 and len(load.results) > 100
    # Maglev's minimal disruption: flows move to/from the changed backend; a few may shuffle
    # between others (the paper's "small" extra disruption).
    print(f"\n{total_moves} moved flows over 20 reloads, {stray_moves} between unchanged backends")
    assert total_moves > 0 and stray_moves <= 0.02 * len(sources) * len(steps)
