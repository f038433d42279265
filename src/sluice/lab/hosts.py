"""What the DSR and anycast labs build alike: a bridge segment with its router, hosts plugged into it,
DSR backends, and processes run in a host's network namespace on the lab's CPU (their roles are in
roles.py). Needs root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Self

from sluice.lab.netns import LabError, Namespace

ROLES_MODULE: Final = "sluice.lab.roles"
"""The entry point of the labs' processes (``python -m sluice.lab.roles <role>``)."""


class Topology:
    """What every lab has: its namespaces by role, built in `_build`, torn down if building fails.

    A lab is a dataclass with `namespaces` and, if its namespaces share a prefix, `prefix`."""

    namespaces: dict[str, Namespace]
    prefix: str | None
    """Namespace name prefix (None: this process's run id)."""

    def ns(self, role: str) -> Namespace:
        return self.namespaces[role]

    def _add_ns(self, role: str) -> Namespace:
        ns = Namespace.create(role, prefix=self.prefix)
        self.namespaces[role] = ns
        return ns

    def _build(self) -> None:
        raise NotImplementedError

    def destroy(self) -> None:
        raise NotImplementedError

    def _built(self) -> Self:
        """`self` once `_build` has run; on any failure everything made so far is removed."""
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self


def add_bridge(ns: Namespace, mac: str, cidr: str) -> None:
    """br0 in `ns`, with address `cidr`, routing between its ports (forwarding on, no ICMP
    redirects, no reverse-path filter)."""
    # a fixed MAC: a bridge otherwise takes the lowest MAC of its ports, which changes as they join
    ns.run("ip", "link", "add", "br0", "address", mac, "type", "bridge")
    ns.run("ip", "addr", "add", cidr, "dev", "br0")
    ns.run("ip", "link", "set", "br0", "up")
    for key, value in (
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.br0.send_redirects", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.br0.rp_filter", "0"),
    ):
        ns.sysctl(key, value)


def plug(bridge: Namespace, port: str, host: Namespace, cidr: str) -> None:
    """A veth from `port` on the bridge in `bridge` to eth0 of `host`, which gets address `cidr`."""
    bridge.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.name)
    bridge.run("ip", "link", "set", port, "master", "br0")
    bridge.run("ip", "link", "set", port, "up")
    host.run("ip", "addr", "add", cidr, "dev", "eth0")
    host.run("ip", "link", "set", "eth0", "up")


def dsr_backend(ns: Namespace, vip: str) -> None:
    """Make `ns` a DSR backend of `vip`: the VIP on lo, never answered for nor announced in ARP on
    eth0 (arp_ignore=1, arp_announce=2), no reverse-path filter."""
    ns.run("ip", "addr", "add", f"{vip}/32", "dev", "lo")
    for key, value in (
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.ipv4.conf.eth0.arp_ignore", "1"),
        ("net.ipv4.conf.eth0.arp_announce", "2"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.eth0.rp_filter", "0"),
    ):
        ns.sysctl(key, value)


def dsr_vip(
    name: str,
    protocol: str,
    listen: str,
    maglev_table_size: int,
    dsr: dict[str, Any],
    backends: list[dict[str, Any]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Config data of one ``mode: dsr`` VIP (`extra`: further keys, e.g. timeouts or health)."""
    return {
        "name": name,
        "protocol": protocol,
        "listen": listen,
        "mode": "dsr",
        "maglev_table_size": maglev_table_size,
        "dsr": dsr,
        "backends": backends,
        **extra,
    }


def python(module: str, *args: str) -> list[str]:
    """The command line of ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def role(*args: str) -> list[str]:
    """The command line of a lab process: ``python -m sluice.lab.roles args``."""
    return python(ROLES_MODULE, *args)


def run_python(ns: Namespace, module: str, *args: str) -> None:
    ns.run(*python(module, *args), timeout=60)


def attach_pass_stub(ns: Namespace, dev: str) -> None:
    """An XDP_PASS stub on `dev`: native XDP_TX out of a veth is delivered only if its peer has an XDP
    program."""
    run_python(ns, "sluice.dataplane.xdp.decap", "attach", dev, "--program", "sluice_pass")


def in_netns(ns: Namespace, cpu: int, args: Sequence[str]) -> list[str]:
    """`args` in the network namespace of `ns`, on `cpu`. nsenter switches only the network namespace
    (``ip netns exec`` would also remount /sys and hide the host's bpffs and its pins)."""
    return ["nsenter", f"--net=/run/netns/{ns.name}", "taskset", "-c", str(cpu), *args]


def tx_checksum_off(ns: Namespace, cpu: int, dev: str = "eth0") -> None:
    """TCP/UDP checksums of what `dev` sends computed in software (the tx-csum-off role of roles.py)."""
    subprocess.run(in_netns(ns, cpu, role("tx-csum-off", dev)), check=True, timeout=30)


def run_client(args: Sequence[str], what: str, timeout_s: float) -> str:
    """Run a lab client to completion; its stdout. LabError with the end of its stderr if it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise LabError(f"{what}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def wait_listening(ns: Namespace, port: int, timeout_s: float = 10.0) -> None:
    """Until a TCP socket listens on `port` in `ns`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ns.run("ss", "-Hltn", f"sport = :{port}").stdout.strip():
            return
        time.sleep(0.05)
    raise LabError(f"{ns.name}: nothing listens on {port}")


def end_processes(processes: Iterable[subprocess.Popen[Any]]) -> None:
    """SIGKILL each process that still runs (by its pid), reap it and close its pipes."""
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def cmdline(pid: int) -> str:
    """The command line of process `pid` ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (from /proc)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL the children of `pid`, then `pid` (by pid; a process already gone is skipped)."""
    for child in [*_children(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
