"""The UDP proxy on real sockets (127.0.0.0/8 and ::1): sessions, stickiness, DNS, limits, floods.

Every test runs on both engines: the python one (`UdpListener`) and the native one
(`NativeUdpListener`, one worker; the asyncio loop only drives the test's clients and backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import resource
import socket
import struct
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any, cast

import dns.asyncquery
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from sluice.config import Endpoint, Timeouts, UdpOptions
from sluice.core.flow import IPPROTO_UDP, FiveTuple
from sluice.core.scheduler import build_scheduler
from sluice.dataplane.proxy import udp as udp_module
from tests.dataplane.proxy import udp_helpers
from tests.dataplane.proxy.helpers import run
from tests.dataplane.proxy.udp_helpers import (
    LOOPS,
    Address,
    Client,
    EchoBackend,
    echo_backends,
    held_fds,
    make_listener,
    make_vip,
    serving,
    udp_socket,
    upstream_sockets,
    wait_for,
)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
UDP_SEGMENT = 103  # linux/udp.h: send one buffer as several datagrams (GSO)

by_loop = pytest.mark.parametrize("loop", LOOPS)


engine = pytest.fixture(autouse=True, params=udp_helpers.ENGINES)(udp_helpers.each_engine)
"""Every test once per engine: `make_listener` / `serving` build that engine's listener."""


def name_of(reply: bytes) -> str:
    return reply.split(b"|", 1)[0].decode()


# --------------------------------------------------------------------------- sessions, stickiness


@by_loop
def test_500_clients_stick_to_the_backend_sluice_flow_names(loop: str) -> None:
    """500 client sockets x 10 datagrams through a 3-backend maglev VIP: every reply comes from the
    VIP, every flow stays on one backend, and that backend is the one the maglev scheduler (the code
    behind `sluice flow`) picks for the client's 5-tuple."""

    async def scenario() -> None:
        async with echo_backends(3) as backends, serving(make_vip([b.endpoint for b in backends])) as lb:
            vip_host, vip_port = lb.address
            scheduler = build_scheduler("maglev", [(b.endpoint, 1) for b in backends])
            names = {b.endpoint: b.name for b in backends}
            clients = [await Client.open(lb.address) for _ in range(500)]
            try:
                seen: dict[int, set[str]] = {i: set() for i in range(len(clients))}

                async def exchange(i: int, seq: int) -> None:
                    payload = f"c{i}:{seq}".encode()
                    reply, source = await clients[i].request(payload)
                    assert source[:2] == (vip_host, vip_port)
                    assert reply.endswith(b"|" + payload)
                    seen[i].add(name_of(reply))

                for seq in range(10):
                    for start in range(0, len(clients), 100):  # 100 datagrams in flight at most
                        await asyncio.gather(*(exchange(i, seq) for i in range(start, start + 100)))

                for i, client in enumerate(clients):
                    host, port = client.address
                    flow = FiveTuple(ip_address(host), ip_address(vip_host), port, vip_port, IPPROTO_UDP)
                    expected = scheduler.pick(flow)
                    assert expected is not None
                    assert seen[i] == {names[expected]}, f"client {host}:{port}"
                assert len(set().union(*seen.values())) == 3

                stats = lb.stats
                assert stats.sessions == stats.active == stats.flows_total == 500
                per_backend = [stats.backends[str(b.endpoint)] for b in backends]
                assert sum(s.active for s in per_backend) == 500
                assert sum(s.datagrams_to_backend for s in per_backend) == 5000
                assert sum(s.datagrams_from_backend for s in per_backend) == 5000
                sent = sum(len(f"c{i}:{seq}") for i in range(500) for seq in range(10))
                assert sum(s.bytes_to_backend for s in per_backend) == sent
                assert sum(s.bytes_from_backend for s in per_backend) == sent + 5000 * len("b0|")
                assert upstream_sockets([b.endpoint for b in backends], held=held_fds(lb)) == 500
            finally:
                for client in clients:
                    client.close()
        assert upstream_sockets([b.endpoint for b in backends]) == 0  # close() closed every NAT entry

    run(loop, scenario())


# --------------------------------------------------------------------------------------------- DNS


