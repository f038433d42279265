"""A native-engine LB in its own process (so strace and /proc/PID/fd see only the LB), and a tiny
threaded echo backend for it.

The child process starts one `NativeTcpListener`, prints its port, and blocks reading stdin; a line
on stdin closes the listener and exits. While it waits only the engine's worker threads work.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.dataplane import engine
from sluice.dataplane.engine.udp_listener import HELD_MAX
from tests.support.privileged import REQUIRE_PRIVILEGED

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import asyncio, resource, sys
from ipaddress import ip_address
from sluice.config import Backend, Endpoint, Vip
from sluice.dataplane.engine.listener import NativeTcpListener

backend_port, workers, nofile = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
vip = Vip(name="lb", listen=Endpoint(ip_address("127.0.0.1"), 0),
          backends=(Backend(address=Endpoint(ip_address("127.0.0.1"), backend_port)),),
          max_connections=100000)
loop = asyncio.new_event_loop()
lb = NativeTcpListener(vip, workers=workers)
loop.run_until_complete(lb.start())
print(lb.address[1], flush=True)
sys.stdin.readline()
loop.run_until_complete(lb.close())
"""


def require_engine() -> None:
    if engine.AVAILABLE:
        return
    reason = "the native engine extension (_engine) is not built"
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"{reason} (SLUICE_REQUIRE_PRIVILEGED=1 forbids skipping)")
    pytest.skip(reason)


@contextlib.contextmanager
def child_process(code: str, *args: object) -> Iterator[subprocess.Popen[str]]:
    """Python `code` in a child with `args`, stdin and stdout piped; at the end a ``stop`` line on
    stdin ends it, and it must exit 0 (killed if the test failed first)."""
    with subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            yield child
            child.stdin.write("stop\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


@contextlib.contextmanager
def lb_process(backend_port: int, workers: int = 1, nofile: int = 4096) -> Iterator[tuple[int, int]]:
    """(pid, port) of a native LB in front of 127.0.0.1:`backend_port`."""
    with child_process(CHILD, backend_port, workers, nofile) as child:
        assert child.stdout is not None
        yield child.pid, int(child.stdout.readline())


def count_syscalls(pid: int, out: Path, work: Callable[[], None]) -> int:
    """Syscalls of every thread of `pid` while `work` runs (strace -c -f; its table goes to `out`)."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(pid)], stderr=subprocess.PIPE, text=True
    )
    assert tracer.stderr is not None
    line = tracer.stderr.readline()  # "Process N attached with K threads": all are traced now
    assert "attached" in line, line
    work()
    tracer.send_signal(signal.SIGINT)
    tracer.communicate(timeout=30)
    for row in out.read_text().splitlines():
        if row.rstrip().endswith("total"):
            return int(row.split()[3])  # the calls column
    raise AssertionError("no total line in strace -c output:\n" + out.read_text())


def syscall_calls(table: str) -> dict[str, int]:
    """Calls per syscall of an strace -c table (the total row left out)."""
    rows = (ln.split() for ln in table.splitlines())
    return {r[-1]: int(r[3]) for r in rows if len(r) >= 5 and r[3].isdigit() and r[-1] != "total"}


class UdpEcho:
    """Echo every datagram on 127.0.0.1 from one thread until `close`; `received` holds each
    (datagram, arrival time in ns)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[tuple[bytes, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            self.received.append((data, time.time_ns()))
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()


class EchoServer:
    """Echo on 127.0.0.1 until end of stream, every connection served by one thread (selectors);
    `close` ends everything."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        sock.setblocking(True)  # small echoes: a blocking send never waits long
                        sock.sendall(data)
                        sock.setblocking(False)
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._selector.unregister(sock)
                sock.close()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def round_trip(port: int, payload: bytes, *, keep: bool = False) -> socket.socket | None:
    """Connect to the LB, send `payload`, read it back; close (FIN, then read to EOF) unless `keep`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(got)} of {len(payload)} bytes"
        got += chunk
    assert got == payload
    if keep:
        return sock
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()
    return None


QUEUE_DELAY_S = 10.0
"""UDP_CHILD's udp.max_queue_delay: strace stops the LB's threads while it attaches, on a shared
machine, and one request dropped as late would hang the request loop (tests/dataplane/proxy/
test_udp_queue_delay.py tests the bound)."""

# The UDP LB child: one NativeUdpListener with udp.responses: 1 in front of the backend ports given;
# prints its port, then answers lines on stdin: ``stats`` prints the VIP's counters as JSON, ``stop``
# closes the listener and exits.
UDP_CHILD = """
import asyncio, json, sys
from ipaddress import ip_address
from sluice.config import Backend, Endpoint, UdpOptions, Vip
from sluice.dataplane.engine import NativeUdpListener

ports = [int(p) for p in sys.argv[1].split(",")]
workers, quarantine, rcvbuf = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
queue_delay, held_max, per_packet = float(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
vip = Vip(name="lb", protocol="udp", listen=Endpoint(ip_address("127.0.0.1"), 0),
          backends=tuple(Backend(address=Endpoint(ip_address("127.0.0.1"), p)) for p in ports),
          udp=UdpOptions(responses=1, receive_buffer=rcvbuf or None, max_queue_delay=queue_delay,
                         per_packet=per_packet))
loop = asyncio.new_event_loop()
lb = NativeUdpListener(vip, workers=workers, port_quarantine_s=quarantine, held_max=held_max)
loop.run_until_complete(lb.start())
print(lb.address[1], flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        s = lb.stats
        print(json.dumps({"flows_total": s.flows_total, "closed": s.closed, "dropped": s.dropped,
                          "held": len(lb.held_fds),
                          "backends": {k: {"datagrams_to_backend": b.datagrams_to_backend,
                                           "datagrams_from_backend": b.datagrams_from_backend}
                                       for k, b in s.backends.items()}}), flush=True)
    else:
        break
loop.run_until_complete(lb.close())
"""


class UdpChild:
    """A native UDP LB in a child (UDP_CHILD): `port` its VIP's, `stats()` its counters."""

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
    backend_ports: int | list[int],
    *,
    quarantine_s: float,
    workers: int = 1,
    rcvbuf: int = 0,
    held_max: int = HELD_MAX,
    per_packet: bool = False,
) -> Iterator[UdpChild]:
    """One UDP VIP (``udp.responses: 1``) in front of 127.0.0.1:`backend_ports`, in its own process."""
    ports = [backend_ports] if isinstance(backend_ports, int) else backend_ports
    args = (
        ",".join(map(str, ports)),
        workers,
        quarantine_s,
        rcvbuf,
        QUEUE_DELAY_S,
        held_max,
        int(per_packet),
    )
    with child_process(UDP_CHILD, *args) as proc:
        yield UdpChild(proc)
