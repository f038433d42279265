"""Counters a data plane keeps per VIP and per backend.

The data plane owns these objects and increments them in place; metrics, the API and the demo read
them. Reasons are short snake_case strings (``refused["max_connections"]``,
``connect_errors["refused"]``) so they map straight onto Prometheus labels; every plane takes them
from the one table in `sluice.core.reasons`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sluice.core.histogram import CONNECT_LATENCY_BUCKETS_S, FLOW_DURATION_BUCKETS_S, Histogram


@dataclass
class BackendStats:
    active: int = 0
    """Flows (connections or UDP sessions) open now."""
    flows_total: int = 0
    """Flows ever sent to this backend."""
    connect_attempts: int = 0
    """TCP connects started (the proxy's "SYN" view)."""
    connect_ok: int = 0
    """TCP connects established (the proxy's "ACK" view)."""
    connect_errors: Counter[str] = field(default_factory=Counter)
    """Failed connects by reason (`sluice.core.reasons.CONNECT_ERRORS`): refused, timeout, unreachable,
    reset, other."""
    bytes_to_backend: int = 0
    bytes_from_backend: int = 0
    datagrams_to_backend: int = 0
    datagrams_from_backend: int = 0
    connect_latency: Histogram = field(default_factory=lambda: Histogram(CONNECT_LATENCY_BUCKETS_S))
    """Seconds from a TCP connect started to the connection established (and the first bytes sent)."""


@dataclass
class VipStats:
    active: int = 0
    flows_total: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """New flows refused, by reason: max_connections, no_backend, bad_proxy_header, ..."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Datagrams or flows dropped after acceptance, by reason."""
    closed: Counter[str] = field(default_factory=Counter)
    """Flows ended, by reason: done, idle_timeout, backend_reset, client_reset, ..."""
    sessions: int = 0
    """UDP: entries in the session table now."""
    evictions: int = 0
    """UDP: sessions evicted because the table was full."""
    rebalanced: int = 0
    """Flows moved to another backend because theirs went away."""
    retries: int = 0
    """TCP connects redispatched: each backend tried for a client after its first one failed."""
    flow_duration: Histogram = field(default_factory=lambda: Histogram(FLOW_DURATION_BUCKETS_S))
    """Seconds from a flow's start (TCP accept, UDP session opened) to its close, per closed flow."""
    quic_routed: int = 0
    """QUIC: sessions (datagrams for per_packet) sent to the backend their connection ID names."""
    quic_fallback: int = 0
    """QUIC: short-header ones whose connection ID named no usable backend (hashed instead)."""
    table_slots_changed: int = 0
    """Maglev table slots whose backend changed, summed over the table rebuilds (config, health or
    weight changes); divided by the table size, the share of the flow-hash space (new flows) moved."""
    access_log_dropped: int = 0
    """Flow log lines not written: over the ``access_log.rate``, the queue full, or a failed write."""
    backends: dict[str, BackendStats] = field(default_factory=dict)
    """Keyed by str(Endpoint)."""

    def backend(self, key: str) -> BackendStats:
        stats = self.backends.get(key)
        if stats is None:
            stats = self.backends[key] = BackendStats()
        return stats
