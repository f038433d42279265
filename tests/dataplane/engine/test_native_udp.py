"""The native engine's UDP proxy beyond the shared suite (tests/dataplane/proxy/test_udp.py): several
workers (sessions stay on one, counters sum, a reload and a close reach all), the reuse of held
upstream sockets after the port quarantine (and by their own client within it), and the reason table."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from ipaddress import ip_address
from typing import Any

import pytest

from sluice.config import Endpoint, UdpOptions, Vip
from sluice.core import reasons
from sluice.core.flow import IPPROTO_UDP, FiveTuple
from sluice.core.scheduler import build_scheduler
from sluice.dataplane.engine import NativeUdpListener
from tests.dataplane.proxy.helpers import needs_native_engine, run
from tests.dataplane.proxy.udp_helpers import Client, echo_backends, make_vip, upstream_sockets, wait_for


@contextlib.asynccontextmanager
async def serving(vip: Vip, **kwargs: Any) -> AsyncIterator[NativeUdpListener]:
    needs_native_engine()
    lb = NativeUdpListener(vip, **kwargs)
    await lb.start()
    try:
        yield lb
    finally:
        await lb.close()


def name_of(reply: bytes) -> str:
    return reply.split(b"|", 1)[0].decode()


def test_dropped_names_are_the_python_table() -> None:
    needs_native_engine()
    from sluice.dataplane.engine import _engine

    assert _engine.DROPPED == reasons.DROPPED


def test_two_workers_keep_each_session_on_one_and_sum_their_counters() -> None:
    async def scenario() -> None:
        async with (
            echo_backends(3) as backends,
            serving(make_vip([b.endpoint for b in backends]), workers=2) as lb,
        ):
            scheduler = build_scheduler("maglev", [(b.endpoint, 1) for b in backends])
            names = {b.endpoint: b.name for b in backends}
            vip_ip = ip_address(lb.address[0])
            clients = [await Client.open(lb.address) for _ in range(200)]
            try:
                for seq in range(3):
                    replies = await asyncio.gather(*(c.request(b"%d" % seq) for c in clients))
                    for client, (reply, source) in zip(clients, replies, strict=True):
                        host, port = client.address
                        flow = FiveTuple(ip_address(host), vip_ip, port, lb.address[1], IPPROTO_UDP)
                        expected = scheduler.pick(flow)
                        assert expected is not None and name_of(reply) == names[expected]
                        assert source == lb.address
                per_worker = [lb.worker_stats(i) for i in range(2)]
                assert all(w.sessions for w in per_worker)  # the kernel spread the clients
                # one session per client in total: no client's datagrams reached both workers
                assert sum(w.flows_total for w in per_worker) == lb.stats.flows_total == 200
                assert sum(w.sessions for w in per_worker) == lb.stats.sessions == 200
                for b in backends:
                    key = str(b.endpoint)
                    to = [w.backend(key).datagrams_to_backend for w in per_worker]
                    assert sum(to) == lb.stats.backends[key].datagrams_to_backend
                assert sum(s.datagrams_from_backend for s in lb.stats.backends.values()) == 600
            finally:
                for client in clients:
                    client.close()

    run("uvloop", scenario())


def test_a_reload_and_a_close_reach_every_worker() -> None:
    async def scenario() -> None:
        async with echo_backends(3) as backends:
            endpoints = [b.endpoint for b in backends]
            async with serving(make_vip(endpoints), workers=2) as lb:
                clients = [await Client.open(lb.address) for _ in range(60)]
                try:
                    before = [name_of((await c.request(b"1"))[0]) for c in clients]
                    lb.update(make_vip(endpoints[1:]))
                    after = [name_of((await c.request(b"2"))[0]) for c in clients]
                    for old, new in zip(before, after, strict=True):
                        assert new == old if old != "b0" else new in {"b1", "b2"}
                    per_worker = [lb.worker_stats(i) for i in range(2)]
                    assert sum(w.rebalanced for w in per_worker) == before.count("b0") > 0
                    assert all(w.backend(str(endpoints[0])).active == 0 for w in per_worker)
                    on_b1 = after.count("b1")
                    assert lb.close_backend_flows(endpoints[1], "backend_down") == on_b1 > 0
                    assert lb.stats.closed["backend_down"] == on_b1
                    assert lb.stats.sessions == 60 - on_b1
                finally:
                    for client in clients:
                        client.close()

    run("uvloop", scenario())


def test_a_client_that_keeps_its_port_gets_its_own_held_socket_back_within_the_quarantine() -> None:
    """responses: 1 ends each session with its answer. Within the quarantine another client gets
    another socket, while the first client's next session takes its own held socket back (the
    same source port at the backend). A late reply on that port reaches nobody while it is held, and
    once it is the client's again reaches that client only."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        backend.bind(("127.0.0.1", 0))
        backend.setblocking(False)

        async def ask(client: Client, question: bytes) -> tuple[str, int]:
            client.send(question)
            data, upstream = await asyncio.wait_for(loop.sock_recvfrom(backend, 100), 5)
            assert data == question
            return upstream  # type: ignore[no-any-return]

        vip = make_vip(
            [Endpoint(ip_address("127.0.0.1"), backend.getsockname()[1])], udp=UdpOptions(responses=1)
        )
        async with serving(vip, workers=1, port_quarantine_s=60.0) as lb:
            first, second = await Client.open(lb.address), await Client.open(lb.address)
            try:
                upstream = await ask(first, b"a1")
                backend.sendto(b"answer a1", upstream)
                assert (await first.receive())[0] == b"answer a1"
                await wait_for(lambda: lb.stats.sessions == 0)
                backend.sendto(b"late a1", upstream)  # held, quarantined: read and dropped
                assert await ask(second, b"b1") != upstream  # another client: another socket
                assert await ask(first, b"a2") == upstream  # its own socket, in its quarantine
                backend.sendto(b"answer a2", upstream)
                assert (await first.receive())[0] == b"answer a2"
                with pytest.raises(TimeoutError):
                    await second.receive(timeout=0.2)  # neither a1's late reply nor a2's answer
                with pytest.raises(TimeoutError):
                    await first.receive(timeout=0.2)  # the late a1 went to nobody
                assert lb.stats.flows_total == 3
            finally:
                first.close()
                second.close()
                backend.close()

    run("asyncio", scenario())  # uvloop has no sock_recvfrom


