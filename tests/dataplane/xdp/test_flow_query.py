"""`sluice flow` gives the same answer as the XDP program for any tuple: random seeded client tuples run
through the program an XdpPlane loaded (BPF_PROG_TEST_RUN, real maps) and through explain_flow / the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from sluice.config import Config, Endpoint, parse_config
from sluice.control.flowquery import explain_flow
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.loader import XDP_TX
from sluice.dataplane.xdp.plane import XdpPlane
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import pinned_cpu
from tests.dataplane.xdp.test_plane import LB_MAC, WEB3, config, make_plane
from tests.support.privileged import needs

DNS3 = ("198.18.1.21:53", "198.18.1.22:53", "198.18.1.23:53")
VIP_ADDR = "198.18.100.1"
CLIENT_MAC = "02:00:00:00:00:aa"
TUPLES = 320  # per VIP
IPPROTO_IPIP = 4


@pytest.fixture
def instance() -> Iterator[str]:
    needs(root=True, commands=("clang",))
    name = f"test-flowq-{os.getpid()}"
    loader.remove_pins(name)
    yield name
    loader.remove_pins(name)


def random_sources(seed: int, n: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [
        (str(IPv4Address(rng.randrange(0x01000000, 0xE0000000))), rng.randrange(1, 65536)) for _ in range(n)
    ]


def frame_for(vip: str, src: str, sport: int) -> bytes:
    l4 = (6, P.tcp(sport, 80, P.TCP_SYN)) if vip == "web" else (17, P.udp(sport, 53, b"q"))
    return P.eth(LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(src, VIP_ADDR, l4[0], l4[1]))


def program_backend(plane: XdpPlane, vip: str, src: str, sport: int) -> str:
    """The backend the loaded program sent this client's first packet to ("ip:port")."""
    assert plane._obj is not None
    r = loader.test_run(plane._obj.programs["sluice_xdp"], frame_for(vip, src, sport))
    assert r.verdict == XDP_TX, (vip, src, sport, r.verdict)
    if vip == "web":  # l2: the backend's MAC (FakeNeighbours: 02:be:00:00:00:<last octet>)
        by_mac = {f"02:be:00:00:00:{int(b.split(':')[0].rsplit('.', 1)[1]):02x}": b for b in WEB3}
        return by_mac[P.mac_str(r.data[:6])]
    # ipip: every backend behind the one next hop; the outer IPv4 destination is the backend
    assert P.mac_str(r.data[:6]) == "02:00:00:00:ff:fe"
    assert int.from_bytes(r.data[12:14]) == P.ETH_IPV4 and r.data[14 + 9] == IPPROTO_IPIP
    return f"{IPv4Address(r.data[14 + 16 : 14 + 20])}:53"


def answer(cfg: Config, vip: str, src: str, sport: int) -> str:
    return explain_flow(cfg, vip, Endpoint.parse(f"{src}:{sport}")).split()[0]


async def test_sluice_flow_answers_like_the_program(instance: str, tmp_path: Path) -> None:
    cfg = config(WEB3, udp_backends=DNS3)
    # the same VIPs with a different Maglev table: a wrong answer the comparison must notice
    data = cfg.model_dump(mode="json")
    for v in data["vips"]:
        v["maglev_table_size"] = 257
    wrong = parse_config(data)

    program: dict[tuple[str, str, int], str] = {}
    plane = make_plane(instance, tmp_path)
    await plane.apply(cfg)
    try:
        for _ in pinned_cpu():
            for vip, seed, backends in (("web", 1, WEB3), ("dns", 2, DNS3)):
                seen: dict[str, int] = {}
                wrong_agrees = 0
                for src, sport in random_sources(seed, TUPLES):
                    got = program[vip, src, sport] = program_backend(plane, vip, src, sport)
                    assert answer(cfg, vip, src, sport) == got, (vip, src, sport)
                    seen[got] = seen.get(got, 0) + 1
                    wrong_agrees += answer(wrong, vip, src, sport) == got
                # every backend is used, so agreement is not one constant answer
                assert set(seen) == set(backends), seen
                assert min(seen.values()) > TUPLES // 6, seen
                # a wrong table disagrees with the program about as often as chance says (2/3)
                assert wrong_agrees < TUPLES // 2, (vip, wrong_agrees)
    finally:
        await plane.close()

    # the CLI itself, for a few of those tuples, against what the program did
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    for vip, src, sport in list(program)[:2] + list(program)[-1:]:
        out = subprocess.run(
            [sys.executable, "-m", "sluice", "flow", str(path), vip, f"{src}:{sport}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert out.split()[0] == program[vip, src, sport], out
