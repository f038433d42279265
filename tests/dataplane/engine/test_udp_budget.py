"""Bounds of the native UDP proxy that hold on any machine: syscalls per DNS-style request once warm,
and kernel drops at a full listen socket counted exactly.

The LB runs in its own process (as tests/dataplane/engine/lbproc.py does for TCP) so that strace and
SIGSTOP see only the LB. The child serves one `NativeUdpListener` with ``udp.responses: 1`` (every
request opens a session and its answer ends it, as DNS does), prints its port and then answers lines
on stdin: ``stats`` prints the VIP's counters as JSON, ``stop`` closes the listener and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dataplane.engine.lbproc import UdpEcho, child_process, count_syscalls, require_engine
from tests.support.privileged import needs

WARM_UP = 1000
REQUESTS = 2000
SYSCALL_BUDGET = 8
"""Most LB syscalls per request/response session once warm (every thread)."""
QUARANTINE_S = 0.1
"""The child's port quarantine: the reuse pool covers (requests per second x quarantine) sockets, so
a short one keeps the warm-up short; the path measured is the same for any quarantine."""
QUEUE_DELAY_S = 10.0
"""The child's udp.max_queue_delay: strace stops the LB's threads while it attaches, on a shared
machine, and one request dropped as late would hang the request loop (tests/dataplane/proxy/
test_udp_queue_delay.py tests the bound)."""

CHILD = """
import asyncio, json, sys
from ipaddress import ip_address
from sluice.config import Backend, Endpoint, UdpOptions, Vip
from sluice.dataplane.engine import NativeUdpListener

backend_port, workers, quarantine, rcvbuf = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
QUEUE_DELAY = float(sys.argv[5])
vip = Vip(name="lb", protocol="udp", listen=Endpoint(ip_address("127.0.0.1"), 0),
          backends=(Backend(address=Endpoint(ip_address("127.0.0.1"), backend_port)),),
          udp=UdpOptions(responses=1, receive_buffer=rcvbuf or None, max_queue_delay=QUEUE_DELAY))
loop = asyncio.new_event_loop()
lb = NativeUdpListener(vip, workers=workers, port_quarantine_s=quarantine)
loop.run_until_complete(lb.start())
print(lb.address[1], flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        s = lb.stats
        print(json.dumps({"flows_total": s.flows_total, "closed": s.closed, "dropped": s.dropped,
                          "backends": {k: {"datagrams_to_backend": b.datagrams_to_backend}
                                       for k, b in s.backends.items()}}), flush=True)
    else:
        break
loop.run_until_complete(lb.close())
"""


class Child:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        self.port = int(proc.stdout.readline())

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        stats: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return stats


@contextlib.contextmanager
def udp_lb(
    backend_port: int, *, workers: int = 1, quarantine_s: float = QUARANTINE_S, rcvbuf: int = 0
) -> Iterator[Child]:
    with child_process(CHILD, backend_port, workers, quarantine_s, rcvbuf, QUEUE_DELAY_S) as proc:
        yield Child(proc)


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
    for name in ("socket", "connect", "close"):  # warm: no upstream socket made or closed per request
        counted = [ln for ln in text.splitlines() if ln.split() and ln.split()[-1] == name]
        assert not counted or int(counted[0].split()[3]) < REQUESTS // 20, text


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
        with udp_lb(backend.port, rcvbuf=8192) as lb:
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
