"""Control plane: failover convergence under load, and the cost of a reload with 1,000 backends.

Not a peer comparison (nothing else runs sluice's control loop), so the figures are absolute, on
this machine, in this run; the json keeps the machine facts and every round.

- failover: a sluice TCP proxy VIP (Maglev) with 3 echo backends, active tcp checks (interval 0.5 s,
  timeout 0.5 s, fall 3, rise 2, passive ejection off) under a steady stream of new connections
  (RATE/s, each: connect, 1-byte echo, close). Each round SIGKILLs one backend process (the next one
  in turn) and measures, from the kill:

  - down_s: to the health transition to ``down`` (the monitor's own timestamp);
  - last_flow_s: to the last new flow the LB sent to the dead backend (the last increase of its
    ``connect_attempts``, polled every POLL_S inside the LB process);

  compared with the bound interval x fall + timeout. Then the backend restarts and rises.
  LB and its poller run in one process on the LB core; backends and the load on the other.
- reload: `Controller.reload` of a config file with one VIP of N_BACKENDS backends, each reload
  removing 10, adding 10 and re-weighting 10 (alternating between two files), in a child process on
  the LB core (no health monitor running, no traffic). Wall and CPU time (time.process_time) split
  into reading + YAML parsing and validation (`load_config` = yaml.safe_load + `parse_config`), the
  controller (monitor, effective config), the Maglev rebuild (M = 65537) and the rest of the data
  plane's apply. Shares are of the reload's CPU time (wall time on a shared machine is noisier).

`python -m bench.run --scenario control`; the LB and reload children are `python -m bench.control`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import backends, machine, proc, rounds
from bench.cpu import CoreMeter, tree_cpu_seconds
from bench.rounds import Metric, Row, Scenario, Target

INTERVAL_S, TIMEOUT_S, FALL, RISE = 0.5, 0.5, 3, 2
BOUND_S = INTERVAL_S * FALL + TIMEOUT_S
RATE = 250
"""New connections per second during the failover rounds."""
MAX_IN_FLIGHT = 64
POLL_S = 0.002
"""How often the LB process looks at its counters (resolution of last_flow_s)."""
STEADY_S = 0.5
"""Load before the kill."""
SETTLE_S = 0.6
"""Load after the transition to down: a new flow to the dead backend would show up in it."""
N_BACKENDS = 1000
CHANGED = 10
"""Backends removed, added and re-weighted by each reload."""
TABLE_SIZE = 65537
PARTS = ("total", "yaml", "validate", "control", "maglev", "plane")
PART_LABELS = {
    "total": "reload: total",
    "yaml": "reload: read + YAML parse",
    "validate": "reload: validate (pydantic)",
    "control": "reload: controller",
    "maglev": f"reload: Maglev rebuild (M={TABLE_SIZE})",
    "plane": "reload: data plane (rest)",
}


class ControlPlane(Scenario):
    name = "control"
    title = "Control plane: failover convergence and reload cost"
    description = ""  # set by run() from the measurements
    peer_names = ("failover", *PART_LABELS.values())
    reference = "failover"
    layout = "split"
    row_label = "measure"
    metrics = (
        Metric("down_s", "kill → down (s)", "lower", ratio=False),
        Metric("last_flow_s", "kill → last flow to it (s)", "lower", ratio=False),
        Metric("lb_cpu_s_per_10k", "LB CPU-s / 10k conns", "lower", ratio=False),
        Metric("wall_ms", "wall ms", "lower", ratio=False),
        Metric("cpu_ms", "CPU ms", "lower", ratio=False),
        Metric("share", "share of reload CPU", "lower", ratio=False),
        Metric("push_ms", "down → data plane updated (ms)", "lower", show=False, ratio=False),
        Metric("flows_to_dead", "new flows sent to the dead backend", "lower", show=False, ratio=False),
        Metric("client_errors", "client-visible failures", "lower", show=False, ratio=False),
        Metric("slots_changed", "Maglev slots moved per reload", "lower", show=False, ratio=False),
    )
    targets = (
        Target(
            f"failover: median kill → down <= interval × fall + timeout ({BOUND_S:g} s)",
            "failover",
            "down_s",
            "<=",
            BOUND_S,
            kind="value",
            unit="s",
        ),
        Target(
            f"failover: median kill → last new flow to the dead backend <= {BOUND_S:g} s",
            "failover",
            "last_flow_s",
            "<=",
            BOUND_S,
            kind="value",
            unit="s",
        ),
        Target("failover: no client-visible failure", "failover", "client_errors", "<=", 0, kind="value"),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.reloads = 6 if quick else 10

    def params(self) -> dict[str, Any]:
        return {
            "health": f"tcp interval {INTERVAL_S}s timeout {TIMEOUT_S}s fall {FALL} rise {RISE} jitter 0.1",
            "passive": "off",
            "rate_per_s": RATE,
            "poll_ms": POLL_S * 1e3,
            "reload_backends": N_BACKENDS,
            "reload_change": f"-{CHANGED} +{CHANGED} ~{CHANGED}",
            "reloads": self.reloads,
        }


# ---------------------------------------------------------------- the LB child (failover)


async def _lb_main(config_path: str) -> None:
    from sluice.config import load_config
    from sluice.control.controller import Controller

    config = load_config(config_path)
    vip = config.vips[0].name
    controller = Controller(config)
    await controller.start()
    attempts: dict[str, int] = {}
    last_attempt: dict[str, float] = {}
    weight0_at: dict[str, float] = {}
    weights: dict[str, int] = {}

    async def watch() -> None:
        while True:
            now = time.monotonic()
            for addr, bs in controller.stats()[vip].backends.items():
                if bs.connect_attempts != attempts.get(addr):
                    attempts[addr] = bs.connect_attempts
                    last_attempt[addr] = now
            for (_, addr), w in controller.effective_weights().items():
                if w == 0 and weights.get(addr, 1) != 0:
                    weight0_at[addr] = now
                weights[addr] = w
            await asyncio.sleep(POLL_S)

    def state() -> dict[str, Any]:
        stats = controller.stats()[vip].backends
        out: dict[str, Any] = {}
        for b in config.vips[0].backends:
            addr = str(b.address)
            health = controller.monitor.record(vip, b.address).health
            bs = stats.get(addr)
            out[addr] = {
                "state": str(health.state),
                "last_change": health.last_change,
                "weight": weights.get(addr),
                "weight0_at": weight0_at.get(addr),
                "attempts": bs.connect_attempts if bs else 0,
                "last_attempt": last_attempt.get(addr),
                "refused": bs.connect_errors["refused"] if bs else 0,
                "connect_errors": dict(bs.connect_errors) if bs else {},
            }
        return {"backends": out, "cpu_s": time.process_time()}

    watcher = asyncio.create_task(watch())
    print(json.dumps({"ready": True}), flush=True)
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip() != "state":
                break
            print(json.dumps(state()), flush=True)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await controller.close()


class LbChild:
    """`python -m bench.control lb CONFIG` pinned to the LB core; asked for its state over a pipe."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        path = tmp / "lb.json"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.log = tmp / "lb.log"
        cmd = proc.pinned(proc.python_module("bench.control", "lb", str(path)), proc.cores()[0])
        with self.log.open("ab") as err:
            self.p = subprocess.Popen(
                ["timeout", "-k", "5", "600", *cmd],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=proc.REPO,
                env=proc.child_env(),
                start_new_session=True,
            )
        self._read(15.0)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.p.stdout is not None
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else b""
        if not line:
            raise proc.StartError(f"sluice LB gave no answer: {proc.log_tail(self.log)}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def state(self) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(b"state\n")
        self.p.stdin.flush()
        return self._read(5.0)

    def stop(self) -> None:
        if self.p.stdin is not None:
            with contextlib.suppress(OSError):
                self.p.stdin.write(b"quit\n")
                self.p.stdin.close()
        try:
            self.p.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.stop(self.p)


# ---------------------------------------------------------------- the load (a thread of the harness)


class Load:
    """New connections at RATE/s to the VIP (connect, 1-byte echo, close), at most MAX_IN_FLIGHT."""

    def __init__(self, port: int, max_s: float) -> None:
        self.port = port
        self.max_s = max_s
        self.done = 0
        self.errors = 0
        self.kinds: Counter[str] = Counter()
        """Failures by exception name."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    async def _one(self, slots: asyncio.Semaphore) -> None:
        writer = None
        try:
            async with asyncio.timeout(2.0):
                reader, writer = await asyncio.open_connection(proc.HOST, self.port)
                writer.write(b"x")
                await reader.readexactly(1)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.errors += 1
            self.kinds[type(exc).__name__] += 1
        finally:
            if writer is not None:
                writer.close()
            self.done += 1
            slots.release()

    async def _main(self) -> None:
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        start = next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.max_s:
            await slots.acquire()
            task = asyncio.create_task(self._one(slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1.0 / RATE
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                next_at = time.monotonic()  # fell behind: no burst to catch up
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- failover rounds


def _wait_until(what: str, predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise TimeoutError(f"{what} not within {timeout_s:g} s")


def _state_is(child: LbChild, addr: str, state: str) -> Callable[[], bool]:
    return lambda: bool(child.state()["backends"][addr]["state"] == state)


def _failover(sc: ControlPlane, n_rounds: int, log: Any, rows: list[Row], errors: list[str]) -> None:
    tmp = sc.tmp
    ports = [proc.free_port() for _ in range(3)]
    vip_port = proc.free_port()
    echo = {port: backends.echo(tmp, port, "tcp") for port in ports}
    lb: LbChild | None = None
    load: Load | None = None
    try:
        lb = LbChild(
            {
                "vips": [
                    {
                        "name": "web",
                        "listen": f"{proc.HOST}:{vip_port}",
                        "backends": [{"address": f"{proc.HOST}:{p}"} for p in ports],
                        "health": {
                            "type": "tcp",
                            "interval": INTERVAL_S,
                            "timeout": TIMEOUT_S,
                            "fall": FALL,
                            "rise": RISE,
                        },
                        "passive": "off",
                    }
                ]
            },
            tmp,
        )
        load = Load(vip_port, max_s=30.0 + 10.0 * n_rounds)
        load.start()
        child = lb

        def all_up() -> bool:
            bs = child.state()["backends"]
            return all(b["state"] == "up" and b["weight"] for b in bs.values())

        for r in range(1, n_rounds + 1):
            port = ports[(r - 1) % len(ports)]
            addr = f"{proc.HOST}:{port}"
            try:
                _wait_until("all backends up", all_up, 10.0)
                with CoreMeter() as cores:
                    time.sleep(STEADY_S)
                    before = child.state()
                    cpu0, done0, errors0 = tree_cpu_seconds(child.p.pid), load.done, load.errors
                    kinds0 = Counter(load.kinds)
                    killed_at = time.monotonic()
                    os.killpg(echo[port].pid, signal.SIGKILL)
                    _wait_until(f"{addr} down", _state_is(child, addr, "down"), 3 * BOUND_S)
                    time.sleep(SETTLE_S)
                    after = child.state()
                    cpu1, done1, errors1 = tree_cpu_seconds(child.p.pid), load.done, load.errors
                echo[port].wait(5.0)
                b0, b1 = before["backends"][addr], after["backends"][addr]
                sent = b1["attempts"] - b0["attempts"]
                last = b1["last_attempt"] if sent else killed_at
                row: Row = {
                    "round": r,
                    "peer": "failover",
                    "backend": addr,
                    "down_s": round(b1["last_change"] - killed_at, 4),
                    "last_flow_s": round(last - killed_at, 4),
                    "push_ms": round((b1["weight0_at"] - b1["last_change"]) * 1e3, 2),
                    "last_flow_after_push_ms": round((last - b1["weight0_at"]) * 1e3, 2),
                    "flows_to_dead": sent,
                    "refused": b1["refused"] - b0["refused"],
                    "client_errors": errors1 - errors0,
                    "client_error_kinds": dict(Counter(load.kinds) - kinds0),
                    "lb_connect_errors": {
                        k: v - b0["connect_errors"].get(k, 0) for k, v in b1["connect_errors"].items()
                    },
                    "conns": done1 - done0,
                    "lb_cpu_s": round(cpu1 - cpu0, 4),
                    "lb_cpu_s_per_10k": round((cpu1 - cpu0) / max(1, done1 - done0) * 1e4, 4),
                    "conns_per_s": round((done1 - done0) / cores.wall, 1),
                    "window_s": round(cores.wall, 3),
                    "core_busy_s": cores.busy,
                }
                rows.append(row)
                log(
                    f"  r{r} failover {addr}: down {row['down_s']:.3f}s, last flow {row['last_flow_s']:.3f}s, "
                    f"push {row['push_ms']:.1f}ms, {sent} flows to it, {row['client_errors']} client errors"
                )
            except Exception as exc:  # one failed round must not sink the scenario
                errors.append(f"round {r} failover: {type(exc).__name__}: {exc}")
                log(f"  ! round {r} failover: {exc}")
            finally:
                if echo[port].poll() is not None:
                    echo[port] = backends.echo(tmp, port, "tcp")
    finally:
        if load is not None:
            load.stop()
        if lb is not None:
            lb.stop()
        for p in echo.values():
            proc.stop(p)


# ---------------------------------------------------------------- the reload child


def _reload_config(vip_port: int, names: list[str], heavy: set[str]) -> dict[str, Any]:
    return {
        "vips": [
            {
                "name": "big",
                "listen": f"{proc.HOST}:{vip_port}",
                "maglev_table_size": TABLE_SIZE,
                "backends": [{"address": a, "weight": 2 if a in heavy else 1} for a in names],
                "health": {"type": "tcp", "interval": 2, "timeout": 1},
            }
        ]
    }


async def _reload_main(n_reloads: int, max_s: float) -> None:
    import yaml

    from sluice import config as config_mod
    from sluice.config import load_config
    from sluice.control import controller as controller_mod
    from sluice.control.controller import Controller
    from sluice.control.monitor import Monitor
    from sluice.core import scheduler as scheduler_mod
    from sluice.dataplane.proxy import tcp as tcp_mod
    from sluice.dataplane.proxy.plane import ProxyPlane

    spent: dict[str, list[float]] = {}

    def add(key: str, w0: float, c0: float) -> None:
        t = spent.setdefault(key, [0.0, 0.0])
        t[0] += time.perf_counter() - w0
        t[1] += time.process_time() - c0

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                add(key, w0, c0)

        return wrapper

    def timed_async(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return await fn(*args, **kwargs)
            finally:
                add(key, w0, c0)

        return wrapper

    # (where the code looks the name up, key in `spent`, wrapper): the name a caller resolves is replaced
    for owner, name, key, wrap in (
        (controller_mod, "load_config", "parse", timed),
        (config_mod, "parse_config", "validate", timed),
        (controller_mod, "effective_config", "effective", timed),
        (Monitor, "configure", "monitor", timed),
        (scheduler_mod, "build_table", "maglev", timed),
        (tcp_mod, "maglev_slots_changed", "slot_count", timed),
        (ProxyPlane, "apply", "plane", timed_async),
    ):
        setattr(owner, name, wrap(key, getattr(owner, name)))

    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-reload-"))
    try:
        names = [f"127.1.{i // 250}.{i % 250 + 1}:8080" for i in range(N_BACKENDS + CHANGED)]
        a_names, b_names = names[:N_BACKENDS], names[CHANGED:]
        heavy = set(names[CHANGED : 2 * CHANGED])
        vip_port = proc.free_port()
        paths = [tmp / "a.yaml", tmp / "b.yaml"]
        paths[0].write_text(yaml.safe_dump(_reload_config(vip_port, a_names, set())))
        paths[1].write_text(yaml.safe_dump(_reload_config(vip_port, b_names, heavy)))
        controller = Controller(load_config(paths[0]))
        await controller.apply(controller.config)  # the first apply (listener, table); no monitor task
        rows: list[Row] = []
        deadline = time.monotonic() + max_s
        try:
            for r in range(-1, n_reloads + 1):  # rounds -1 and 0: warm-up, not kept
                path = paths[1] if r % 2 else paths[0]
                before = controller.stats()["big"].table_slots_changed
                gc.collect()
                spent.clear()
                w0, c0 = time.perf_counter(), time.process_time()
                await controller.reload(path)
                add("total", w0, c0)
                if r < 1:
                    continue
                got = dict(spent)
                zero = [0.0, 0.0]
                parts = {
                    "total": got["total"],
                    "yaml": [p - v for p, v in zip(got["parse"], got["validate"], strict=True)],
                    "validate": got["validate"],
                    "maglev": got.get("maglev", zero),
                    "plane": [p - m for p, m in zip(got["plane"], got.get("maglev", zero), strict=True)],
                }
                parts["control"] = [
                    t - p - q for t, p, q in zip(got["total"], got["parse"], got["plane"], strict=True)
                ]
                rows.append(
                    {
                        "round": r,
                        "file": path.name,
                        "parts": {k: [round(v[0] * 1e3, 3), round(v[1] * 1e3, 3)] for k, v in parts.items()},
                        "detail": {k: [round(v[0] * 1e3, 3), round(v[1] * 1e3, 3)] for k, v in got.items()},
                        "slots_changed": controller.stats()["big"].table_slots_changed - before,
                    }
                )
                if time.monotonic() > deadline and r >= 5:
                    break
        finally:
            await controller.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows))


def _reload(sc: ControlPlane, log: Any, rows: list[Row], errors: list[str]) -> None:
    cmd = proc.python_module("bench.control", "reload", "--reloads", str(sc.reloads), "--max-seconds", "45")
    try:
        out, err = proc.run_json(cmd, proc.cores()[0], timeout=90)
        got: list[Row] = json.loads(out)
    except (proc.StartError, ValueError) as exc:
        errors.append(f"reload: {exc}")
        log(f"  ! reload: {exc}")
        return
    if not got:
        errors.append(f"reload: no rounds: {err[-300:]}")
        return
    for g in got:
        total_cpu = g["parts"]["total"][1]
        for part in PARTS:
            wall, cpu = g["parts"][part]
            rows.append(
                {
                    "round": g["round"],
                    "peer": PART_LABELS[part],
                    "wall_ms": wall,
                    "cpu_ms": cpu,
                    "share": round(cpu / total_cpu, 4) if total_cpu else None,
                    **(
                        {"slots_changed": g["slots_changed"], "detail_ms": g["detail"]}
                        if part == "total"
                        else {}
                    ),
                }
            )
    for part in PARTS:
        walls = [g["parts"][part][0] for g in got]
        cpus = [g["parts"][part][1] for g in got]
        log(
            f"  {PART_LABELS[part]}: median wall {statistics.median(walls):.1f} ms, "
            f"CPU {statistics.median(cpus):.1f} ms ({len(got)} reloads)"
        )


# ---------------------------------------------------------------- the scenario


def run(sc: ControlPlane, n_rounds: int, log: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    saved_layout, proc.LAYOUT = proc.LAYOUT, sc.layout or "split"
    sc.tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-control-"))
    rows: list[Row] = []
    errors: list[str] = []
    try:
        try:
            _failover(sc, n_rounds, log, rows, errors)
        except Exception as exc:
            errors.append(f"failover aborted: {type(exc).__name__}: {exc}")
            log(f"  ! failover aborted: {exc}")
        _reload(sc, log, rows, errors)
    finally:
        proc.LAYOUT = saved_layout
    sc.description = _describe(rows)
    if errors:
        errors.append(f"logs kept in {sc.tmp}")
    else:
        shutil.rmtree(sc.tmp, ignore_errors=True)
    doc = rounds.result(sc, n_rounds, rows, errors, started)
    failover = [r for r in rows if r["peer"] == "failover"]
    doc["max"] = {
        "failover": {m: max(r[m] for r in failover) for m in ("down_s", "last_flow_s")} if failover else {}
    }
    doc["bound_s"] = BOUND_S
    return doc


def _describe(rows: list[Row]) -> str:
    m = machine.machine()
    fo = [r for r in rows if r["peer"] == "failover"]
    text = (
        f"Absolute figures on this machine ({m['cpu_model']}, {m['cores']} cores), one run: no peer "
        "runs sluice's control loop. Failover: 3 echo backends behind a Maglev TCP VIP, active tcp checks "
        f"(interval {INTERVAL_S:g} s, timeout {TIMEOUT_S:g} s, fall {FALL}, rise {RISE}, passive off), "
        f"{RATE} new connections/s offered; each round SIGKILLs one backend. Bound interval × fall + timeout = "
        f"{BOUND_S:g} s."
    )
    if fo:
        down = [r["down_s"] for r in fo]
        last = [r["last_flow_s"] for r in fo]
        push = [r["push_ms"] for r in fo]
        rate = statistics.median(r["conns_per_s"] for r in fo)
        text += (
            f" Achieved rate median {rate:.0f} connections/s."
            f" Over {len(fo)} rounds: kill → down median {statistics.median(down):.3f} s, max {max(down):.3f} s; "
            f"kill → last new flow to the dead backend median {statistics.median(last):.3f} s, max "
            f"{max(last):.3f} s (resolution {POLL_S * 1e3:g} ms); down → data plane updated median "
            f"{statistics.median(push):.1f} ms, max {max(push):.1f} ms. LB CPU includes the harness's "
            f"{POLL_S * 1e3:g} ms poller inside the LB process."
        )
    total = [r for r in rows if r["peer"] == PART_LABELS["total"]]
    if total:
        slots = [r["slots_changed"] for r in total]
        text += (
            f" Reload: `Controller.reload` of a file with one VIP of {N_BACKENDS:,} backends, each reload "
            f"removing {CHANGED}, adding {CHANGED} and re-weighting {CHANGED}; median of {len(total)}; "
            f"it moves a median {statistics.median(slots) / TABLE_SIZE:.2%} of the Maglev slots. "
            "The controller part is the monitor's reconfiguration and the effective config."
        )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.control")
    sub = ap.add_subparsers(dest="mode", required=True)
    lb = sub.add_parser("lb", help="run a sluice controller for the failover rounds (harness only)")
    lb.add_argument("config")
    rl = sub.add_parser("reload", help="time reloads of a 1,000-backend VIP; prints json rows")
    rl.add_argument("--reloads", type=int, default=10)
    rl.add_argument("--max-seconds", type=float, default=45.0)
    a = ap.parse_args()
    if a.mode == "lb":
        asyncio.run(_lb_main(a.config))
    else:
        asyncio.run(_reload_main(a.reloads, a.max_seconds))


if __name__ == "__main__":
    main()