def test_a_held_socket_is_reused_after_the_quarantine_only() -> None:
    """responses: 1 ends each session with its answer. Its upstream socket is held: during the
    quarantine the next session gets another socket (another source port at the backend); after it,
    the next session to that backend reuses it (the same port) and no new socket is made."""

    async def scenario() -> None:
        async with echo_backends(1) as backends:
            backend = backends[0]
            vip = make_vip([backend.endpoint], udp=UdpOptions(responses=1))
            async with serving(vip, workers=1, port_quarantine_s=0.3) as lb:
                clients = [await Client.open(lb.address) for _ in range(3)]
                try:
                    await clients[0].request(b"a")
                    await wait_for(lambda: lb.stats.sessions == 0)
                    assert len(lb.quarantined_fds) == 1 and not lb.pooled_fds
                    await clients[1].request(b"b")  # within the quarantine: a second socket
                    first, second = (addr for _, addr in backend.received)
                    assert first != second
                    await wait_for(lambda: not lb.quarantined_fds and len(lb.pooled_fds) == 2, timeout=3)
                    await clients[2].request(b"c")  # the oldest held socket again
                    assert backend.received[2][1] == first
                    await wait_for(lambda: lb.stats.sessions == 0)
                    assert upstream_sockets([backend.endpoint]) == 2  # every socket ever made, all held
                finally:
                    for client in clients:
                        client.close()
            assert upstream_sockets([backend.endpoint]) == 0

    run("uvloop", scenario())


def test_max_sessions_is_split_across_the_workers() -> None:
    """udp.max_sessions bounds the sessions of all workers together: each holds max_sessions // 2."""

    async def scenario() -> None:
        async with echo_backends(1) as backends:
            vip = make_vip([backends[0].endpoint], udp=UdpOptions(max_sessions=10))
            async with serving(vip, workers=2) as lb:
                clients = [await Client.open(lb.address) for _ in range(100)]
                try:
                    for client in clients:
                        reply, _ = await client.request(b"x")
                        assert reply == b"b0|x"
                    per_worker = [lb.worker_stats(i) for i in range(2)]
                    assert [w.sessions for w in per_worker] == [5, 5]  # both saw more than 5 clients
                    assert lb.stats.evictions == lb.stats.closed["evicted"] == 90
                finally:
                    for client in clients:
                        client.close()

    run("uvloop", scenario())
