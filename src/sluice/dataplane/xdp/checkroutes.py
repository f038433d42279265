"""Install the paths of checkpath.py: policy rules and routes per mark, the tc egress program for ipip.

Per `CheckPath` (mark M, table M)::

    ip rule add pref 9050 fwmark M table M
    ip route replace VIP/32 via NEXT_HOP dev IF onlink table M

NEXT_HOP is the backend (l2: the kernel resolves its MAC, so the check leaves with the backend's MAC
like the XDP program's packets) or, for ipip, the kernel's next hop towards the backend (the
encapsulated check then leaves as the data plane's would: the tc program sets dsr.next_hop_mac).
For ipip, ``sluice_check_encap`` is attached to IF's clsact egress (tcloader.py: tc handle
``0x5c1``, priority ``0x5c``) with the marks in its ``check_targets`` map.

Idempotent across a crash: `apply` first reads what is there (rules at RULE_PREF whose mark has the
instance's prefix, tc filters with our handle and priority on any interface) and converges; `close`
removes all of it (and the clsact qdisc when no other filter is left on it). Needs root (iproute2's
``ip`` and ``tc``, libbpf).

A VIP that is a local address of this node (e.g. held on ``lo`` for an announcement) cannot be
checked this way: the local table (priority 0) wins over any rule, so the check would be answered by
this node. The XDP program receives VIP traffic without the address, so `apply` refuses it
(`CheckPathError`, naming the VIP).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Final

from sluice.config import Config
from sluice.dataplane.xdp import build, loader
from sluice.dataplane.xdp.checkpath import (
    MARK_PREFIX_MASK,
    MAX_CHECK_PATHS,
    RULE_PREF,
    CheckPath,
    CheckPathError,
    check_paths,
    instance_of,
    instance_prefix,
)
from sluice.dataplane.xdp.maps import Map, mac_bytes, sum_fields
from sluice.dataplane.xdp.tcloader import tc_attach, tc_attached, tc_detach

log = logging.getLogger(__name__)

PROGRAM: Final = "sluice_check_encap"

Run = Callable[[Sequence[str]], str]
Paths = Mapping[tuple[IPv4Address, IPv4Address], CheckPath]


def run_command(args: Sequence[str]) -> str:
    """Run an iproute2 command; its stdout. Raises CheckPathError with its stderr."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise CheckPathError(f"{args[0]} not found: DSR checks through the VIP need iproute2") from None
    if proc.returncode != 0:
        raise CheckPathError(f"`{' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


class CheckTargetC(ctypes.Structure):
    """struct check_target of bpf/sluice_check_encap.bpf.c."""

    _fields_ = (
        ("backend", ctypes.c_uint8 * 4),
        ("source", ctypes.c_uint8 * 4),
        ("mac", ctypes.c_uint8 * 6),
        ("pad", ctypes.c_uint8 * 2),
    )


class CheckStatsC(ctypes.Structure):
    """struct check_stats of bpf/sluice_check_encap.bpf.c (per CPU)."""

    _fields_ = (("encapsulated", ctypes.c_uint64), ("failed", ctypes.c_uint64))


def _ifindex(name: str) -> int:
    """The index of interface `name`, 0 if it is gone (and its filters with it)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


class CheckForwarding:
    """The rules, routes and tc program that steer one instance's DSR checks (see the module doc)."""

    def __init__(self, *, run: Run = run_command, cache_dir: Path | None = None) -> None:
        self.run = run
        self.cache_dir = cache_dir
        self._obj: loader.LoadedObject | None = None
        self._map_fd = -1
        self._keys: set[int] = set()
        self._prefix: int | None = None
        self._tc_interfaces: set[str] = set()
        self._swept = False  # whether every interface was searched for a filter of an earlier run
        self._empty = False  # nothing installed after the last apply (a config without checks: no work)
        self._done: dict[int, CheckPath] = {}  # mark -> the path this process installed for it

    # ------------------------------------------------------------ rules and routes

    def installed_marks(self, prefix: int) -> set[int]:
        """Marks of the rules at RULE_PREF that carry `prefix` (this instance's, from any process)."""
        rules = json.loads(self.run(["ip", "-j", "rule", "show", "pref", str(RULE_PREF)]) or "[]")
        marks = {int(r["fwmark"], 16) for r in rules if "fwmark" in r}
        return {m for m in marks if m & MARK_PREFIX_MASK == prefix}

    def _remove_mark(self, mark: int) -> None:
        with contextlib.suppress(CheckPathError):  # already gone
            self.run(["ip", "rule", "del", "pref", str(RULE_PREF), "fwmark", hex(mark), "table", str(mark)])
        with contextlib.suppress(CheckPathError):
            self.run(["ip", "route", "flush", "table", str(mark)])

    def next_hop(self, path: CheckPath) -> str:
        """l2: the backend; ipip: the kernel's gateway towards the backend (the backend if on-link)."""
        if path.forwarding == "l2":
            return str(path.backend)
        route = json.loads(self.run(["ip", "-j", "route", "get", str(path.backend), "oif", path.interface]))
        return str(route[0].get("gateway", path.backend)) if route else str(path.backend)

    def _install(self, path: CheckPath, present: set[int]) -> None:
        mark = str(path.mark)
        if path.mark not in present:
            self.run(["ip", "rule", "add", "pref", str(RULE_PREF), "fwmark", hex(path.mark), "table", mark])
        via = self.next_hop(path)
        self.run(
            [
                "ip",
                "route",
                "replace",
                f"{path.vip}/32",
                "via",
                via,
                "dev",
                path.interface,
                "onlink",
                "table",
                mark,
            ]
        )

    def _refuse_local(self, paths: Paths) -> None:
        for path in {p.vip: p for p in paths.values()}.values():
            try:
                route = json.loads(
                    self.run(["ip", "-j", "route", "get", str(path.vip), "mark", hex(path.mark)])
                )
            except CheckPathError:  # unreachable (before our route exists): not local either
                continue
            if route and route[0].get("type") == "local":
                raise CheckPathError(
                    f"VIP {path.vip} is a local address of this node: its health checks would be answered "
                    "here, not by a backend (the local table wins over any rule). A DSR node needs no "
                    "VIP address (XDP receives the VIP's packets before the stack): remove it"
                )

    # ------------------------------------------------------------ apply / close

    def apply_config(self, config: Config) -> None:
        """`apply` the check paths of `config` (the XDP plane calls this on every apply)."""
        self.apply(check_paths(config), instance_prefix(instance_of(config)))

    def apply(self, paths: Paths, prefix: int) -> None:
        """Converge to exactly `paths` for the instance whose marks start with `prefix`. Without
        paths, a failure to look for leftovers (no iproute2, say) is only logged."""
        try:
            self._apply(paths, prefix)
        except CheckPathError as exc:
            if paths:
                raise
            log.warning("health checks through the VIP: cannot look for leftover rules: %s", exc)

    def _apply(self, paths: Paths, prefix: int) -> None:
        if self._prefix is not None and self._prefix != prefix:
            self.close()
        if not paths and self._empty and self._prefix == prefix:
            return
        self._prefix = prefix
        new = {k: p for k, p in paths.items() if self._done.get(p.mark) != p}
        if new:
            self._refuse_local(new)
        present = self.installed_marks(prefix)
        wanted = {p.mark for p in paths.values()}
        for mark in present - wanted:
            self._remove_mark(mark)
            self._done.pop(mark, None)
        for path in paths.values():  # a health change re-applies the config: only what changed
            if path.mark not in present or self._done.get(path.mark) != path:
                self._install(path, present)
                self._done[path.mark] = path
        self._apply_tc([p for p in paths.values() if p.forwarding == "ipip"])
        self._empty = not paths
        if present != wanted:
            log.info(
                "health checks through the VIP: %d paths (%d removed)", len(wanted), len(present - wanted)
            )

    def _apply_tc(self, paths: list[CheckPath]) -> None:
        interfaces = {p.interface for p in paths}
        if self._swept:
            stale = [(i, n) for n in self._tc_interfaces - interfaces if (i := _ifindex(n))]
        else:  # the first time: ours on any interface, left by a run that crashed
            stale = [(i, n) for i, n in socket.if_nameindex() if n not in interfaces and tc_attached(i)]
            self._swept = True
        for ifindex, name in stale:
            tc_detach(ifindex)
            self._drop_qdisc_if_empty(name)
        self._tc_interfaces = set(interfaces)
        if not paths:
            self._close_object()
            return
        if self._obj is None:
            obj_path = build.compile_object(
                f"{PROGRAM}.bpf.c", {"MAX_CHECK_PATHS": MAX_CHECK_PATHS}, self.cache_dir
            )
            self._obj = loader.load_object(obj_path, (PROGRAM,))
            self._map_fd = self._obj.maps["check_targets"]
            self._keys.clear()
        wanted: dict[int, CheckTargetC] = {}
        for p in paths:
            assert p.outer_source is not None and p.next_hop_mac is not None
            value = CheckTargetC()
            value.backend[:] = p.backend.packed
            value.source[:] = p.outer_source.packed
            value.mac[:] = mac_bytes(p.next_hop_mac)
            wanted[p.mark] = value
        for mark in self._keys - set(wanted):
            loader.map_delete(self._map_fd, ctypes.c_uint32(mark))
        for mark, value in wanted.items():
            loader.map_update(self._map_fd, ctypes.c_uint32(mark), value)
        self._keys = set(wanted)
        for name in sorted(interfaces):
            tc_attach(socket.if_nametoindex(name), self._obj.programs[PROGRAM])

    def _drop_qdisc_if_empty(self, name: str) -> None:
        """Delete `name`'s clsact qdisc when no filter is left on it (ours was the reason it exists)."""
        try:
            rest = self.run(["tc", "filter", "show", "dev", name, "egress"]) + self.run(
                ["tc", "filter", "show", "dev", name, "ingress"]
            )
            if not rest.strip():
                self.run(["tc", "qdisc", "del", "dev", name, "clsact"])
        except CheckPathError as exc:
            log.warning("%s: clsact qdisc left in place: %s", name, exc)

    def _close_object(self) -> None:
        if self._obj is not None:
            self._obj.close()
        self._obj = None
        self._map_fd = -1
        self._keys.clear()

    def counters(self) -> dict[str, int]:
        """The tc program's counters summed over CPUs (encapsulated, failed); empty while it is not loaded."""
        if self._obj is None:
            return {}
        stats = Map(self._obj.maps["check_stats"], ctypes.c_uint32, CheckStatsC, percpu=True)
        return sum_fields(stats.lookup_percpu(ctypes.c_uint32(0)) or [])

    def close(self) -> None:
        """Remove every rule, route and tc filter of the instance applied last."""
        if self._prefix is not None:
            for mark in self.installed_marks(self._prefix):
                self._remove_mark(mark)
            self._done.clear()
            self._apply_tc([])
        self._prefix = None
        self._empty = False
