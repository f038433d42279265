"""A dnsperf-style fixed-rate ladder on a DNS VIP: 5k, 10k, 20k queries/s, loss and latency per step.

The sender (bench/dnsgen.py) is open loop: it sends at the step's rate whatever the answers do, over
64 client sockets, each query a DNS message carrying its send time; the backend (bench/echo.py dns)
answers each with a DNS response. Loss = queries unanswered within 1 s; latency of the answered ones.
Every peer runs for the whole scenario; within a round the steps go up, and at each step the peers
take turns (nginx, sluice, sluice-python, direct), so a step's figures are measured back to back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import backends, peers, proc
from bench.cpu import CpuMeter
from bench.rounds import Metric, Row, Scenario, run_lab

STEPS = (5_000, 10_000, 20_000)  # queries per second
PEERS = ("nginx", "sluice", "sluice-python", "direct")
SOCKETS = 64
TIMEOUT_S = 1.0


def step_name(peer: str, rate: int) -> str:
    return f"{peer}@{rate // 1000}k"


def split_name(name: str) -> tuple[str, int]:
    """("sluice", 10000) from "sluice@10k"."""
    peer, _, k = name.rpartition("@")
    if not peer or not k.endswith("k") or not k[:-1].isdigit():
        raise ValueError(f"not a ladder row name: {name!r}")
    return peer, int(k[:-1]) * 1000


class UdpLadder(Scenario):
    name = "udp_ladder"
    title = "UDP DNS fixed-rate ladder (dnsperf-style): 5k, 10k, 20k queries/s"
    description = (
        f"Open-loop DNS-shaped queries at a fixed rate per step over {SOCKETS} client sockets, a DNS "
        "response per query from the backend (Python, generator core), 1 reply per session; loss = "
        f"unanswered after {TIMEOUT_S:g} s; latency of the answered queries (send to answer, from the "
        f"time in the query). Every listen socket's receive buffer {peers.UDP_RCVBUF:,} B (sluice's "
        "default, for its udp.max_queue_delay 50 ms). `q/s sent` below the step's "
        "rate means the sender could not keep it (the generator's limit on this core)."
    )
    proto = "udp"
    peer_names = tuple(step_name(p, r) for r in STEPS for p in PEERS)
    reference = step_name("nginx", STEPS[0])
    udp_responses = 1
    row_label = "peer @ rate"
    metrics = (
        Metric("qps_sent", "q/s sent", "higher", ratio=False),
        Metric("loss_pct", "loss %", "lower", digits=2, ratio=False),
        Metric("p50_ms", "p50 ms", "lower", ratio=False),
        Metric("p99_ms", "p99 ms", "lower", ratio=False),
        Metric("avg_ms", "avg ms", "lower", ratio=False),
        Metric("lb_cpu_us_per_answer", "LB CPU-µs per answered query", "lower", ratio=False),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.seconds = 2.0 if quick else 5.0

    def reference_for(self, peer: str) -> str:
        return step_name("nginx", split_name(peer)[1])

    def params(self) -> dict[str, Any]:
        return {
            "steps_qps": list(STEPS),
            "seconds_per_step": self.seconds,
            "client_sockets": SOCKETS,
            "loss_timeout_s": TIMEOUT_S,
            "responses_per_session": 1,
            "receive_buffer": peers.UDP_RCVBUF,
        }


class LadderLab:
    """The DNS backend and every peer, started once; one step of one peer per `measure`."""

    def __init__(self, sc: UdpLadder, workdir: Path) -> None:
        self.sc = sc
        self.workdir = workdir
        self.backend: subprocess.Popen[bytes] | None = None
        self.running: dict[str, peers.Running] = {}

    def setup(self) -> None:
        port = proc.free_port()
        self.backend = backends.dns(self.workdir, port)
        for name in PEERS:
            try:
                self.running[name] = peers.start(
                    name, "udp", port, self.workdir, 1, udp_rcvbuf=peers.UDP_RCVBUF
                )
            except proc.StartError as exc:  # its rows fail; the others still run
                self.running.pop(name, None)
                print(f"  ! {name} failed to start: {exc}", flush=True)

    def measure(self, name: str) -> Row:
        peer_name, rate = split_name(name)
        peer = self.running.get(peer_name)
        if peer is None:
            raise RuntimeError(f"{peer_name} is not running")
        if not peer.alive():
            raise RuntimeError(f"{peer_name} died: {proc.log_tail(self.workdir / (peer_name + '.log'))}")
        cmd = proc.python_module(
            "bench.dnsgen",
            *("--port", str(peer.port), "--rate", str(rate), "--seconds", str(self.sc.seconds)),
            *("--sockets", str(SOCKETS), "--timeout", str(TIMEOUT_S)),
        )
        with CpuMeter(peer.pid) as cpu:
            out, _ = proc.run_json(cmd, proc.cores()[1], timeout=self.sc.seconds + 30)
        g = json.loads(out)
        if g["answered"] == 0:
            raise RuntimeError(f"no query was answered: {g}")
        return {
            "rate": rate,
            "qps_sent": g["sent"] / self.sc.seconds,
            "loss_pct": g["loss_pct"],
            "p50_ms": g["p50_ms"],
            "p99_ms": g["p99_ms"],
            "avg_ms": g["avg_ms"],
            "lb_cpu_s": cpu.seconds,
            "lb_cpu_us_per_answer": None if cpu.seconds is None else cpu.seconds / g["answered"] * 1e6,
            "gen": g,
        }

    def close(self) -> None:
        for peer in self.running.values():
            peer.stop()
        proc.stop(self.backend)


def _brief(row: Row) -> str:
    return (
        f"  r{row['round']} {row['peer']:<18} sent {row['qps_sent']:,.0f} q/s  loss {row['loss_pct']:.2f}%  "
        f"p50 {row['p50_ms']:.3f}  p99 {row['p99_ms']:.3f}  avg {row['avg_ms']:.3f} ms"
    )


def run(sc: UdpLadder, n_rounds: int, log: Any) -> dict[str, Any] | None:
    doc = run_lab(sc, n_rounds, None, lambda wd: LadderLab(sc, wd), _brief, log)
    if doc is not None:
        for name in doc["peer_labels"]:
            peer, rate = split_name(name)
            doc["peer_labels"][name] = f"{peers.LABELS.get(peer, peer)} @ {rate // 1000}k q/s"
    return doc
