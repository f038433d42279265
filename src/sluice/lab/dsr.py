"""The DSR lab: a client, an XDP load balancer and three backends on one bridge, all in namespaces.

::

    client 198.18.0.10 (mtu 1400) --+
    lb     198.18.0.2  (XDP)      --+-- br0 198.18.0.254 (bridge ns; also the ipip next hop router)
    b1..b3 198.18.0.11-13         --+   VIP 198.18.100.1 on each backend's lo, arp_ignore=1/arp_announce=2

The client routes the VIP via the LB; the LB's XDP program forwards to a backend (l2: MAC rewrite;
ipip: encapsulated to the bridge namespace's br0, which routes it to the backend, whose decap XDP
program strips the outer header); the backend answers the client directly. The client's MTU leaves
room for the outer header. Every process of the lab runs on one CPU (`cpu`), so runs compare (on veth
the CPU that handles a packet is the one that sent it; the XDP connection table is one for all CPUs).

The lab's processes are roles of roles.py: ``lb`` (the XdpPlane, driven over stdin), ``http-server``
and ``dns-server`` on the backends; the client roles (clients.py: ``http-client``, ``http-burst``,
``dns-burst``) and the DsrLab methods that drive them are for tests and benchmarks only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sluice.lab import hosts
from sluice.lab.netns import LabError, Namespace, sweep_stale

Forwarding = Literal["l2", "ipip"]

SUBNET = "198.18.0"
ROUTER = f"{SUBNET}.254"
ROUTER_MAC = "02:53:4c:00:00:fe"
CLIENT = f"{SUBNET}.10"
LB = f"{SUBNET}.2"
VIP = "198.18.100.1"
OUTER_SOURCE = "198.19.0.0/16"
HTTP_PORT = 80
DNS_PORT = 53
CLIENT_MTU = 1400
CHECK_TIMING = {"interval": "0.5s", "timeout": "0.4s", "rise": 2, "fall": 3, "jitter": 0.0}
"""Health check timing of `DsrLab.config(checks=True)`."""


def backend_ip(i: int) -> str:
    return f"{SUBNET}.{11 + i}"


def _sweep_stale_pins() -> None:
    """Remove pinned maps of labs whose process is gone (``lab-<pid>-<forwarding>``)."""
    from sluice.dataplane.xdp.loader import PIN_ROOT, remove_pins

    if not PIN_ROOT.is_dir():
        return
    for path in PIN_ROOT.iterdir():
        parts = path.name.split("-")
        if (
            len(parts) == 3
            and parts[0] == "lab"
            and parts[1].isdigit()
            and not Path(f"/proc/{parts[1]}").exists()
        ):
            with contextlib.suppress(OSError):
                remove_pins(path.name)


class LbProcess:
    """A lab process driven line by line over stdin/stdout: the LB runner (role ``lb``) in the LB
    namespace, or a client role that takes commands (``http-client``, ``pool``)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def _readline(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        poller = select.poll()  # not select(): the test process may hold descriptors above 1023
        poller.register(self.proc.stdout, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"lb runner: no answer within {timeout_s:g}s")
            if poller.poll(left * 1000):
                line = self.proc.stdout.readline()
                if not line:
                    raise LabError(f"lb runner exited (code {self.proc.wait(5)})")
                return line.strip()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        line = self._readline(timeout_s)
        if line != "ready":
            raise LabError(f"lb runner: {line}")

    def command(self, line: str, timeout_s: float = 20.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self._readline(timeout_s)
        if reply.startswith("error"):
            raise LabError(f"lb runner: {reply}")
        return reply

    def apply(self, config_path: Path) -> None:
        self.command(f"apply {config_path}")

    def counters(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = json.loads(self.command("stats"))
        return result

    def health(self) -> dict[str, Any]:
        """A checked LB's (``start_lb(checks=True)``) health: see `CheckedLb.health`."""
        result: dict[str, Any] = json.loads(self.command("health"))
        return result

    def quit(self) -> None:
        """Clean stop: the runner detaches the program and exits."""
        with contextlib.suppress(LabError, BrokenPipeError):
            self.command("quit")
        self.proc.wait(10)

    def kill(self) -> None:
        """Crash: SIGKILL, nothing is detached (the attached program keeps forwarding)."""
        self.proc.kill()
        self.proc.wait(10)


@dataclass
class DsrLab(hosts.Topology):
    forwarding: Forwarding
    cpu: int
    instance: str
    workdir: Path
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    router_mac: str = ""
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    backends: int = 3
    prefix: str | None = None

    # ------------------------------------------------------------ topology

    @classmethod
    def create(
        cls, forwarding: Forwarding, workdir: Path, *, backends: int = 3, cpu: int | None = None
    ) -> DsrLab:
        sweep_stale()
        _sweep_stale_pins()
        cpu = min(os.sched_getaffinity(0)) if cpu is None else cpu
        lab = cls(forwarding, cpu, f"lab-{os.getpid()}-{forwarding}", workdir, backends=backends)
        return lab._built()

    def _build(self) -> None:
        br = self._add_ns("br")
        hosts.add_bridge(br, ROUTER_MAC, f"{ROUTER}/24")
        self.router_mac = ROUTER_MAC
        segment = [("client", CLIENT), ("lb", LB)] + [
            (f"b{i + 1}", backend_ip(i)) for i in range(self.backends)
        ]
        for role, ip in segment:
            hosts.plug(br, f"p-{role}", self._add_ns(role), f"{ip}/24")
        client = self.ns("client")
        client.run("ip", "link", "set", "eth0", "mtu", str(CLIENT_MTU))
        client.run("ip", "route", "add", f"{VIP}/32", "via", LB)
        hosts.tx_checksum_off(client, self.cpu)
        for i in range(self.backends):
            b = self.ns(f"b{i + 1}")
            hosts.dsr_backend(b, VIP)
            if self.forwarding == "ipip":
                hosts.run_python(b, "sluice.dataplane.xdp.decap", "attach", "eth0")
        hosts.attach_pass_stub(br, "p-lb")

    def set_vip_on_lo(self, backend: int, present: bool) -> None:
        """Add or remove the VIP on backend `backend`'s lo (the classic DSR outage when removed)."""
        self.ns(f"b{backend + 1}").run("ip", "addr", "add" if present else "del", f"{VIP}/32", "dev", "lo")

    def destroy(self) -> None:
        hosts.end_processes(self.processes)
        self.processes.clear()
        for ns in self.namespaces.values():
            ns.delete()
        self.namespaces.clear()
        from sluice.dataplane.xdp.loader import remove_pins

        with contextlib.suppress(OSError):
            remove_pins(self.instance)

    # ------------------------------------------------------------ config and processes

    def config(
        self, backends: Sequence[int] | None = None, *, udp_idle: str = "30s", checks: bool = False
    ) -> dict[str, Any]:
        """Config data with an HTTP (tcp/80) and a DNS (udp/53) dsr VIP over the chosen backends;
        with `checks`, an http check of the first and a dns check of the second (`CHECK_TIMING`)."""
        chosen = range(self.backends) if backends is None else backends
        dsr: dict[str, Any] = {"interface": "eth0", "forwarding": self.forwarding}
        if self.forwarding == "ipip":
            dsr |= {"next_hop_mac": self.router_mac, "outer_source": OUTER_SOURCE}

        def vip(name: str, proto: str, port: int, extra: dict[str, Any]) -> dict[str, Any]:
            backends = [{"address": f"{backend_ip(i)}:{port}"} for i in chosen]
            return hosts.dsr_vip(name, proto, f"{VIP}:{port}", 251, dsr, backends, extra)

        web: dict[str, Any] = {"health": {"type": "http", **CHECK_TIMING}} if checks else {}
        dns: dict[str, Any] = {"timeouts": {"idle": udp_idle}}
        if checks:
            dns["health"] = {"type": "dns", "query_name": "health.lab.", "query_type": "TXT", **CHECK_TIMING}
        return {"vips": [vip("web", "tcp", HTTP_PORT, web), vip("dns", "udp", DNS_PORT, dns)]}

    def write_config(self, name: str, backends: Sequence[int] | None = None, *, checks: bool = False) -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.config(backends, checks=checks)))
        return path

    def _in_ns(self, role: str, args: list[str]) -> list[str]:
        """`args` in the role's network namespace, on the lab's CPU."""
        return hosts.in_netns(self.ns(role), self.cpu, args)

    def _popen(self, role: str, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(self._in_ns(role, args), **kwargs)
        self.processes.append(proc)
        return proc

    def start_backends(self) -> None:
        for i in range(self.backends):
            name = f"b{i + 1}"
            self._popen(name, hosts.role("http-server", name, str(HTTP_PORT)))
            self._popen(name, hosts.role("dns-server", name, VIP, str(DNS_PORT)))
        for i in range(self.backends):
            hosts.wait_listening(self.ns(f"b{i + 1}"), HTTP_PORT)

    def start_lb(self, config_path: Path, *, mode: str = "native", checks: bool = False) -> LbProcess:
        """The LB runner; with `checks`, also the health monitor and the controller (`CheckedLb`)."""
        args = ["lb", "--instance", self.instance, "--config", str(config_path), "--mode", mode]
        proc = self._popen(
            "lb",
            hosts.role(*args, *(["--checks"] if checks else [])),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        lb = LbProcess(proc)
        lb.wait_ready()
        return lb

    def client(self, *args: str, timeout_s: float = 30.0) -> str:
        """Run a client role to completion in the client namespace; its stdout."""
        return hosts.run_client(self._in_ns("client", hosts.role(*args)), f"client {args}", timeout_s)

    def http_burst(self, first_sport: int, count: int) -> dict[int, str]:
        out = json.loads(self.client("http-burst", VIP, str(HTTP_PORT), str(first_sport), str(count)))
        return {int(k): v for k, v in out.items()}

    def dns_burst(self, first_sport: int, count: int) -> dict[int, str]:
        out = json.loads(self.client("dns-burst", VIP, str(DNS_PORT), str(first_sport), str(count)))
        return {int(k): v for k, v in out.items()}

    def http_session(self, sport: int) -> HttpSession:
        """A keep-alive connection from client port `sport` (opened by the first `get`)."""
        proc = self._popen(
            "client",
            hosts.role("http-client", VIP, str(HTTP_PORT), str(sport)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return HttpSession(LbProcess(proc))

    def tcp_out_segments(self) -> int:
        """Tcp OutSegs of the client namespace (/proc/net/snmp)."""
        lines = [
            line.split()
            for line in self.ns("client").run("cat", "/proc/net/snmp").stdout.splitlines()
            if line.startswith("Tcp:")
        ]
        return int(lines[1][lines[0].index("OutSegs")])


@dataclass
class HttpSession:
    """One keep-alive HTTP connection from the client namespace."""

    runner: LbProcess

    def get(self) -> tuple[str, int]:
        """(backend name, client port) of one request on the connection."""
        name, port = self.runner.command("get").split()
        return name, int(port)

    def close(self) -> None:
        self.runner.quit()


class CheckedLb:
    """The lab LB with health checks: a Controller (health monitor, effective config) over one
    XdpPlane, as ``sluice run`` has, without the admin API. It records every health transition with
    the backend's check counts at that moment, so a test can tell after how many checks it came."""

    def __init__(self, plane: Any, config: Any) -> None:
        from sluice.control.controller import Controller
        from sluice.control.monitor import Monitor

        events = self.events = list[dict[str, Any]]()

        class RecordingMonitor(Monitor):
            async def step(self) -> Any:
                changes = await super().step()
                for c in changes:
                    r = self.record(c.vip, c.backend)
                    events.append(
                        _record_view(r) | {"backend": f"{c.vip}/{c.backend}", "state": str(c.transition.new)}
                    )
                return changes

        holder: list[Controller] = []
        self.monitor = RecordingMonitor(lambda: holder[0].stats())
        self.controller = Controller(config, {"dsr": lambda: plane}, monitor=self.monitor)
        holder.append(self.controller)
        self.plane = plane

    async def start(self) -> None:
        await self.controller.start()

    async def apply(self, config: Any) -> None:
        await self.controller.apply(config)

    def health(self) -> dict[str, Any]:
        """{"backends": {"<vip>/<backend>": {state, target, mark, ok, failed}}, "events": [...],
        "check_encap": the tc program's counters (ipip)}."""
        backends = {f"{r.vip}/{r.address}": _record_view(r) for r in self.monitor.records()}
        return {
            "backends": backends,
            "events": self.events,
            "check_encap": self.plane.check_forwarding.counters(),
        }

    async def close(self) -> None:
        await self.controller.close()


def _record_view(r: Any) -> dict[str, Any]:
    return {
        "state": str(r.health.operational),
        "target": str(r.target),
        "mark": r.mark,
        "ok": r.checks_total[True],
        "failed": r.checks_total[False],
    }
