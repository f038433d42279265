"""A DNS VIP under a spoofed-source flood, with a legitimate client beside it.

The lab is one network namespace of its own (sluice.lab.netns: named after this process, removed at
the end): the harness enters it (setns) for the scenario, so the backend, every peer and both
generators run there on 127.0.0.1 exactly as in the other UDP scenarios. The spoofed sources route
out of a veth (flood0, route_localnet on so the VIP on 127.0.0.1 may answer there) to a gateway whose
MAC nobody has: its peer (flood1) drops the frames as not its own. The replies to spoofed sources
leave the LB and vanish, as they would on the Internet, and are counted (flood0's tx packets). This
kernel has no dummy device.

Per round and peer, with a fresh LB (no sessions left from an earlier round):
- the flood (bench/floodgen.py): DNS-shaped queries from 50,000 distinct spoofed sources in
  198.18.0.0/15 at the scenario's flood_rate datagrams/s (udp_flood: FLOOD_RATE, which neither LB
  is short of CPU for; udp_flood_hard: HARD_FLOOD_RATE, past what either serves on one core), raw
  IPv4 packets on lo, from 1 s before the legitimate
  client starts to 1 s after it stops;
- the legitimate client (bench/dnsgen.py): LEGIT_RATE queries/s over 16 sockets, open loop; an answer
  later than 1 s is a loss. Its answered fraction is the figure that matters;
- kernel drops at the VIP: the `drops` of the sockets bound to the VIP port (/proc/net/udp: a full
  receive buffer), every peer alike; the backend's own drops beside it (the harness's limit);
- the LB's drop counters: sluice's ``dropped`` and ``refused`` by reason and its evictions (its
  /metrics, on a Unix socket); NGINX keeps none.
Every listen socket has the same receive buffer, sluice's default (peers.UDP_RCVBUF: 1,024,000 bytes
asked for its default udp.max_queue_delay of 50 ms; NGINX `rcvbuf=`); sluice runs with that bound
(older datagrams dropped as ``queue_delay``: its own drops), NGINX has none.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import backends, peers, proc, udpstats
from bench.cpu import CpuMeter
from bench.rounds import Metric, Row, Scenario, Target, run_lab
from sluice.lab.netns import Namespace

SOURCES = 50_000
FLOOD_RATE = 10_000  # datagrams/s from all spoofed sources together: each sends every 5 s
"""Within one core for NGINX or sluice native at their measured cost per DNS-style session on this
VM (udp_64_many): the flood costs CPU, and an LB that keeps up answers everyone."""
HARD_FLOOD_RATE = 40_000
"""Past one core for NGINX and sluice (their LB CPU-s over the run is the whole flood's time): which
queries are served is then the kernel's choice at a full listen socket, for the flood and the
legitimate client alike."""
LEGIT_RATE = 200  # queries/s of the legitimate client
LEGIT_SOCKETS = 16
LEGIT_TIMEOUT_S = 1.0
LEAD_S = 1.0  # the flood runs this long before the legitimate client starts and after it stops
SPOOF_DEV, SINK_DEV = "flood0", "flood1"  # a veth pair, both ends in the lab
SPOOF_ROUTE = "198.18.0.0/16"  # where the spoofed sources are (SOURCES from 198.18.0.1)
GATEWAY, GATEWAY_MAC = "198.19.255.2", "02:00:00:00:00:02"  # nobody's MAC: flood1 drops the frames
TOOLS = ("ip", "taskset", "timeout", "nginx")
CLONE_NEWNET = 0x40000000


class UdpFlood(Scenario):
    name = "udp_flood"
    flood_rate = FLOOD_RATE
    title = f"UDP DNS VIP under a {SOURCES // 1000}k-source spoofed flood, legitimate client beside it"
    description = (
        f"Spoofed DNS queries from {SOURCES:,} sources in 198.18.0.0/15 at {FLOOD_RATE:,}/s (raw packets "
        f"on lo, in a network namespace of the scenario), a legitimate client at {LEGIT_RATE} q/s "
        f"(open loop, {LEGIT_SOCKETS} sockets, lost = unanswered after {LEGIT_TIMEOUT_S:g} s); a fresh LB "
        f"per round, every listen socket's receive buffer {peers.UDP_RCVBUF:,} B (sluice's default, for "
        "its udp.max_queue_delay 50 ms), 1 reply per session. Kernel drops = "
        "drops of the VIP's sockets (/proc/net/udp); LB's own drops = sluice's dropped (queue_delay: "
        "waited > 50 ms) + refused counters but kernel_overflow (NGINX keeps none); flood replies = datagrams the LB sent back to spoofed sources."
    )
    proto = "udp"
    peer_names = ("nginx", "sluice", "sluice-python", "direct")
    reference = "nginx"
    udp_responses = 1
    row_label = "peer"
    metrics = (
        Metric("legit_answered_pct", "legit answered %", "higher", digits=4),
        Metric("legit_p99_ms", "legit p99 ms", "lower", ratio=False),
        Metric("flood_kpps", "flood k dgrams/s sent", "higher", ratio=False),
        Metric("flood_replied_pct", "flood replied %", "higher", ratio=False),
        Metric("vip_kernel_drops", "kernel drops at VIP", "lower", ratio=False),
        Metric("lb_drops", "LB's own drops", "lower", ratio=False),
        Metric("backend_kernel_drops", "backend kernel drops", "lower", ratio=False),
        Metric("lb_cpu_s", "LB CPU-s", "lower", ratio=False),
        Metric("legit_vs_nginx_pp", "legit answered % minus NGINX's", "higher", show=False, ratio=False),
    )
    targets = (
        Target(
            "sluice's legitimate client answered >= 99 %",
            "sluice",
            "legit_answered_pct",
            ">=",
            99.0,
            kind="value",
            unit="%",
        ),
        Target(
            "sluice's legitimate client answered >= NGINX's (same round, percentage points)",
            "sluice",
            "legit_vs_nginx_pp",
            ">=",
            0.0,
            kind="value",
            unit="pp",
        ),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.seconds = 3.0 if quick else 10.0  # the legitimate client's run

    def derive(self, rows: list[Row]) -> None:
        """legit_vs_nginx_pp: a row's answered % minus NGINX's in the same round (a difference, not a
        ratio: NGINX may answer nothing)."""
        nginx = {r["round"]: r["legit_answered_pct"] for r in rows if r["peer"] == "nginx"}
        for r in rows:
            ref = nginx.get(r["round"])
            r["legit_vs_nginx_pp"] = None if ref is None else r["legit_answered_pct"] - ref

    def params(self) -> dict[str, Any]:
        return {
            "sources": SOURCES,
            "flood_rate": self.flood_rate,
            "flood_seconds": self.seconds + 2 * LEAD_S,
            "legit_rate": LEGIT_RATE,
            "legit_seconds": self.seconds,
            "legit_timeout_s": LEGIT_TIMEOUT_S,
            "receive_buffer": peers.UDP_RCVBUF,
        }


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class UdpFloodHard(UdpFlood):
    name = "udp_flood_hard"
    flood_rate = HARD_FLOOD_RATE
    title = f"UDP DNS VIP under a {SOURCES // 1000}k-source spoofed flood past one core, legitimate client beside it"
    description = UdpFlood.description.replace(f"{FLOOD_RATE:,}/s", f"{HARD_FLOOD_RATE:,}/s")


class FloodLab:
    """The namespace, the DNS backend in it, and one measured peer at a time."""

    def __init__(self, sc: UdpFlood, workdir: Path) -> None:
        self.sc = sc
        self.workdir = workdir
        self.ns: Namespace | None = None
        self.home: int | None = None  # fd of the harness's own network namespace while inside the lab
        self.backend: subprocess.Popen[bytes] | None = None
        self.backend_port = 0

    def setup(self) -> None:
        self.ns = Namespace.create("udpflood")
        run = self.ns.run
        run("ip", "link", "add", SPOOF_DEV, "type", "veth", "peer", "name", SINK_DEV)
        for dev in (SPOOF_DEV, SINK_DEV):
            run("ip", "link", "set", dev, "up")
        run("ip", "addr", "add", "198.19.255.1/24", "dev", SPOOF_DEV)
        run("ip", "neigh", "add", GATEWAY, "lladdr", GATEWAY_MAC, "dev", SPOOF_DEV, "nud", "permanent")
        run("ip", "route", "add", SPOOF_ROUTE, "via", GATEWAY, "dev", SPOOF_DEV)
        for dev in ("all", SPOOF_DEV):
            self.ns.sysctl(f"net.ipv4.conf.{dev}.route_localnet", "1")
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/run/netns/{self.ns.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        self.backend_port = proc.free_port()
        self.backend = backends.dns(self.workdir, self.backend_port)

    def measure(self, name: str) -> Row:
        peer = peers.start(
            name, "udp", self.backend_port, self.workdir, 1, udp_rcvbuf=peers.UDP_RCVBUF, admin=True
        )
        try:
            return self._measure(peer)
        finally:
            peer.stop()

    def _counters(self, peer: peers.Running) -> dict[str, Any]:
        lb = None
        if peer.admin is not None:
            deadline = time.monotonic() + 10  # the admin API comes up just after the data plane
            while True:
                try:
                    lb = udpstats.parse_metrics(udpstats.scrape(peer.admin), "bench")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        return {
            "vip": udpstats.socket_drops([peer.port]),
            "backend": udpstats.socket_drops([self.backend_port]),
            "replies": udpstats.tx_packets(SPOOF_DEV),
            "snmp": udpstats.snmp_udp(),
            "lb": lb,
        }

    def _measure(self, peer: peers.Running) -> Row:
        sc, gen_core = self.sc, proc.cores()[1]
        flood_s = sc.seconds + 2 * LEAD_S
        flood_cmd = proc.python_module(
            "bench.floodgen",
            *("--port", str(peer.port), "--sources", str(SOURCES), "--rate", str(sc.flood_rate)),
            *("--seconds", str(flood_s)),
        )
        legit_cmd = proc.python_module(
            "bench.dnsgen",
            *("--port", str(peer.port), "--rate", str(LEGIT_RATE), "--seconds", str(sc.seconds)),
            *("--sockets", str(LEGIT_SOCKETS), "--timeout", str(LEGIT_TIMEOUT_S)),
        )
        before = self._counters(peer)
        with CpuMeter(peer.pid) as cpu:
            flood = subprocess.Popen(
                proc.pinned(flood_cmd, gen_core),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=proc.REPO,
                env=proc.child_env(),
                start_new_session=True,
            )
            try:
                _wait_ready(flood, timeout=30)
                time.sleep(LEAD_S)
                legit_out, _ = proc.run_json(legit_cmd, gen_core, timeout=sc.seconds + 30)
                flood_out, flood_err = flood.communicate(timeout=flood_s + 30)
            finally:
                if flood.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(flood.pid, signal.SIGKILL)
                    flood.communicate()
        time.sleep(0.3)  # replies still in flight leave through flood0
        after = self._counters(peer)
        if flood.returncode != 0 or not flood_out.strip():
            raise RuntimeError(
                f"floodgen exited {flood.returncode}: {flood_err.decode(errors='replace')[-300:]}"
            )
        legit, fl = json.loads(legit_out), json.loads(flood_out.splitlines()[-1])
        if legit["sent"] == 0:
            raise RuntimeError(f"the legitimate client sent nothing: {legit}")
        lb = udpstats.delta(after["lb"], before["lb"]) if after["lb"] is not None else None
        if lb is not None and not any(k.startswith("closed.") and v > 0 for k, v in lb.items()):
            raise RuntimeError(
                f"{peer.name}'s /metrics shows no closed sessions (metric names changed?): {lb}"
            )
        replies = after["replies"] - before["replies"]
        return {
            "legit_answered_pct": 100.0 * legit["answered"] / legit["sent"],
            "legit_p99_ms": legit["p99_ms"],
            "flood_kpps": fl["pps"] / 1e3,
            "flood_replied_pct": 100.0 * replies / fl["sent"] if fl["sent"] else None,
            "vip_kernel_drops": after["vip"] - before["vip"],
            "lb_drops": None if lb is None else _own_drops(lb),
            "backend_kernel_drops": after["backend"] - before["backend"],
            "lb_cpu_s": cpu.seconds,
            "lb_counters": lb,
            "snmp_udp": udpstats.delta(after["snmp"], before["snmp"]),
            "legit": legit,
            "flood": fl,
        }

    def close(self) -> None:
        proc.stop(self.backend)
        try:
            if self.home is not None:
                _setns(self.home)  # back home before the namespace goes
                os.close(self.home)
                self.home = None
        finally:
            if self.ns is not None:
                self.ns.delete()


def _own_drops(counters: dict[str, float]) -> float:
    """Datagrams sluice dropped or refused itself; not ``dropped.kernel_overflow``, the kernel's drops
    it reports (SO_RXQ_OVFL): those are the VIP's kernel drops column already."""
    return sum(
        v
        for k, v in counters.items()
        if k.split(".")[0] in ("dropped", "refused") and k != "dropped.kernel_overflow"
    )


def _wait_ready(p: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the generator says "ready" (its packets are built: the flood starts now)."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    line = os.read(p.stdout.fileno(), 64) if ready else b""  # unbuffered: communicate() reads the rest
    if line.strip() != b"ready":
        raise RuntimeError(f"floodgen did not start within {timeout:.0f} s: {line[:200]!r}")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a network namespace and raw sockets)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing {', '.join(absent)}" if absent else None


def _brief(row: Row) -> str:
    lb = "–" if row["lb_drops"] is None else f"{row['lb_drops']:.0f}"
    return (
        f"  r{row['round']} {row['peer']:<14} legit {row['legit_answered_pct']:.2f}% "
        f"p99 {row['legit_p99_ms'] or 0:.2f} ms  flood {row['flood_kpps']:.1f} kpps "
        f"replied {row['flood_replied_pct'] or 0:.1f}%  vip drops {row['vip_kernel_drops']} lb drops {lb} "
        f"backend drops {row['backend_kernel_drops']}"
    )


def run(sc: UdpFlood, n_rounds: int, log: Any) -> dict[str, Any] | None:
    return run_lab(sc, n_rounds, missing(), lambda wd: FloodLab(sc, wd), _brief, log)
