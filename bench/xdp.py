"""XDP packet forwarding in the DSR netns lab (src/sluice/lab/dsr.py): packets per second and the LB's
CPU per million packets, sluice XDP DSR against what a user would otherwise run.

Peers, in alternating rounds (A B C D E, A B C D E, ...), all in the same lab and the same LB position:

- xdp_native:   sluice's XDP DSR program (l2 forwarding, Maglev + connection table), native XDP.
- xdp_generic:  the same program in generic (skb) mode.
- reflector:    a bare XDP_TX reflector (bench/xdp_reflector.bpf.c: MAC rewrite, sport % 3, XDP_TX),
                native: the limit of the harness for anything in the LB position.
- nftables:     nftables DNAT ``numgen inc mod 3`` over the same 3 backends, ip_forward (kernel NAT).
- sluice_proxy: the sluice UDP proxy (user space, maglev) on the VIP, same backends.

Load: 60-byte frames (64 B on a wire, with the FCS) of IPv4/UDP, 18 B payload, 64 flows (source
ports 10000-10063), as fast as it goes, from bench/rawgen.py (AF_PACKET + sendmmsg, prebuilt frames)
in the client namespace. Neither packaged generator works in this lab: xdp-trafficgen's object does not
load on this kernel (it references the ``xdp_redirect_map_err`` tracepoint, absent from 6.18's BTF),
varies only destination ports, and transmits through veth's ndo_xdp_xmit, which runs the receiving
side on the generator's core where RPS cannot move it; trafgen's TX_RING stops with EAGAIN once RPS
holds frames in flight, unless it rewrites the host-wide net.core.*mem_* sysctls (not settable from a
namespace here, and the harness must not touch the host), and its sendto mode pins itself to CPU 0.

CPU placement: the LB core (core 0) does the LB's work and nothing else. veth handles a packet on
the CPU that sent it unless something moves it, so:

- the sender, the bridge (the client's frames in, the LB's frames out) and the backends run on the
  generator core (core 1); the backends drop the UDP in an nftables netdev ingress rule (no socket
  lookup, no ICMP);
- native XDP on the LB's eth0 runs in eth0's NAPI; that NAPI is kept alive by GRO (ETHTOOL_SGRO), made
  threaded (/sys/class/net/eth0/threaded) and its kthread pinned to the LB core, SCHED_FIFO 1 (it
  preempts tasks as softirq work would);
- the bridge side of the LB's veth (p-lb) runs an XDP_PASS stub only in the native-XDP rounds
  (XDP_TX into a veth is delivered only if its peer runs an XDP program; bench/xdp_reflector.bpf.c
  ``pass``, like the lab's sluice_pass). In the other rounds the stub would make veth hand every skb
  the LB sends to p-lb's NAPI, which copies it into a page for the stub: in a trial, nftables went
  from 226 to 320 kpps and from 1.7 to 1.2 LB CPU-s per Mpkt without it. p-lb's NAPI (GRO keeps it
  across the stub coming and going) is threaded, FIFO, pinned to core 1;
- everything that reaches the LB as an skb (generic XDP, nftables, the proxy) is steered to the LB
  core by RPS on eth0 (rps_cpus), and what it sends into p-lb back to core 1 by RPS on p-lb.

Measured over the steady window of each round (after a warm-up):

- forwarded packets: the backends' eth0 rx counters (the receiver side, /proc/<pid>/net/dev of a
  process in each backend namespace), summed;
- LB-core busy: wall time minus the LB core's idle, iowait and steal time (/proc/stat). The kernel
  measures idle exactly (NO_HZ idle accounting) but samples everything else with the 250 Hz tick,
  and without IRQ_TIME_ACCOUNTING (this kernel) softirq work done from idle is mostly missed (in a
  trial run, system + softirq gave nftables 0.24 CPU-s per Mpkt in a round where core 0 was partly
  idle, ~3 in rounds where it was busy). The same figure for every peer (for the proxy it adds the
  kernel's receive path to its process time);
- LB CPU: for the kernel peers (XDP, reflector, nftables) LB-core busy minus the user and nice time
  on that core (other tenants' processes; the LB has none there); for the sluice proxy, user + sys
  of its process tree (psutil). The native-XDP NAPI kthread's own CPU time is recorded as a check;
- XDP program ns per packet: BPF_PROG_TEST_RUN of the attached program (sluice's or the reflector),
  one run per frame (repeat=1: a repeated run reuses the buffer, so an ipip program would time its own
  output's pass path) on TEST_RUNS copies of one of the load's frames, each run checked to return
  XDP_TX; the mean of the kernel's per-run durations minus an empty program's timed in between (the
  kernel's two clock reads around a run, ~150 ns here, are in both; the floor is in the json). Per path, against
  the program before the per-packet work of issue 14 and net of an empty program: bench/xdp_paths.py,
  run by this scenario after its rounds (its own json, xdp_paths.json, and table);
- wake-ups: rescheduling + function-call IPIs received by the LB core (/proc/interrupts) per 1000
  forwarded packets, and for native XDP the packets per wake-up of the NAPI kthread: on this VM an
  IPI is an exit to the hypervisor, and small batches make every packet pay for it.

Needs root, clang + libbpf headers, nft, ip/bridge, nsenter, taskset and 2 cores; skips
cleanly without them. The reflector object is compiled per run (the MACs are -D macros) and attached
with ``ip link``; sluice's program by the lab's LB runner (``python -m sluice.lab.roles lb``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import proc, rawgen, report, rounds, xdp_paths
from bench.cpu import tree_cpu_seconds
from bench.peers import sluice_bin
from bench.rounds import Metric, Row, Scenario, Target
from sluice.lab import dsr
from sluice.lab.dsr import DsrLab

TOOLS = ("clang", "ip", "bridge", "nft", "nsenter", "taskset", "timeout")
REFLECTOR_C = Path(__file__).with_name("xdp_reflector.bpf.c")

FLOWS = 64
FIRST_SPORT = 10000
PAYLOAD = 18  # 14 Ethernet + 20 IPv4 + 8 UDP + 18 = 60 B frame, 64 B on a wire with the FCS
NFT_PORT = 5301
PROXY_PORT = 5302
NFT_TABLE = "sluice_bench"
NAPI_FIFO_PRIORITY = 1
"""The two NAPI kthreads run SCHED_FIFO (priority 1), as softirq work would preempt tasks: the LB's is
not time-shared with other processes on the LB core, and p-lb's drains what the LB sent before the
sender (nice 0, same core) sends more, so an overloaded core 1 drops frames before the LB (at
eth0's ring or backlog) rather than after the LB has done its work."""
TEST_RUNS = 20_000
MAX_PPS = 3_000_000  # the packet-count bound of one generator run: this rate x its duration

PEERS = ("xdp_native", "xdp_generic", "reflector", "nftables", "sluice_proxy")
XDP_PEERS = ("xdp_native", "xdp_generic", "reflector")
NAPI_PEERS = ("xdp_native", "reflector")  # the LB runs in eth0's NAPI kthread (native XDP)
LABELS = {
    "xdp_native": "sluice XDP DSR, native",
    "xdp_generic": "sluice XDP DSR, generic (skb)",
    "reflector": "bare XDP_TX reflector, native (harness limit)",
    "nftables": "nftables DNAT numgen mod 3 + ip_forward",
    "sluice_proxy": "sluice UDP proxy (user space)",
}

METHOD = (
    "Forwarded packets = sum of the 3 backends' eth0 rx counters (receiver side) over the steady "
    "window. Core 0 runs only the LB: native XDP in the LB eth0's threaded NAPI kthread pinned to "
    "core 0 (SCHED_FIFO 1; GRO keeps that NAPI alive), skbs into the LB (generic XDP, nftables, "
    "proxy) steered to core 0 by RPS; sender, bridge and backends on core 1 (p-lb's NAPI kthread "
    "and RPS on p-lb; p-lb runs the XDP_PASS stub that XDP_TX needs only in the native rounds). "
    "LB-core busy = wall - idle - iowait - steal of core 0 (/proc/stat: idle is exact under NO_HZ, "
    "the rest tick-sampled, and the tick misses softirq work done from idle). LB CPU = LB-core busy "
    "- user - nice of core 0 for the kernel peers (XDP native/generic, reflector, nftables: the user "
    "time there is other tenants'), user+sys of the sluice process tree (psutil) for the UDP proxy. "
    "Other tenants' system time on core 0, if any, is counted in both."
)


class XdpForwarding(Scenario):
    name = "xdp"
    title = "XDP DSR packet forwarding: 64 B UDP through the LB (netns lab, veth)"
    description = (
        "64 B frames (IPv4/UDP, 64 flows, as fast as it goes) from a packet-socket sender "
        "(bench/rawgen.py) in the client namespace; LB namespace on a bridge with 3 backends that drop "
        "the UDP at ingress. Core 0 runs only the LB: native XDP in eth0's threaded NAPI kthread "
        "pinned there, skbs (generic XDP, nftables, proxy) steered there by RPS; the XDP_PASS stub "
        "that native XDP_TX needs on the bridge side of the LB's veth is there only in the native "
        "rounds (for skbs it costs a copy and a wake-up per packet). Sender, bridge and "
        "backends share core 1, so every peer's rate is capped by core 1 (the reflector shows that cap, "
        "and a share of its rate near 1 says only that the LB kept up). Other tenants' processes "
        "share both cores. "
        "pps = backends' eth0 rx counters. LB-core busy = core 0's wall - idle - iowait - steal "
        "(/proc/stat; idle is exact, the tick-sampled fields miss softirq work done from idle). "
        "LB CPU = LB-core busy - user - nice (other tenants) for XDP, the reflector and nftables; "
        "user+sys of the sluice process for the UDP proxy. On veth, native XDP copies each skb into "
        "a page before the program and XDP_TX hands a frame to the peer's NAPI: costs a real NIC "
        "does not have. XDP prog ns/pkt = BPF_PROG_TEST_RUN of the attached program, one run per "
        "frame (20k runs on one of the load's frames, each checked to return XDP_TX; the mean of the "
        "kernel's per-run figures minus an empty program's timed in between): the program alone, "
        "without veth (per path: the xdp_paths table). IPIs = rescheduling + "
        "function-call interrupts into core 0 (/proc/interrupts) per 1000 forwarded packets."
    )
    peer_names = PEERS
    reference = "nftables"
    metrics = (
        Metric("kpps", "forwarded kpps", "higher"),
        Metric("lb_cpu_s_per_mpkt", "LB CPU-s per Mpkt", "lower"),
        Metric("pkt_per_lb_cpu_s", "packets per LB CPU-s", "higher", show=False),
        Metric("core_busy_s_per_mpkt", "LB-core busy-s per Mpkt", "lower"),
        Metric("share_of_reflector", "share of reflector rate", "higher", ratio=False),
        Metric("lb_core_busy_pct", "LB core busy %", "lower", digits=2, ratio=False),
        Metric("offered_kpps", "offered kpps", "higher", ratio=False, show=False),
        Metric("lb_core_ipis_per_kpkt", "IPIs into LB core per 1k pkts", "lower", ratio=False),
        Metric("pkts_per_napi_wakeup", "packets per NAPI wake-up", "higher", ratio=False, show=False),
        Metric("prog_ns_per_pkt", "XDP prog ns/pkt (test run)", "lower", ratio=False),
    )
    targets = (
        Target(
            "sluice XDP DSR (native) packets per LB CPU-second >= 3x nftables DNAT",
            "xdp_native",
            "pkt_per_lb_cpu_s",
            ">=",
            3.0,
        ),
        Target(
            "sluice XDP DSR (native) rate >= 50 % of the bare reflector's",
            "xdp_native",
            "share_of_reflector",
            ">=",
            0.5,
            kind="value",
            unit="of the reflector",
        ),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.warm_s = 0.5 if quick else 1.0
        self.measure_s = 1.5 if quick else 3.0

    def params(self) -> dict[str, Any]:
        return {
            "frame_bytes": 60 + 4,
            "udp_payload_bytes": PAYLOAD,
            "flows": FLOWS,
            "backends": 3,
            "warmup_s": self.warm_s,
            "seconds": self.measure_s,
            "generator": "bench/rawgen.py (AF_PACKET sendmmsg)",
        }

    def derive(self, rows: list[Row]) -> None:
        reflector = {r["round"]: r.get("kpps") for r in rows if r["peer"] == "reflector"}
        for r in rows:
            ref = reflector.get(r["round"])
            r["share_of_reflector"] = r["kpps"] / ref if ref else None


def missing() -> str | None:
    """Why the scenario cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP, nftables)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"missing {', '.join(absent)}"
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        return "missing the libbpf headers (libbpf-dev)"
    if (os.cpu_count() or 1) < 2:
        return "needs 2 cores (generator and LB on different cores)"
    return None


# ---------------------------------------------------------------- small readers


def _net_dev(pid: int) -> dict[str, list[int]]:
    """/proc/<pid>/net/dev of the process's namespace: ifname -> 16 counters (8 rx, 8 tx)."""
    out = {}
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        out[name.strip()] = [int(x) for x in rest.split()]
    return out


def _snmp(pid: int, proto: str) -> dict[str, int]:
    lines = [ln.split() for ln in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()]
    rows = [ln for ln in lines if ln and ln[0] == f"{proto}:"]
    return dict(zip(rows[0][1:], (int(x) for x in rows[1][1:]), strict=True))


def _softnet() -> list[list[int]]:
    """/proc/net/softnet_stat per CPU: [processed, dropped, time_squeeze, ...] (host-wide)."""
    return [
        [int(x, 16) for x in ln.split()] for ln in Path("/proc/net/softnet_stat").read_text().splitlines()
    ]


def _ipis() -> list[int]:
    """Per CPU: rescheduling + function-call IPIs received (/proc/interrupts RES and CAL, host-wide)."""
    total: list[int] = []
    for line in Path("/proc/interrupts").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() in ("RES", "CAL"):
            counts = [int(x) for x in rest.split() if x.isdigit()]
            total = [a + b for a, b in zip(total, counts, strict=False)] if total else counts
    return total


def _kernel_config() -> dict[str, str]:
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return {}
    want = ("CONFIG_HZ", "CONFIG_IRQ_TIME_ACCOUNTING", "CONFIG_RPS")
    out = {}
    for key in want:
        m = re.search(rf"^{key}=(\S+)", text, re.M)
        out[key] = m.group(1) if m else "not set"
    return out


def _version(cmd: list[str], pattern: str) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else None


def _napi_threads(dev: str) -> set[int]:
    """Pids of the kernel's threaded-NAPI kthreads of devices named `dev` (``napi/<dev>-<id>``)."""
    out = set()
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if name.startswith(f"napi/{dev}-"):
            out.add(p.pid)
    return out


def _mac_bytes(mac: str) -> str:
    return ",".join(f"0x{b}" for b in mac.split(":"))


# ---------------------------------------------------------------- the bench lab


@dataclass
class Sample:
    t: float
    cpu: list[Any]
    backend_rx: list[int]
    client_tx: int
    client_tx_dropped: int
    softnet: list[list[int]]
    lb_udp: dict[str, int]
    proxy_cpu_s: float | None
    lb_eth0: list[int]
    napi_cpu_s: float | None
    ipis: list[int]  # per CPU: rescheduling + function-call interrupts (/proc/interrupts RES + CAL)
    napi_wakeups: int | None  # voluntary context switches of the LB's NAPI kthread


class Bench:
    """The DSR lab set up for packet rates: RPS steering, backends that drop, holders for counters."""

    def __init__(self, sc: XdpForwarding, workdir: Path, lb_core: int, gen_core: int) -> None:
        self.sc = sc
        self.workdir = workdir
        self.lb_core = lb_core
        self.gen_core = gen_core
        self.lab = DsrLab.create("l2", workdir, cpu=lb_core)
        self.holders: dict[str, subprocess.Popen[Any]] = {}
        self.proxy: subprocess.Popen[bytes] | None = None
        self.generator: subprocess.Popen[bytes] | None = None
        self.macs: dict[str, str] = {}
        self.reflector = workdir / "xdp_reflector.o"
        self.xdp_config = workdir / "xdp.yaml"
        self.napi_threads: dict[str, int] = {}  # "lb" / "p-lb" -> pid of the pinned NAPI kthread
        self.stub_attached = True  # DsrLab attaches sluice_pass to p-lb

    # ---------------------------------------------------------- setup

    def setup(self) -> None:
        lab = self.lab
        roles = ["client", "lb", "b1", "b2", "b3"]
        for role in roles:
            info = json.loads(lab.ns(role).run("ip", "-j", "link", "show", "eth0").stdout)
            self.macs[role] = info[0]["address"]
        br = lab.ns("br")
        # static forwarding entries: an unlearnt MAC would be flooded to every backend and counted
        for role in roles:
            br.run("bridge", "fdb", "replace", self.macs[role], "dev", f"p-{role}", "master", "static")
        lb_mask, gen_mask = f"{1 << self.lb_core:x}", f"{1 << self.gen_core:x}"
        for ns, dev, mask in (
            ("lb", "eth0", lb_mask),  # skbs into the LB (generic XDP, nftables, proxy) on the LB core
            ("br", "p-lb", gen_mask),  # what the LB sends: bridge out on the generator core
            ("br", "p-client", gen_mask),  # the client's frames: bridge in on the generator core
            ("b1", "eth0", gen_mask),
            ("b2", "eth0", gen_mask),
            ("b3", "eth0", gen_mask),
            ("client", "eth0", gen_mask),
        ):
            lab.ns(ns).run("sh", "-c", f"echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus")
        # p-lb: XDP_TX into a veth is delivered only if its peer runs an XDP program (a GRO NAPI is not
        # enough on this kernel), so the native rounds put an XDP_PASS stub there (the lab attached
        # sluice_pass; the stub comes and goes per round). GRO keeps p-lb's NAPI, threaded, on core 1.
        self.napi_threads["p-lb"] = self._threaded_napi("br", "p-lb", self.gen_core)
        self.napi_threads["lb"] = self._threaded_napi("lb", "eth0", self.lb_core)
        lb = lab.ns("lb")
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.eth0.send_redirects", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
        ):
            lb.sysctl(key, value)
        lb.run("ip", "addr", "add", f"{dsr.VIP}/32", "dev", "lo")  # the proxy binds the VIP
        drop = self.workdir / "backend-drop.nft"
        drop.write_text(
            "table netdev sluice_bench_sink {\n"
            "  chain ingress {\n"
            "    type filter hook ingress device eth0 priority 0; policy accept;\n"
            "    ip protocol udp drop\n"
            "  }\n"
            "}\n"
        )
        for i in range(3):
            lab.ns(f"b{i + 1}").run("nft", "-f", str(drop))
        for role in roles:  # a sleeping process per namespace: /proc/<pid>/net/* are that namespace's
            self.holders[role] = lab._popen(role, ["sleep", "3600"])
        self._compile_reflector()
        self.xdp_config = self.lab.write_config("xdp")
        self._start_proxy()

    def _compile_reflector(self) -> None:
        from sluice.dataplane.xdp import build

        m = self.macs
        macs = {"LB_MAC": _mac_bytes(m["lb"])} | {f"B{i}_MAC": _mac_bytes(m[f"b{i + 1}"]) for i in range(3)}
        cmd = ["clang", *build.clang_flags(macs), "-c", str(REFLECTOR_C), "-o", str(self.reflector)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"clang failed on {REFLECTOR_C.name}: {r.stderr.strip()[-1500:]}")

    def _in_ns(self, role: str, cmd: list[str], core: int) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.lab.ns(role).name}", *proc.pinned(cmd, core)]

    def _start_proxy(self) -> None:
        cfg = self.workdir / "proxy.yaml"
        backends = "\n".join(f"      - address: {dsr.backend_ip(i)}:{PROXY_PORT}" for i in range(3))
        cfg.write_text(
            "vips:\n"
            "  - name: bench\n"
            "    protocol: udp\n"
            f"    listen: {dsr.VIP}:{PROXY_PORT}\n"
            "    scheduler: maglev\n"
            "    passive: off\n"
            "    backends:\n"
            f"{backends}\n"
        )
        log = self.workdir / "sluice-proxy.log"
        cmd = [
            "timeout",
            "-k",
            "5",
            str(proc.MAX_LIFETIME_S),
            *self._in_ns("lb", [sluice_bin(), "run", str(cfg)], self.lb_core),
        ]
        with log.open("ab") as out:
            self.proxy = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=proc.REPO,
                env=proc.child_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proxy.poll() is not None:
                raise proc.StartError(f"sluice proxy exited {self.proxy.returncode}: {proc.log_tail(log)}")
            if self.lab.ns("lb").run("ss", "-Hlun", f"sport = :{PROXY_PORT}").stdout.strip():
                return
            time.sleep(0.1)
        raise proc.StartError(f"sluice proxy not listening on {PROXY_PORT}: {proc.log_tail(log)}")

    # ---------------------------------------------------------- peers on and off

    def _threaded_napi(self, role: str, dev: str, core: int, *, gro: bool = True) -> int:
        """Run `dev`'s NAPI in a kthread pinned to `core`; its pid. With `gro`, first give `dev` a NAPI
        that lives as long as the device (GRO on), whether an XDP program is attached or not."""
        before = _napi_threads(dev)
        code = (
            "import ctypes, fcntl, socket, struct, sys\n"
            "buf = ctypes.create_string_buffer(struct.pack('II', 0x2C, 1), 8)  # ETHTOOL_SGRO on\n"
            "req = struct.pack('16sP', sys.argv[1].encode(), ctypes.addressof(buf))\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "fcntl.ioctl(s.fileno(), 0x8946, req)  # SIOCETHTOOL\n"
        )
        ns = self.lab.ns(role)
        if gro:
            subprocess.run(
                ["nsenter", f"--net=/run/netns/{ns.name}", sys.executable, "-c", code, dev],
                check=True,
                timeout=30,
            )
        ns.run("sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded")
        new = _napi_threads(dev) - before
        if len(new) != 1:
            raise RuntimeError(f"{role}/{dev}: expected one new NAPI kthread, found {sorted(new)}")
        pid = new.pop()
        os.sched_setaffinity(pid, {core})
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(NAPI_FIFO_PRIORITY))
        return pid

    def check_napi(self) -> None:
        """The pinned NAPI kthreads still exist where they were put (an XDP attach must not replace them)."""
        for name, pid in self.napi_threads.items():
            try:
                cpus = os.sched_getaffinity(pid)
            except OSError:
                raise RuntimeError(f"the NAPI kthread of {name} (pid {pid}) is gone") from None
            want = self.lb_core if name == "lb" else self.gen_core
            if cpus != {want}:
                raise RuntimeError(f"the NAPI kthread of {name} runs on {sorted(cpus)}, not core {want}")

    def _stub(self, on: bool) -> None:
        """The XDP_PASS stub on p-lb: needed by native XDP_TX, a cost for every skb otherwise."""
        if on == self.stub_attached:
            return
        br = self.lab.ns("br")
        if on:
            br.run(
                "ip", "link", "set", "dev", "p-lb", "xdpdrv", "object", str(self.reflector), "program", "pass"
            )
        else:
            br.run("ip", "link", "set", "dev", "p-lb", "xdpdrv", "off")
        self.stub_attached = on

    def activate(self, peer: str) -> Any:
        self._stub(peer in NAPI_PEERS)
        lb = self.lab.ns("lb")
        if peer in ("xdp_native", "xdp_generic"):
            return self.lab.start_lb(self.xdp_config, mode=peer.removeprefix("xdp_"))
        if peer == "reflector":
            lb.run(
                "ip",
                "link",
                "set",
                "dev",
                "eth0",
                "xdpdrv",
                "object",
                str(self.reflector),
                "program",
                "reflect",
            )
        elif peer == "nftables":
            targets = ", ".join(f"{i} : {dsr.backend_ip(i)}" for i in range(3))
            rules = self.workdir / "dnat.nft"
            rules.write_text(
                f"table ip {NFT_TABLE} {{\n"
                "  chain prerouting {\n"
                "    type nat hook prerouting priority dstnat; policy accept;\n"
                f"    ip daddr {dsr.VIP} udp dport {NFT_PORT} dnat to numgen inc mod 3 map {{ {targets} }}\n"
                "  }\n"
                "}\n"
            )
            lb.run("nft", "-f", str(rules))
        return None

    def deactivate(self, peer: str, handle: Any) -> None:
        lb = self.lab.ns("lb")
        if handle is not None:
            handle.quit()  # the runner detaches its program
        elif peer == "reflector":
            lb.run("ip", "link", "set", "dev", "eth0", "xdpdrv", "off", check=False)
        elif peer == "nftables":
            lb.run("nft", "delete", "table", "ip", NFT_TABLE, check=False)

    # ---------------------------------------------------------- one round of one peer

    def sample(self) -> Sample:
        t = time.monotonic()
        cpu = psutil.cpu_times(percpu=True)
        rx = [_net_dev(self.holders[f"b{i + 1}"].pid)["eth0"][1] for i in range(3)]
        client = _net_dev(self.holders["client"].pid)["eth0"]
        proxy_cpu = None
        if self.proxy is not None and self.proxy.poll() is None:
            with contextlib.suppress(psutil.Error):
                proxy_cpu = tree_cpu_seconds(self.proxy.pid)
        lb_pid = self.holders["lb"].pid
        napi_cpu = napi_wakeups = None
        with contextlib.suppress(psutil.Error, KeyError):
            napi = psutil.Process(self.napi_threads["lb"])
            t_napi = napi.cpu_times()
            napi_cpu = t_napi.user + t_napi.system
            napi_wakeups = napi.num_ctx_switches().voluntary
        return Sample(
            t,
            cpu,
            rx,
            client[9],
            client[11],
            _softnet(),
            _snmp(lb_pid, "Udp"),
            proxy_cpu,
            _net_dev(lb_pid)["eth0"],
            napi_cpu,
            _ipis(),
            napi_wakeups,
        )

    def _start_generator(self, port: int) -> subprocess.Popen[bytes]:
        seconds = self.sc.warm_s + self.sc.measure_s + 0.5  # still sending when the window closes
        sender = proc.python_module(
            "bench.rawgen",
            *("--dev", "eth0", "--dst-mac", self.macs["lb"], "--src-mac", self.macs["client"]),
            *("--src", dsr.CLIENT, "--dst", dsr.VIP, "--dport", str(port)),
            *("--first-sport", str(FIRST_SPORT), "--flows", str(FLOWS), "--payload", str(PAYLOAD)),
            *("--seconds", str(seconds), "--max-packets", str(int(MAX_PPS * seconds))),
        )
        cmd = [
            "timeout",
            "-k",
            "3",
            str(int(seconds + 15)),
            *self._in_ns("client", sender, self.gen_core),
        ]
        self.generator = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=proc.REPO,
            env=proc.child_env(),
            start_new_session=True,
        )
        return self.generator

    def measure(self, peer: str) -> Row:
        port = {"nftables": NFT_PORT, "sluice_proxy": PROXY_PORT}.get(peer, dsr.DNS_PORT)
        handle = self.activate(peer)
        try:
            self.check_napi()
            program_before = handle.counters() if handle is not None else None
            begin = self.sample()
            gen = self._start_generator(port)
            try:
                time.sleep(self.sc.warm_s)
                if gen.poll() is not None:
                    raise RuntimeError(f"generator exited {gen.returncode}: {gen.communicate()[1][-400:]!r}")
                a = self.sample()
                time.sleep(self.sc.measure_s)
                b = self.sample()
                out, err = gen.communicate(timeout=self.sc.warm_s + self.sc.measure_s + 15)
            finally:
                proc.stop(gen, sig=signal.SIGKILL)
                self.generator = None
            if gen.returncode != 0:
                raise RuntimeError(
                    f"generator exited {gen.returncode}: {err.decode(errors='replace')[-400:]}"
                )
            time.sleep(0.2)  # let the backlogs drain into the counters
            end = self.sample()
            program_after = handle.counters() if handle is not None else None
            prog_ns, prog_floor = self._program_ns(port) if peer in XDP_PEERS else (None, None)
        finally:
            self.deactivate(peer, handle)
        row = self._row(peer, begin, a, b, end, program_before, program_after)
        row["generator"] = json.loads(out)
        row["prog_ns_per_pkt"] = prog_ns
        row["prog_floor_ns"] = prog_floor
        return row

    def _program_ns(self, port: int) -> tuple[float, float]:
        """Mean ns per run of the XDP program attached to the LB's eth0 on one of the load's frames
        (BPF_PROG_TEST_RUN, one run per frame, TEST_RUNS runs, no veth around it): the program's own
        cost, net of an empty program's (the reflector object's ``pass``) timed in between; and that
        floor. Every run must return XDP_TX (a repeated run would time ipip's pass path)."""
        from sluice.dataplane.xdp import loader

        links = json.loads(self.lab.ns("lb").run("ip", "-j", "link", "show", "eth0").stdout)
        prog_id = int(links[0]["xdp"]["prog"]["id"])
        fd = loader.prog_fd_by_id(prog_id)
        try:
            data = rawgen.frame(
                self.macs["lb"], self.macs["client"], dsr.CLIENT, dsr.VIP, FIRST_SPORT, port, PAYLOAD
            )
            floor = loader.load_object(self.reflector, ("pass",))
            try:
                return xdp_paths.net_of_empty(
                    fd, floor.programs["pass"], [data] * TEST_RUNS, verdict=loader.XDP_TX
                )
            finally:
                floor.close()
        finally:
            os.close(fd)

    def _row(
        self,
        peer: str,
        begin: Sample,
        a: Sample,
        b: Sample,
        end: Sample,
        program_before: dict[str, Any] | None,
        program_after: dict[str, Any] | None,
    ) -> Row:
        wall = b.t - a.t
        per_backend = [y - x for x, y in zip(a.backend_rx, b.backend_rx, strict=True)]
        forwarded = sum(per_backend)
        if forwarded <= 0:
            raise RuntimeError(f"{peer}: no packet reached a backend")
        c0, c1 = a.cpu[self.lb_core], b.cpu[self.lb_core]

        # Idle time is measured exactly (NO_HZ idle accounting); the rest is sampled by the tick, which
        # misses softirq work done from idle (no IRQ_TIME_ACCOUNTING here). So: busy = wall - idle,
        # and the kernel's share = busy minus the tasks' user time on that core.
        def d(field: str) -> float:
            return float(getattr(c1, field) - getattr(c0, field))

        busy = max(0.0, wall - d("idle") - d("iowait") - d("steal"))
        kernel = max(0.0, busy - d("user") - d("nice"))
        proxy_cpu = (
            b.proxy_cpu_s - a.proxy_cpu_s if a.proxy_cpu_s is not None and b.proxy_cpu_s is not None else None
        )
        lb_cpu = proxy_cpu if peer == "sluice_proxy" else kernel
        offered = (b.client_tx - a.client_tx) + (b.client_tx_dropped - a.client_tx_dropped)
        row: Row = {
            "kpps": forwarded / wall / 1e3,
            "offered_kpps": offered / wall / 1e3,
            "forwarded": forwarded,
            "per_backend": per_backend,
            "window_s": round(wall, 3),
            "lb_cpu_method": "process user+sys (psutil)"
            if peer == "sluice_proxy"
            else "LB core wall - idle - iowait - steal - user - nice",
            "lb_cpu_s": lb_cpu,
            "lb_core": {
                f: round(getattr(c1, f) - getattr(c0, f), 3)
                for f in ("user", "nice", "system", "irq", "softirq", "idle", "iowait", "steal")
            },
            # wake-ups: IPIs into the LB core, and how many packets the LB's NAPI handles per wake-up
            "lb_core_ipis_per_kpkt": 1e3 * (b.ipis[self.lb_core] - a.ipis[self.lb_core]) / forwarded
            if len(b.ipis) > self.lb_core and len(a.ipis) > self.lb_core
            else None,
            "pkts_per_napi_wakeup": forwarded / (b.napi_wakeups - a.napi_wakeups)
            if peer in NAPI_PEERS
            and a.napi_wakeups is not None
            and b.napi_wakeups is not None
            and b.napi_wakeups > a.napi_wakeups
            else None,
            "lb_napi_kthread_cpu_s": None
            if a.napi_cpu_s is None or b.napi_cpu_s is None
            else round(b.napi_cpu_s - a.napi_cpu_s, 3),
            "gen_core_busy_s": round(
                sum(
                    getattr(b.cpu[self.gen_core], f) - getattr(a.cpu[self.gen_core], f)
                    for f in ("user", "nice", "system", "irq", "softirq")
                ),
                3,
            ),
            "proxy_process_cpu_s": proxy_cpu,
            "client_tx_dropped": b.client_tx_dropped - a.client_tx_dropped,
            "softnet_dropped": {
                f"cpu{c}": b.softnet[c][1] - a.softnet[c][1]
                for c in (self.lb_core, self.gen_core)
                if c < len(b.softnet)
            },
            # eth0 of the LB: rx = what reached it, tx dropped = XDP_TX / sends p-lb's ring refused
            "lb_eth0_rx": b.lb_eth0[1] - a.lb_eth0[1],
            "lb_eth0_tx": b.lb_eth0[9] - a.lb_eth0[9],
            "lb_eth0_tx_dropped": b.lb_eth0[11] - a.lb_eth0[11],
            "lb_udp_rcvbuf_errors": b.lb_udp.get("RcvbufErrors", 0) - a.lb_udp.get("RcvbufErrors", 0),
            "run_backend_rx": sum(end.backend_rx) - sum(begin.backend_rx),
            "lb_cpu_s_per_mpkt": None,
            "pkt_per_lb_cpu_s": None,
            "core_busy_s_per_mpkt": busy / forwarded * 1e6,
            "lb_core_busy_pct": 100.0 * busy / wall,
        }
        if lb_cpu:
            row["lb_cpu_s_per_mpkt"] = lb_cpu / forwarded * 1e6
            row["pkt_per_lb_cpu_s"] = forwarded / lb_cpu
        if program_before is not None and program_after is not None:
            key = "vip:dns"
            row["run_program_packets"] = program_after.get(key, {}).get("packets", 0) - program_before.get(
                key, {}
            ).get("packets", 0)
        return row

    # ---------------------------------------------------------- teardown

    def close(self) -> None:
        proc.stop(self.generator, sig=signal.SIGKILL)
        proc.stop(self.proxy)
        self.lab.destroy()  # kills the holders and LB runners, deletes the namespaces and the pins