class DnsServer(asyncio.DatagramProtocol):
    """Answers A queries with 198.18.0.53, written with dnspython."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "198.18.0.53"))
        self.queries += 1
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@by_loop
def test_dns_through_the_vip_ends_each_session_with_its_answer(loop: str) -> None:
    async def scenario() -> None:
        server = DnsServer()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: server, local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            endpoint = Endpoint(ip_address("127.0.0.1"), port)
            vip = make_vip([endpoint], udp=UdpOptions(responses=1))
            async with serving(vip) as lb:
                for n in range(3):
                    query = dns.message.make_query(f"host{n}.example.test", "A")
                    answer = await dns.asyncquery.udp(query, lb.address[0], port=lb.address[1], timeout=2)
                    assert [r.address for r in answer.answer[0]] == ["198.18.0.53"]
                    assert answer.id == query.id
                    await wait_for(lambda: lb.stats.sessions == 0)  # freed right after the answer
                    assert upstream_sockets([endpoint], held=held_fds(lb)) == 0
                assert lb.stats.flows_total == 3
                assert lb.stats.closed["responses"] == 3
                assert server.queries == 3
        finally:
            transport.close()

    run(loop, scenario())


# ------------------------------------------------------------------------------ idle, LRU, bounds


def test_an_idle_session_expires_on_time() -> None:
    async def scenario() -> None:
        async with echo_backends(1) as backends:
            vip = make_vip([backends[0].endpoint], timeouts=Timeouts(idle=0.2))
            async with serving(vip) as lb:
                client = await Client.open(lb.address)
                try:
                    await client.request(b"hello")
                    started = asyncio.get_running_loop().time()
                    assert lb.stats.sessions == 1
                    await wait_for(lambda: lb.stats.sessions == 0, timeout=2.0)
                    elapsed = asyncio.get_running_loop().time() - started
                    assert 0.15 <= elapsed < 1.5
                    assert lb.stats.closed["idle_timeout"] == 1
                    assert upstream_sockets([backends[0].endpoint], held=held_fds(lb)) == 0
                    reply, _ = await client.request(b"again")  # a new session
                    assert reply == b"b0|again"
                    assert lb.stats.flows_total == 2
                finally:
                    client.close()

    run("uvloop", scenario())


def test_a_full_table_evicts_the_least_recently_used_session() -> None:
    async def scenario() -> None:
        async with echo_backends(2) as backends:
            endpoints = [b.endpoint for b in backends]
            async with serving(make_vip(endpoints, udp=UdpOptions(max_sessions=3))) as lb:
                clients = [await Client.open(lb.address) for _ in range(5)]
                try:
                    for client in clients:
                        await client.request(b"x")
                    assert lb.stats.sessions == 3
                    assert lb.stats.evictions == lb.stats.closed["evicted"] == 2
                    assert upstream_sockets(endpoints, held=held_fds(lb)) == 3
                    reply, source = await clients[0].request(b"back")  # evicted: a new session
                    assert reply.endswith(b"|back") and source == lb.address
                    assert (lb.stats.flows_total, lb.stats.evictions, lb.stats.sessions) == (6, 3, 3)
                    lb.update(make_vip(endpoints, udp=UdpOptions(max_sessions=1)))  # applies at once
                    assert (lb.stats.evictions, lb.stats.sessions) == (5, 1)
                    assert upstream_sockets(endpoints, held=held_fds(lb)) == 1
                finally:
                    for client in clients:
                        client.close()

    run("uvloop", scenario())


@by_loop
def test_a_flood_of_spoofed_sources_stays_bounded(loop: str) -> None:
    """3000 sources (127.1.x.y) each send one datagram to a VIP whose table holds 200 sessions: the
    table and the upstream sockets stay at the bound and a legitimate client is always answered."""

    async def scenario() -> None:
        async with echo_backends(2) as backends:
            endpoints = [b.endpoint for b in backends]
            async with serving(make_vip(endpoints, udp=UdpOptions(max_sessions=200))) as lb:
                legit = await Client.open(lb.address)
                flood = [udp_socket((f"127.1.{i // 250}.{i % 250 + 1}", 0)) for i in range(3000)]
                try:
                    for start in range(0, len(flood), 250):
                        for n, sock in enumerate(flood[start : start + 250]):
                            sock.sendto(bytes([n % 256]) * (n % 7), lb.address)
                        reply, source = await legit.request(b"legit %d" % start)
                        assert reply.endswith(b"|legit %d" % start) and source == lb.address
                        assert lb.stats.sessions == 200
                        assert upstream_sockets(endpoints, held=held_fds(lb)) == 200
                    assert lb.stats.flows_total == 3000 + 12  # the legit client was evicted each round
                    assert lb.stats.evictions == lb.stats.flows_total - 200
                    assert not lb.stats.dropped and not lb.stats.refused
                finally:
                    legit.close()
                    for sock in flood:
                        sock.close()

    run(loop, scenario())


# ------------------------------------------------------------------------------------ rebalancing


@by_loop
def test_a_backend_that_goes_away_is_replaced_on_the_next_datagram(loop: str) -> None:
    """Close the session's backend socket: the kernel answers ICMP port unreachable, the listener
    sees ECONNREFUSED and the next datagram of the flow goes to the live backend."""

    async def scenario() -> None:
        async with echo_backends(2) as backends:
            by_name = {b.name: b for b in backends}
            async with serving(make_vip([b.endpoint for b in backends])) as lb:
                client = await Client.open(lb.address)
                try:
                    reply, _ = await client.request(b"one")
                    dead = by_name[name_of(reply)]
                    live = next(b for b in backends if b is not dead)
                    dead.close()
                    client.send(b"lost")  # reaches the closed port; ICMP comes back
                    # lb.stats is read each time: the native engine's counters are pulled on read
                    await wait_for(
                        lambda: lb.stats.backends[str(dead.endpoint)].connect_errors["refused"] == 1
                    )
                    dead_stats = lb.stats.backends[str(dead.endpoint)]
                    for n in range(3):
                        reply, source = await client.request(b"after %d" % n)
                        assert reply == f"{live.name}|after {n}".encode()
                        assert source == lb.address
                    assert lb.stats.rebalanced == 1
                    assert lb.stats.sessions == 1
                    assert (dead_stats.active, lb.stats.backends[str(live.endpoint)].active) == (0, 1)
                    assert upstream_sockets([dead.endpoint], held=held_fds(lb)) == 0
                    assert upstream_sockets([live.endpoint], held=held_fds(lb)) == 1
                finally:
                    client.close()

    run(loop, scenario())


@by_loop
def test_a_send_refused_by_a_gone_backend_is_retried_on_another(loop: str) -> None:
    """Two datagrams read in one batch: the first reaches the closed port and the ICMP answer is
    pending on the upstream socket when the second is sent, so that send fails with ECONNREFUSED;
    the listener moves the session and sends the second datagram again, to the live backend."""

    async def scenario() -> None:
        async with echo_backends(2) as backends:
            by_name = {b.name: b for b in backends}
            async with serving(make_vip([b.endpoint for b in backends])) as lb:
                client = await Client.open(lb.address)
                try:
                    reply, _ = await client.request(b"one")
                    dead = by_name[name_of(reply)]
                    live = next(b for b in backends if b is not dead)
                    dead.close()
                    client.send(b"lost")
                    client.send(b"saved")
                    reply, _ = await client.receive()
                    assert reply == f"{live.name}|saved".encode()
                    assert lb.stats.rebalanced == 1
                    assert not lb.stats.dropped
                finally:
                    client.close()

    run(loop, scenario())


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """No descriptor can be made in this process (RLIMIT_NOFILE at the highest open one, the holes
    below it filled) until the block ends: socket() fails with EMFILE, as on a full LB."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (max(int(n) for n in os.listdir("/proc/self/fd")) + 1, hard)
        )
        with contextlib.suppress(OSError):
            for _ in range(100_000):  # bounded: at most the holes below the limit
                fillers.append(os.dup(0))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_no_socket_for_a_session_counts_no_resources_as_tcp_does(
    monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """EMFILE when a session needs its upstream socket: a new session is refused and a session that
    must move is closed, both counted under ``no_resources`` (TCP's name for the same failure).
    Python engine: its socket factory fails; native: the process is out of descriptors."""
    real = udp_module.upstream_socket
    failing = False

    def upstream_socket(*args: Any) -> socket.socket:
        if failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(*args)

    monkeypatch.setattr(udp_module, "upstream_socket", upstream_socket)

    async def scenario() -> None:
        nonlocal failing
        async with echo_backends(1) as backends, serving(make_vip([backends[0].endpoint])) as lb:
            old, new = await Client.open(lb.address), await Client.open(lb.address)
            stats = lb.stats  # read before: the native listener's read needs no descriptor, python's neither
            try:
                await old.request(b"one")
                backends[0].close()
                old.send(b"lost")  # reaches the closed port; ICMP comes back
                await wait_for(
                    lambda: lb.stats.backends[str(backends[0].endpoint)].connect_errors["refused"] == 1
                )
                with contextlib.ExitStack() as stack:
                    failing = True
                    if engine == "native":
                        stack.enter_context(descriptors_exhausted())
                    new.send(b"refused")
                    await wait_for(lambda: lb.stats.refused["no_resources"] == 1)
                    old.send(b"moved")  # the session must move, and no socket can be made
                    await wait_for(lambda: lb.stats.closed["no_resources"] == 1)
                    failing = False
                assert lb.stats.sessions == 0
                assert dict(lb.stats.refused) == {"no_resources": 1}
                assert stats is lb.stats
            finally:
                old.close()
                new.close()

    run("uvloop", scenario())


def test_update_moves_only_the_sessions_of_removed_backends() -> None:
    async def scenario() -> None:
        async with echo_backends(3) as backends:
            endpoints = [b.endpoint for b in backends]
            async with serving(make_vip(endpoints)) as lb:
                clients = [await Client.open(lb.address) for _ in range(30)]
                try:
                    before = [name_of((await c.request(b"1"))[0]) for c in clients]
                    assert set(before) == {"b0", "b1", "b2"}
                    lb.update(make_vip(endpoints[1:]))  # the same listen address
                    after = [name_of((await c.request(b"2"))[0]) for c in clients]
                    for old, new in zip(before, after, strict=True):
                        assert new == old if old != "b0" else new in {"b1", "b2"}
                    assert lb.stats.rebalanced == before.count("b0")
                    assert upstream_sockets([endpoints[0]], held=held_fds(lb)) == 0
                    newcomers = [await Client.open(lb.address) for _ in range(10)]
                    try:
                        assert "b0" not in [name_of((await c.request(b"n"))[0]) for c in newcomers]
                    finally:
                        for client in newcomers:
                            client.close()
                finally:
                    for client in clients:
                        client.close()

    run("uvloop", scenario())


# --------------------------------------------------------------------------- hash and per_packet


@by_loop
@pytest.mark.parametrize("scheduler", ["maglev", "round_robin"])
def test_per_packet_spreads_one_flow_over_the_backends(loop: str, scheduler: str) -> None:
    async def scenario() -> None:
        async with echo_backends(3) as backends:
            vip = make_vip(
                [b.endpoint for b in backends], scheduler=scheduler, udp=UdpOptions(per_packet=True)
            )
            async with serving(vip) as lb:
                client = await Client.open(lb.address)
                try:
                    names = []
                    for n in range(30):
                        reply, source = await client.request(b"p%d" % n)
                        assert reply.endswith(b"|p%d" % n) and source == lb.address
                        names.append(name_of(reply))
                    assert set(names) == {"b0", "b1", "b2"}
                    assert len(set(itertools.pairwise(names))) > 1  # not one backend per flow
                    assert lb.stats.sessions == 1
                    flows = [lb.stats.backends[str(b.endpoint)].flows_total for b in backends]
                    assert sum(flows) == 30 and all(flows)
                finally:
                    client.close()

    run(loop, scenario())


def test_source_ip_hash_keeps_the_ports_of_one_ip_together() -> None:
    async def scenario() -> None:
        async with echo_backends(3) as backends:
            vip = make_vip([b.endpoint for b in backends], udp=UdpOptions(hash="source_ip"))
            scheduler = build_scheduler("maglev", vip.weighted_backends)
            names = {b.endpoint: b.name for b in backends}
            async with serving(vip) as lb:
                vip_ip = ip_address(lb.address[0])
                clients = [
                    await Client.open(lb.address, (f"127.0.0.{10 + i // 2}", 0)) for i in range(2 * 12)
                ]
                try:
                    used = set()
                    for first, second in zip(clients[::2], clients[1::2], strict=True):
                        a = name_of((await first.request(b"rtp"))[0])
                        b = name_of((await second.request(b"rtcp"))[0])
                        expected = scheduler.pick(FiveTuple(ip_address(first.address[0]), vip_ip, 0, 0, 17))
                        assert expected is not None
                        assert a == b == names[expected]
                        used.add(a)
                    assert len(used) > 1
                    assert lb.stats.sessions == 24  # sessions are still per ip:port
                finally:
                    for client in clients:
                        client.close()

    run("uvloop", scenario())


# ------------------------------------------------------------------------------------------ PROXY v2


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_proxy_v2_header_before_every_datagram(host: str) -> None:
    async def scenario() -> None:
        backend = await EchoBackend("b0", host=host).start()
        try:
            async with serving(make_vip([backend.endpoint], listen=host, proxy_protocol="v2")) as lb:
                client = await Client.open(lb.address, (host, 0))
                try:
                    for payload in (b"first", b"", b"third"):
                        reply, _ = await client.request(payload)
                        assert reply.startswith(b"b0|\r\n\r\n")
                    c_host, c_port = client.address
                    v_host, v_port = lb.address
                    if host == "::1":
                        fam, addrs = 0x22, ip_address(c_host).packed + ip_address(v_host).packed
                    else:
                        fam, addrs = 0x12, socket.inet_aton(c_host) + socket.inet_aton(v_host)
                    block = addrs + struct.pack("!HH", c_port, v_port)
                    header = V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(block)) + block
                    assert [data for data, _ in backend.received] == [
                        header + b"first",
                        header,
                        header + b"third",
                    ]
                finally:
                    client.close()
        finally:
            backend.close()

    run("uvloop", scenario())


