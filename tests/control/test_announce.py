"""BGP announcement: the config block, the decision, the BIRD config, the Announcer over a fake
speaker, the controller calling it, and identical Maglev tables across processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from typing import Any

import pytest

from sluice.config import AnnounceOptions, Config, ConfigError, parse_config
from sluice.control.announce import (
    REASON_NO_BACKEND,
    REASON_STOPPING,
    Announcer,
    decide,
    link_problem,
    prefixes_of,
)
from sluice.control.bird import render_bird_config
from sluice.control.controller import Controller
from sluice.control.monitor import Monitor
from sluice.core.maglev import build_table
from tests.support.fakes import FakeClock, FakePlane, ScriptedChecks
from tests.support.privileged import needs

ANNOUNCE: dict[str, Any] = {
    "asn": 65001,
    "router_id": "198.18.2.1",
    "peers": [{"address": "198.18.2.254", "asn": 65000}],
    "hold_time": 3,
    "keepalive_time": 1,
    "withdraw_delay": "10ms",
}


def dsr_vip(name: str, listen: str, backends: int = 3, **extra: Any) -> dict[str, Any]:
    port = listen.rsplit(":", 1)[1]
    return {
        "name": name,
        "listen": listen,
        "mode": "dsr",
        "dsr": {"interface": "eth0"},
        "backends": [{"address": f"198.18.2.{11 + i}:{port}"} for i in range(backends)],
        **extra,
    }


def config(announce: dict[str, Any] | None = None, vips: list[dict[str, Any]] | None = None) -> Config:
    data: dict[str, Any] = {
        "vips": vips
        or [dsr_vip("web", "198.18.100.1:80"), dsr_vip("dns", "198.18.100.1:53", protocol="udp")],
        "announce": {**ANNOUNCE, **(announce or {})},
    }
    return parse_config(data)


def with_weights(cfg: Config, weights: dict[str, int]) -> Config:
    """`cfg` with every backend of the named VIPs at the given weight (an effective config)."""
    vips = tuple(
        v.model_copy(
            update={"backends": tuple(b.model_copy(update={"weight": weights[v.name]}) for b in v.backends)}
        )
        if v.name in weights
        else v
        for v in cfg.vips
    )
    return cfg.model_copy(update={"vips": vips})


# ---------------------------------------------------------------- config


def test_announce_block_defaults() -> None:
    options = config().announce
    assert options is not None
    assert options.prefixes is None and options.med is None and options.communities == ()
    assert options.connect_retry_time == 5 and options.state_dir == "/run/sluice"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"router_id": "fe80::1"}, "announce.router_id"),
        ({"peers": []}, "announce.peers: Value error, at least one peer is needed"),
        ({"peers": [{"address": "nope", "asn": 1}]}, "announce.peers[0].address"),
        ({"asn": 0}, "announce.asn"),
        ({"communities": ["65536:1"]}, "announce.communities"),
        ({"communities": ["a:b"]}, "announce.communities"),
        ({"keepalive_time": 2}, "keepalive_time must be at most a third of hold_time"),
        ({"hold_time": 2}, "announce.hold_time"),
        ({"prefixes": ["198.18.100.1/24"]}, "announce.prefixes"),  # host bits set
        ({"prefixes": ["198.18.200.0/24"]}, "announce.prefixes[0]: 198.18.200.0/24 holds no dsr VIP"),
        ({"unknown": 1}, "announce.unknown: unknown key"),
    ],
)
def test_bad_announce_blocks_name_the_path(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(change)
    assert any(message.replace("Value error, ", "") in line for line in info.value.errors), info.value.errors


def test_announce_needs_a_dsr_vip() -> None:
    vip = {"name": "p", "listen": "127.0.0.1:8000", "backends": [{"address": "127.0.0.1:9000"}]}
    with pytest.raises(ConfigError, match="announce: needs at least one VIP with mode: dsr"):
        parse_config({"vips": [vip], "announce": ANNOUNCE})


# ---------------------------------------------------------------- the decision


def test_default_prefixes_are_the_dsr_vip_addresses_as_host_routes() -> None:
    cfg = config(
        vips=[
            dsr_vip("web", "198.18.100.1:80"),
            dsr_vip("dns", "198.18.100.1:53", protocol="udp"),
            dsr_vip("v6", "[2001:db8::1]:80", backends=0) | {"backends": [{"address": "[2001:db8::11]:80"}]},
            {"name": "p", "listen": "127.0.0.1:8000", "backends": [{"address": "127.0.0.1:9000"}]},
        ]
    )
    got = {p: [v.name for v in vs] for p, vs in prefixes_of(cfg).items()}
    assert got == {"198.18.100.1/32": ["web", "dns"], "2001:db8::1/128": ["v6"]}


def test_configured_prefixes_group_their_vips() -> None:
    cfg = config(
        {"prefixes": ["198.18.100.0/24"]}, [dsr_vip("a", "198.18.100.1:80"), dsr_vip("b", "198.18.100.2:80")]
    )
    assert {p: [v.name for v in vs] for p, vs in prefixes_of(cfg).items()} == {"198.18.100.0/24": ["a", "b"]}


def test_decide_announces_while_one_vip_of_the_prefix_has_a_usable_backend() -> None:
    cfg = config()
    assert decide(cfg, {}, stopping=False) == {"198.18.100.1/32": None}
    assert decide(with_weights(cfg, {"web": 0}), {}, stopping=False) == {
        "198.18.100.1/32": None
    }  # dns serves
    reason = decide(with_weights(cfg, {"web": 0, "dns": 0}), {}, stopping=False)["198.18.100.1/32"]
    assert reason == f"vip web: {REASON_NO_BACKEND}; vip dns: {REASON_NO_BACKEND}"


def test_decide_withdraws_on_a_failing_interface_and_when_stopping() -> None:
    cfg = config()
    assert decide(cfg, {"eth0": "no XDP program attached"}, stopping=False) == {
        "198.18.100.1/32": "vip web: eth0: no XDP program attached; vip dns: eth0: no XDP program attached"
    }
    assert decide(cfg, {"eth1": "down"}, stopping=False) == {"198.18.100.1/32": None}
    assert decide(cfg, {}, stopping=True) == {"198.18.100.1/32": REASON_STOPPING}


@pytest.mark.parametrize(
    ("link", "problem"),
    [
        ({"flags": ["BROADCAST", "UP", "LOWER_UP"], "xdp": {"mode": 1}}, None),
        ({"flags": ["BROADCAST"], "xdp": {"mode": 1}}, "down"),
        ({"flags": ["BROADCAST", "NO-CARRIER", "UP"], "xdp": {"mode": 1}}, "no carrier"),
        ({"flags": ["UP", "LOWER_UP"]}, "no XDP program attached"),
        ({}, "down"),
    ],
)
def test_link_problem(link: dict[str, object], problem: str | None) -> None:
    assert link_problem(link) == problem


# ---------------------------------------------------------------- BIRD config


def test_bird_config_announces_exactly_the_prefixes_with_med_and_communities() -> None:
    cfg = config({"med": 10, "communities": ["65000:100", "65000:1:2"]})
    assert cfg.announce is not None
    text = render_bird_config(cfg.announce, {"198.18.100.1/32", "2001:db8::1/128"})
    assert "router id 198.18.2.1;" in text
    assert "  route 198.18.100.1/32 blackhole;" in text
    assert "  route 2001:db8::1/128 blackhole;" in text
    assert "bgp_med = 10;" in text
    assert "bgp_community.add((65000, 100));" in text
    assert "bgp_large_community.add((65000, 1, 2));" in text
    assert "neighbor 198.18.2.254 port 179 as 65000;" in text
    assert "hold time 3;" in text and "keepalive time 1;" in text
    # deterministic, and empty means nothing announced
    assert text == render_bird_config(cfg.announce, ["2001:db8::1/128", "198.18.100.1/32"])
    assert "route" not in render_bird_config(cfg.announce, set()).replace("router id", "")


def test_bird_accepts_the_config(tmp_path: Any) -> None:
    needs(commands=("bird",))
    cfg = config({"med": 10, "communities": ["65000:100", "65000:1:2"]})
    assert cfg.announce is not None
    for name, prefixes in (("some", {"198.18.100.1/32", "2001:db8::1/128"}), ("none", set())):
        path = tmp_path / f"{name}.conf"
        path.write_text(render_bird_config(cfg.announce, prefixes))
        proc = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the announcer


class FakeSpeaker:
    def __init__(self, log: list[str] | None = None) -> None:
        self.log = log if log is not None else []
        self.prefixes: frozenset[str] = frozenset()
        self.started = self.closed = False
        self.fail = False

    @property
    def running(self) -> bool:
        return self.started and not self.closed

    async def start(self) -> None:
        self.started = True
        self.log.append("speaker start")

    async def apply(self, options: AnnounceOptions, prefixes: frozenset[str]) -> None:
        if self.fail:
            raise RuntimeError("bird says no")
        self.prefixes = prefixes
        self.log.append(f"speaker {sorted(prefixes)}")

    async def close(self) -> None:
        self.closed = True
        self.log.append("speaker close")


class FakeNode:
    def __init__(self) -> None:
        self.problems: dict[str, str] = {}
        self.asked: list[frozenset[str]] = []

    async def __call__(self, interfaces: frozenset[str]) -> dict[str, str]:
        self.asked.append(interfaces)
        return {k: v for k, v in self.problems.items() if k in interfaces}


def announcer(cfg: Config) -> tuple[Announcer, FakeSpeaker, FakeNode]:
    assert cfg.announce is not None
    speaker, node = FakeSpeaker(), FakeNode()
    return Announcer(cfg.announce, speaker=speaker, node_check=node, clock=FakeClock(5.0)), speaker, node


async def test_announcer_follows_backends_and_the_node_check_and_counts() -> None:
    cfg = config()
    a, speaker, node = announcer(cfg)
    await a.start()
    try:
        assert speaker.prefixes == frozenset()
        await a.update(cfg)
        assert speaker.prefixes == a.announced == {"198.18.100.1/32"}
        assert node.asked[-1] == {"eth0"}
        assert a.vip_announced("web") and a.vip_announced("dns")
        await a.update(with_weights(cfg, {"web": 0, "dns": 0}))
        assert speaker.prefixes == frozenset() and not a.vip_announced("web")
        await a.update(cfg)
        node.problems["eth0"] = "no XDP program attached"
        await a.check_node()
        assert speaker.prefixes == frozenset()
        node.problems.clear()
        await a.check_node()
        assert speaker.prefixes == {"198.18.100.1/32"}
    finally:
        await a.close()
    p = "198.18.100.1/32"
    assert a.counts == {(p, "announce"): 3, (p, "withdraw"): 3}
    assert [(e.action, e.reason) for e in a.events] == [
        ("announce", "usable"),
        ("withdraw", f"vip web: {REASON_NO_BACKEND}; vip dns: {REASON_NO_BACKEND}"),
        ("announce", "usable"),
        ("withdraw", "vip web: eth0: no XDP program attached; vip dns: eth0: no XDP program attached"),
        ("announce", "usable"),
        ("withdraw", REASON_STOPPING),
    ]
    assert all(e.at == 5.0 for e in a.events)
    assert speaker.closed


async def test_a_failing_speaker_is_counted_and_retried() -> None:
    cfg = config()
    a, speaker, _ = announcer(cfg)
    await a.start()
    speaker.fail = True
    await a.update(cfg)
    assert a.errors == 1 and a.announced == frozenset()
    speaker.fail = False
    await a.check_node()
    assert a.announced == {"198.18.100.1/32"} == speaker.prefixes
    await a.close()


async def test_removing_the_announce_block_on_reload_withdraws() -> None:
    cfg = config()
    a, speaker, _ = announcer(cfg)
    await a.start()
    await a.update(cfg)
    await a.update(cfg.model_copy(update={"announce": None}))
    assert speaker.prefixes == frozenset()
    assert a.events[-1].reason == "not in the config"
    await a.close()


# ---------------------------------------------------------------- the controller


class RecordingPlane(FakePlane):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def apply(self, config: Config) -> None:
        await super().apply(config)
        self.log.append("plane apply")

    async def close(self) -> None:
        await super().close()
        self.log.append("plane close")


def controller(cfg: Config) -> tuple[Controller, FakeSpeaker, ScriptedChecks, FakeClock, list[str]]:
    assert cfg.announce is not None
    log: list[str] = []
    plane, clock, checks = RecordingPlane(log), FakeClock(), ScriptedChecks()
    speaker = FakeSpeaker(log)
    a = Announcer(cfg.announce, speaker=speaker, node_check=FakeNode(), clock=clock)
    holder: list[Controller] = []
    monitor = Monitor(lambda: holder[0].stats(), clock=clock, checkers=checks.registry())
    c = Controller(cfg, {"dsr": lambda: plane}, monitor=monitor, clock=clock, announcer=a)
    holder.append(c)
    return c, speaker, checks, clock, log


async def test_controller_announces_after_apply_and_withdraws_when_health_takes_every_backend() -> None:
    health = {"type": "tcp", "interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "jitter": 0}
    cfg = config(vips=[dsr_vip("web", "198.18.100.1:80", health=health)])
    c, speaker, checks, clock, log = controller(cfg)
    await c.start()
    try:
        assert log[:3] == ["speaker start", "plane apply", "speaker ['198.18.100.1/32']"]
        assert [v.announced for v in c.snapshot()] == [True]
        checks.down.add(cfg.vips[0].listen)  # dsr: every backend is checked on the VIP
        clock.t = 1.0
        await c.on_health(await c.monitor.step())
        assert speaker.prefixes == frozenset()
        assert [v.announced for v in c.snapshot()] == [False]
    finally:
        await c.close()


async def test_graceful_shutdown_withdraws_before_the_plane_closes() -> None:
    c, _, _, _, log = controller(config())
    await c.start()
    log.clear()
    await c.shutdown(timeout_s=0.1)
    assert log == ["speaker []", "speaker close", "plane close"]


async def test_without_an_announce_block_the_snapshot_says_none() -> None:
    plane = FakePlane()
    cfg = parse_config({"vips": [dsr_vip("web", "198.18.100.1:80")]})
    c = Controller(
        cfg, {"dsr": lambda: plane}, monitor=Monitor(lambda: {}, checkers=ScriptedChecks().registry())
    )
    await c.apply(cfg)
    assert [v.announced for v in c.snapshot()] == [None]
    await c.close()


# ---------------------------------------------------------------- identical Maglev tables


_DIGEST = """
import json, sys
from sluice.core.maglev import build_table
backends = json.loads(sys.argv[1])
print(build_table([tuple(b) for b in backends], int(sys.argv[2])).digest())
"""


@pytest.mark.parametrize("size", [251, 65537])
def test_every_process_builds_the_identical_table_whatever_the_backend_order(size: int) -> None:
    rng = random.Random(7)
    backends = [(f"198.18.{i // 200}.{i % 200 + 1}:80", rng.choice([1, 1, 2, 5])) for i in range(40)]
    expected = build_table(backends, size).digest()
    digests = set()
    for seed in ("0", "1", "12345"):
        order = backends[:]
        rng.shuffle(order)
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST, json.dumps(order), str(size)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        digests.add(out.stdout.strip())
    assert digests == {expected}
