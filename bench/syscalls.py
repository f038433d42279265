"""Syscalls per unit of work (strace -c -f on every process of the peer): exact, not noise.

Per new connection: a client opens a connection, sends one HTTP/1.0 request to nginx `return 200`
through the LB, reads the answer to end of stream, closes. Per keep-alive request: one HTTP/1.1
connection carries the requests one after the other. The count covers all the LB's threads and
processes over exactly that work, warm-up excluded.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil

from bench import backends, proc
from bench.peers import Running
from bench.rounds import Metric, Row, Scenario

KEEPALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def _http_close(port: int) -> None:
    with socket.create_connection((proc.HOST, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        while s.recv(65536):
            pass


def _response_length(sock: socket.socket) -> int:
    """Read one response to learn its exact length (headers + Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("backend closed the keep-alive connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return len(head) + 4 + length


def _read_exactly(sock: socket.socket, n: int) -> None:
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise RuntimeError("connection closed mid-response")
        n -= len(chunk)


class _Counted:
    """strace -c -f attached to every process of `pid`'s tree for the `with` block."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        self.out = out
        self.tracer: subprocess.Popen[str] | None = None

    def __enter__(self) -> _Counted:
        cmd = ["strace", "-f", "-c", "-o", str(self.out)]
        for pid in self.pids:
            cmd += ["-p", str(pid)]
        self.tracer = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        assert self.tracer.stderr is not None
        for _ in self.pids:  # one "attached" line per process: then all its threads are traced
            line = self.tracer.stderr.readline()
            if "attached" not in line:
                raise RuntimeError(f"strace: {line}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.tracer is not None
        self.tracer.send_signal(signal.SIGINT)
        self.tracer.communicate(timeout=30)

    def total(self) -> int:
        for line in self.out.read_text().splitlines():
            if line.rstrip().endswith("total"):
                return int(line.split()[3])
        raise RuntimeError("strace printed no total")


class TcpSyscalls(Scenario):
    name = "tcp_syscalls"
    title = "TCP syscalls per unit of work (strace -c -f, every LB thread and process)"
    description = __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else ""
    peer_names = ("haproxy", "haproxy-splice", "nginx", "sluice", "sluice-python")
    metrics = (
        Metric("syscalls_per_conn", "syscalls per new conn", "lower", digits=1),
        Metric("syscalls_per_req", "syscalls per keep-alive req", "lower", digits=1),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.connections = 200 if quick else 500
        self.requests = 1000 if quick else 5000
        self.backend: subprocess.Popen[bytes] | None = None

    def params(self) -> dict[str, Any]:
        return {"connections": self.connections, "keepalive_requests": self.requests}

    def setup(self) -> int:
        port = proc.free_port()
        self.backend = backends.http(self.tmp, port)
        return port

    def teardown(self) -> None:
        proc.stop(self.backend)

    def measure(self, peer: Running) -> Row:
        assert peer.pid is not None, "syscalls are counted for a running LB only"
        _http_close(peer.port)  # warm-up: first pipes, buffers, backend connection paths
        with _Counted(peer.pid, self.tmp / f"strace-conn-{peer.name}.txt") as conn:
            for _ in range(self.connections):
                _http_close(peer.port)
        with socket.create_connection((proc.HOST, peer.port), timeout=5) as s:
            s.sendall(KEEPALIVE_REQUEST)
            size = _response_length(s)
            with _Counted(peer.pid, self.tmp / f"strace-req-{peer.name}.txt") as req:
                for _ in range(self.requests):
                    s.sendall(KEEPALIVE_REQUEST)
                    _read_exactly(s, size)
        return {
            "syscalls_per_conn": conn.total() / self.connections,
            "syscalls_per_req": req.total() / self.requests,
        }


SCENARIOS: tuple[type[Scenario], ...] = (TcpSyscalls,)