def test_proxy_v1_cannot_carry_udp() -> None:
    with pytest.raises(ValueError, match="v1"):
        make_listener(make_vip([EchoBackend("b").endpoint], proxy_protocol="v1"))


# ------------------------------------------------------------------------- sizes, garbage, GRO


@pytest.mark.parametrize(("host", "size"), [("127.0.0.1", 65507), ("::1", 65527)])
def test_the_largest_datagrams_pass_intact_both_ways(host: str, size: int) -> None:
    async def scenario() -> None:
        backend = await EchoBackend("raw", tag=False, host=host).start()
        try:
            async with serving(make_vip([backend.endpoint], listen=host)) as lb:
                client = await Client.open(lb.address, (host, 0))
                try:
                    payload = bytes(i * 7 % 251 for i in range(size))
                    reply, source = await client.request(payload)
                    assert reply == payload and source[:2] == lb.address
                    assert [data for data, _ in backend.received] == [payload]
                    assert not lb.stats.dropped
                finally:
                    client.close()
        finally:
            backend.close()

    run("uvloop", scenario())


def test_a_datagram_too_large_for_its_proxy_header_is_dropped_and_counted() -> None:
    async def scenario() -> None:
        async with (
            echo_backends(1) as backends,
            serving(make_vip([backends[0].endpoint], proxy_protocol="v2")) as lb,
        ):
            client = await Client.open(lb.address)
            try:
                client.send(bytes(65507))  # + 28 header bytes > 65507: cannot be sent
                await wait_for(lambda: lb.stats.dropped["too_large"] == 1)
                reply, _ = await client.request(b"small")
                assert reply.endswith(b"small")
                assert [len(data) for data, _ in backends[0].received] == [28 + 5]
            finally:
                client.close()

    run("uvloop", scenario())


