"""Where a dsr VIP's checks go (dataplane/xdp/checkpath.py), the monitor's use of it, and the rules
and routes checkroutes.py asks iproute2 for (recorded, not run). Pure: no root, no network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any, cast

import dns.message
import pytest

from sluice.checks import build_checker
from sluice.config import Config, Endpoint, HealthCheck, parse_config
from sluice.control.monitor import Monitor
from sluice.dataplane.xdp.checkpath import (
    MARK_PREFIX_MASK,
    RULE_PREF,
    CheckPathError,
    check_paths,
    check_target,
    instance_prefix,
)
from sluice.dataplane.xdp.checkroutes import CheckForwarding
from tests.support.fakes import FakeClock, ScriptedChecks

VIP = "198.18.100.1"
HEALTH = {"type": "tcp", "jitter": 0}


def dsr_vip(name: str, listen: str, backends: Sequence[str], **extra: Any) -> dict[str, Any]:
    vip: dict[str, Any] = {
        "name": name,
        "protocol": "tcp",
        "listen": listen,
        "mode": "dsr",
        "dsr": {"interface": "eth0"},
        "backends": [{"address": b} for b in backends],
        "health": HEALTH,
    }
    return vip | extra


def config(*vips: dict[str, Any], instance: str | None = None) -> Config:
    data: dict[str, Any] = {"vips": list(vips)}
    if instance is not None:
        data["instance"] = instance
    return parse_config(data)


def backends(n: int, port: int = 80) -> list[str]:
    return [f"198.18.0.{11 + i}:{port}" for i in range(n)]


def marks(cfg: Config) -> dict[tuple[str, str], int]:
    return {(str(v), str(b)): p.mark for (v, b), p in check_paths(cfg).items()}


def test_every_backend_of_a_checked_dsr_vip_gets_its_own_mark_with_the_instance_prefix() -> None:
    cfg = config(dsr_vip("web", f"{VIP}:80", backends(3)))
    paths = check_paths(cfg)
    assert sorted(str(b) for _, b in paths) == ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    assert len({p.mark for p in paths.values()}) == 3
    assert {p.mark & MARK_PREFIX_MASK for p in paths.values()} == {instance_prefix("eth0")}
    assert all(p.forwarding == "l2" and p.interface == "eth0" for p in paths.values())
    other = check_paths(config(dsr_vip("web", f"{VIP}:80", backends(3)), instance="other"))
    assert {p.mark & MARK_PREFIX_MASK for p in other.values()} == {instance_prefix("other")}
    assert instance_prefix("other") != instance_prefix("eth0")


def test_two_vips_on_one_address_share_a_backends_mark_and_marks_survive_other_changes() -> None:
    web = dsr_vip("web", f"{VIP}:80", backends(2))
    dns = dsr_vip("dns", f"{VIP}:53", backends(2, 53), protocol="udp")
    before = marks(config(web, dns))
    assert len(before) == 2  # one path per (VIP address, backend address)
    grown = marks(config(dsr_vip("web", f"{VIP}:80", backends(3)), dns))
    assert {k: grown[k] for k in before} == before  # adding a backend moves no other mark


@pytest.mark.parametrize(
    ("vip", "why"),
    [
        (dsr_vip("web", f"{VIP}:80", backends(2), health=None), "no health block"),
        (dsr_vip("web", f"{VIP}:80", backends(2), health={"type": "none"}), "type none"),
        (dsr_vip("web", "[2001:db8::1]:80", ["[2001:db8::11]:80"]), "IPv6"),
        (
            {
                "name": "web",
                "listen": "127.0.0.1:8080",
                "backends": [{"address": "127.0.0.1:9001"}],
                "health": HEALTH,
            },
            "proxy mode",
        ),
    ],
)
def test_vips_whose_checks_stay_on_the_backend_address(vip: dict[str, Any], why: str) -> None:
    cfg = config(vip)
    assert check_paths(cfg) == {}, why
    v = cfg.vips[0]
    assert check_target(v, v.backends[0], {}) == (v.backends[0].address, 0)


def test_the_target_is_the_vip_on_its_port_or_the_check_port() -> None:
    vip = dsr_vip("web", f"{VIP}:80", backends(2))
    vip["backends"][1]["check_port"] = 8080
    cfg = config(vip)
    paths = check_paths(cfg)
    vip = cfg.vips[0]
    first, second = (check_target(vip, b, paths) for b in vip.backends)
    assert first == (Endpoint.parse(f"{VIP}:80"), paths[(IPv4Address(VIP), IPv4Address("198.18.0.11"))].mark)
    assert second[0] == Endpoint.parse(f"{VIP}:8080") and second[1] != first[1]


def test_ipip_paths_carry_the_next_hop_mac_and_an_outer_source_of_the_prefix() -> None:
    ipip = {
        "interface": "eth0",
        "forwarding": "ipip",
        "next_hop_mac": "02:00:00:00:00:fe",
        "outer_source": "198.19.0.0/16",
    }
    (path,) = check_paths(config(dsr_vip("web", f"{VIP}:80", backends(1), dsr=ipip))).values()
    assert (path.next_hop_mac, path.outer_source) == ("02:00:00:00:00:fe", IPv4Address("198.19.0.1"))
    one = ipip | {"outer_source": "198.19.7.7/32"}
    (path,) = check_paths(config(dsr_vip("web", f"{VIP}:80", backends(1), dsr=one))).values()
    assert path.outer_source == IPv4Address("198.19.7.7")


def test_one_backend_reached_two_ways_for_one_vip_address_is_refused() -> None:
    web = dsr_vip("web", f"{VIP}:80", backends(1))
    other = dsr_vip("dns", f"{VIP}:53", backends(1, 53), protocol="udp", dsr={"interface": "eth1"})
    with pytest.raises(CheckPathError, match="different dsr settings"):
        check_paths(config(web, other))


async def test_the_monitor_checks_a_dsr_backend_on_the_vip_with_its_mark() -> None:
    checks = ScriptedChecks()
    mon = Monitor(lambda: {}, clock=FakeClock(), checkers=checks.registry())
    cfg = config(dsr_vip("web", f"{VIP}:80", backends(2)))
    mon.configure(cfg)
    await mon.step()
    expected = marks(cfg)
    assert checks.calls == [Endpoint.parse(f"{VIP}:80")] * 2
    assert sorted(r.mark for r in mon.records()) == sorted(expected.values())
    assert {str(r.address.ip): r.mark for r in mon.records()} == {b: m for (_, b), m in expected.items()}
    mon.configure(
        config(dsr_vip("web", f"{VIP}:80", backends(2), health={"type": "tcp", "jitter": 0, "interval": 3}))
    )
    assert {r.mark for r in mon.records()} == set(expected.values())  # a reload keeps them


class RecordingRun:
    """A fake iproute2: records commands, answers `ip -j rule show` from the rules it holds."""

    def __init__(self, rules: Sequence[int] = ()) -> None:
        self.rules = set(rules)
        self.commands: list[str] = []

    def __call__(self, args: Sequence[str]) -> str:
        line = " ".join(args)
        self.commands.append(line)
        if line.startswith("ip -j rule show"):
            return json.dumps(
                [{"priority": RULE_PREF, "fwmark": hex(m), "table": str(m)} for m in self.rules]
            )
        if line.startswith("ip -j route get"):
            return json.dumps([{"type": "unicast", "dst": args[4]}])
        if args[:3] == ["ip", "rule", "add"]:
            self.rules.add(int(args[6], 16))
        if args[:3] == ["ip", "rule", "del"]:
            self.rules.discard(int(args[6], 16))
        return ""


def test_forwarding_converges_on_the_paths_and_leaves_other_instances_alone() -> None:
    cfg = config(dsr_vip("web", f"{VIP}:80", backends(2)))
    paths, prefix = check_paths(cfg), instance_prefix("eth0")
    a, b = sorted(p.mark for p in paths.values())
    stale, foreign = prefix | 0x7777, instance_prefix("other") | 1
    run = RecordingRun([stale, foreign, a])  # left by a crashed run, and another instance's
    forwarding = CheckForwarding(run=run)
    forwarding.apply(paths, prefix)
    assert run.rules == {foreign, a, b}
    assert f"ip route flush table {stale}" in run.commands
    assert f"ip rule add pref {RULE_PREF} fwmark {hex(b)} table {b}" in run.commands
    assert f"ip rule add pref {RULE_PREF} fwmark {hex(a)} table {a}" not in run.commands  # already there
    for p in paths.values():
        assert f"ip route replace {VIP}/32 via {p.backend} dev eth0 onlink table {p.mark}" in run.commands
    installed = len(run.commands)
    forwarding.apply(paths, prefix)  # again (a health change re-applies the config): one look, no change
    assert run.commands[installed:] == [f"ip -j rule show pref {RULE_PREF}"]
    forwarding.close()
    assert run.rules == {foreign}


def test_a_vip_that_is_local_here_is_refused_before_anything_is_installed() -> None:
    class LocalVip(RecordingRun):
        def __call__(self, args: Sequence[str]) -> str:
            if " ".join(args).startswith("ip -j route get"):
                return json.dumps([{"type": "local", "dst": VIP}])
            return super().__call__(args)

    run = LocalVip()
    with pytest.raises(CheckPathError, match=f"VIP {VIP} is a local address of this node"):
        CheckForwarding(run=run).apply(check_paths(config(dsr_vip("web", f"{VIP}:80", backends(1)))), 1)
    assert not any(c.startswith(("ip rule add", "ip route replace")) for c in run.commands)


class _TwoAnswers(asyncio.DatagramProtocol):
    """Answers a DNS query with a reply of another id first, then the real one."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        wrong = dns.message.make_response(query)
        wrong.id = (query.id + 1) % 65536
        wrong.set_rcode(2)  # SERVFAIL: would fail the check if it were taken
        self.transport.sendto(wrong.to_wire(), addr)
        self.transport.sendto(dns.message.make_response(query).to_wire(), addr)


async def test_a_dns_check_skips_replies_that_do_not_answer_its_query() -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _TwoAnswers, local_addr=("127.0.0.1", 0)
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        spec = HealthCheck.model_validate({"type": "dns", "query_name": "ok.example", "timeout": 1})
        result = await build_checker(spec)(Endpoint.parse(f"127.0.0.1:{port}"))
    finally:
        transport.close()
    assert (result.ok, result.detail) == (True, "NOERROR")


def test_without_paths_a_missing_iproute2_is_no_error_but_with_paths_it_is() -> None:
    def no_ip(args: Sequence[str]) -> str:
        raise CheckPathError(f"{args[0]} not found: DSR checks through the VIP need iproute2")

    CheckForwarding(run=no_ip).apply({}, instance_prefix("eth0"))  # a config without dsr checks
    paths = check_paths(config(dsr_vip("web", f"{VIP}:80", backends(1))))
    with pytest.raises(CheckPathError, match="need iproute2"):
        CheckForwarding(run=no_ip).apply(paths, instance_prefix("eth0"))
