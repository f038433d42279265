"""End to end: the XDP DSR data plane in the namespace lab (src/sluice/lab/dsr.py). Root only.

Every check compares with what core/maglev.py + core/flow.py say, so "distribution follows Maglev"
is exact per flow, not statistical."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.config import parse_config
from sluice.core.flow import FiveTuple, flow_hash
from sluice.core.maglev import build_table
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.maps import Map, VipStatsC, fields
from sluice.lab import dsr
from sluice.lab.dsr import CLIENT, VIP, DsrLab
from tests.support.privileged import needs

pytestmark = pytest.mark.timeout(120)


def owner(lab: DsrLab, backends: list[int] | None, vip: str, sport: int) -> str:
    """The backend name (b1..) Maglev gives the flow CLIENT:sport -> VIP of `vip` under that config."""
    config = parse_config(lab.config(backends)).vip(vip)
    table = build_table([(str(b.address), b.weight) for b in config.backends], config.maglev_table_size)
    proto = 6 if config.protocol == "tcp" else 17
    h = flow_hash(FiveTuple.of((CLIENT, sport), (VIP, config.listen.port), proto))
    identity = table.backends[table.slots[h % config.maglev_table_size]]
    return f"b{int(identity.split(':')[0].rsplit('.', 1)[1]) - 10}"


def moving_port(lab: DsrLab, before: list[int], after: list[int], start: int) -> int:
    """A client port whose flow Maglev moves between the two backend sets."""
    for sport in range(start, start + 2000):
        if owner(lab, before, "web", sport) != owner(lab, after, "web", sport):
            return sport
    raise AssertionError("no moving flow found")


def make_lab(forwarding: dsr.Forwarding, tmp_path: Path) -> Iterator[DsrLab]:
    needs(root=True, commands=("clang", "ip", "taskset"))
    lab = DsrLab.create(forwarding, tmp_path)
    try:
        lab.start_backends()
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(params=["l2", "ipip"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DsrLab]:
    yield from make_lab(request.param, tmp_path)


@pytest.fixture
def l2_lab(tmp_path: Path) -> Iterator[DsrLab]:
    yield from make_lab("l2", tmp_path)


def test_tcp_and_udp_follow_maglev_and_only_inbound_passes_the_lb(lab: DsrLab) -> None:
    lb = lab.start_lb(lab.write_config("all"))
    try:
        before = lb.counters()
        out_before = lab.tcp_out_segments()
        http = lab.http_burst(42000, 24)
        out_segments = lab.tcp_out_segments() - out_before
        dns_answers = lab.dns_burst(43000, 24)
        after = lb.counters()
    finally:
        lb.quit()
    assert http == {p: owner(lab, None, "web", p) for p in http}
    assert dns_answers == {p: owner(lab, None, "dns", p) for p in dns_answers}
    assert len(set(http.values())) == 3  # every backend served some flows

    def delta(key: str, field: str) -> int:
        return after[key][field] - before.get(key, {}).get(field, 0)

    # every TCP segment the client sent to the VIP went through the LB, exactly once ...
    assert delta("vip:web", "packets") == out_segments
    assert delta("vip:web", "new_flows") == 24
    assert delta("vip:dns", "packets") == delta("vip:dns", "new_flows") == 24
    # ... and no reply (VIP -> client) ever reached it: backends answered the client directly
    assert delta("global", "pass_not_vip") == 0
    per_backend = {k.split("/")[1]: v["new_flows"] for k, v in after.items() if k.startswith("backend:web/")}
    assert sorted(per_backend.values()) == sorted(list(http.values()).count(f"b{i}") for i in (1, 2, 3))


def test_removing_a_backend_moves_only_its_flows(l2_lab: DsrLab) -> None:
    lab = l2_lab
    lb = lab.start_lb(lab.write_config("all"))
    try:
        first = lab.http_burst(44000, 30)
        lb.apply(lab.write_config("without-b3", [0, 1]))
        second = lab.http_burst(44000, 30)
    finally:
        lb.quit()
    assert first == {p: owner(lab, None, "web", p) for p in first}
    assert "b3" in first.values()
    for sport, backend in first.items():
        if backend != "b3":
            assert second[sport] == backend
        else:
            assert second[sport] == owner(lab, [0, 1], "web", sport) != "b3"


def test_established_connection_survives_a_table_change(lab: DsrLab) -> None:
    sport = moving_port(lab, [0, 1], [0, 1, 2], 45000)
    fresh = moving_port(lab, [0, 1], [0, 1, 2], sport + 1)  # a new flow with the same fate
    old_owner = owner(lab, [0, 1], "web", sport)
    lb = lab.start_lb(lab.write_config("two", [0, 1]))
    session = lab.http_session(sport)
    try:
        assert session.get() == (old_owner, sport)
        lb.apply(lab.write_config("three", [0, 1, 2]))
        for _ in range(3):
            assert session.get() == (old_owner, sport)  # the connection table keeps it
        # a new connection follows the new table
        assert lab.http_burst(fresh, 1) == {fresh: owner(lab, [0, 1, 2], "web", fresh)}
        assert owner(lab, [0, 1, 2], "web", fresh) != owner(lab, [0, 1], "web", fresh)
        counters = lb.counters()
    finally:
        session.close()
        lb.quit()
    assert counters["vip:web"]["ct_hits"] >= 3


def test_restarting_the_lb_keeps_established_connections(l2_lab: DsrLab) -> None:
    lab = l2_lab
    sport = moving_port(lab, [0, 1], [0, 1, 2], 46000)
    old_owner = owner(lab, [0, 1], "web", sport)
    lb = lab.start_lb(lab.write_config("two", [0, 1]))
    session = lab.http_session(sport)
    try:
        assert session.get() == (old_owner, sport)
        lb.kill()  # crash: the program stays attached and keeps forwarding on the pinned maps
        assert session.get() == (old_owner, sport)
        lb = lab.start_lb(lab.write_config("three", [0, 1, 2]))  # new process, new table
        assert session.get() == (old_owner, sport)
        assert lb.counters()["vip:web"]["ct_hits"] >= 2
    finally:
        session.close()
        lb.quit()
    # a clean stop detaches the program
    assert "xdp" not in lab.ns("lb").run("ip", "link", "show", "eth0").stdout


# One connection: SYN (and the handshake's ACK) sent from one CPU, the request from another. On veth
# the LB's XDP program runs on the CPU that sent the frame, so the LB sees the flow on both CPUs.
SPLIT_CLIENT = r"""
import json, os, socket, struct, sys
vip, port, sport, cpu_syn, cpu_data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
os.sched_setaffinity(0, {cpu_syn})
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close: no TIME_WAIT
s.settimeout(5)
s.bind(("0.0.0.0", sport))
s.connect((vip, port))
os.sched_setaffinity(0, {cpu_data})
data = b""
try:
    s.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
    while chunk := s.recv(4096):
        data += chunk
    print(json.dumps({"body": data.split(b"\r\n\r\n", 1)[1].decode().strip()}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}))
