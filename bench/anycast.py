"""Anycast failover: three sluice XDP nodes behind a BGP/ECMP router lose one node (lab/anycast_topology.py).

Not a peer comparison: the two "peers" are the two ways a node leaves, measured in alternating
rounds (graceful, hard kill, graceful, ...), each round failing the next node in turn:

- graceful: SIGTERM; sluice withdraws the VIP over BGP, waits ``withdraw_delay`` (1 s), detaches.
- hard_kill: the node's link goes down and sluice and its BIRD get SIGKILL; the router only notices
  when the BGP hold time (3 s, keepalive 1 s) runs out.

Per round, with 300 established keep-alive TCP connections, a stream of new connections and UDP probes
over 16 source ports (each probed every 80 ms) running through the failure:

- convergence_s: failure -> the router's route to the VIP has lost the node's next hop;
- recovery_s: failure -> UDP traffic flows again through every ECMP path (0 = never interrupted;
  resolution 80 ms);
- survived: share of the 300 established connections whose next request (sent at the failure)
  is answered by the same backend as before;
- new_failed: new connections that failed during the failure (10 s timeout each).

Needs root, bird/birdc, clang and the lab; skips cleanly without them.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import proc, rounds
from bench.rounds import Metric, Row, Scenario, Target

CONNECTIONS = 300
NEW_CONNECTIONS = 200
NEW_PACE_S = 0.02
PROBE_PORTS = 16
PROBE_INTERVAL_S = 0.005
TOOLS = ("bird", "birdc", "clang", "ip", "nsenter", "unshare", "taskset")


class AnycastFailover(Scenario):
    name = "anycast"
    title = "Anycast failover: one of three XDP nodes leaves (BGP + ECMP)"
    description = (
        "3 sluice XDP DSR nodes announce one VIP over BGP (BIRD 2) to a router doing ECMP; one node "
        f"leaves per round. {CONNECTIONS} established TCP connections send a request at the failure; "
        "new connections and UDP probes run through it. Hold time 3 s, keepalive 1 s, withdraw_delay 1 s."
    )
    peer_names = ("graceful", "hard_kill")
    reference = "graceful"
    metrics = (
        Metric("convergence_s", "router converged (s)", "lower", ratio=False),
        Metric("recovery_s", "traffic flowing again (s)", "lower", ratio=False),
        Metric("survived", "established kept (share)", "higher", digits=4, ratio=False),
        Metric("new_failed", "new conns failed", "lower", ratio=False),
        Metric("slowest_request_s", "slowest request (s)", "lower", ratio=False),
    )
    targets = (
        Target("graceful: 0 new connections fail", "graceful", "new_failed", "<=", 0, kind="value"),
        Target(
            "graceful: 100 % of established connections kept", "graceful", "survived", ">=", 1.0, kind="value"
        ),
        Target(
            "hard kill: >= 99 % of established connections kept",
            "hard_kill",
            "survived",
            ">=",
            0.99,
            kind="value",
        ),
        Target(
            "hard kill: converged within hold time + 1 s (4 s)",
            "hard_kill",
            "convergence_s",
            "<=",
            4.0,
            kind="value",
        ),
        Target(
            "hard kill: traffic flowing within hold time + 1 s",
            "hard_kill",
            "recovery_s",
            "<=",
            4.0,
            kind="value",
        ),
    )

    def params(self) -> dict[str, Any]:
        from sluice.lab.router import HOLD_TIME_S, KEEPALIVE_S

        return {
            "nodes": 3,
            "backends": 3,
            "connections": CONNECTIONS,
            "hold_time_s": HOLD_TIME_S,
            "keepalive_s": KEEPALIVE_S,
            "withdraw_delay_s": 1.0,
        }


def missing() -> str | None:
    """Why the scenario cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP, BGP)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing {', '.join(absent)}" if absent else None


def _round(lab: Any, kind: str, node: int, base: int) -> Row:
    """One failure of `node`; ports from `base` on (fresh per round)."""
    ensure = [i for i in range(lab.node_count) if not lab.nodes[i].running]
    for i in ensure:
        lab.start_node(i)
    for i in range(lab.node_count):
        lab.wait_node_announced(i)
    lab.wait_next_hops(lab.all_next_hops())
    pool = lab.pool(base, CONNECTIONS)
    try:
        before = pool.round()
        bad = {p: r for p, r in before.items() if r[0].startswith("error")}
        if bad:
            raise RuntimeError(f"{len(bad)} connections failed before the failure")
        probe = lab.start_probe(base + 2000, PROBE_PORTS, duration_s=7.0, interval_s=PROBE_INTERVAL_S)
        burst = lab.start_burst(base + 1000, NEW_CONNECTIONS, NEW_PACE_S)
        time.sleep(0.5)
        with ThreadPoolExecutor(1) as executor:
            t0 = time.monotonic()
            if kind == "graceful":
                lab.nodes[node].proc.send_signal(15)
            else:
                lab.kill_node(node)
            during_f = executor.submit(pool.round, 30)
            t_route = lab.wait_next_hops(lab.all_next_hops() - {lab.nodes[node].ip}, timeout_s=15)
            during = during_f.result()
        if kind == "graceful":
            lab.nodes[node].proc.wait(20)
        probes = lab.finish(probe)
        new = lab.finish(burst)
    finally:
        pool.close()
    lost = [t for t, _, ok in probes if not ok and t >= t0]
    return {
        "node": lab.nodes[node].name,
        "convergence_s": round(t_route - t0, 3),
        "recovery_s": round(max(lost) - t0 + PROBE_PORTS * PROBE_INTERVAL_S, 3) if lost else 0.0,
        "survived": sum(1 for p, r in during.items() if r[0] == before[p][0]) / len(before),
        "new_failed": sum(1 for r in new.values() if str(r[0]).startswith("error")),
        "slowest_request_s": max(r[1] for r in during.values()),
        "probes_lost": len(lost),
    }


class Failovers:
    """The lab and its failures so far: failure n takes node n % nodes and ports from 20000 + 4000 n."""

    def __init__(self, workdir: Path) -> None:
        from sluice.lab.anycast_topology import AnycastLab

        self.lab = AnycastLab.create(workdir, cpu=proc.cores()[0])
        self.failures = 0

    def setup(self) -> None:
        self.lab.start_backends()
        self.lab.start_router()

    def measure(self, kind: str) -> Row:
        n = self.failures
        self.failures += 1
        return _round(self.lab, kind, n % self.lab.node_count, 20000 + 4000 * n)

    def close(self) -> None:
        self.lab.destroy()


def _brief(row: Row) -> str:
    return (
        f"  r{row['round']} {row['peer']:<9} {row['node']}: converged {row['convergence_s']:.3f}s, traffic "
        f"{row['recovery_s']:.3f}s, kept {row['survived']:.4f}, new failed {row['new_failed']}"
    )


def run(sc: AnycastFailover, n_rounds: int, log: Any = print) -> dict[str, Any] | None:
    """All rounds in one lab; the json document, or None when the scenario cannot run here."""
    return rounds.run_lab(sc, n_rounds, missing(), Failovers, _brief, log)
