"""Entry point: `python -m bench.run [--scenario NAME ...] [--rounds N] [--quick] [--report-only]`.

Runs the chosen scenarios (default: all), writes bench/results/<scenario>.json for each, then
regenerates BENCHMARKS.md from every json present. Budget: full run < 25 min, --quick < 4 min.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from bench import (
    anycast,
    control,
    maglev,
    proc,
    report,
    rounds,
    syscalls,
    tcp,
    udp,
    udp_flood,
    udp_ladder,
    xdp,
)

_ALL: tuple[type[rounds.Scenario], ...] = (
    *tcp.SCENARIOS,
    *syscalls.SCENARIOS,
    *udp.SCENARIOS,
    udp_flood.UdpFlood,
    udp_flood.UdpFloodHard,
    udp_ladder.UdpLadder,
    maglev.MaglevBuild,
    anycast.AnycastFailover,
    control.ControlPlane,
    xdp.XdpForwarding,
)
SCENARIOS: dict[str, type[rounds.Scenario]] = {sc.name: sc for sc in _ALL}
NEEDS = {
    "tcp_syscalls": ("strace", "nginx"),
    "tcp_bulk": ("iperf3",),
    "tcp_conn": ("wrk", "nginx"),
    "tcp_keepalive": ("wrk", "nginx"),
}
LAYOUTS = {sc.name for sc in (*tcp.SCENARIOS, *udp.SCENARIOS)}  # scenarios --layout applies to


def log(msg: str) -> None:
    print(msg, flush=True)


def run_one(name: str, n_rounds: int, quick: bool, layout: str | None = None) -> dict[str, Any] | None:
    missing = [t for t in (*NEEDS.get(name, ()), "taskset") if shutil.which(t) is None]
    if missing:
        log(f"== {name}: skipped, missing {', '.join(missing)} (make system-deps-bench installs them)")
        return None
    sc = SCENARIOS[name](quick)
    if layout and name in LAYOUTS and layout != sc.layout:
        sc.layout = layout
        sc.name = f"{name}-{layout}"  # its own json and table next to the default layout's
    log(f"== {sc.name}: {sc.title}" + (f" (layout {sc.layout})" if sc.layout else ""))
    if isinstance(sc, maglev.MaglevBuild):
        started = time.monotonic()
        rows, errors = maglev.run(sc, log)
        return rounds.result(sc, sc.builds, rows, errors, started)
    if isinstance(sc, anycast.AnycastFailover):
        return anycast.run(sc, n_rounds, log)  # None (skipped) without root / bird / the lab
    if isinstance(sc, xdp.XdpForwarding):
        return xdp.run(sc, n_rounds, log)  # None (skipped) without root / nft / clang / 2 cores
    if isinstance(sc, udp_flood.UdpFlood):
        return udp_flood.run(sc, n_rounds, log)  # None (skipped) without root / ip / nginx
    if isinstance(sc, udp_ladder.UdpLadder):
        return udp_ladder.run(sc, n_rounds, log)
    if isinstance(sc, control.ControlPlane):
        return control.run(sc, n_rounds, log)
    return rounds.run(sc, n_rounds, log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default all")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 5, --quick 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, short durations")
    ap.add_argument(
        "--layout",
        choices=("split", "shared"),
        help="split: LB alone on core 0; shared: LB on the generator core (default: per scenario, "
        "shared for tcp_latency, split otherwise); a non-default layout writes <scenario>-<layout>.json",
    )
    ap.add_argument("--nice", type=int, default=0, help="niceness of the started processes (e.g. -10)")
    ap.add_argument("--report-only", action="store_true", help="only regenerate BENCHMARKS.md")
    ap.add_argument("--list", action="store_true", help="list scenarios")
    a = ap.parse_args(argv)
    if a.list:
        for name, cls in SCENARIOS.items():
            print(f"{name:<14} {cls.title}")
        return 0
    if not a.report_only:
        n_rounds = a.rounds or (2 if a.quick else 5)
        if n_rounds < 5 and not a.quick:
            log(f"warning: {n_rounds} rounds; MEASURE.md asks for at least 5")
        proc.pin_self()
        proc.NICE = a.nice
        report.RESULTS.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for name in a.scenario or list(SCENARIOS):
            doc = run_one(name, n_rounds, a.quick, a.layout)
            if doc is None:
                continue
            path = report.RESULTS / f"{doc['scenario']}.json"
            path.write_text(json.dumps(doc, indent=1) + "\n")
            report.write()
            log(f"   -> {path.relative_to(proc.REPO)} ({doc['elapsed_s']} s)")
        log(f"total {time.monotonic() - t0:.0f} s")
    out = report.write()
    docs = report.load()
    log(f"wrote {out.relative_to(proc.REPO)} from {len(docs)} result file(s)")
    for line in report.summary(docs):
        log("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
