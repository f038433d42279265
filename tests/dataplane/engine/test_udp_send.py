"""A session's datagrams read in one batch leave in one UDP GSO send (engine/udp_send.c), both ways,
and arrive as exactly the datagrams that came in.

How the batch is made deterministic: the LB runs in its own process (lbproc.udp_lb) and is stopped
(SIGSTOP) while the datagrams are sent, so its next read takes them all. How the GSO send is seen
without strace: a socket with UDP_GRO gets a GSO run whole, in one read whose control message gives
the segment size, and datagrams sent one by one in separate reads (on loopback nothing else merges).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dataplane.engine.lbproc import require_engine, udp_lb

SOL_UDP, UDP_GRO = 17, 104
QUARANTINE_S = 0.1


def gro_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def reads(sock: socket.socket, want: int) -> Iterator[tuple[list[bytes], tuple[str, int]]]:
    """Reads of `sock` until `want` datagrams came: each read as its datagrams (a GRO read split at
    its segment size) and the sender."""
    got = 0
    while got < want:
        data, ancillary, _, sender = sock.recvmsg(65536, socket.CMSG_SPACE(4))
        segment = next(
            (struct.unpack("i", d)[0] for lvl, kind, d in ancillary if (lvl, kind) == (SOL_UDP, UDP_GRO)), 0
        )
        parts = [data[i : i + segment] for i in range(0, len(data), segment)] if segment else [data]
        got += len(parts)
        yield parts, sender


def stopped(pid: int, send: Callable[[], None]) -> None:
    """`send` while the LB is stopped (every thread of it: SIGSTOP reaches each a little later), so
    that its next read finds everything sent."""
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(1000):
            states = {
                Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                for t in os.listdir(f"/proc/{pid}/task")
            }
            if states == {"T"}:
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"the LB did not stop: {states}")
        send()
    finally:
        os.kill(pid, signal.SIGCONT)


SAME = [*(b"%03d" % i + b"x" * 97 for i in range(20)), b"last, shorter"]
"""20 datagrams of 100 bytes and a shorter one: one GSO send (one size, then at most one shorter)."""
MIXED = [*SAME[:10], b"y" * 150, *SAME[10:]]
"""A larger one after ten: three GSO sends, the longest head each time (ten of 100; 150 and one 100;
nine of 100 and the shorter)."""


@pytest.mark.parametrize(("datagrams", "sends"), [(SAME, 1), (MIXED, 3)], ids=["one_size", "mixed"])
def test_a_batch_of_one_client_leaves_in_gso_sends_each_way(datagrams: list[bytes], sends: int) -> None:
    require_engine()
    backend, client = gro_socket(), gro_socket()
    try:
        with udp_lb(backend.getsockname()[1], quarantine_s=QUARANTINE_S) as lb:
            vip = ("127.0.0.1", lb.port)
            stopped(lb.proc.pid, lambda: [client.sendto(d, vip) for d in datagrams])
            at_backend = list(reads(backend, len(datagrams)))
            assert [d for parts, _ in at_backend for d in parts] == datagrams  # all, in order, as sent
            assert len(at_backend) == sends
            (upstream,) = {sender for _, sender in at_backend}
            stopped(lb.proc.pid, lambda: [backend.sendto(d, upstream) for d in datagrams])
            at_client = list(reads(client, len(datagrams)))
            assert [d for parts, _ in at_client for d in parts] == datagrams
            assert len(at_client) == sends
            assert {sender for _, sender in at_client} == {vip}
            for _ in range(1000):  # the session ends on the worker just after the last reply left
                stats = lb.stats()
                if stats["closed"]:
                    break
    finally:
        backend.close()
        client.close()
    (to_backend,) = [b["datagrams_to_backend"] for b in stats["backends"].values()]
    assert to_backend == len(datagrams)
    assert stats["closed"] == {"responses": 1} and not stats["dropped"]
