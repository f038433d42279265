"""Sends that would block are dropped and counted as ``dropped["send_buffer_full"]``, never queued, on
both engines and in both directions: towards a backend (a session's upstream socket) and towards a
client (the replies the VIP's listen socket sends).

Why the condition is real and deterministic: a UDP send blocks (EAGAIN on a non-blocking socket) when
the socket's sent-but-not-yet-transmitted bytes reach its SO_SNDBUF. Over loopback that never happens
(the skb is orphaned at once), and a full receive buffer drops instead of blocking. So in a namespace
of this test, 198.18.0.2 is routed through a veth whose root qdisc is a token bucket of 8 bit/s: after
its first packet (the bucket's burst) nothing leaves it for longer than the test runs, so every
datagram the kernel accepts stays queued, charged to the sending socket, until its SO_SNDBUF is full
and each further send returns EAGAIN. The neighbour entry is permanent (no ARP request waits in the
queue) and IPv6 is off (no MLD or ND packet does): the queue holds exactly the datagrams the LB sent.
The test then checks the count exactly: each datagram is either in the queue (or the one the bucket
let through) or counted as send_buffer_full. Root only: needs ip and tc."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sluice.lab.netns import Namespace
from tests.dataplane.proxy.udp_send_buffer_scenario import HELD, LOCAL, SENT, SIZE
from tests.support.privileged import needs

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[3]


def held_queue(ns: Namespace) -> None:
    """`ns` with HELD behind a queue that never drains (see the module docstring)."""
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    ns.run("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    # 8 bit/s after one packet; the limit holds more than any socket may queue
    tbf = ("tbf", "rate", "8bit", "burst", "1600", "limit", "4000000")
    ns.run("tc", "qdisc", "add", "dev", "va", "root", *tbf)
    ns.run("ip", "addr", "add", f"{LOCAL}/24", "dev", "va")
    ns.run("ip", "link", "set", "va", "up")
    ns.run("ip", "link", "set", "vb", "up")
    ns.run("ip", "neigh", "add", HELD, "lladdr", "02:00:00:00:00:02", "dev", "va", "nud", "permanent")


def queued(ns: Namespace) -> int:
    """Packets the qdisc of va took: those it let through and those it holds."""
    (qdisc,) = json.loads(ns.run("tc", "-s", "-j", "qdisc", "show", "dev", "va").stdout)
    return int(qdisc["packets"]) + int(qdisc["qlen"])


def run_scenario(ns: Namespace, engine: str, direction: str) -> dict[str, object]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    scenario = [sys.executable, "-m", "tests.dataplane.proxy.udp_send_buffer_scenario", engine, direction]
    result: dict[str, object] = json.loads(ns.run("env", f"PYTHONPATH={path}", *scenario, timeout=120).stdout)
    return result


@pytest.mark.parametrize("engine", ["python", "native"])
def test_sends_to_a_backend_that_would_block_are_dropped_and_counted(engine: str) -> None:
    needs(root=True, commands=("ip", "tc"))
    with Namespace.create(f"udpsnd-up-{engine}") as ns:
        held_queue(ns)
        result = run_scenario(ns, engine, "upstream")
        in_queue = queued(ns)
        wmem = int(ns.run("cat", "/proc/sys/net/core/wmem_default").stdout)
    dropped = result["dropped"]
    assert isinstance(dropped, dict) and set(dropped) == {"send_buffer_full"}, result
    assert result["accepted"] == in_queue, result  # what the LB counts as sent is what the kernel took
    assert dropped["send_buffer_full"] == SENT - in_queue, result
    assert 0 < in_queue * SIZE <= wmem, result  # bounded by the socket's send buffer, not by the LB


@pytest.mark.parametrize("engine", ["python", "native"])
def test_replies_to_a_client_that_would_block_are_dropped_and_counted(engine: str) -> None:
    needs(root=True, commands=("ip", "tc"))
    with Namespace.create(f"udpsnd-re-{engine}") as ns:
        held_queue(ns)
        result = run_scenario(ns, engine, "reply")
        in_queue = queued(ns)
        wmem = int(ns.run("cat", "/proc/sys/net/core/wmem_default").stdout)
    dropped = result["dropped"]
    assert result["to_backend"] == SENT and result["sessions"] == 1, result
    assert isinstance(dropped, dict) and set(dropped) == {"send_buffer_full"}, result
    assert dropped["send_buffer_full"] == SENT - in_queue, result  # every reply: queued or counted
    assert 0 < in_queue * SIZE <= wmem, result
