"""Bounds of the native UDP proxy that hold on any machine: syscalls per DNS-style request once warm,
and kernel drops at a full listen socket counted exactly.

The LB runs in its own process (lbproc.udp_lb) so that strace and SIGSTOP see only the LB. It serves
one `NativeUdpListener` with ``udp.responses: 1``: every request opens a session and its answer ends
it, as DNS does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.dataplane.engine.lbproc import UdpEcho, count_syscalls, require_engine, syscall_calls, udp_lb
from tests.support.privileged import needs

WARM_UP = 1000
REQUESTS = 2000
SYSCALL_BUDGET = 8
"""Most LB syscalls per request/response session once warm (every thread)."""
QUARANTINE_S = 0.1
"""The child's port quarantine: the reuse pool covers (requests per second x quarantine) sockets, so
a short one keeps the warm-up short; the path measured is the same for any quarantine."""


def dns_style(port: int, clients: list[socket.socket], count: int) -> None:
    """`count` request/response exchanges, rotating over `clients` (each exchange a new session)."""
    for i in range(count):
        sock = clients[i % len(clients)]
        payload = b"query %d" % i
        sock.sendto(payload, ("127.0.0.1", port))
        data, _ = sock.recvfrom(65536)
        assert data == payload


@pytest.mark.privileged
@pytest.mark.parametrize("workers", [1, 2])
def test_at_most_8_syscalls_per_dns_style_request_once_warm(tmp_path: Path, workers: int) -> None:
    assert_budget(tmp_path, workers, QUARANTINE_S)


@pytest.mark.privileged
def test_clients_that_keep_their_port_need_no_new_socket_within_the_quarantine(tmp_path: Path) -> None:
    """A quarantine longer than the whole run: no held socket ever leaves it, so only each client's own
    socket (the one its last session had) can serve its next session, and the budget still holds
    with no socket()/connect()/close() per request."""
    assert_budget(tmp_path, 1, 3600.0)


@pytest.mark.privileged
def test_new_clients_at_a_full_pool_need_no_new_socket_per_session(tmp_path: Path) -> None:
    """Every request from a new client port (as under a flood of new sources), every held socket in
    its quarantine, held_max reached: a new session takes the oldest held socket with a new port
    (disconnect, connect) rather than close() and socket(); its old port is given back as close()
    would give it."""
    require_engine()
    needs(root=True, commands=("strace",))
    backend = UdpEcho()
    held_max = 8
    try:
        with udp_lb(backend.port, quarantine_s=3600.0, held_max=held_max) as lb:
            new_clients(lb.port, WARM_UP // 10)  # held_max sockets made here, then given new ports
            out = tmp_path / "strace.txt"
            count_syscalls(lb.proc.pid, out, lambda: new_clients(lb.port, REQUESTS // 4))
            stats = lb.stats()
    finally:
        backend.close()
    text = out.read_text()
    calls = syscall_calls(text)
    for name in ("socket", "close"):
        assert calls.get(name, 0) < REQUESTS // 4 // 20, text
    assert calls["connect"] >= REQUESTS // 4, text  # a new port for each session
    assert not stats["dropped"] and stats["closed"]["responses"] == WARM_UP // 10 + REQUESTS // 4


def new_clients(port: int, count: int) -> None:
    """`count` request/response exchanges, each from a new client socket (a new source port)."""
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            payload = b"new client %d" % i
            sock.sendto(payload, ("127.0.0.1", port))
            assert sock.recvfrom(65536)[0] == payload


def assert_budget(tmp_path: Path, workers: int, quarantine_s: float) -> None:
    require_engine()
    needs(root=True, commands=("strace",))
    backend = UdpEcho()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for sock in clients:
        sock.settimeout(10)
    try:
        with udp_lb(backend.port, workers=workers, quarantine_s=quarantine_s) as lb:
            dns_style(lb.port, clients, WARM_UP)  # upstream sockets made here, then reused
            warm = lb.stats()
            out = tmp_path / "strace.txt"
            calls = count_syscalls(lb.proc.pid, out, lambda: dns_style(lb.port, clients, REQUESTS))
            for _ in range(1000):  # the last session ends on the worker just after its answer left
                stats = lb.stats()
                if stats["closed"].get("responses") == WARM_UP + REQUESTS:
                    break
    finally:
        for sock in clients:
            sock.close()
        backend.close()
    assert stats["flows_total"] - warm["flows_total"] == REQUESTS  # one session per request
    assert stats["closed"]["responses"] == WARM_UP + REQUESTS
    per_request = calls / REQUESTS
    print(f"{per_request:.2f} syscalls per request, workers={workers}")
    assert per_request <= SYSCALL_BUDGET, out.read_text()
    text = out.read_text()
    calls = syscall_calls(text)
    for name in ("socket", "connect", "close"):  # warm: no upstream socket made or closed per request
        assert calls.get(name, 0) < REQUESTS // 20, text


@pytest.mark.privileged
def test_kernel_drops_at_a_full_listen_socket_are_counted() -> None:
    """The LB stopped (SIGSTOP) while one client sends 2,000 datagrams at a listen socket with a small
    receive buffer: what the kernel dropped is ``dropped["kernel_overflow"]``, exactly (every datagram
    either reached the backend, was dropped by the kernel, or waited past ``udp.max_queue_delay``)."""
    require_engine()
    needs(root=True)
    backend = UdpEcho()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    sent = 2000
    try:
        with udp_lb(backend.port, quarantine_s=QUARANTINE_S, rcvbuf=8192) as lb:
            os.kill(lb.proc.pid, signal.SIGSTOP)
            try:
                for i in range(sent):
                    client.sendto(b"burst %d" % i, ("127.0.0.1", lb.port))
            finally:
                os.kill(lb.proc.pid, signal.SIGCONT)
            # Until the worker has drained its queue a probe may be dropped too: probe until one is
            # answered; that one was enqueued after every drop, so it carries the final count.
            client.settimeout(0.2)
            probes = 0
            answered = False
            while not answered and probes < 100:
                probes += 1
                client.sendto(b"probe %d" % probes, ("127.0.0.1", lb.port))
                with contextlib.suppress(TimeoutError):
                    while not answered:
                        answered = client.recvfrom(65536)[0] == b"probe %d" % probes
            assert answered
            stats = lb.stats()
    finally:
        client.close()
        backend.close()
    dropped = stats["dropped"].get("kernel_overflow", 0)
    late = stats["dropped"].get("queue_delay", 0)  # the few queued may have waited past the bound
    (to_backend,) = [b["datagrams_to_backend"] for b in stats["backends"].values()]
    assert dropped > 0, stats
    assert to_backend + dropped + late == sent + probes, stats
