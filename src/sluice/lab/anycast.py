"""The anycast lab: a client, a BGP/ECMP router, three sluice XDP nodes announcing one VIP, backends.

::

    client 198.18.1.10 --- c0 198.18.1.1  router (BIRD 2, ECMP: merge paths, fib_multipath_hash_policy=1)
                                          br0 198.18.2.254
                                           |-- lb1 198.18.2.1  sluice (XDP DSR, l2) + its own BIRD, AS 65001
                                           |-- lb2 198.18.2.2  ...
                                           |-- lb3 198.18.2.3  ...
                                           |-- b1  198.18.2.11 VIP 198.18.100.1 on lo (arp_ignore=1/arp_announce=2)
                                           |-- b2, b3 ...

Every LB node runs the real ``sluice run`` with an ``announce:`` block; its BIRD peers with the
router's BIRD (AS 65000) and announces 198.18.100.1/32 while the node can serve it. The router
installs one multipath route with a next hop per announcing node. A node's XDP program rewrites the
MACs and sends the packet back out onto the segment (XDP_TX) to the Maglev-chosen backend, which
answers the client directly through the router.

Lab details, shared with the DSR lab (lab/hosts.py): each node process is started with nsenter (network
namespace only) plus its own mount namespace with a private bpffs, so the three nodes' pinned maps
never meet; the router-side veth peers of the nodes carry an XDP_PASS stub (native XDP_TX on veth
needs it); the client computes TCP/UDP checksums in software; the LB, client and backend processes
run on one CPU (the XDP connection table is per CPU). The nodes' bridge ports do not flood unknown
unicast: a node that vanished must not receive (and forward) frames flooded to every port.

Used by tests/netns/test_anycast.py, bench/anycast.py and ``sluice lab up|down|status``. The module is
also the entry point of the lab's client processes (``python -m sluice.lab.anycast <role>``):
``pool`` (kept-alive connections driven over stdin), ``burst`` (new connections at a pace),
``probe`` (UDP probes over many source ports), ``udp-echo`` (the backends' UDP service).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from sluice.core.maglev import DEFAULT_TABLE_SIZE
from sluice.lab import hosts
from sluice.lab.dsr import LbProcess
from sluice.lab.netns import PREFIX, LabError, Namespace, list_namespaces, sh, sweep_stale

CLIENT_NET = "198.18.1"
CLIENT = f"{CLIENT_NET}.10"
ROUTER_CLIENT_SIDE = f"{CLIENT_NET}.1"
SEGMENT = "198.18.2"
ROUTER = f"{SEGMENT}.254"
ROUTER_MAC = "02:53:4c:00:01:fe"
VIP = "198.18.100.1"
VIP_PREFIX = f"{VIP}/32"
HTTP_PORT = 80
ECHO_PORT = 7
ROUTER_ASN = 65000
NODE_ASN = 65001
HOLD_TIME_S = 3
KEEPALIVE_S = 1
MAGLEV_SIZE = DEFAULT_TABLE_SIZE
CLI_PREFIX = f"{PREFIX}any-"
"""Namespace prefix of the lab `sluice lab up` builds (one per machine; `up` replaces it)."""
STATE_FILE = "lab.json"


def node_ip(i: int) -> str:
    return f"{SEGMENT}.{1 + i}"


def backend_ip(i: int) -> str:
    return f"{SEGMENT}.{11 + i}"


def backend_name(address: str) -> str:
    """``198.18.2.12:80`` -> ``b2``."""
    host = address.rsplit(":", 1)[0]
    return f"b{int(host.rsplit('.', 1)[1]) - 10}"


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (from /proc)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class Node:
    """One LB node: its sluice process (which runs its BIRD)."""

    index: int
    config_path: Path
    api_socket: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"lb{self.index + 1}"

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class AnycastLab:
    workdir: Path
    prefix: str
    cpu: int
    node_count: int = 3
    backend_count: int = 3
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    detached: bool = False
    """Processes run in their own session and outlive this object (``sluice lab up``)."""

    # ------------------------------------------------------------ topology

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        nodes: int = 3,
        backends: int = 3,
        cpu: int | None = None,
        prefix: str | None = None,
        detached: bool = False,
    ) -> AnycastLab:
        """Build the namespaces (sweeping leftovers of crashed runs first); nothing runs yet."""
        sweep_stale()
        cpu = min(os.sched_getaffinity(0)) if cpu is None else cpu
        workdir.mkdir(parents=True, exist_ok=True)
        lab = cls(
            workdir,
            prefix or f"{PREFIX}{os.getpid()}-",
            cpu,
            node_count=nodes,
            backend_count=backends,
            detached=detached,
        )
        lab._remove_namespaces()
        try:
            lab._build()
        except BaseException:
            lab.destroy()
            raise
        return lab

    def ns(self, role: str) -> Namespace:
        return self.namespaces[role]

    def _add_ns(self, role: str) -> Namespace:
        ns = Namespace.create(role, prefix=self.prefix)
        self.namespaces[role] = ns
        return ns

    def _remove_namespaces(self) -> None:
        for name in list_namespaces():
            if name.startswith(self.prefix):
                sh(["ip", "netns", "delete", name], check=False)

    def _build(self) -> None:
        router = self._add_ns("router")
        hosts.add_bridge(router, ROUTER_MAC, f"{ROUTER}/24")
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")
        client = self._add_ns("client")
        router.run("ip", "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", client.name)
        router.run("ip", "addr", "add", f"{ROUTER_CLIENT_SIDE}/24", "dev", "c0")
        router.run("ip", "link", "set", "c0", "up")
        router.sysctl("net.ipv4.conf.c0.rp_filter", "0")
        client.run("ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        client.run("ip", "link", "set", "eth0", "up")
        client.run("ip", "route", "add", "default", "via", ROUTER_CLIENT_SIDE)
        hosts.tx_checksum_off(client, self.cpu)
        segment = [(f"lb{i + 1}", node_ip(i)) for i in range(self.node_count)]
        segment += [(f"b{i + 1}", backend_ip(i)) for i in range(self.backend_count)]
        for role, ip in segment:
            ns = self._add_ns(role)
            port = f"p-{role}"
            hosts.plug(router, port, ns, f"{ip}/24")
            ns.run("ip", "route", "add", "default", "via", ROUTER)
            if role.startswith("lb"):
                router.run("bridge", "link", "set", "dev", port, "flood", "off")
                hosts.attach_pass_stub(router, port)
        for i in range(self.backend_count):
            hosts.dsr_backend(self.ns(f"b{i + 1}"), VIP)
        self.nodes = [
            Node(
                i,
                self.workdir / f"lb{i + 1}.yaml",
                self.workdir / f"lb{i + 1}.sock",
                self.workdir / f"lb{i + 1}.log",
            )
            for i in range(self.node_count)
        ]

    def destroy(self) -> None:
        """Stop every process of the lab (by pid) and delete its namespaces; safe to call twice."""
        for node in self.nodes:
            if node.proc is not None:
                self._kill_tree(node.proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(5)
        hosts.end_processes(self.processes.values())
        self.processes.clear()
        for ns in self.namespaces.values():
            ns.delete()
        self.namespaces.clear()

    @staticmethod
    def _kill_tree(pid: int) -> None:
        for child in _children(pid):
            _kill(child)
        _kill(pid)

    # ------------------------------------------------------------ processes

    def _in_ns(self, role: str, args: list[str]) -> list[str]:
        """`args` in the role's network namespace, on the lab's CPU."""
        return hosts.in_netns(self.ns(role), self.cpu, args)

    def _popen(
        self, key: str, role: str, args: list[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        if log is not None:
            with log.open("ab") as out:
                proc: subprocess.Popen[Any] = subprocess.Popen(
                    self._in_ns(role, args),
                    stdout=out,
                    stderr=out,
                    stdin=subprocess.DEVNULL,
                    start_new_session=self.detached,
                    **kw,
                )
        else:
            proc = subprocess.Popen(self._in_ns(role, args), start_new_session=self.detached, **kw)
        self.processes[key] = proc
        return proc

    def start_backends(self) -> None:
        for i in range(self.backend_count):
            name = f"b{i + 1}"
            self._popen(
                f"{name}-http",
                name,
                hosts.python("sluice.lab.dsr", "http-server", name, str(HTTP_PORT)),
                self.workdir / f"{name}.log",
            )
            self._popen(
                f"{name}-echo",
                name,
                hosts.python("sluice.lab.anycast", "udp-echo", name, VIP, str(ECHO_PORT)),
                self.workdir / f"{name}.log",
            )
        for i in range(self.backend_count):
            hosts.wait_listening(self.ns(f"b{i + 1}"), HTTP_PORT)

    def router_bird_config(self) -> str:
        lines = [
            f"router id {ROUTER};",
            "log stderr { info, remote, warning, error, auth, fatal, bug };",
            "protocol device { scan time 1; }",
            "protocol kernel {",
            "  ipv4 { import none; export all; };",
            "  merge paths on;",
            "}",
            "template bgp lbs {",
            f"  local {ROUTER} as {ROUTER_ASN};",
            f"  hold time {HOLD_TIME_S}; keepalive time {KEEPALIVE_S};",
            "  connect delay time 1; connect retry time 1; error wait time 1, 2;",
            "  ipv4 { import all; export none; };",
            "}",
        ]
        lines += [
            f"protocol bgp lb{i + 1} from lbs {{ neighbor {node_ip(i)} as {NODE_ASN}; }}"
            for i in range(self.node_count)
        ]
        return "\n".join(lines) + "\n"

    @property
    def router_socket(self) -> Path:
        return self.workdir / "router-bird.ctl"

    def start_router(self) -> None:
        conf = self.workdir / "router-bird.conf"
        conf.write_text(self.router_bird_config())
        self.router_socket.unlink(missing_ok=True)
        self._popen(
            "router-bird",
            "router",
            ["bird", "-f", "-c", str(conf), "-s", str(self.router_socket)],
            self.workdir / "router-bird.log",
        )
        deadline = time.monotonic() + 10
        while not self.router_socket.exists():
            if time.monotonic() > deadline:
                raise LabError("router bird: no control socket")
            time.sleep(0.05)

    def birdc(self, *args: str) -> str:
        return sh(["birdc", "-s", str(self.router_socket), *args]).stdout

    def node_config(self, index: int, backends: Sequence[int] | None = None) -> dict[str, Any]:
        """The config every node shares, but for its router ID, state dir and admin socket. Each node
        lists the backends in another order (rotated by its index): the Maglev table must not care.
        Backend b1 weighs 2, the others 1."""
        chosen = list(range(self.backend_count) if backends is None else backends)
        if chosen:
            shift = index % len(chosen)
            chosen = chosen[shift:] + chosen[:shift]
        node = self.nodes[index]
        dsr = {"interface": "eth0", "forwarding": "l2"}

        def vip(name: str, proto: str, port: int, extra: dict[str, Any]) -> dict[str, Any]:
            backends = [{"address": f"{backend_ip(i)}:{port}", "weight": 2 if i == 0 else 1} for i in chosen]
            return hosts.dsr_vip(name, proto, f"{VIP}:{port}", MAGLEV_SIZE, dsr, backends, extra)

        return {
            "vips": [
                vip(
                    "web", "tcp", HTTP_PORT, {"health": {"type": "tcp", "interval": "1s", "timeout": "500ms"}}
                ),
                vip("echo", "udp", ECHO_PORT, {"timeouts": {"idle": "30s"}}),
            ],
            "admin": {"listen": str(node.api_socket)},
            "shutdown_timeout": "1s",
            "announce": {
                "asn": NODE_ASN,
                "router_id": node.ip,
                "peers": [{"address": ROUTER, "asn": ROUTER_ASN}],
                "hold_time": HOLD_TIME_S,
                "keepalive_time": KEEPALIVE_S,
                "connect_retry_time": 1,
                "withdraw_delay": "1s",
                "node_check_interval": "500ms",
                "state_dir": str(self.workdir / node.name),
            },
        }

    def write_node_config(self, index: int, backends: Sequence[int] | None = None) -> Path:
        node = self.nodes[index]
        node.config_path.write_text(yaml.safe_dump(self.node_config(index, backends)))
        return node.config_path

    def start_node(self, index: int, backends: Sequence[int] | None = None) -> Node:
        """Start ``sluice run`` on node `index` (its config rewritten for `backends`)."""
        node = self.nodes[index]
        if node.running:
            raise LabError(f"{node.name} is already running")
        self.write_node_config(index, backends)
        node.api_socket.unlink(missing_ok=True)
        self.ns(node.name).run("ip", "link", "set", "eth0", "up")
        inner = "mount -t bpf bpf /sys/fs/bpf && exec " + " ".join(
            [sys.executable, "-m", "sluice", "run", str(node.config_path)]
        )
        args = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
        node.proc = self._popen(node.name, node.name, args, node.log_path)
        self.processes.pop(node.name)  # the node owns it
        return node

    def wait_node_announced(self, index: int, timeout_s: float = 30.0) -> None:
        """Until the node's API says it announces every VIP."""
        node = self.nodes[index]
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if not node.running:
                raise LabError(f"{node.name} exited: {self.log_tail(node)}")
            try:
                vips = self.node_vips(index)
                last = [(v["name"], v["announced"]) for v in vips]
                if all(v["announced"] for v in vips):
                    return
            except (OSError, LabError):
                pass
            time.sleep(0.1)
        raise LabError(f"{node.name}: not announced after {timeout_s:g}s ({last}): {self.log_tail(node)}")

    def log_tail(self, node: Node, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(node.log_path.read_text().splitlines()[-lines:])
        return ""

    def node_vips(self, index: int) -> list[dict[str, Any]]:
        from sluice.control.client import ApiClient, ApiError

        try:
            vips: list[dict[str, Any]] = ApiClient(str(self.nodes[index].api_socket), timeout_s=3).vips()
        except ApiError as exc:
            raise LabError(f"{self.nodes[index].name} API: {exc.message}") from None
        return vips

    def reload_node(self, index: int, backends: Sequence[int]) -> None:
        """Rewrite the node's config for `backends` and reload it (admin API)."""
        from sluice.control.client import ApiClient

        self.write_node_config(index, backends)
        ApiClient(str(self.nodes[index].api_socket), timeout_s=10).reload()

    def stop_node(self, index: int, timeout_s: float = 20.0) -> None:
        """Graceful stop: SIGTERM (sluice withdraws, waits, detaches, stops BIRD)."""
        node = self.nodes[index]
        if node.proc is None:
            return
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(timeout_s)

    def kill_node(self, index: int) -> None:
        """Hard failure: the node's link goes down, then sluice and its BIRD get SIGKILL."""
        node = self.nodes[index]
        self.ns(node.name).run("ip", "link", "set", "eth0", "down")
        if node.proc is not None:
            self._kill_tree(node.proc.pid)
            node.proc.wait(10)

    def xdp_attached(self, index: int) -> bool:
        out = self.ns(self.nodes[index].name).run("ip", "-j", "-d", "link", "show", "dev", "eth0").stdout
        links = json.loads(out)
        return bool(links) and isinstance(links[0].get("xdp"), dict)

    # ------------------------------------------------------------ the router's view

    def next_hops(self) -> set[str]:
        """Gateways of the router's route to the VIP (empty: no route)."""
        out = self.ns("router").run("ip", "-j", "route", "show", VIP_PREFIX).stdout
        routes = json.loads(out) if out.strip() else []
        hops: set[str] = set()
        for r in routes:
            if "gateway" in r:
                hops.add(r["gateway"])
            hops |= {h["gateway"] for h in r.get("nexthops", []) if "gateway" in h}
        return hops

    def wait_next_hops(self, expected: set[str], timeout_s: float = 30.0, poll_s: float = 0.01) -> float:
        """Until the router's next hops to the VIP are `expected`; returns the monotonic time seen."""
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            seen = self.next_hops()
            if seen == expected:
                return time.monotonic()
            time.sleep(poll_s)
        raise LabError(f"router next hops {sorted(seen)}, expected {sorted(expected)} within {timeout_s:g}s")

    def all_next_hops(self) -> set[str]:
        return {n.ip for n in self.nodes}

    # ------------------------------------------------------------ clients

    def client_command(self, *args: str) -> list[str]:
        return self._in_ns("client", hosts.python("sluice.lab.anycast", *args))

    def burst(
        self, first_sport: int, count: int, *, pace_s: float = 0.0, timeout_s: float = 120.0
    ) -> dict[int, tuple[str, float]]:
        """New TCP connections (one GET each) from ports first..first+count-1: port -> (backend or error, seconds)."""
        out = hosts.run_client(
            self.client_command("burst", VIP, str(HTTP_PORT), str(first_sport), str(count), str(pace_s)),
            "burst",
            timeout_s,
        )
        return {int(k): (v[0], v[1]) for k, v in json.loads(out).items()}

    def start_burst(self, first_sport: int, count: int, pace_s: float) -> subprocess.Popen[str]:
        """`burst` in the background; `finish_burst` collects it."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            self.client_command("burst", VIP, str(HTTP_PORT), str(first_sport), str(count), str(pace_s)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes[f"burst-{first_sport}"] = proc
        return proc

    def start_probe(
        self, first_sport: int, ports: int, duration_s: float, interval_s: float = 0.01
    ) -> subprocess.Popen[str]:
        """UDP probes to the echo VIP in the background; `finish` collects [(t, sport, ok)]."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            self.client_command(
                "probe", VIP, str(ECHO_PORT), str(first_sport), str(ports), str(duration_s), str(interval_s)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes[f"probe-{first_sport}"] = proc
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout_s: float = 120.0) -> Any:
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise LabError(f"client exit {proc.returncode}: {err.strip()[-2000:]}")
        return json.loads(out)

    def pool(self, first_sport: int, count: int) -> ConnectionPool:
        """`count` kept-alive connections from ports first..; each has done one GET."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            self.client_command("pool", VIP, str(HTTP_PORT), str(first_sport), str(count)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes[f"pool-{first_sport}"] = proc
        runner = LbProcess(proc)
        runner.wait_ready(60)
        return ConnectionPool(runner)


@dataclass
class ConnectionPool:
    """Kept-alive TCP connections in the client namespace."""

    runner: LbProcess

    def round(self, timeout_s: float = 30.0) -> dict[int, tuple[str, float]]:
        """One GET on every connection at once: port -> (backend or error, seconds)."""
        out = json.loads(self.runner.command(f"round {timeout_s}", timeout_s + 10))
        return {int(k): (v[0], v[1]) for k, v in out.items()}

    def close(self) -> None:
        self.runner.quit()


# ---------------------------------------------------------------- `sluice lab` (persistent lab)


def lab_up(workdir: Path) -> AnycastLab:
    """Build the lab and start everything, detached; replaces a lab left by an earlier `up`."""
    lab_down(workdir)
    lab = AnycastLab.create(workdir, prefix=CLI_PREFIX, detached=True)
    try:
        lab.start_backends()
        lab.start_router()
        for i in range(lab.node_count):
            lab.start_node(i)
        for i in range(lab.node_count):
            lab.wait_node_announced(i)
        lab.wait_next_hops(lab.all_next_hops())
    except BaseException:
        lab.destroy()
        raise
    pids = {k: p.pid for k, p in lab.processes.items()}
    pids |= {n.name: n.proc.pid for n in lab.nodes if n.proc is not None}
    state = {
        "prefix": lab.prefix,
        "namespaces": sorted(ns.name for ns in lab.namespaces.values()),
        "pids": pids,
    }
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=1))
    for proc in [*lab.processes.values(), *(n.proc for n in lab.nodes if n.proc is not None)]:
        # handed over to `lab_down` (by pid, from the state file): this object no longer tracks it
        proc.returncode = 0
    return lab


def lab_down(workdir: Path) -> list[str]:
    """Stop what `lab_up` started (pids checked against their command line) and delete the namespaces;
    returns what was removed. Leftovers without a state file (crashed `up`) are found by prefix."""
    removed: list[str] = []
    state_path = workdir / STATE_FILE
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(state_path.read_text())
        for name, pid in state.get("pids", {}).items():
            cmd = _cmdline(int(pid))
            if "sluice" in cmd or "bird" in cmd:
                AnycastLab._kill_tree(int(pid))
                removed.append(f"process {name} ({pid})")
    for name in list_namespaces():
        if name.startswith(CLI_PREFIX):
            sh(["ip", "netns", "delete", name], check=False)
            removed.append(f"namespace {name}")
    state_path.unlink(missing_ok=True)
    return removed


def lab_status(workdir: Path) -> dict[str, Any]:
    """What runs, the router's next hops for the VIP, its BGP sessions."""
    namespaces = [n for n in list_namespaces() if n.startswith(CLI_PREFIX)]
    out: dict[str, Any] = {"up": bool(namespaces), "namespaces": namespaces, "vip": VIP}
    if not namespaces:
        return out
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((workdir / STATE_FILE).read_text())
        out["processes"] = {
            name: {"pid": pid, "alive": bool(_cmdline(int(pid)))}
            for name, pid in state.get("pids", {}).items()
        }
    route = sh(["ip", "-n", f"{CLI_PREFIX}router", "route", "show", VIP_PREFIX], check=False).stdout.strip()
    out["router_route"] = route
    proto = sh(["birdc", "-s", str(workdir / "router-bird.ctl"), "show", "protocols"], check=False)
    out["router_bgp"] = proto.stdout.strip()
    out["client"] = f"ip netns exec {CLI_PREFIX}client curl http://{VIP}/"
    return out


