"""What the API and the CLI show: one backend, one VIP, the process (plain frozen dataclasses, built
by the controller, turned into JSON by the API and described by control/openapi.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from sluice.core.histogram import Histogram
from sluice.dataplane.stats import BackendStats


@dataclass(frozen=True)
class BackendSnapshot:
    """One backend as the API and the CLI show it."""

    address: str
    state: str
    admin: str
    weight: int
    """Configured weight (runtime override applied)."""
    effective_weight: int
    """What the data plane uses now (0 when unusable)."""
    active: int
    flows_total: int
    connect_attempts: int
    connect_ok: int
    connect_errors: dict[str, int]
    bytes_to_backend: int
    bytes_from_backend: int
    datagrams_to_backend: int
    datagrams_from_backend: int
    suspect: bool
    last_check: str | None
    last_check_latency_s: float | None
    since_s: float
    """Seconds since the last state change."""


@dataclass(frozen=True)
class VipSnapshot:
    name: str
    protocol: str
    listen: str
    mode: str
    scheduler: str
    active: int
    flows_total: int
    sessions: int
    refused: dict[str, int]
    closed: dict[str, int]
    rebalanced: int
    access_log_dropped: int = 0
    """Flow log lines dropped (over ``access_log.rate``, queue full, failed write)."""
    backends: list[BackendSnapshot] = field(default_factory=list)
    quic_routed: int = 0
    """QUIC connection-ID routing (a VIP with a ``quic`` block): sent by CID to its backend."""
    quic_fallback: int = 0
    """QUIC: short-header packets whose CID named no usable backend (hashed instead)."""
    announced: bool | None = None
    """Whether this node announces the VIP over BGP now (None: no ``announce:`` block)."""


@dataclass(frozen=True)
class ServerInfo:
    """The process as the API's ``/api/v1/server`` and the CLI's header show it."""

    version: str
    started_at: float
    """Unix time the controller started."""
    uptime_s: float
    last_reload_at: float | None
    """Unix time of the last reload (None: none since start); dry runs are not reloads."""
    last_reload_result: str | None
    """ok, invalid (the file was refused) or failed (applying it failed)."""
    last_reload_error: str | None
    reloads: dict[str, int]


def counters(stats: BackendStats) -> dict[str, Any]:
    """Every counter of `stats` as a `BackendSnapshot` field (Counters as plain dicts)."""
    out: dict[str, Any] = {}
    for f in fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, Histogram):
            continue  # metrics only
        out[f.name] = dict(value) if isinstance(value, Counter) else value
    return out
