"""The rules across keys that the model alone does not state, each error with its path.

Two kinds: keys that only one protocol takes (checked on the parsed YAML, so they are reported
together with every other error of the file, even where a VIP is otherwise invalid), and rules on
values (a dsr VIP's backends, listen addresses that clash, one attach mode per interface), checked on
validated VIPs.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address, ip_network
from typing import Any

from pydantic import BaseModel, ValidationError

from sluice.config.model import Config
from sluice.config.vip import Vip
from sluice.core.endpoint import Endpoint

TCP_ONLY = {
    "max_connections": "a udp VIP is bounded by udp.max_sessions",
    "accept_proxy_protocol": "PROXY headers arrive on TCP connections",
}
"""Keys of a VIP that only a tcp VIP takes, and why."""
TCP_ONLY_CHECKS = ("http",)
"""Health check types that need a TCP backend."""


def protocol_key_errors(data: dict[str, Any]) -> list[str]:
    """Keys given to a VIP of the other protocol (``udp:`` on a tcp VIP, ``max_connections`` on a
    udp VIP, ...): every one of them, from the parsed YAML."""
    vips = data.get("vips")
    if not isinstance(vips, list):
        return []
    errors = []
    for i, vip in enumerate(vips):
        if isinstance(vip, dict):
            errors += [f"vips[{i}].{line}" for line in _vip_key_errors(vip)]
    return errors


def _set(vip: dict[str, Any], key: str) -> bool:
    """Whether the VIP sets `key` to something other than its default (a config dumped from the model
    repeats every default, and a default says nothing)."""
    if key not in vip or vip[key] in (None, False):
        return False
    default = Vip.model_fields[key].default
    if isinstance(default, BaseModel):
        try:
            return type(default).model_validate(vip[key]) != default
        except ValidationError:
            return True
    return bool(vip[key] != default)


def _vip_key_errors(vip: dict[str, Any]) -> list[str]:
    protocol = vip.get("protocol", "tcp")
    if protocol == "tcp":
        return [
            f"{key}: only for protocol: udp (this VIP is tcp)" for key in ("udp", "quic") if _set(vip, key)
        ]
    if protocol != "udp":
        return []  # reported by the model
    errors = [f"{key}: only for tcp VIPs ({why})" for key, why in TCP_ONLY.items() if _set(vip, key)]
    health = vip.get("health")
    if isinstance(health, dict) and health.get("type") in TCP_ONLY_CHECKS:
        errors.append(
            f"health.type: {health['type']} checks need a TCP backend; a udp VIP takes udp, dns, tcp or none"
        )
    if vip.get("proxy_protocol") == "v1":
        errors.append("proxy_protocol: v1 has no UDP form; use v2 for udp VIPs")
    return errors


def dsr_vip_errors(vip: Vip) -> list[str]:
    """What an XDP program cannot do for a dsr VIP, as ``path: message`` relative to the VIP."""
    if vip.dsr is None:
        return []
    errors = []
    outer = None if vip.dsr.outer_source is None else ip_network(vip.dsr.outer_source)
    for j, b in enumerate(vip.backends):
        where = f"backends[{j}].address: {b.address}"
        if b.address.port != vip.listen.port:
            errors.append(
                f"{where}: a dsr backend must listen on the VIP's port {vip.listen.port} "
                "(DSR forwards packets unchanged: it cannot remap ports)"
            )
        if vip.dsr.forwarding == "ipip" and outer is not None and b.address.ip.version != outer.version:
            errors.append(f"{where}: not of the address family of dsr.outer_source {outer}")
        if vip.dsr.forwarding == "l2" and b.address.ip.version != vip.listen.ip.version:
            errors.append(f"{where}: l2 forwarding needs backends of the VIP's address family")
    return errors


def _clash(a: Endpoint, b: Endpoint) -> bool:
    """Whether two TCP listeners on `a` and `b` cannot both bind (same port, same or wildcard host)."""
    if a.port != b.port or a.family_v6 != b.family_v6:
        return False
    return a.host == b.host or ip_address(a.host).is_unspecified or ip_address(b.host).is_unspecified


def listen_errors(config: Config) -> list[str]:
    """The admin API on an address a VIP uses, and VIPs whose addresses overlap through a wildcard
    (``0.0.0.0:80`` and ``127.0.0.1:80``); equal ones are reported by the uniqueness rules."""
    errors = []
    tcp = [(i, v) for i, v in enumerate(config.vips) if v.protocol == "tcp"]
    admin = None if config.admin is None else config.admin.endpoint
    if admin is not None:
        errors += [
            f"admin.listen: {admin} is also where vips[{i}] ({v.name}) listens ({v.listen})"
            for i, v in tcp
            if _clash(admin, v.listen)
        ]
    for protocol in ("tcp", "udp"):
        same = [(i, v) for i, v in enumerate(config.vips) if v.protocol == protocol and v.mode == "proxy"]
        for n, (i, v) in enumerate(same):
            errors += [
                f"vips[{i}].listen: {v.listen} overlaps vips[{k}] ({w.name}) on {w.listen}"
                for k, w in same[:n]
                if v.listen != w.listen and _clash(v.listen, w.listen)
            ]
    return errors


def attach_errors(vips: Iterable[tuple[int, Vip]]) -> list[str]:
    """VIPs on one interface share one XDP program, hence one ``dsr.attach``."""
    first: dict[str, tuple[int, Vip]] = {}
    errors = []
    for i, vip in vips:
        if vip.dsr is None:
            continue
        k, other = first.setdefault(vip.dsr.interface, (i, vip))
        assert other.dsr is not None
        if other.dsr.attach != vip.dsr.attach:
            errors.append(
                f"vips[{i}].dsr.attach: {vip.dsr.attach} differs from vips[{k}] ({other.name}), "
                f"{other.dsr.attach}, on the same interface {vip.dsr.interface} (one XDP program, one mode)"
            )
    return errors


def vip_errors(vips: Iterable[tuple[int, Vip]]) -> list[str]:
    """The rules of each validated VIP, with its path."""
    return [f"vips[{i}].{line}" for i, vip in vips for line in dsr_vip_errors(vip)]


def config_errors(config: Config) -> list[str]:
    """Every value rule of a validated config."""
    vips = list(enumerate(config.vips))
    return vip_errors(vips) + attach_errors(vips) + listen_errors(config)
