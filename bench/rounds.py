"""Alternating rounds (A B C D A B C D ...), medians, same-round ratios, targets.

A scenario starts its backend(s) once, every peer once (each on its own VIP port, idle peers
cost nothing), then measures peer after peer, round after round. A ratio is the median over
rounds of (peer / reference) within the same round, so slow drifts of a noisy machine cancel.
"""

from __future__ import annotations

import datetime as dt
import operator
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import machine, peers, proc
from bench.cpu import CoreMeter

Row = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "higher" | "lower"
    digits: int = 3  # significant digits in the table
    show: bool = True  # a column in BENCHMARKS.md (all metrics are in the json)
    ratio: bool = True  # show the ratio-to-reference column


@dataclass(frozen=True)
class Target:
    text: str
    peer: str
    metric: str
    op: str  # "<=" | ">="
    threshold: float
    kind: str = "ratio"  # "ratio" (to the reference peer) | "value" (the median itself)
    unit: str = ""  # of a "value" target, for the report


@dataclass
class Params:
    rounds: int
    quick: bool
    extra: dict[str, Any] = field(default_factory=dict)


class Scenario:
    """Subclasses set the class attributes and implement setup/measure (and maybe derive)."""

    name = ""
    title = ""
    description = ""
    proto = "tcp"
    peer_names: tuple[str, ...] = peers.TCP_PEERS
    reference = "haproxy"
    udp_responses: int | None = None
    layout: str | None = "split"  # proc.LAYOUT while it runs (None: n/a); run.py --layout overrides it
    row_label = "peer"  # header of the first column in BENCHMARKS.md
    metrics: tuple[Metric, ...] = ()
    targets: tuple[Target, ...] = ()

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.tmp = Path(".")

    def params(self) -> dict[str, Any]:
        return {}

    def reference_for(self, peer: str) -> str:
        """The row whose same-round figures `peer`'s ratios divide by (a ladder: NGINX at the same step)."""
        return self.reference

    def setup(self) -> int:
        """Start the backend(s) in self.tmp; return the backend port the peers forward to."""
        raise NotImplementedError

    def measure(self, peer: peers.Running) -> Row:
        """One round for one peer: the raw numbers, including every metric key."""
        raise NotImplementedError

    def derive(self, rows: list[Row]) -> None:
        """Add metrics that need other peers' rows of the same round (e.g. added latency)."""

    def teardown(self) -> None:
        """Stop what setup started."""


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def summarise(sc: Scenario, rows: list[Row]) -> tuple[dict[str, Any], dict[str, Any]]:
    medians: dict[str, dict[str, float | None]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    by_peer_round = {(r["peer"], r["round"]): r for r in rows}
    for p in sc.peer_names:
        mine = [r for r in rows if r["peer"] == p]
        if not mine:
            continue
        medians[p] = {}
        ratios[p] = {}
        for m in sc.metrics:
            medians[p][m.key] = _median([v for r in mine if (v := _num(r.get(m.key))) is not None])
            per_round = []
            for r in mine:
                ref = by_peer_round.get((sc.reference_for(p), r["round"]))
                a, b = _num(r.get(m.key)), _num(ref.get(m.key)) if ref else None
                if a is not None and b is not None and b != 0:
                    per_round.append(a / b)
            ratios[p][m.key] = _median(per_round)
    return medians, ratios


_OPS = {"<=": operator.le, ">=": operator.ge}


def evaluate(sc: Scenario, medians: dict[str, Any], ratios: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in sc.targets:
        table = ratios if t.kind == "ratio" else medians
        value = table.get(t.peer, {}).get(t.metric)
        met = None if value is None else bool(_OPS[t.op](value, t.threshold))
        out.append({**asdict(t), "value": value, "met": met})
    return out


def run(sc: Scenario, rounds: int, log: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    saved_layout, proc.LAYOUT = proc.LAYOUT, sc.layout or "split"
    try:
        return _run(sc, rounds, log, started)
    finally:
        proc.LAYOUT = saved_layout


def _run(sc: Scenario, rounds: int, log: Any, started: float) -> dict[str, Any]:
    sc.tmp = Path(tempfile.mkdtemp(prefix=f"sluice-bench-{sc.name}-"))
    errors: list[str] = []
    rows: list[Row] = []
    running: dict[str, peers.Running] = {}
    try:
        backend_port = sc.setup()
        for name in sc.peer_names:
            try:
                running[name] = peers.start(name, sc.proto, backend_port, sc.tmp, sc.udp_responses)
            except proc.StartError as exc:
                errors.append(f"{name}: failed to start: {exc}")
                log(f"  ! {name} failed to start: {exc}")
        for r in range(1, rounds + 1):
            for name in sc.peer_names:
                peer = running.get(name)
                if peer is None:
                    continue
                if not peer.alive():
                    errors.append(
                        f"round {r} {name}: process died: {proc.log_tail(sc.tmp / (name + '.log'))}"
                    )
                    log(f"  ! {name} died")
                    del running[name]
                    continue
                try:
                    with CoreMeter() as cores:
                        row = sc.measure(peer)
                except Exception as exc:  # one failed round must not sink the scenario
                    errors.append(f"round {r} {name}: {type(exc).__name__}: {exc}")
                    log(f"  ! round {r} {name}: {exc}")
                    continue
                row = {
                    "round": r,
                    "peer": name,
                    **row,
                    "wall_s": round(cores.wall, 3),
                    "core_busy_s": cores.busy,
                }
                rows.append(row)
                log("  " + _brief(sc, row))
    except Exception as exc:
        errors.append(f"scenario aborted: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        log(f"  ! scenario aborted: {exc}")
    finally:
        for peer in running.values():
            peer.stop()
        sc.teardown()
    sc.derive(rows)
    if errors:
        errors.append(f"logs kept in {sc.tmp}")
    else:
        shutil.rmtree(sc.tmp, ignore_errors=True)
    return result(sc, rounds, rows, errors, started)


class Lab(Protocol):
    """A scenario's own test bed (network namespaces and what runs in them), driven by `run_lab`."""

    def setup(self) -> None: ...

    def measure(self, peer: str) -> Row: ...

    def close(self) -> None: ...


def run_lab(
    sc: Scenario,
    n_rounds: int,
    missing: str | None,
    open_lab: Callable[[Path], Lab],
    brief: Callable[[Row], str],
    log: Any,
) -> dict[str, Any] | None:
    """The json document of a scenario that measures in its own lab, opened in a fresh workdir and
    closed at the end: every peer once per round; a failed round is an error, not the end. None,
    without a lab, when the scenario cannot run here (`missing` says why)."""
    if missing is not None:
        log(f"== {sc.name}: skipped, {missing}")
        return None
    started = time.monotonic()
    rows: list[Row] = []
    errors: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"sluice-bench-{sc.name}-"))
    lab: Lab | None = None
    try:
        lab = open_lab(workdir)
        lab.setup()
        for r in range(1, n_rounds + 1):
            for peer in sc.peer_names:
                try:
                    row = {"round": r, "peer": peer, **lab.measure(peer)}
                except Exception as exc:  # one failed round must not sink the scenario
                    errors.append(f"round {r} {peer}: {type(exc).__name__}: {exc}")
                    log(f"  ! round {r} {peer}: {exc}")
                    continue
                rows.append(row)
                log(brief(row))
    except Exception as exc:
        errors.append(f"scenario aborted: {type(exc).__name__}: {exc}")
        log(f"  ! scenario aborted: {exc}")
    finally:
        if lab is not None:
            lab.close()
    sc.derive(rows)
    if errors:
        errors.append(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result(sc, n_rounds, rows, errors, started)


def result(sc: Scenario, rounds: int, rows: list[Row], errors: list[str], started: float) -> dict[str, Any]:
    """The json document of one scenario: facts, every round, medians, ratios, targets."""
    medians, ratios = summarise(sc, rows)
    saved_layout, proc.LAYOUT = proc.LAYOUT, sc.layout or "split"
    lb_core, gen_core = proc.cores()
    proc.LAYOUT = saved_layout
    layout = {"name": sc.layout, "lb_core": lb_core, "generator_core": gen_core, "nice": proc.NICE}
    return {
        "scenario": sc.name,
        "title": sc.title,
        "description": sc.description,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": sc.quick,
        "rounds": rounds,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine.machine(),
        "versions": machine.versions(),
        "params": sc.params(),
        "layout": layout if sc.layout else None,
        "row_label": sc.row_label,
        "reference": sc.reference,
        "peers": [p for p in sc.peer_names if p in medians],
        "peer_labels": {p: peers.LABELS.get(p, p) for p in sc.peer_names},
        "metrics": [asdict(m) for m in sc.metrics],
        "raw_rounds": rows,
        "medians": medians,
        "ratios": ratios,
        "targets": evaluate(sc, medians, ratios),
        "errors": errors,
    }


def _brief(sc: Scenario, row: Row) -> str:
    parts = [f"r{row['round']} {row['peer']:<14}"]
    for m in sc.metrics:
        if m.show and (v := _num(row.get(m.key))) is not None:
            parts.append(f"{m.key}={v:.4g}")
    return " ".join(parts)