s.close()
"""


def split_request(lab: DsrLab, sport: int, cpu_syn: int, cpu_data: int) -> str:
    cmd = ["nsenter", f"--net=/run/netns/{lab.ns('client').name}", sys.executable, "-c", SPLIT_CLIENT]
    args = [VIP, str(dsr.HTTP_PORT), str(sport), str(cpu_syn), str(cpu_data)]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30, check=True).stdout
    result = json.loads(out)
    return str(result.get("body", f"error {result.get('error')}"))


def per_cpu_vip_counters(lab: DsrLab) -> list[dict[str, int]]:
    """Every VIP's counters summed, one dict per CPU, from the LB's pinned vip_stats."""
    fd = loader.obj_get(loader.pin_dir(lab.instance) / "vip_stats")
    try:
        stats = Map(fd, ctypes.c_uint32, VipStatsC, percpu=True)
        per_cpu: list[dict[str, int]] = [dict.fromkeys(fields(VipStatsC()), 0) for _ in range(stats.ncpus)]
        for index in range(4):
            for cpu, value in enumerate(stats.lookup_percpu(ctypes.c_uint32(index)) or []):
                for k, n in fields(value).items():
                    per_cpu[cpu][k] += n
        return per_cpu
    finally:
        os.close(fd)


def test_a_new_connection_on_an_old_5_tuple_follows_its_syn_across_cpus(l2_lab: DsrLab) -> None:
    """Issue 14's lab failure: a first connection (SYN on CPU 0, data on CPU 1), then a table change
    (a backend undrained), then a new connection on the same 5-tuple: its SYN on CPU 0 picks the new
    owner, and its data on CPU 1 must go there too, not to what CPU 1 saw of the first connection."""
    lab = l2_lab
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")  # every machine this runs on has two; documented, not a privilege skip
    cpu_syn, cpu_data = cpus[0], cpus[1]
    sport = moving_port(lab, [0, 1], [0, 1, 2], 47000)
    old_owner, new_owner = owner(lab, [0, 1], "web", sport), owner(lab, [0, 1, 2], "web", sport)
    lb = lab.start_lb(lab.write_config("two", [0, 1]))
    try:
        before = per_cpu_vip_counters(lab)
        assert split_request(lab, sport, cpu_syn, cpu_data) == old_owner
        lb.apply(lab.write_config("three", [0, 1, 2]))
        results = [split_request(lab, sport, cpu_syn, cpu_data) for _ in range(3)]
        after = per_cpu_vip_counters(lab)
    finally:
        lb.quit()
    assert results == [new_owner] * 3
    # the premise: every SYN was handled on cpu_syn and the requests reached the LB on cpu_data
    assert after[cpu_syn]["new_flows"] - before[cpu_syn]["new_flows"] == 4
    assert after[cpu_data]["new_flows"] == before[cpu_data]["new_flows"]
    assert after[cpu_data]["ct_hits"] - before[cpu_data]["ct_hits"] >= 4
