"""TCP scenarios: bulk (iperf3), new connections and keep-alive requests (wrk), ping-pong latency."""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

from bench import backends, peers, proc
from bench.cpu import CpuMeter
from bench.rounds import Metric, Row, Scenario, Target

GIB = 1 << 30


class TcpBulk(Scenario):
    name = "tcp_bulk"
    title = "TCP bulk throughput (iperf3, 1 stream)"
    description = "iperf3 -c through the VIP to iperf3 -s (the LB's bytes: CPU per GiB moved)."
    metrics = (
        Metric("gbps", "Gbit/s", "higher"),
        Metric("lb_cpu_s_per_gib", "LB CPU-s per GiB", "lower"),
        Metric("gib", "GiB moved", "higher", show=False, ratio=False),
        Metric("lb_cpu_s", "LB CPU-s", "lower", show=False, ratio=False),
    )
    reference = "haproxy-splice"
    targets = (
        Target("sluice LB CPU per GiB <= 0.9x HAProxy splice-auto", "sluice", "lb_cpu_s_per_gib", "<=", 0.9),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.seconds = 2 if quick else 5
        self.server: subprocess.Popen[bytes] | None = None

    def params(self) -> dict[str, Any]:
        return {"iperf3_seconds": self.seconds, "streams": 1}

    def setup(self) -> int:
        self.backend_port = proc.free_port()
        return self.backend_port

    def measure(self, peer: peers.Running) -> Row:
        server = backends.iperf3(self.tmp, self.backend_port)
        try:
            cmd = ["iperf3", "-c", proc.HOST, "-p", str(peer.port), "-t", str(self.seconds), "-J"]
            cmd += ["--connect-timeout", "3000"]
            with CpuMeter(peer.pid) as cpu:
                out, _ = proc.run_json(cmd, proc.cores()[1], timeout=self.seconds + 20)
        finally:
            proc.stop(server, timeout=2)
        res = json.loads(out)
        if "error" in res:
            raise RuntimeError(f"iperf3: {res['error']}")
        end = res["end"]
        nbytes, secs = end["sum_received"]["bytes"], end["sum_received"]["seconds"]
        gib = nbytes / GIB
        return {
            "gbps": nbytes * 8 / secs / 1e9,
            "gib": gib,
            "seconds": secs,
            "retransmits": end.get("sum_sent", {}).get("retransmits"),
            "lb_cpu_s": cpu.seconds,
            "lb_cpu_s_per_gib": None if cpu.seconds is None else cpu.seconds / gib,
        }


WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class _Wrk(Scenario):
    """wrk (1 thread) against nginx `return 200` on core 1."""

    close = False
    per = "req"
    connections = 32

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.seconds = 2 if quick else 5
        self.backend: subprocess.Popen[bytes] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "wrk_seconds": self.seconds,
            "threads": 1,
            "connections": self.connections,
            "close": self.close,
        }

    def setup(self) -> int:
        port = proc.free_port()
        (self.tmp / "summary.lua").write_text(WRK_LUA)
        self.backend = backends.http(self.tmp, port)
        return port

    def teardown(self) -> None:
        proc.stop(self.backend)

    def measure(self, peer: peers.Running) -> Row:
        cmd = ["wrk", "-t1", f"-c{self.connections}", f"-d{self.seconds}s", "--timeout", "2s"]
        cmd += ["-s", str(self.tmp / "summary.lua")]
        if self.close:
            cmd += ["-H", "Connection: close"]
        cmd.append(f"http://{proc.HOST}:{peer.port}/")
        with CpuMeter(peer.pid) as cpu:
            out, _ = proc.run_json(cmd, proc.cores()[1], timeout=self.seconds + 20)
        line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary: {out[-300:]}")
        w = json.loads(line)
        n = w["requests"]
        if n == 0:
            raise RuntimeError(f"wrk: no request completed: {w}")
        errors = sum(w[k] for k in ("connect", "read", "write", "status", "timeout"))
        per_s = n / (w["duration_us"] / 1e6)
        cpu_us = None if cpu.seconds is None else cpu.seconds / n * 1e6
        return {
            f"{self.per}_per_s": per_s,
            f"lb_cpu_us_per_{self.per}": cpu_us,
            "requests": n,
            "errors": errors,
            "wrk": w,
            "lb_cpu_s": cpu.seconds,
        }


