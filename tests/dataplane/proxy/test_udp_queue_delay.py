"""UDP under overload drops what waited too long instead of serving it late (``udp.max_queue_delay``).

Both engines run in a child process (`tests.dataplane.engine.lbproc.child_process`) so SIGSTOP can
stop the LB's read side while the listen socket keeps queueing: a burst sent then has waited the
whole pause (10x the default bound of 50 ms) when the LB reads it again, so none of it may reach the
backend, and ``dropped["queue_delay"]`` must count it. Every datagram carries its send time; the
backend (a thread of the test process, never stopped) notes when each arrived.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from sluice.config import Endpoint, UdpOptions
from tests.dataplane.engine.lbproc import UdpEcho, child_process, require_engine
from tests.dataplane.proxy import udp_helpers
from tests.dataplane.proxy.helpers import run
from tests.dataplane.proxy.udp_helpers import ENGINES, make_vip, serving

BURST = 100
"""Datagrams sent while the LB is stopped (a few hundred KiB of skb memory: the default buffer holds them)."""
PAUSE_S = 0.5
"""How long the LB stays stopped after the burst: every burst datagram waited at least this long."""
BOUND_S = UdpOptions().max_queue_delay
PROBES_MAX = 100

CHILD = """
import asyncio, json, sys
from ipaddress import ip_address
from sluice.config import Backend, Endpoint, UdpOptions, Vip
from sluice.dataplane.engine import NativeUdpListener
from sluice.dataplane.proxy.udp import UdpListener

engine, backend_port, bound = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def vip(bound):
    udp = UdpOptions() if bound == "default" else UdpOptions(max_queue_delay=bound)
    return Vip(name="lb", protocol="udp", listen=Endpoint(ip_address("127.0.0.1"), 0),
               backends=(Backend(address=Endpoint(ip_address("127.0.0.1"), backend_port)),), udp=udp)

async def main():
    lb = NativeUdpListener(vip(bound), workers=1) if engine == "native" else UdpListener(vip(bound))
    await lb.start()
    print(lb.address[1], flush=True)
    loop = asyncio.get_running_loop()
    while (line := (await loop.run_in_executor(None, sys.stdin.readline)).split()) and line[0] != "stop":
        if line[0] == "bound":  # a reload that changes only udp.max_queue_delay
            lb.update(vip(line[1]))
        print(json.dumps(dict(lb.stats.dropped)), flush=True)
    await lb.close()