@by_loop
def test_empty_and_garbage_datagrams_are_forwarded_as_they_are(loop: str) -> None:
    payloads = [b"", bytes(range(256)) * 4, b"\x00" * 100, V2_SIGNATURE + b"\x21\xff", b"\xff", b""]

    async def scenario() -> None:
        async with (
            echo_backends(1, tag=False) as backends,
            serving(make_vip([backends[0].endpoint])) as lb,
        ):
            client = await Client.open(lb.address)
            try:
                for payload in payloads:
                    reply, source = await client.request(payload)
                    assert reply == payload and source == lb.address
                stats = lb.stats.backends[str(backends[0].endpoint)]
                assert stats.datagrams_to_backend == stats.datagrams_from_backend == len(payloads)
                assert stats.bytes_to_backend == stats.bytes_from_backend == sum(map(len, payloads))
                assert not lb.stats.dropped and lb.stats.sessions == 1
            finally:
                client.close()

    run(loop, scenario())


def test_gro_coalesced_datagrams_are_split_back() -> None:
    """A client sends 11 datagrams in one GSO send (UDP_SEGMENT): over lo they reach the GRO-enabled
    listen socket as one buffer, which must be split at the segment size."""

    async def scenario() -> None:
        async with (
            echo_backends(1, tag=False) as backends,
            serving(make_vip([backends[0].endpoint])) as lb,
        ):
            assert lb.gro
            sock = udp_socket()
            try:
                sock.connect(lb.address)
                segments = [bytes([i]) * 100 for i in range(10)] + [b"last" * 10]
                sock.sendmsg([b"".join(segments)], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))])
                await wait_for(lambda: len(backends[0].received) == len(segments))
                assert [data for data, _ in backends[0].received] == segments
                replies: list[bytes] = []
                async with asyncio.timeout(2):
                    while len(replies) < len(segments):
                        replies.append(await asyncio.get_running_loop().sock_recv(sock, 65536))
                assert replies == segments
            finally:
                sock.close()

    run("uvloop", scenario())


