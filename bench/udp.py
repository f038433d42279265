"""UDP scenarios: request/response datagrams through the VIP to a UDP echo backend.

many flows: 200 client sockets, 1 request in flight each, sessions end after one reply
            (`proxy_responses 1` / `udp: {responses: 1}`): the DNS-like pattern, session churn.
one flow:   1 client socket, 32 requests in flight, one long-lived session.
A "datagram" is one the client sent to the LB or got back from it: sent + received.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from bench import backends, peers, proc
from bench.cpu import CpuMeter
from bench.rounds import Metric, Row, Scenario, Target


class _Udp(Scenario):
    proto = "udp"
    peer_names = peers.UDP_PEERS
    reference = "nginx"
    size = 64
    sockets = 200
    window = 1
    metrics = (
        Metric("kdgram_per_s", "k datagrams/s", "higher"),
        Metric("lb_cpu_s_per_1m_dgram", "LB CPU-s per 1M dgrams", "lower"),
        Metric("dgram_per_lb_cpu_s", "dgrams per LB CPU-s", "higher", show=False),
        Metric("loss_pct", "loss %", "lower", digits=2, ratio=False),
    )
    targets = (
        Target("sluice datagrams per LB CPU-second >= 1.5x NGINX", "sluice", "dgram_per_lb_cpu_s", ">=", 1.5),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.seconds = 2 if quick else 5
        self.backend: subprocess.Popen[bytes] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "payload_bytes": self.size,
            "client_sockets": self.sockets,
            "window_per_socket": self.window,
            "seconds": self.seconds,
            "responses_per_session": self.udp_responses,
            "loss_timeout_s": 0.2,
        }

    def setup(self) -> int:
        port = proc.free_port()
        self.backend = backends.echo(self.tmp, port, "udp")
        return port

    def teardown(self) -> None:
        proc.stop(self.backend)

    def measure(self, peer: peers.Running) -> Row:
        cmd = proc.python_module(
            "bench.udpgen",
            *("--port", str(peer.port), "--sockets", str(self.sockets), "--window", str(self.window)),
            *("--size", str(self.size), "--seconds", str(self.seconds), "--timeout", "0.2"),
        )
        with CpuMeter(peer.pid) as cpu:
            out, _ = proc.run_json(cmd, proc.cores()[1], timeout=self.seconds + 30)
        g = json.loads(out)
        if g["received"] == 0:
            raise RuntimeError(f"no datagram came back: {g}")
        dgrams = g["sent"] + g["received"]
        row: Row = {
            "kdgram_per_s": dgrams / g["seconds"] / 1e3,
            "loss_pct": 100.0 * g["lost"] / max(1, g["sent"]),
            "dgrams": dgrams,
            "gen": g,
            "lb_cpu_s": cpu.seconds,
            "lb_cpu_s_per_1m_dgram": None,
            "dgram_per_lb_cpu_s": None,
        }
        if cpu.seconds:
            row["lb_cpu_s_per_1m_dgram"] = cpu.seconds / dgrams * 1e6
            row["dgram_per_lb_cpu_s"] = dgrams / cpu.seconds
        return row


def _variant(size: int, many: bool) -> type[_Udp]:
    flows = "many" if many else "one"
    attrs = {
        "name": f"udp_{size}_{flows}",
        "title": (
            f"UDP {size} B request/response, 200 flows (1 in flight each, 1 reply per session)"
            if many
            else f"UDP {size} B, one flow (32 in flight, long-lived session)"
        ),
        "description": (
            "Client and echo backend (both Python, blocking/epoll) on core 1, LB on core 0. "
            "Datagrams = sent + received by the client; loss = unanswered after 0.2 s."
        ),
        "size": size,
        "sockets": 200 if many else 1,
        "window": 1 if many else 32,
        "udp_responses": 1 if many else None,
    }
    return type(f"Udp{size}{flows.title()}", (_Udp,), attrs)


SCENARIOS: tuple[type[Scenario], ...] = tuple(
    _variant(size, many) for size in (64, 1200) for many in (True, False)
)
