"""The flow log records of the python engine's flows: a closed `Connection`, an ended UDP session."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from sluice.core.endpoint import Endpoint
from sluice.core.flow import parse_address
from sluice.core.flowlog import FlowRecord
from sluice.core.sessions import SessionClosed

if TYPE_CHECKING:
    from sluice.dataplane.proxy.connection import Connection
    from sluice.dataplane.proxy.udp_sockets import Upstream

Address = tuple[str, int]


def address_text(address: Address | None) -> str:
    """``ip:port`` / ``[v6]:port`` of a socket address; ``-`` when unknown."""
    if address is None:
        return "-"
    try:
        return str(Endpoint(parse_address(address[0]), address[1]))
    except ValueError:
        return f"{address[0]}:{address[1]}"


def tcp_record(vip_name: str, conn: Connection, reason: str) -> FlowRecord:
    """The record of an established connection that just closed for `reason`."""
    return FlowRecord(
        vip=vip_name,
        protocol="tcp",
        client=address_text(conn.peer),
        listen=address_text(conn.local),
        backend=None if conn.backend is None else str(conn.backend),
        start=conn.accepted,
        duration_s=conn.age(),
        bytes_to_backend=conn.bytes_to_backend,
        bytes_from_backend=conn.bytes_from_backend,
        reason=reason,
        retries=conn.retries,
    )


def udp_record(
    vip_name: str,
    listen: Address,
    event: SessionClosed[Address, Upstream],
    loop: asyncio.AbstractEventLoop | None,
) -> FlowRecord:
    """The record of the UDP session `event` ended (`loop`: the session table's clock)."""
    session = event.session
    assert session is not None and loop is not None, "an ended session of a started listener"
    backend = session.value.backend
    duration = max(0.0, loop.time() - session.created)
    return FlowRecord(
        vip=vip_name,
        protocol="udp",
        client=address_text(session.key),
        listen=address_text(listen),
        backend=None if backend is None else str(backend.endpoint),
        start=time.time() - duration,
        duration_s=duration,
        bytes_to_backend=session.bytes_in,
        bytes_from_backend=session.bytes_out,
        reason=event.reason,
        datagrams_to_backend=session.requests,
        datagrams_from_backend=session.replies,
    )
