"""Prometheus metrics: one custom collector that reads the live counters at scrape time.

Nothing is counted twice: the data plane's `VipStats`, the monitor's records and the controller's
counters are read when Prometheus scrapes, and turned into metric families here. Names follow the
Prometheus conventions (``_total`` counters, ``_seconds`` / ``_bytes`` units, labels ``vip``,
``backend``, ``reason``, ``direction``, ``state``, ``prefix``, ``action``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice.control.announce import Action
from sluice.control.monitor import BackendRecord
from sluice.core.health import State
from sluice.dataplane.stats import VipStats


@dataclass
class Sources:
    """Where the collector reads from (callables, so tests pass hand-made objects)."""

    stats: Callable[[], Mapping[str, VipStats]]
    health: Callable[[], Iterable[BackendRecord]] = list
    weights: Callable[[], Mapping[tuple[str, str], int]] = dict
    """(vip, backend) -> effective weight."""
    transitions: Callable[[], Mapping[tuple[str, str, State], int]] = dict
    reloads: Callable[[], Mapping[str, int]] = dict
    closed_by_control: Callable[[], Mapping[tuple[str, str], int]] = dict
    announce_changes: Callable[[], Mapping[tuple[str, Action], int]] = dict
    """(prefix, action) -> times this node announced / withdrew the prefix (control/announce.py)."""
    announced: Callable[[], Mapping[str, bool]] = dict
    """prefix -> announced now, for every prefix of the ``announce:`` block."""
    announce_errors: Callable[[], int] | None = None
    """Failed speaker (BIRD) updates; None without an ``announce:`` block."""
    extra: list[Callable[[], Iterable[Metric]]] = field(default_factory=list)


class SluiceCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from _vip_metrics(self.sources.stats())
        yield from _health_metrics(
            list(self.sources.health()), self.sources.weights(), self.sources.transitions()
        )
        reloads = CounterMetricFamily("sluice_reloads", "Config reloads by result", labels=["result"])
        for result, n in sorted(self.sources.reloads().items()):
            reloads.add_metric([result], n)
        yield reloads
        closed = CounterMetricFamily(
            "sluice_flows_closed_by_control",
            "Flows the controller had the data plane close (backend_down, drain_timeout)",
            labels=["vip", "reason"],
        )
        for (vip, reason), n in sorted(self.sources.closed_by_control().items()):
            closed.add_metric([vip, reason], n)
        yield closed
        yield from _announce_metrics(self.sources)
        for extra in self.sources.extra:
            yield from extra()


def build_registry(sources: Sources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SluiceCollector(sources))
    return registry


def _vip_metrics(stats: Mapping[str, VipStats]) -> Iterator[Metric]:
    vl, bl = ["vip"], ["vip", "backend"]
    vip_active = GaugeMetricFamily(
        "sluice_vip_flows_active", "Flows (connections, UDP sessions) open now", labels=vl
    )
    vip_total = CounterMetricFamily("sluice_vip_flows", "Flows accepted and sent to a backend", labels=vl)
    refused = CounterMetricFamily(
        "sluice_refused_flows", "New flows refused, by reason", labels=["vip", "reason"]
    )
    dropped = CounterMetricFamily(
        "sluice_dropped", "Datagrams or flows dropped after acceptance", labels=["vip", "reason"]
    )
    closed = CounterMetricFamily("sluice_closed_flows", "Flows ended, by reason", labels=["vip", "reason"])
    sessions = GaugeMetricFamily("sluice_sessions", "UDP session-table entries now", labels=vl)
    evictions = CounterMetricFamily(
        "sluice_session_evictions", "UDP sessions evicted (table full)", labels=vl
    )
    moved = CounterMetricFamily(
        "sluice_flows_moved",
        "Flows (UDP sessions) moved to another backend because theirs went away",
        labels=vl,
    )
    slots = CounterMetricFamily(
        "sluice_maglev_slots_changed",
        "Maglev table slots whose backend changed, summed over table rebuilds (divided by the table "
        "size: the share of new flows moved)",
        labels=vl,
    )
    active = GaugeMetricFamily("sluice_flows_active", "Flows open now per backend", labels=bl)
    total = CounterMetricFamily("sluice_flows", "Flows sent to a backend", labels=bl)
    attempts = CounterMetricFamily("sluice_connect_attempts", "Backend connects started (TCP)", labels=bl)
    established = CounterMetricFamily(
        "sluice_connects_established", "Backend connects established (TCP)", labels=bl
    )
    errors = CounterMetricFamily(
        "sluice_connect_errors", "Failed backend connects, by reason", labels=["vip", "backend", "reason"]
    )
    bytes_ = CounterMetricFamily("sluice_bytes", "Bytes moved", labels=["vip", "backend", "direction"])
    datagrams = CounterMetricFamily(
        "sluice_datagrams", "Datagrams moved", labels=["vip", "backend", "direction"]
    )
    for vip, s in sorted(stats.items()):
        vip_active.add_metric([vip], s.active)
        vip_total.add_metric([vip], s.flows_total)
        for reason, n in sorted(s.refused.items()):
            refused.add_metric([vip, reason], n)
        for reason, n in sorted(s.dropped.items()):
            dropped.add_metric([vip, reason], n)
        for reason, n in sorted(s.closed.items()):
            closed.add_metric([vip, reason], n)
        sessions.add_metric([vip], s.sessions)
        evictions.add_metric([vip], s.evictions)
        moved.add_metric([vip], s.rebalanced)
        slots.add_metric([vip], s.table_slots_changed)
        for backend, b in sorted(s.backends.items()):
            labels = [vip, backend]
            active.add_metric(labels, b.active)
            total.add_metric(labels, b.flows_total)
            attempts.add_metric(labels, b.connect_attempts)
            established.add_metric(labels, b.connect_ok)
            for reason, n in sorted(b.connect_errors.items()):
                errors.add_metric([vip, backend, reason], n)
            bytes_.add_metric([vip, backend, "to_backend"], b.bytes_to_backend)
            bytes_.add_metric([vip, backend, "from_backend"], b.bytes_from_backend)
            datagrams.add_metric([vip, backend, "to_backend"], b.datagrams_to_backend)
            datagrams.add_metric([vip, backend, "from_backend"], b.datagrams_from_backend)
    yield from (vip_active, vip_total, refused, dropped, closed, sessions, evictions, moved, slots)
    yield from (active, total, attempts, established, errors, bytes_, datagrams)


def _health_metrics(
    records: list[BackendRecord],
    weights: Mapping[tuple[str, str], int],
    transitions: Mapping[tuple[str, str, State], int],
) -> Iterator[Metric]:
    bl = ["vip", "backend"]
    up = GaugeMetricFamily("sluice_backend_up", "1 when the backend may take new flows", labels=bl)
    state = GaugeMetricFamily(
        "sluice_backend_state", "1 for the backend's current health state", labels=["vip", "backend", "state"]
    )
    weight = GaugeMetricFamily("sluice_backend_weight", "Effective weight the data plane uses", labels=bl)
    checks = CounterMetricFamily(
        "sluice_health_checks", "Active checks, by result", labels=["vip", "backend", "result"]
    )
    latency = HistogramMetricFamily("sluice_health_check_duration_seconds", "Active check latency", labels=bl)
    moved = CounterMetricFamily(
        "sluice_health_transitions",
        "Health state changes, by state entered",
        labels=["vip", "backend", "state"],
    )
    for r in records:
        labels = [r.vip, str(r.address)]
        up.add_metric(labels, 1.0 if r.health.usable else 0.0)
        for s in State:
            state.add_metric([*labels, str(s)], 1.0 if r.health.state is s else 0.0)
        if (key := (r.vip, str(r.address))) in weights:
            weight.add_metric(labels, weights[key])
        checks.add_metric([*labels, "pass"], r.checks_total[True])
        checks.add_metric([*labels, "fail"], r.checks_total[False])
        h = r.latency
        cumulative, buckets = 0, []
        for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        latency.add_metric(labels, buckets, h.total_s)
    for (vip, backend, s), n in sorted(transitions.items()):
        moved.add_metric([vip, backend, str(s)], n)
    yield from (up, state, weight, checks, latency, moved)


def _announce_metrics(sources: Sources) -> Iterator[Metric]:
    changes = CounterMetricFamily(
        "sluice_announce_changes",
        "BGP announcements and withdrawals of a prefix by this node",
        labels=["prefix", "action"],
    )
    for (prefix, action), n in sorted(sources.announce_changes().items()):
        changes.add_metric([prefix, action], n)
    announced = GaugeMetricFamily(
        "sluice_announced", "1 while this node announces the prefix over BGP", labels=["prefix"]
    )
    for prefix, on in sorted(sources.announced().items()):
        announced.add_metric([prefix], 1.0 if on else 0.0)
    yield from (changes, announced)
    if sources.announce_errors is not None:
        yield CounterMetricFamily(
            "sluice_announce_errors",
            "Failed BGP speaker updates (each retried at the next update or node check)",
            value=sources.announce_errors(),
        )
