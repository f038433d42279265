"""A VIP's flow log on the native engine: the workers' rings (engine/flowlog.c) drained into a `FlowLog`.

The workers write a record into a bounded ring (per worker and VIP) when a flow ends, only while the
VIP's flow log is switched on; a timer on the event loop drains the rings every `DRAIN_INTERVAL_S`
and hands each record to the VIP's `FlowLog` (the same rate limit, queue and writer as the python
engine's). Records lost to a full ring are counted in ``access_log_dropped`` too. A VIP without
``access_log:`` has no ring and no timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Final

from sluice.config import Endpoint, Vip
from sluice.core.flowlog import FlowRecord
from sluice.dataplane.flowlog import FlowLog, open_flow_log, reopen_flow_log
from sluice.dataplane.stats import VipStats

if TYPE_CHECKING:
    from sluice.dataplane.engine._engine import Engine

DRAIN_INTERVAL_S: Final = 0.05
"""Seconds between two drains of a VIP's rings (a ring holds 4096 records per worker)."""

RawAddress = tuple[int, bytes, int]
RawRecord = tuple[int, int, RawAddress, RawAddress, int, int, int, int, int, int, int, int]
"""As module_flowlog.c builds it: start_us, duration_us, (family, ip, port) of the client and of the
VIP address, backend slot (-1 none), udp, reason index, retries, bytes to / from the backend,
datagrams to / from the backend."""


def _address(raw: RawAddress) -> str:
    family, ip, port = raw
    return str(Endpoint(IPv6Address(ip) if family == 6 else IPv4Address(ip), port))


class NativeFlowLog:
    """The flow log of the VIP `vip_id` of `engine`: rings switched on at `start`, drained on `loop`.

    `backends` gives the counter slot -> backend Endpoint map of the listener (read at each drain)."""

    def __init__(
        self,
        engine: Engine,
        vip_id: int,
        flow_log: FlowLog,
        backends: Callable[[], Mapping[Endpoint, int]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.flow_log = flow_log
        self._engine = engine
        self._id = vip_id
        self._backends = backends
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._ring_dropped = 0

    def start(self) -> None:
        self._engine.flowlog_enable(self._id, True)
        self._timer = self._loop.call_later(DRAIN_INTERVAL_S, self._on_timer)

    def drain(self) -> int:
        """Hand every record the rings hold to the flow log; how many there were."""
        from sluice.dataplane.engine import _engine  # built: this object exists only then

        raw_records: list[Any]
        raw_records, ring_dropped = self._engine.flowlog_drain(self._id)
        flow_log = self.flow_log
        flow_log.stats.access_log_dropped += ring_dropped - self._ring_dropped
        self._ring_dropped = ring_dropped
        if not raw_records:
            return 0
        names = {slot: str(endpoint) for endpoint, slot in self._backends().items()}
        wall_minus_mono = time.time() - time.monotonic()  # the workers' clock is CLOCK_MONOTONIC
        vip = flow_log.vip_name
        for raw in raw_records:
            if not flow_log.admit():
                continue
            start_us, duration_us, client, listen, slot, udp, reason, retries, to_b, from_b, d_to, d_from = (
                raw
            )
            flow_log.submit(
                FlowRecord(
                    vip=vip,
                    protocol="udp" if udp else "tcp",
                    client=_address(client),
                    listen=_address(listen),
                    backend=names.get(slot),
                    start=start_us / 1e6 + wall_minus_mono,
                    duration_s=duration_us / 1e6,
                    bytes_to_backend=to_b,
                    bytes_from_backend=from_b,
                    reason=_engine.CLOSED[reason],
                    retries=retries,
                    datagrams_to_backend=d_to if udp else None,
                    datagrams_from_backend=d_from if udp else None,
                )
            )
        return len(raw_records)

    def stop(self) -> None:
        """Stop draining and switch the rings off (what they still hold is drained first)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._engine.flowlog_enable(self._id, False)
        self.drain()

    def close(self) -> None:
        """The VIP's flows have all ended (vip_detach): take the last records, close the flow log."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.drain()
        self.flow_log.close()

    def _on_timer(self) -> None:
        self._timer = self._loop.call_later(DRAIN_INTERVAL_S, self._on_timer)
        self.drain()


def start_native_flow_log(
    engine: Engine, vip_id: int, vip: Vip, stats: VipStats, backends: Callable[[], Mapping[Endpoint, int]]
) -> NativeFlowLog | None:
    """The flow log of a VIP just added to `engine` (None without ``access_log:``), draining."""
    flow_log = open_flow_log(vip, stats)
    if flow_log is None:
        return None
    native = NativeFlowLog(engine, vip_id, flow_log, backends, asyncio.get_running_loop())
    native.start()
    return native


def update_native_flow_log(
    current: NativeFlowLog | None,
    engine: Engine,
    vip_id: int,
    vip: Vip,
    stats: VipStats,
    backends: Callable[[], Mapping[Endpoint, int]],
) -> NativeFlowLog | None:
    """After a reload: the VIP's flow log as ``access_log`` now says (switched on, off, or reopened)."""
    if current is None:
        return start_native_flow_log(engine, vip_id, vip, stats, backends)
    if vip.access_log is None:
        current.stop()  # the records of flows ended so far still go to the old log
        current.flow_log.close()
        return None
    if current.flow_log.options != vip.access_log:
        current.drain()  # flows ended before the reload go to the log of their time
    flow_log = reopen_flow_log(current.flow_log, vip, stats)
    assert flow_log is not None  # the VIP has an access_log
    current.flow_log = flow_log
    return current
