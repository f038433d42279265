"""Bounds that hold on any machine: syscalls per proxied connection, descriptors per idle connection.

Both run the native engine in its own process (tests/dataplane/engine/lbproc.py), so the strace
counts and /proc/PID/fd see only the LB.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from tests.dataplane.engine.lbproc import EchoServer, count_syscalls, lb_process, require_engine, round_trip
from tests.support.privileged import needs

CONNECTIONS = 500
SYSCALL_BUDGET = 30
"""Most LB syscalls per proxied connection (connect, request, answer, both closes), every thread."""
IDLE_CONNECTIONS = 5000
FIXED_DESCRIPTORS = 256
"""Descriptors the LB may hold beyond 2 per idle connection (pools, epoll and event fds)."""


@pytest.mark.privileged
@pytest.mark.parametrize("workers", [1, 2])
def test_at_most_30_syscalls_per_proxied_connection(tmp_path: Path, workers: int) -> None:
    require_engine()
    needs(root=True, commands=("strace",))
    backend = EchoServer()
    try:
        with lb_process(backend.port, workers=workers) as (pid, port):
            round_trip(port, b"warm-up")  # the first pipe and buffers are made here, outside the count
            out = tmp_path / "strace.txt"

            def connections() -> None:
                for i in range(CONNECTIONS):
                    round_trip(port, b"GET / HTTP/1.0 %d\r\n\r\n" % i)

            calls = count_syscalls(pid, out, connections)
    finally:
        backend.close()
    per_connection = calls / CONNECTIONS
    print(f"{per_connection:.1f} syscalls per connection, workers={workers}")
    assert per_connection <= SYSCALL_BUDGET, out.read_text()


@pytest.mark.privileged
def test_idle_connections_hold_two_descriptors_each() -> None:
    require_engine()
    needs(root=True)
    want = 2 * IDLE_CONNECTIONS + 2048
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    elif soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    backend = EchoServer()
    clients = []
    try:
        with lb_process(backend.port, workers=2, nofile=2 * IDLE_CONNECTIONS + 4096) as (pid, port):
            round_trip(port, b"warm-up")
            before = len(os.listdir(f"/proc/{pid}/fd"))
            for i in range(IDLE_CONNECTIONS):
                sock = round_trip(port, b"hello %d" % i, keep=True)
                assert sock is not None
                clients.append(sock)
            held = len(os.listdir(f"/proc/{pid}/fd")) - before
            for sock in clients:
                sock.close()
    finally:
        for sock in clients:
            sock.close()
        backend.close()
    print(f"{held} descriptors for {IDLE_CONNECTIONS} idle flows")
    assert held <= 2 * IDLE_CONNECTIONS + FIXED_DESCRIPTORS, (
        f"{held} descriptors for {IDLE_CONNECTIONS} flows"
    )
    assert held >= 2 * IDLE_CONNECTIONS, f"only {held}: are the flows established?"
