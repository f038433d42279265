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
run on one CPU (so runs compare; the XDP connection table is one for all CPUs). The nodes' bridge ports do not flood unknown
unicast: a node that vanished must not receive (and forward) frames flooded to every port.

Used by tests/netns/test_anycast.py, bench/anycast.py and ``sluice lab up|down|status`` (anycast.py).
The router's BGP side is router.py; the processes are roles of roles.py (backends: ``http-server``,
``udp-echo``); the client roles (clients.py: ``pool``, ``burst``, ``probe``) and the AnycastLab
methods that drive them are for tests and benchmarks only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sluice.core.maglev import DEFAULT_TABLE_SIZE
from sluice.lab import hosts, router
from sluice.lab.dsr import LbProcess
from sluice.lab.netns import PREFIX, LabError, Namespace, list_namespaces, sh, sweep_stale
from sluice.lab.router import HOLD_TIME_S, KEEPALIVE_S, NODE_ASN, ROUTER_ASN

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
MAGLEV_SIZE = DEFAULT_TABLE_SIZE


def node_ip(i: int) -> str:
    return f"{SEGMENT}.{1 + i}"


def backend_ip(i: int) -> str:
    return f"{SEGMENT}.{11 + i}"


def backend_name(address: str) -> str:
    """``198.18.2.12:80`` -> ``b2``."""
    host = address.rsplit(":", 1)[0]
    return f"b{int(host.rsplit('.', 1)[1]) - 10}"


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
class AnycastLab(hosts.Topology):
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
        return lab._built()

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
                hosts.kill_tree(node.proc.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(5)
        hosts.end_processes(self.processes.values())
        self.processes.clear()
        for ns in self.namespaces.values():
            ns.delete()
        self.namespaces.clear()

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
                hosts.role("http-server", name, str(HTTP_PORT)),
                self.workdir / f"{name}.log",
            )
            self._popen(
                f"{name}-echo",
                name,
                hosts.role("udp-echo", name, VIP, str(ECHO_PORT)),
                self.workdir / f"{name}.log",
            )
        for i in range(self.backend_count):
            hosts.wait_listening(self.ns(f"b{i + 1}"), HTTP_PORT)

    def router_bird_config(self) -> str:
        return router.bird_config(ROUTER, [node_ip(i) for i in range(self.node_count)])

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
        router.wait_control_socket(self.router_socket)

    def birdc(self, *args: str) -> str:
        return router.birdc(self.router_socket, *args)

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
            hosts.kill_tree(node.proc.pid)
            node.proc.wait(10)

    def xdp_attached(self, index: int) -> bool:
        out = self.ns(self.nodes[index].name).run("ip", "-j", "-d", "link", "show", "dev", "eth0").stdout
        links = json.loads(out)
        return bool(links) and isinstance(links[0].get("xdp"), dict)

    # ------------------------------------------------------------ the router's view

    def next_hops(self) -> set[str]:
        """Gateways of the router's route to the VIP (empty: no route)."""
        return router.next_hops(self.ns("router"), VIP_PREFIX)

    def wait_next_hops(self, expected: set[str], timeout_s: float = 30.0, poll_s: float = 0.01) -> float:
        """Until the router's next hops to the VIP are `expected`; returns the monotonic time seen."""
        return router.wait_next_hops(self.ns("router"), VIP_PREFIX, expected, timeout_s, poll_s)

    def all_next_hops(self) -> set[str]:
        return {n.ip for n in self.nodes}

    # ------------------------------------------------------------ clients (test and bench only)

    def client_command(self, *args: str) -> list[str]:
        return self._in_ns("client", hosts.role(*args))

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
