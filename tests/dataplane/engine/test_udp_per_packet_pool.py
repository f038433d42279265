"""The native engine's per_packet VIP reuses its unconnected upstream sockets: once warm, a
DNS-style request (a new session each, ``udp.responses: 1``) takes a held socket past its port
quarantine instead of opening one, and replies still reach the client that asked, with 100 clients
in flight at once.

The LB runs in its own process (tests/dataplane/engine/lbproc.py) so that strace counts only its
syscalls. Every datagram of a per_packet session picks its backend anew (two backends here), so the
replies of one session come from either backend on the session's one socket.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from sluice.config import UdpOptions
from sluice.dataplane.engine import NativeUdpListener
from tests.dataplane.engine.lbproc import UdpEcho, count_syscalls, require_engine, syscall_calls, udp_lb
from tests.dataplane.engine.test_udp_budget import dns_style
from tests.dataplane.proxy.helpers import run
from tests.dataplane.proxy.udp_helpers import Client, echo_backends, make_vip
from tests.support.privileged import needs

WARM_UP = 1000
REQUESTS = 2000
QUARANTINE_S = 0.1
CONCURRENT = 100
ROUNDS = 10
SETTLE_S = 3 * QUARANTINE_S


@pytest.mark.privileged
def test_a_warm_per_packet_vip_opens_and_closes_no_socket_per_request(tmp_path: Path) -> None:
    require_engine()
    needs(root=True, commands=("strace",))
    backends = [UdpEcho(), UdpEcho()]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for sock in clients:
        sock.settimeout(10)
    try:
        with udp_lb([b.port for b in backends], quarantine_s=QUARANTINE_S, per_packet=True) as lb:
            dns_style(lb.port, clients, WARM_UP)  # the pool is filled here
            out = tmp_path / "strace.txt"
            count_syscalls(lb.proc.pid, out, lambda: dns_style(lb.port, clients, REQUESTS))
            stats = lb.stats()
    finally:
        for sock in clients:
            sock.close()
        for backend in backends:
            backend.close()
    text = out.read_text()
    assert stats["flows_total"] >= WARM_UP + REQUESTS  # one session per request (+ per-datagram flows)
    assert all(b["datagrams_from_backend"] > 0 for b in stats["backends"].values()), stats  # both picked
    for name in ("socket", "close"):  # warm: an upstream socket neither made nor closed per request
        assert syscall_calls(text).get(name, 0) < REQUESTS // 20, text


@pytest.mark.privileged
def test_pooled_per_packet_sockets_answer_the_right_client_of_100_at_once() -> None:
    """100 clients send at once, then each reads: every reply is its own request's, round after round,
    while the sessions' sockets come from the pool (held sockets past their quarantine)."""
    require_engine()
    needs(root=True)
    backends = [UdpEcho(), UdpEcho()]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(CONCURRENT)]
    for sock in clients:
        sock.settimeout(10)
    try:
        with udp_lb([b.port for b in backends], quarantine_s=QUARANTINE_S, per_packet=True) as lb:
            dns_style(lb.port, clients, WARM_UP)
            time.sleep(SETTLE_S)
            held = lb.stats()["held"]
            assert held >= CONCURRENT  # enough held sockets for a round to take only pooled ones
            for r in range(ROUNDS):
                time.sleep(SETTLE_S)  # every held socket is past its quarantine: the round reuses them
                for n, sock in enumerate(clients):
                    sock.sendto(b"round %d client %d" % (r, n), ("127.0.0.1", lb.port))
                for n, sock in enumerate(clients):
                    data, source = sock.recvfrom(65536)
                    assert data == b"round %d client %d" % (r, n)
                    assert source == ("127.0.0.1", lb.port)
            time.sleep(SETTLE_S)  # the last session ends on the worker just after its reply left
            stats = lb.stats()
    finally:
        for sock in clients:
            sock.close()
        for backend in backends:
            backend.close()
    assert stats["held"] == held, stats  # each session took a held socket and gave it back: none made
    assert not stats["dropped"], stats
    assert stats["closed"]["responses"] == WARM_UP + ROUNDS * CONCURRENT


def test_a_reload_to_per_packet_reuses_the_held_connected_sockets_disconnected() -> None:
    """Sessions of a plain VIP leave connected sockets held; after a reload to per_packet, new sessions
    take those (disconnected, so replies from either backend pass): the held count stays, every reply
    reaches its client."""
    require_engine()

    async def scenario() -> None:
        async with echo_backends(2) as backends:
            vip = make_vip([b.endpoint for b in backends], udp=UdpOptions(responses=1))
            lb = NativeUdpListener(vip, workers=1, port_quarantine_s=QUARANTINE_S)
            await lb.start()
            clients = [await Client.open(lb.address) for _ in range(20)]
            try:
                for n, client in enumerate(clients):
                    assert (await client.request(b"plain %d" % n))[0].endswith(b"|plain %d" % n)
                await asyncio.sleep(SETTLE_S)
                held = len(lb.held_fds)
                assert held == len(clients)
                lb.update(
                    make_vip([b.endpoint for b in backends], udp=UdpOptions(responses=1, per_packet=True))
                )
                names = set()
                for r in range(3):
                    await asyncio.sleep(SETTLE_S)  # every held socket is past its quarantine
                    for n, client in enumerate(clients):
                        reply, _ = await client.request(b"per packet %d %d" % (r, n))
                        name, _, rest = reply.partition(b"|")
                        assert rest == b"per packet %d %d" % (r, n)
                        names.add(name)
                await asyncio.sleep(SETTLE_S)
                assert len(lb.held_fds) == held
                assert names == {b"b0", b"b1"}  # both backends answered on the reused sockets
                assert not lb.stats.dropped
            finally:
                for client in clients:
                    client.close()
                await lb.close()

    run("asyncio", scenario())
