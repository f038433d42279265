"""NativeTcpListener: one TCP VIP served by the native engine, with the surface of `TcpListener`.

One `Engine` per process and worker count, created on first use and closed at exit; every VIP of
that engine has a listening socket in every worker (SO_REUSEPORT). This adapter builds the immutable
table the workers read (backends in config order, the Maglev table remapped to config-order indexes,
limits), gives each backend Endpoint ever seen a stable counter slot, and turns the workers'
counters into the same `VipStats` the python engine keeps.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sluice.config import Endpoint, Vip
from sluice.core.histogram import CONNECT_LATENCY_BUCKETS_S, FLOW_DURATION_BUCKETS_S, Histogram
from sluice.core.scheduler import MaglevScheduler, Scheduler, build_scheduler, maglev_slots_changed
from sluice.dataplane.engine.flowlog import NativeFlowLog, start_native_flow_log, update_native_flow_log
from sluice.dataplane.stats import VipStats

if TYPE_CHECKING:
    from sluice.dataplane.engine._engine import Counters, Engine, HistogramCounters, TableSpec

try:
    from sluice.dataplane.engine import _engine
except ImportError:  # the extension did not build: the python engine serves every VIP
    AVAILABLE = False
else:
    AVAILABLE = True

CONNS_PER_WORKER: Final = 32768
"""Connections (handshaking, connecting or established) one worker holds at most."""
BACKEND_SLOTS: Final = 1024
"""Distinct backend Endpoints one VIP may ever have (each keeps a counter slot)."""
_PROXY_OUT: Final = {"off": 0, "v1": 1, "v2": 2}

_engines: dict[int, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(workers: int | None = None) -> Engine:
    """The process's engine with `workers` threads (None: one per CPU this process may run on)."""
    if not AVAILABLE:
        raise RuntimeError("the native engine extension is not built")
    n = workers if workers is not None else len(os.sched_getaffinity(0))
    with _engines_lock:
        engine = _engines.get(n)
        if engine is None:
            engine = _engines[n] = _engine.Engine(n, CONNS_PER_WORKER)
            if len(_engines) == 1:
                atexit.register(close_engines)
        return engine


def close_engines() -> None:
    """Stop every engine's workers and free them (at exit; flows of VIPs still open are closed)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.close()


def _table_spec(vip: Vip, scheduler: Scheduler, slots: dict[Endpoint, int]) -> TableSpec:
    backends = [(b.address.host, b.address.port, b.weight, slots[b.address]) for b in vip.backends]
    maglev = b""
    if isinstance(scheduler, MaglevScheduler):
        # table slots index table.backends (identity order); the engine indexes config order.
        index = {str(b.address): i for i, b in enumerate(vip.backends)}
        lut = np.array([index[identity] for identity in scheduler.table.backends] + [-1], dtype=np.int32)
        maglev = lut[scheduler.table.slots].astype(np.int32).tobytes()  # -1 (empty) stays -1
    return (
        _engine.SCHEDULERS.index(vip.scheduler),
        backends,
        maglev,
        vip.timeouts.connect,
        vip.idle_timeout_s,
        vip.max_connections,
        _PROXY_OUT[vip.proxy_protocol],
        _accept_from(vip),
        vip.hash_key.secret if vip.hash_key is not None else b"",
    )


def _accept_from(vip: Vip) -> bool | bytes:
    """The table's accept_proxy: False, or the prefixes whose peers may send a PROXY header."""
    if vip.accept_proxy_protocol is None:
        return False
    return b"".join(
        bytes([net.version, net.prefixlen]) + net.network_address.packed.ljust(16, b"\0")
        for net in vip.accept_proxy_protocol.from_
    )


def _histogram(bounds: tuple[float, ...], counters: HistogramCounters) -> Histogram:
    counts, sum_us = counters
    return Histogram.of_counts(bounds, counts, sum_us / 1e6)


