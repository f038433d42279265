"""Answers `sluice flow`: which backend a VIP's scheduler picks for a client address.

Uses the very scheduler code the data planes use, so the answer is what the data plane does (for
Maglev, with every configured backend up; health and admin state are not known offline). A VIP with
``hash_key:`` is answered with that key, as every plane hashes its flows; the key is never printed.
A VIP with a ``quic`` block also answers for a QUIC destination connection ID (`explain_quic_cid`):
the backend its server ID names, or, when it names none, the hash of the source address.
"""

from __future__ import annotations

from sluice.config import Config, Endpoint, Vip
from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple, client_flow, flow_hash
from sluice.core.quic import LONG_HEADER, NOT_ROUTABLE, read_server_id
from sluice.core.scheduler import build_scheduler


class FlowQueryError(Exception):
    """The question has no offline answer (unknown VIP, stateful scheduler, family mismatch)."""


def vip_flow(config: Config, vip_name: str, source: Endpoint) -> FiveTuple:
    """The FiveTuple the data plane balances a packet from `source` to the VIP by: built by
    `client_flow`, as the data planes build it (both ports zeroed for UDP ``hash: source_ip``)."""
    vip = _vip(config, vip_name)
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


def explain_quic_cid(config: Config, vip_name: str, cid_hex: str, source: Endpoint | None) -> str:
    """Where a short-header QUIC packet with destination connection ID `cid_hex` goes (every
    configured backend with weight > 0 taken as up): the backend its server ID names, else the hash
    of `source` (the fallback; without a source, an error that says so)."""
    vip = _vip(config, vip_name)
    if vip.quic is None:
        raise FlowQueryError(f"VIP {vip_name!r} has no quic block (connection IDs are not read)")
    try:
        cid = bytes.fromhex(cid_hex.removeprefix("0x"))
    except ValueError:
        raise FlowQueryError(f"--quic-cid: not hex digits: {cid_hex!r}") from None
    server_id = read_server_id(b"\x40" + cid, vip.quic.server_id_bits)
    assert server_id != LONG_HEADER
    named = dict(vip.server_ids)
    weights = {b.address: b.weight for b in vip.backends}
    backend = named.get(server_id) if server_id != NOT_ROUTABLE else None
    if backend is not None and weights[backend] > 0:
        return f"{backend}  (vip {vip_name}, QUIC server id {server_id} of {vip.quic.server_id_bits} bits)"
    why = (
        f"server id {server_id} is {'a backend with weight 0' if backend is not None else 'no backend'}"
        if server_id != NOT_ROUTABLE
        else "it carries no server id (CID version not 1, id 0, or shorter than 8 bytes)"
    )
    if source is None:
        raise FlowQueryError(f"the CID falls back to the hash ({why}); give SRC_IP:SRC_PORT to see where")
    return f"{explain_flow(config, vip_name, source)}  [QUIC fallback: {why}]"


def _vip(config: Config, vip_name: str) -> Vip:
    try:
        return config.vip(vip_name)
    except KeyError:
        names = ", ".join(v.name for v in config.vips)
        raise FlowQueryError(f"no VIP named {vip_name!r} (have: {names})") from None
