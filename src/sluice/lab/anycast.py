"""``sluice lab up|down|status``: the anycast lab (anycast_topology.py) kept running between commands.

`lab_up` builds the lab under one fixed namespace prefix (one such lab per machine; `up` replaces it),
starts everything detached and writes the pids to a state file in the workdir; `lab_down` ends those
processes by pid (after checking their command line) and deletes the namespaces; `lab_status` reports.
cli.py calls these three and shows `VIP`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from sluice.lab import hosts
from sluice.lab.anycast_topology import VIP, VIP_PREFIX, AnycastLab
from sluice.lab.netns import PREFIX, list_namespaces, sh

__all__ = ["CLI_PREFIX", "STATE_FILE", "VIP", "lab_down", "lab_status", "lab_up"]

CLI_PREFIX = f"{PREFIX}any-"
"""Namespace prefix of the lab `sluice lab up` builds (one per machine; `up` replaces it)."""
STATE_FILE = "lab.json"


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
            cmd = hosts.cmdline(int(pid))
            if "sluice" in cmd or "bird" in cmd:
                hosts.kill_tree(int(pid))
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
            name: {"pid": pid, "alive": bool(hosts.cmdline(int(pid)))}
            for name, pid in state.get("pids", {}).items()
        }
    route = sh(["ip", "-n", f"{CLI_PREFIX}router", "route", "show", VIP_PREFIX], check=False).stdout.strip()
    out["router_route"] = route
    proto = sh(["birdc", "-s", str(workdir / "router-bird.ctl"), "show", "protocols"], check=False)
    out["router_bgp"] = proto.stdout.strip()
    out["client"] = f"ip netns exec {CLI_PREFIX}client curl http://{VIP}/"
    return out