class TcpConnect(_Wrk):
    name = "tcp_conn"
    title = "TCP new connections (wrk, Connection: close)"
    description = "One HTTP request per TCP connection: the LB's cost of accept + backend connect + close."
    close = True
    per = "conn"
    metrics = (
        Metric("conn_per_s", "conn/s", "higher"),
        Metric("lb_cpu_us_per_conn", "LB CPU-µs per conn", "lower"),
        Metric("errors", "wrk errors", "lower", show=False, ratio=False),
    )
    targets = (
        Target("sluice LB CPU per connection <= 0.9x HAProxy", "sluice", "lb_cpu_us_per_conn", "<=", 0.9),
    )


class TcpKeepalive(_Wrk):
    name = "tcp_keepalive"
    title = "TCP keep-alive requests (wrk, 32 connections)"
    description = "Many small request/response messages on long-lived connections: the LB's per-message cost."
    per = "req"
    metrics = (
        Metric("req_per_s", "req/s", "higher"),
        Metric("lb_cpu_us_per_req", "LB CPU-µs per req", "lower"),
        Metric("errors", "wrk errors", "lower", show=False, ratio=False),
    )
    targets = (Target("sluice LB CPU per request <= 0.9x HAProxy", "sluice", "lb_cpu_us_per_req", "<=", 0.9),)


class TcpLatency(Scenario):
    name = "tcp_latency"
    title = "TCP ping-pong latency (64 B each way, 1 connection)"
    description = (
        "A client sends 64 B and waits for 64 B back from an echo backend, one at a time; "
        "added = peer p99 - direct p99 in the same round. Layout shared: the LB runs on the client's "
        "core: one message at a time needs no second core, and on a VM a wakeup on the other vCPU "
        "can add ~100 µs whatever the LB (`--layout split` shows it)."
    )
    layout = "shared"
    metrics = (
        Metric("p50_us", "p50 µs", "lower", ratio=False),
        Metric("p99_us", "p99 µs", "lower", ratio=False),
        Metric("p999_us", "p99.9 µs", "lower", ratio=False),
        Metric("added_p99_us", "added p99 µs", "lower"),
        Metric("added_p50_us", "added p50 µs", "lower", show=False),
    )
    targets = (Target("sluice added p99 latency <= 1.0x HAProxy's", "sluice", "added_p99_us", "<=", 1.0),)

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.n = 3000 if quick else 20000
        self.backend: subprocess.Popen[bytes] | None = None

    def params(self) -> dict[str, Any]:
        return {"round_trips": self.n, "size": 64, "warmup": 500}

    def setup(self) -> int:
        port = proc.free_port()
        self.backend = backends.echo(self.tmp, port, "tcp")
        return port

    def teardown(self) -> None:
        proc.stop(self.backend)

    def measure(self, peer: peers.Running) -> Row:
        cmd = proc.python_module("bench.pingpong", "--port", str(peer.port), "--n", str(self.n))
        with CpuMeter(peer.pid) as cpu:
            out, _ = proc.run_json(cmd, proc.cores()[1], timeout=90)
        res = json.loads(out)
        if res["count"] < self.n:
            res["truncated"] = True  # hit --max-seconds: fewer samples, still valid
        return {**res, "lb_cpu_s": cpu.seconds}

    def derive(self, rows: list[Row]) -> None:
        direct = {r["round"]: r for r in rows if r["peer"] == "direct"}
        for r in rows:
            d = direct.get(r["round"])
            if d is None:
                # no direct row this round: fall back to the median of direct over all rounds
                others = [x["p99_us"] for x in direct.values()]
                base99 = statistics.median(others) if others else None
                base50 = statistics.median([x["p50_us"] for x in direct.values()]) if others else None
            else:
                base99, base50 = d["p99_us"], d["p50_us"]
            r["added_p99_us"] = None if base99 is None else r["p99_us"] - base99
            r["added_p50_us"] = None if base50 is None else r["p50_us"] - base50


SCENARIOS: tuple[type[Scenario], ...] = (TcpBulk, TcpConnect, TcpKeepalive, TcpLatency)
