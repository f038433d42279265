"""Maglev table build time: M = 65537, N = 100 and N = 1000 backends, alternating builds.

Not a peer comparison: the figure is the median build time against an absolute target
(N=1000 <= 5 ms), measured in a child process pinned to the LB core.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

from bench import proc
from bench.rounds import Metric, Row, Scenario, Target

SIZE = 65537
SIZES = (100, 1000)


def identities(n: int) -> list[tuple[str, int]]:
    """Backends as a config names them: "IP:port", weight 1."""
    return [(f"10.{i // 250}.{i % 250}.1:8080", 1) for i in range(n)]


def child_main() -> None:
    """`python -m bench.maglev --builds K --max-seconds S`: prints one JSON object of rows."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=25)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    a = ap.parse_args()
    from sluice.core.maglev import build_table

    backends = {n: identities(n) for n in SIZES}
    for n in SIZES:  # warm-up (imports, caches), not counted; checks the table's shape once
        table = build_table(backends[n], size=SIZE)
        got = table.size
        if got != SIZE:
            raise SystemExit(f"build_table returned {got} slots, expected {SIZE}")
    rows: list[Row] = []
    deadline = time.monotonic() + a.max_seconds
    for r in range(1, a.builds + 1):
        for n in SIZES:
            gc.collect()
            t0 = time.perf_counter()
            build_table(backends[n], size=SIZE)
            rows.append({"round": r, "peer": f"N={n}", "build_ms": (time.perf_counter() - t0) * 1e3})
        if time.monotonic() > deadline and r >= 3:
            break
    print(json.dumps(rows))


class MaglevBuild(Scenario):
    name = "maglev"
    title = f"Maglev table build (M={SIZE})"
    description = (
        "sluice.core.maglev.build_table, alternating N=100 / N=1000, gc.collect() before each build."
    )
    peer_names = tuple(f"N={n}" for n in SIZES)
    reference = "N=100"
    layout = None  # one process on core 0, nothing else running
    row_label = "backends"
    metrics = (Metric("build_ms", "build ms (median)", "lower", ratio=False),)
    targets = (Target("N=1000 build <= 5 ms", "N=1000", "build_ms", "<=", 5.0, kind="value", unit="ms"),)

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.builds = 20 if quick else 30

    def params(self) -> dict[str, Any]:
        return {"table_size": SIZE, "builds_per_n": self.builds, "backends": list(SIZES)}


def run(sc: MaglevBuild, log: Any = print) -> tuple[list[Row], list[str]]:
    cmd = proc.python_module("bench.maglev", "--builds", str(sc.builds), "--max-seconds", "90")
    try:
        out, err = proc.run_json(cmd, proc.cores()[0], timeout=150)
        rows: list[Row] = json.loads(out)
    except (proc.StartError, ValueError) as exc:
        log(f"  ! maglev: {exc}")
        return [], [f"maglev: {exc}"]
    errors = [] if rows else [f"maglev: no builds: {err[-300:]}"]
    for n in sc.peer_names:
        times = sorted(r["build_ms"] for r in rows if r["peer"] == n)
        if times:
            log(
                f"  {n}: median {statistics.median(times):.2f} ms, min {times[0]:.2f} ms ({len(times)} builds)"
            )
    return rows, errors


if __name__ == "__main__":
    child_main()
