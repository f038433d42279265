"""The anycast lab's router: BIRD 2 peering with every LB node, one ECMP route to the VIP.

The router namespace (built by anycast_topology.py) routes between the client and the segment of the
nodes and backends, with ``fib_multipath_hash_policy=1`` (the 5-tuple picks the ECMP next hop). Its
BIRD (AS 65000) accepts the VIP from each node's BIRD (AS 65001) and merges the paths into one
multipath kernel route, with a next hop per announcing node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from sluice.lab.netns import LabError, Namespace, sh

ROUTER_ASN = 65000
NODE_ASN = 65001
HOLD_TIME_S = 3
KEEPALIVE_S = 1


def bird_config(router_id: str, node_ips: Sequence[str]) -> str:
    """The router's bird.conf: one BGP session per node, routes merged into one ECMP kernel route."""
    lines = [
        f"router id {router_id};",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "protocol device { scan time 1; }",
        "protocol kernel {",
        "  ipv4 { import none; export all; };",
        "  merge paths on;",
        "}",
        "template bgp lbs {",
        f"  local {router_id} as {ROUTER_ASN};",
        f"  hold time {HOLD_TIME_S}; keepalive time {KEEPALIVE_S};",
        "  connect delay time 1; connect retry time 1; error wait time 1, 2;",
        "  ipv4 { import all; export none; };",
        "}",
    ]
    lines += [
        f"protocol bgp lb{i + 1} from lbs {{ neighbor {ip} as {NODE_ASN}; }}" for i, ip in enumerate(node_ips)
    ]
    return "\n".join(lines) + "\n"


def wait_control_socket(path: Path, timeout_s: float = 10.0) -> None:
    """Until BIRD has created its control socket."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise LabError("router bird: no control socket")
        time.sleep(0.05)


def birdc(control_socket: Path, *args: str) -> str:
    return sh(["birdc", "-s", str(control_socket), *args]).stdout


def next_hops(router: Namespace, prefix: str) -> set[str]:
    """Gateways of the router's route to `prefix` (empty: no route)."""
    out = router.run("ip", "-j", "route", "show", prefix).stdout
    routes = json.loads(out) if out.strip() else []
    hops: set[str] = set()
    for r in routes:
        if "gateway" in r:
            hops.add(r["gateway"])
        hops |= {h["gateway"] for h in r.get("nexthops", []) if "gateway" in h}
    return hops


def wait_next_hops(
    router: Namespace, prefix: str, expected: set[str], timeout_s: float = 30.0, poll_s: float = 0.01
) -> float:
    """Until the router's next hops to `prefix` are `expected`; returns the monotonic time seen."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = next_hops(router, prefix)
        if seen == expected:
            return time.monotonic()
        time.sleep(poll_s)
    raise LabError(f"router next hops {sorted(seen)}, expected {sorted(expected)} within {timeout_s:g}s")