class NativeVip:
    """What the native TCP and UDP listeners share: the engine, the VIP's id in it, a stable counter
    slot per backend Endpoint ever seen, the scheduler and the table built from it, and turning the
    workers' counters into `VipStats`. Subclasses say how a table is built (`_table`) and how their
    counters are read (`_read`)."""

    def __init__(self, vip: Vip, workers: int | None) -> None:
        self.vip = vip
        self._engine = engine_for(workers)
        self._stats = VipStats()
        self._slots: dict[Endpoint, int] = {}
        """Counter slot of every backend Endpoint ever seen (stable: a flow keeps its slot)."""
        self._scheduler = self._build_scheduler(vip)
        self._id: int | None = None
        self._address: tuple[str, int] | None = None
        self._flow_log: NativeFlowLog | None = None

    def _table(self, vip: Vip) -> Any:
        """The engine's table spec for `vip` with the current scheduler."""
        raise NotImplementedError

    def _read(self, stats: VipStats, vip_id: int, worker: int) -> None:
        """Fill `stats` from the engine's counters of `worker` (-1: the sum over the workers)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Listener interface

    def update(self, vip: Vip) -> None:
        old = self.vip
        self.vip = vip
        if (vip.scheduler, vip.backends, vip.maglev_table_size, vip.hash_key) != (
            old.scheduler,
            old.backends,
            old.maglev_table_size,
            old.hash_key,
        ):
            old_scheduler, self._scheduler = self._scheduler, self._build_scheduler(vip)
            self._stats.table_slots_changed += maglev_slots_changed(old_scheduler, self._scheduler)
        if self._id is not None:  # limits and timeouts change too: always a new table
            self._engine.vip_update(self._id, self._table(vip))
            self._flow_log = update_native_flow_log(
                self._flow_log, self._engine, self._id, vip, self._stats, lambda: self._slots
            )

    async def stop_accepting(self) -> None:
        """No new flows (the workers close their listening sockets, TCP); established ones continue."""
        if self._id is not None:
            self._engine.stop_accepting(self._id)

    def close_backend_flows(self, backend: Endpoint, reason: str) -> int:
        """Close the flows on `backend` in every worker; how many."""
        slot = self._slots.get(backend)
        if self._id is None or slot is None:
            return 0
        return self._engine.close_backend_flows(self._id, slot, _engine.CLOSED.index(reason))

    # ------------------------------------------------------------------ observation

    @property
    def stats(self) -> VipStats:
        """The counters, summed over the workers (fresh on every read while the VIP runs)."""
        if self._id is not None:
            self._read(self._stats, self._id, -1)
        return self._stats

    @stats.setter
    def stats(self, stats: VipStats) -> None:
        """Replace the object the counters are written into (the `Listener` protocol declares
        `stats` a plain attribute)."""
        self._stats = stats

    def worker_stats(self, worker: int) -> VipStats:
        """One worker's share of the counters (a new object; the VIP must be running)."""
        assert self._id is not None, "not running"
        stats = VipStats()
        self._read(stats, self._id, worker)
        return stats

    @property
    def workers(self) -> int:
        """Worker threads of the engine serving this VIP."""
        return self._engine.workers

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the port the kernel chose when the VIP says port 0."""
        assert self._address is not None, "not started"
        return self._address

    # ------------------------------------------------------------------ internals

    def _start_flow_log(self) -> None:
        """After vip_add: the flow log, if the VIP has one (the workers' rings switched on)."""
        assert self._id is not None
        self._flow_log = start_native_flow_log(
            self._engine, self._id, self.vip, self._stats, lambda: self._slots
        )

    def _close_flow_log(self) -> None:
        """After vip_detach (every flow ended): the last records, then the flow log closed."""
        if self._flow_log is not None:
            self._flow_log.close()
            self._flow_log = None

    def _build_scheduler(self, vip: Vip) -> Scheduler:
        for backend in vip.backends:
            if backend.address not in self._slots:
                if len(self._slots) >= BACKEND_SLOTS:
                    raise ValueError(f"vip {vip.name}: more than {BACKEND_SLOTS} backends ever seen")
                self._slots[backend.address] = len(self._slots)
                self._stats.backend(str(backend.address))
        return build_scheduler(
            vip.scheduler, vip.weighted_backends, table_size=vip.maglev_table_size, hash_key=vip.hash_key
        )

    def _fill_flows(self, stats: VipStats, counters: Counters) -> None:
        """What every protocol counts: flows, refused, closed, and per backend its flows, connect
        errors and bytes."""
        active, flows_total, refused, closed, _, _, backends, retries, duration = counters
        stats.active, stats.flows_total, stats.retries = active, flows_total, retries
        stats.flow_duration = _histogram(FLOW_DURATION_BUCKETS_S, duration)
        stats.refused.clear()
        stats.refused.update({name: n for name, n in zip(_engine.REFUSED, refused, strict=True) if n})
        stats.closed.clear()
        stats.closed.update({name: n for name, n in zip(_engine.CLOSED, closed, strict=True) if n})
        for endpoint, slot in self._slots.items():
            b = stats.backend(str(endpoint))
            active_b, flows_b, _, _, errors, to_backend, from_backend, latency = backends[slot]
            b.connect_latency = _histogram(CONNECT_LATENCY_BUCKETS_S, latency)
            b.active, b.flows_total = active_b, flows_b
            b.connect_errors.clear()
            b.connect_errors.update({n: c for n, c in zip(_engine.CONNECT_ERRORS, errors, strict=True) if c})
            b.bytes_to_backend, b.bytes_from_backend = to_backend, from_backend


class NativeTcpListener(NativeVip):
    """One TCP VIP on the native engine.

    `use_splice` picks the byte mover (default: splice); `buffer_size` bounds the bytes held per
    direction (pipe or buffer size, default per mover); `workers` picks the engine (None: one worker
    per CPU).
    """

    def __init__(
        self,
        vip: Vip,
        *,
        use_splice: bool | None = None,
        buffer_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(vip, workers)
        self.use_splice = True if use_splice is None else use_splice
        self.buffer_size = buffer_size
        self._buffered = 0
        self._peak = 0

    async def start(self) -> None:
        vip = self.vip
        self._id, port = self._engine.vip_add(
            vip.listen.host,
            vip.listen.port,
            self.use_splice,
            self.buffer_size or 0,
            BACKEND_SLOTS,
            self._table(vip),
        )
        self._address = (vip.listen.host, port)
        self._start_flow_log()

    async def close(self) -> None:
        """Stop accepting, close every flow (``shutdown``), keep the final counters."""
        if self._id is not None:
            vip_id, self._id = self._id, None
            if self._flow_log is None:
                self._fill(self._stats, self._engine.vip_remove(vip_id))
                return
            self._engine.vip_detach(vip_id)
            try:
                self._fill(self._stats, self._engine.counters(vip_id))
                self._close_flow_log()
            finally:
                self._engine.vip_free(vip_id)

    @property
    def buffered(self) -> int:
        """Bytes held inside the LB now, all flows and directions."""
        _ = self.stats
        return self._buffered

    @property
    def peak_buffered(self) -> int:
        """Highest bytes one direction of a flow has held."""
        _ = self.stats
        return self._peak

    def _table(self, vip: Vip) -> TableSpec:
        return _table_spec(vip, self._scheduler, self._slots)

    def _read(self, stats: VipStats, vip_id: int, worker: int) -> None:
        self._fill(stats, self._engine.counters(vip_id, worker, len(self._slots)), summed=worker < 0)

    def _fill(self, stats: VipStats, counters: Counters, summed: bool = True) -> None:
        if summed:
            self._buffered, self._peak = counters[4], counters[5]
        self._fill_flows(stats, counters)
        for endpoint, slot in self._slots.items():
            b = stats.backend(str(endpoint))
            b.connect_attempts, b.connect_ok = counters[6][slot][2], counters[6][slot][3]
