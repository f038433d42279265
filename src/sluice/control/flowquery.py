"""Answers `sluice flow`: which backend a VIP's scheduler picks for a client address.

Uses the very scheduler code the data planes use, so the answer is what the data plane does (for
Maglev, with every configured backend up; health and admin state are not known offline). A VIP with
``hash_key:`` is answered with that key, as every plane hashes its flows; the key is never printed.
"""

from __future__ import annotations

from sluice.config import Config, Endpoint
from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple, client_flow, flow_hash
from sluice.core.scheduler import build_scheduler


class FlowQueryError(Exception):
    """The question has no offline answer (unknown VIP, stateful scheduler, family mismatch)."""


def vip_flow(config: Config, vip_name: str, source: Endpoint) -> FiveTuple:
    """The FiveTuple the data plane balances a packet from `source` to the VIP by: built by
    `client_flow`, as the data planes build it (both ports zeroed for UDP ``hash: source_ip``)."""
    try:
        vip = config.vip(vip_name)
    except KeyError:
        names = ", ".join(v.name for v in config.vips)
        raise FlowQueryError(f"no VIP named {vip_name!r} (have: {names})") from None
    if source.family_v6 != vip.listen.family_v6:
        raise FlowQueryError(f"{source} and the VIP {vip.listen} are of different IP families")
    proto = IPPROTO_TCP if vip.protocol == "tcp" else IPPROTO_UDP
    source_ip_only = vip.protocol == "udp" and vip.udp.hash == "source_ip"
    return client_flow(
        proto, source.ip, source.port, vip.listen.ip, vip.listen.port, source_ip_only=source_ip_only
    )


def explain_flow(config: Config, vip_name: str, source: Endpoint) -> str:
    flow = vip_flow(config, vip_name, source)
    vip = config.vip(vip_name)
    if vip.scheduler != "maglev":
        raise FlowQueryError(
            f"VIP {vip_name!r} uses {vip.scheduler}, which depends on live state; only maglev answers offline"
        )
    scheduler = build_scheduler("maglev", vip.weighted_backends, vip.maglev_table_size, hash_key=vip.hash_key)
    backend = scheduler.pick(flow)
    if backend is None:
        raise FlowQueryError(f"VIP {vip_name!r} has no backend with weight > 0")
    h = flow_hash(flow, vip.hash_key)
    keyed = ", keyed" if vip.hash_key is not None else ""
    return (
        f"{backend}  (vip {vip_name}, hash 0x{h:08x}{keyed}, slot {h % vip.maglev_table_size} of "
        f"{vip.maglev_table_size})"
    )