def _brief(row: Row) -> str:
    return (
        f"  r{row['round']} {row['peer']:<13} {row['kpps']:8.1f} kpps (offered {row['offered_kpps']:.0f}), "
        f"LB CPU {row['lb_cpu_s_per_mpkt'] or float('nan'):.3f} s/Mpkt, "
        f"core busy {row['lb_core_busy_pct']:.0f} %"
    )


def run(sc: XdpForwarding, n_rounds: int, log: Any = print) -> dict[str, Any] | None:
    """All rounds in one lab; the json document, or None when the scenario cannot run here. Then the
    per-path program timings (bench/xdp_paths.py), written to their own json here (run.py writes
    this scenario's and regenerates BENCHMARKS.md from every json)."""
    doc = _run_lab(sc, n_rounds, log)
    if doc is not None:
        log(f"== {xdp_paths.XdpPaths.name}: {xdp_paths.XdpPaths.title}")
        paths = xdp_paths.run(xdp_paths.XdpPaths(sc.quick), n_rounds, log)
        report.RESULTS.mkdir(parents=True, exist_ok=True)
        out = report.RESULTS / f"{paths['scenario']}.json"
        out.write_text(json.dumps(paths, indent=1) + "\n")
        log(f"   -> {out.relative_to(proc.REPO)} ({paths['elapsed_s']} s)")
    return doc


def _run_lab(sc: XdpForwarding, n_rounds: int, log: Any) -> dict[str, Any] | None:
    lb_core, gen_core = proc.cores()
    doc = rounds.run_lab(
        sc, n_rounds, missing(), lambda workdir: Bench(sc, workdir, lb_core, gen_core), _brief, log
    )
    if doc is None:
        return None
    doc["peer_labels"] = {p: LABELS[p] for p in sc.peer_names}
    doc["method"] = METHOD
    doc["layout"] = {"name": "split", "lb_core": lb_core, "generator_core": gen_core, "nice": proc.NICE}
    doc["kernel_config"] = _kernel_config()
    doc["versions"] |= {
        "kernel": os.uname().release,
        "nftables": _version(["nft", "--version"], r"v(\S+)"),
        "clang": _version(["clang", "--version"], r"version (\S+)"),
    }
    return doc
