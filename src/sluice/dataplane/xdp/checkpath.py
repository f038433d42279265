"""Which path a DSR health check takes: the VIP, through the data plane's forwarding (pure, no I/O).

A DSR backend serves the VIP (held on its ``lo``), not its own address, so a check of a ``mode: dsr``
VIP goes to ``VIP:port`` and is steered to one backend by a **mark** on the check's socket
(SO_MARK): ``checkroutes.py`` installs, per mark, a policy rule (``fwmark M lookup M``) and a route
``VIP via <next hop> dev <dsr.interface> onlink`` in table M; for ``forwarding: ipip`` the tc egress
program (``bpf/sluice_check_encap.bpf.c``) also wraps the marked packets in an outer IPv4 header to
the backend, as the XDP program does. The monitor and the plane both call `check_paths` on the same
config, so they agree on every mark without sharing state.

Marks (32 bits): ``0x5c`` in the top byte, a byte of the instance (crc32) next, then a 16-bit slot
from a crc32 of (VIP address, backend address), probed linearly on a collision: a pair keeps its
mark across reloads that add or remove other pairs (unless they collide). The routing table id is
the mark itself. Sluice owns every rule at `RULE_PREF` whose mark carries its instance's prefix.

Only IPv4 VIPs with IPv4 backends are steered (the tc program pushes an IPv4 header); the checks of
an IPv6 dsr VIP, or of an IPv6 backend of an ipip VIP, still go to the backend's own address.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from typing import Final, Literal

from sluice.config import Backend, Config, Endpoint, Vip

MARK_TAG: Final = 0x5C000000
"""Top byte of every check mark."""
MARK_PREFIX_MASK: Final = 0xFFFF0000
"""The tag and the instance byte: the marks of one instance."""
SLOTS: Final = 1 << 16
MAX_CHECK_PATHS: Final = 4096
"""Most (VIP, backend) pairs one instance steers (also the tc program's map bound)."""
RULE_PREF: Final = 9050
"""Priority of the check rules: before the main table (32766), after the local table (0)."""


class CheckPathError(ValueError):
    """The checks of a dsr VIP cannot be steered as configured (the message says why)."""


@dataclass(frozen=True, slots=True)
class CheckPath:
    """How the checks of one backend of one VIP address reach it."""

    vip: IPv4Address
    backend: IPv4Address
    interface: str
    """The VIP's dsr.interface: the marked packets leave there."""
    forwarding: Literal["l2", "ipip"]
    mark: int
    """SO_MARK of the check socket; also the id of the routing table of this path."""
    next_hop_mac: str | None = None
    """ipip: destination MAC of the encapsulated checks (dsr.next_hop_mac)."""
    outer_source: IPv4Address | None = None
    """ipip: outer source address, from dsr.outer_source."""


def instance_prefix(instance: str) -> int:
    """The top 16 bits of the marks of `instance`."""
    return MARK_TAG | (zlib.crc32(instance.encode()) & 0xFF) << 16


def instance_of(config: Config) -> str:
    """The XDP instance name (instance.py's rule: ``instance:``, else the dsr interfaces joined by "+")."""
    if config.instance is not None:
        return config.instance
    names = sorted({v.dsr.interface for v in config.vips if v.mode == "dsr" and v.dsr is not None})
    return "+".join(names) if names else "default"


def steered(vip: Vip) -> bool:
    """Whether the checks of `vip` go through the VIP (a dsr IPv4 VIP with an active check)."""
    return (
        vip.mode == "dsr"
        and vip.dsr is not None
        and vip.health is not None
        and vip.health.type != "none"
        and vip.listen.ip.version == 4
    )


def outer_check_source(prefix: str) -> IPv4Address:
    """The outer source of encapsulated checks: the first host of dsr.outer_source (the address itself
    for a /32)."""
    net = ip_network(prefix)
    if net.version != 4:
        raise CheckPathError(f"outer_source {prefix}: checks are encapsulated in IPv4 only")
    return IPv4Address(int(net.network_address) + (1 if net.num_addresses > 1 else 0))


def _pairs(vips: Iterable[Vip]) -> dict[tuple[IPv4Address, IPv4Address], Vip]:
    out: dict[tuple[IPv4Address, IPv4Address], Vip] = {}
    for vip in vips:
        if not steered(vip):
            continue
        assert vip.dsr is not None
        assert isinstance(vip.listen.ip, IPv4Address)
        for b in vip.backends:
            if not isinstance(b.address.ip, IPv4Address):
                continue  # ipip in IPv6: checked on its own address
            key = (vip.listen.ip, b.address.ip)
            first = out.setdefault(key, vip)
            if first.dsr != vip.dsr:
                raise CheckPathError(
                    f"vips[{vip.name}] and vips[{first.name}] reach backend {b.address.ip} of VIP "
                    f"{vip.listen.ip} with different dsr settings: one check path per (VIP, backend)"
                )
    return out


def check_paths(config: Config) -> dict[tuple[IPv4Address, IPv4Address], CheckPath]:
    """(VIP address, backend address) -> its check path, for every steered VIP of `config`."""
    pairs = _pairs(config.vips)
    if len(pairs) > MAX_CHECK_PATHS:
        raise CheckPathError(f"{len(pairs)} (VIP, backend) pairs to check, at most {MAX_CHECK_PATHS}")
    prefix = instance_prefix(instance_of(config))
    taken: set[int] = set()
    out: dict[tuple[IPv4Address, IPv4Address], CheckPath] = {}
    for (vip_ip, backend_ip), vip in sorted(pairs.items()):
        assert vip.dsr is not None
        slot = zlib.crc32(vip_ip.packed + backend_ip.packed) % SLOTS
        while slot in taken or slot == 0:
            slot = (slot + 1) % SLOTS
        taken.add(slot)
        ipip = vip.dsr.forwarding == "ipip"
        out[(vip_ip, backend_ip)] = CheckPath(
            vip=vip_ip,
            backend=backend_ip,
            interface=vip.dsr.interface,
            forwarding=vip.dsr.forwarding,
            mark=prefix | slot,
            next_hop_mac=vip.dsr.next_hop_mac if ipip else None,
            outer_source=outer_check_source(vip.dsr.outer_source) if ipip and vip.dsr.outer_source else None,
        )
    return out


def check_target(
    vip: Vip, backend: Backend, paths: Mapping[tuple[IPv4Address, IPv4Address], CheckPath]
) -> tuple[Endpoint, int]:
    """Where the check of `backend` goes and with which mark (0: none). A steered VIP's check goes to
    the VIP (on check_port if set, else the VIP's port) with its path's mark; any other VIP's to the
    backend's own address (check_port applied)."""
    key = (vip.listen.ip, backend.address.ip)
    path = paths.get(key) if steered(vip) else None  # type: ignore[arg-type]
    if path is None:
        return Endpoint(backend.address.ip, backend.check_port or backend.address.port), 0
    return Endpoint(vip.listen.ip, backend.check_port or vip.listen.port), path.mark