# ---------------------------------------------------------------- the lab's client processes


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> str:
    writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return (await reader.readexactly(length)).decode().strip()


async def _connect(host: str, port: int, sport: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", sport))
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def _error(exc: BaseException) -> str:
    return f"error {type(exc).__name__}"


async def _pool(host: str, port: int, first: int, count: int) -> None:
    conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    limit = asyncio.Semaphore(64)

    async def open_one(sport: int) -> None:
        async with limit:
            r, w = await asyncio.wait_for(_connect(host, port, sport), 10)
            await asyncio.wait_for(_get(r, w, False), 10)
            conns[sport] = (r, w)

    results = await asyncio.gather(*(open_one(first + i) for i in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"error {len(failed)} connections failed to open: {failed[0]!r}", flush=True)
    else:
        print("ready", flush=True)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))

    async def one(sport: int, timeout_s: float) -> tuple[int, str, float]:
        r, w = conns[sport]
        t0 = time.monotonic()
        try:
            body = await asyncio.wait_for(_get(r, w, False), timeout_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            body = _error(exc)
        return sport, body, time.monotonic() - t0

    while True:
        cmd, _, arg = (await lines.get()).strip().partition(" ")
        if cmd in ("quit", ""):
            break
        if cmd == "round":
            done = await asyncio.gather(*(one(s, float(arg)) for s in sorted(conns)))
            print(json.dumps({s: [b, round(t, 4)] for s, b, t in done}), flush=True)
        else:
            print(f"error unknown command {cmd!r}", flush=True)
    for _, w in conns.values():
        w.close()
    print("bye", flush=True)


async def _burst(host: str, port: int, first: int, count: int, pace_s: float) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}

    async def one(sport: int) -> None:
        t0 = time.monotonic()
        try:
            r, w = await asyncio.wait_for(_connect(host, port, sport), 10)
            try:
                body = await asyncio.wait_for(_get(r, w, True), 10)
            finally:
                w.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            body = _error(exc)
        out[sport] = [body, round(time.monotonic() - t0, 4)]

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(one(first + i)))
        if pace_s > 0:
            await asyncio.sleep(pace_s)
        elif len(tasks) % 32 == 0:
            await asyncio.gather(*tasks[-32:])
    await asyncio.gather(*tasks)
    return out