asyncio.run(main())
"""


@contextlib.contextmanager
def lb_child(engine: str, backend_port: int, bound: str = "default") -> Iterator[Child]:
    """The LB of `engine` in a child process, `bound` its udp.max_queue_delay ("default": unset)."""
    with child_process(CHILD, engine, backend_port, bound) as proc:
        yield Child(proc)


class Child:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc, self.stdin, self.stdout = proc, proc.stdin, proc.stdout
        self.port = int(self.stdout.readline())

    def command(self, line: str) -> dict[str, int]:
        """Send ``stats`` or ``bound DURATION`` (a reload); the VIP's dropped counters after it."""
        self.stdin.write(line + "\n")
        self.stdin.flush()
        counts: dict[str, int] = json.loads(self.stdout.readline())
        return counts

    def stop(self) -> None:
        """SIGSTOP the LB and wait until every thread of it is stopped (a worker woken before the
        signal reached it could still read)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        tasks = f"/proc/{self.proc.pid}/task"
        for _ in range(5000):
            states = []
            for tid in os.listdir(tasks):
                with contextlib.suppress(FileNotFoundError), open(f"{tasks}/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            if states and all(state in "tT" for state in states):
                return
            time.sleep(0.001)
        raise AssertionError(f"the LB did not stop: {states}")


def stamped(kind: str, seq: int) -> bytes:
    return b"%s %d %d" % (kind.encode(), seq, time.time_ns())


def burst_while_stopped(lb: Child, client: socket.socket, tag: str) -> int:
    """`BURST` datagrams sent while the LB is stopped, `PAUSE_S` more of waiting, then (the sender
    stopped) probes until one is answered: the LB read that one after the whole burst. The probes sent."""
    lb.stop()
    try:
        for i in range(BURST):
            client.sendto(stamped(tag, i), ("127.0.0.1", lb.port))
        time.sleep(PAUSE_S)  # the LB cannot read: the burst waits in its listen socket
    finally:
        os.kill(lb.proc.pid, signal.SIGCONT)
    client.settimeout(0.5)
    probes = 0
    while probes < PROBES_MAX:
        probes += 1
        probe = stamped("probe", probes)
        client.sendto(probe, ("127.0.0.1", lb.port))
        with contextlib.suppress(TimeoutError):
            while client.recvfrom(65536)[0] != probe:
                pass
            return probes
    raise AssertionError(f"none of {probes} probes answered")


@pytest.fixture
def backend() -> Iterator[UdpEcho]:
    echo = UdpEcho()
    yield echo
    echo.close()


@pytest.fixture
def client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        yield sock


def ages_s(backend: UdpEcho) -> list[float]:
    """How long each datagram the backend received took from the client's send to the backend."""
    return [(at - int(data.split()[2])) / 1e9 for data, at in backend.received]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_burst_that_waited_past_the_bound_is_dropped_not_delivered(
    engine: str, backend: UdpEcho, client: socket.socket
) -> None:
    if engine == "native":
        require_engine()
    with lb_child(engine, backend.port) as lb:
        probes = burst_while_stopped(lb, client, "burst")
        counts = lb.command("stats")
    delivered = [data for data, _ in backend.received]
    assert not [d for d in delivered if d.startswith(b"burst")], counts
    assert max(ages_s(backend)) < PAUSE_S  # nothing that waited out the pause reached the backend
    # every datagram sent was delivered or dropped, and what waited too long is counted as such
    assert set(counts) <= {"queue_delay", "kernel_overflow"}, counts
    assert len(delivered) + counts["queue_delay"] + counts.get("kernel_overflow", 0) == BURST + probes
    assert counts["queue_delay"] >= BURST - counts.get("kernel_overflow", 0)
    assert BOUND_S * 10 <= PAUSE_S  # the bound under test is the default, far below the pause


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reload_changes_the_bound_at_once(engine: str, backend: UdpEcho, client: socket.socket) -> None:
    """Under a 10 s bound the same burst is served late (what the bound allows); after a reload to the
    default it is dropped."""
    if engine == "native":
        require_engine()
    with lb_child(engine, backend.port, "10s") as lb:
        burst_while_stopped(lb, client, "lenient")
        lenient = lb.command("stats")
        assert lb.command("bound 50ms") == lenient
        burst_while_stopped(lb, client, "strict")
        strict = lb.command("stats")
    served = [data for data, _ in backend.received]
    assert sum(d.startswith(b"lenient") for d in served) == BURST, lenient  # all waited 0.5 s < 10 s
    assert not [d for d in served if d.startswith(b"strict")], strict
    assert strict["queue_delay"] - lenient.get("queue_delay", 0) >= BURST - strict.get("kernel_overflow", 0)


def listen_socket_rcvbuf(address: tuple[str, int]) -> list[int]:
    """SO_RCVBUF of every UDP socket of this process bound to `address` (the listen sockets)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(int(name)))
            with sock:
                if sock.type == socket.SOCK_DGRAM and sock.getsockname()[:2] == address:
                    found.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return found


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("udp", "asked"),
    [
        (UdpOptions(max_queue_delay=0.05), 1_024_000),  # the default, sized from the 50 ms bound
        (UdpOptions(max_queue_delay=0.1), 2_048_000),
        (UdpOptions(max_queue_delay=0.05, receive_buffer=300_000), 300_000),  # the override wins
    ],
)
def test_the_listen_socket_asks_for_the_buffer_the_config_gives(
    engine: str, udp: UdpOptions, asked: int
) -> None:
    if engine == "native":
        require_engine()
    assert udp.listen_receive_buffer == asked
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    udp_helpers.engine_under_test["name"] = engine

    async def scenario() -> list[int]:
        backend = Endpoint(ip_address("127.0.0.1"), 9)  # never sent to
        async with serving(make_vip([backend], udp=udp)) as lb:
            return listen_socket_rcvbuf(lb.address)

    try:
        sizes = run("asyncio", scenario())
    finally:
        udp_helpers.engine_under_test["name"] = "python"
    assert sizes == [2 * min(asked, rmem_max)]  # the kernel doubles what it was asked (skb overhead)