def test_close_releases_the_address_and_every_socket() -> None:
    async def scenario() -> None:
        async with echo_backends(1) as backends:
            endpoints = [backends[0].endpoint]
            lb = make_listener(make_vip(endpoints))
            await lb.start()
            clients = [await Client.open(lb.address) for _ in range(5)]
            try:
                for client in clients:
                    await client.request(b"x")
                assert upstream_sockets(endpoints, held=held_fds(lb)) == 5
                await lb.close()
                assert upstream_sockets(endpoints, held=held_fds(lb)) == 0
                assert lb.stats.closed["shutdown"] == 5 and lb.stats.sessions == 0
                udp_socket(lb.address).close()  # the VIP port is free again
            finally:
                for client in clients:
                    client.close()

    run("uvloop", scenario())


# ------------------------------------------------------------------------------- port quarantine


def test_a_closed_sessions_port_is_held_so_late_replies_reach_nobody() -> None:
    """responses: 1 ends the session with its answer; its upstream socket (and so its port) is
    held for the quarantine: a late second reply from the backend is not delivered to anyone, and
    no new session can get that port meanwhile. After the quarantine the socket is closed."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        backend.bind(("127.0.0.1", 0))
        backend.setblocking(False)
        endpoint = Endpoint(ip_address("127.0.0.1"), backend.getsockname()[1])
        vip = make_vip([endpoint], udp=UdpOptions(responses=1))
        listener = make_listener(vip, port_quarantine_s=0.5)
        await listener.start()
        first, second = await Client.open(listener.address), await Client.open(listener.address)
        try:
            first.send(b"question")
            data, upstream = await asyncio.wait_for(loop.sock_recvfrom(backend, 100), 5)
            assert data == b"question"
            backend.sendto(b"answer", upstream)
            assert (await first.receive())[0] == b"answer"
            await wait_for(lambda: listener.stats.sessions == 0)
            assert len(listener.quarantined_fds) == 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter, pytest.raises(OSError):
                squatter.bind(upstream)  # the port is still taken
            backend.sendto(b"late duplicate", upstream)
            second.send(b"another question")
            data, upstream2 = await asyncio.wait_for(loop.sock_recvfrom(backend, 100), 5)
            assert data == b"another question" and upstream2 != upstream
            backend.sendto(b"second answer", upstream2)
            assert (await second.receive())[0] == b"second answer"
            with pytest.raises(TimeoutError):
                await first.receive(timeout=0.1)  # the late duplicate reached nobody
            await wait_for(lambda: not listener.quarantined_fds, timeout=3)
        finally:
            first.close()
            second.close()
            await listener.close()
            backend.close()

    run("asyncio", scenario())