def _probe(
    host: str, port: int, first: int, ports: int, duration_s: float, interval_s: float
) -> list[list[Any]]:
    """UDP probes round robin over `ports` source ports; each waits for its echo up to 5 intervals."""
    socks = []
    for i in range(ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", first + i))
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    index = {s: i for i, s in enumerate(socks)}
    pending: dict[tuple[int, int], float] = {}  # (sock index, seq) -> sent at
    results: list[list[Any]] = []
    end = time.monotonic() + duration_s
    seq = 0
    wait_s = max(0.05, 5 * interval_s)
    while True:
        now = time.monotonic()
        if now < end:
            i = seq % ports
            socks[i].send(f"{seq}".encode())
            pending[(i, seq)] = now
            seq += 1
        elif not pending:
            break
        ready, _, _ = select.select(socks, [], [], interval_s)
        for s in ready:
            i = index[s]
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while True:
                    data = s.recv(256)
                    n = int(data.split(b" ", 1)[0])
                    sent = pending.pop((i, n), None)
                    if sent is not None:
                        results.append([round(sent, 4), first + i, 1])
        now = time.monotonic()
        for key, sent in list(pending.items()):
            if now - sent > wait_s:
                del pending[key]
                results.append([round(sent, 4), first + key[0], 0])
        if now > end + 2 * wait_s:
            break
    for s in socks:
        s.close()
    return sorted(results)


def _udp_echo(name: str, addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))  # bound to the VIP: replies leave with the VIP as source
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data[:64] + b" " + name.encode(), peer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.lab.anycast")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("pool", "burst", "probe"):
        p = sub.add_parser(role)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("first_sport", type=int)
        p.add_argument("count", type=int)
        if role == "burst":
            p.add_argument("pace_s", type=float, nargs="?", default=0.0)
        if role == "probe":
            p.add_argument("duration_s", type=float)
            p.add_argument("interval_s", type=float)
    p = sub.add_parser("udp-echo")
    p.add_argument("name")
    p.add_argument("addr")
    p.add_argument("port", type=int)
    args = parser.parse_args(argv)
    out: IO[str] = sys.stdout
    if args.role == "pool":
        asyncio.run(_pool(args.host, args.port, args.first_sport, args.count))
    elif args.role == "burst":
        json.dump(asyncio.run(_burst(args.host, args.port, args.first_sport, args.count, args.pace_s)), out)
    elif args.role == "probe":
        json.dump(
            _probe(args.host, args.port, args.first_sport, args.count, args.duration_s, args.interval_s), out
        )
    elif args.role == "udp-echo":
        _udp_echo(args.name, args.addr, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
