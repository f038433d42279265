"""Prometheus metrics: one custom collector that reads the live counters at scrape time.

Nothing is counted twice: the data planes' `VipStats`, the XDP program's maps, the monitor's records
and the controller's counters are read when Prometheus scrapes, and turned into metric families here
(data-plane families in `metrics_planes.py`). Names follow one scheme, ``sluice_<subject>_<what>``
with the subjects ``vip``, ``backend``, ``health``, ``reload``, ``announce`` and ``xdp`` (plus
``sluice_build_info`` and the standard ``process_*``), the Prometheus conventions (``_total``
counters, ``_seconds`` / ``_bytes`` units, ``_timestamp_seconds`` for unix times) and the labels
``vip``, ``backend``, ``reason``, ``direction``, ``state``, ``result``, ``prefix``, ``action``.
docs/operating.md has the table of every family.

Proxy VIPs get the proxy's series, DSR VIPs the XDP program's (``sluice_xdp_*``): a DSR VIP has no
connect, no established flow and no return traffic to count, so it gets no series that would read as
100% failure there.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice import __version__
from sluice.config import Config
from sluice.control.announce import Action
from sluice.control.metrics_planes import VipKinds, XdpCounters, histogram_family, plane_metrics
from sluice.control.monitor import BackendRecord
from sluice.core.health import State
from sluice.dataplane.engine import AVAILABLE as NATIVE_ENGINE_BUILT
from sluice.dataplane.stats import VipStats

__all__ = ["SluiceCollector", "Sources", "XdpCounters", "build_registry", "xdp_counters"]


@runtime_checkable
class HasXdpCounters(Protocol):
    """A data plane with XDP counters (`sluice.dataplane.xdp.plane.XdpPlane`)."""

    def xdp_counters(self) -> dict[str, dict[str, int]]: ...


def xdp_counters(plane: object) -> XdpCounters | None:
    """`plane`'s XDP counters; None when it has none (no DSR VIP, or its program is not loaded)."""
    if not isinstance(plane, HasXdpCounters):
        return None
    try:
        return plane.xdp_counters()
    except RuntimeError:  # the plane has not loaded its program yet
        return None


@dataclass
class Sources:
    """Where the collector reads from (callables, so tests pass hand-made objects)."""

    stats: Callable[[], Mapping[str, VipStats]]
    config: Callable[[], Config | None] = lambda: None
    """The running config: which VIPs are DSR, TCP or UDP, and their limits (None: all series)."""
    health: Callable[[], Iterable[BackendRecord]] = list
    weights: Callable[[], Mapping[tuple[str, str], int]] = dict
    """(vip, backend) -> effective weight."""
    transitions: Callable[[], Mapping[tuple[str, str, State], int]] = dict
    clock: Callable[[], float] = time.monotonic
    """The monitor's clock (health state changes are stamped with it)."""
    wall_clock: Callable[[], float] = time.time
    """Unix seconds, to turn `clock` times into timestamps."""
    reloads: Callable[[], Mapping[str, int]] = dict
    last_reload: Callable[[], tuple[float, str] | None] = lambda: None
    """(unix seconds, result) of the last reload; None before the first."""
    last_good_reload: Callable[[], float | None] = lambda: None
    closed_by_control: Callable[[], Mapping[tuple[str, str], int]] = dict
    xdp: Callable[[], XdpCounters | None] = lambda: None
    """The XDP plane's counters; None without one."""
    announce_changes: Callable[[], Mapping[tuple[str, Action], int]] = dict
    """(prefix, action) -> times this node announced / withdrew the prefix (control/announce.py)."""
    announced: Callable[[], Mapping[str, bool]] = dict
    """prefix -> announced now, for every prefix of the ``announce:`` block."""
    announce_errors: Callable[[], int] | None = None
    """Failed speaker (BIRD) updates; None without an ``announce:`` block."""
    native_engine: bool = NATIVE_ENGINE_BUILT
    """Whether the native engine's extension is built (a label of sluice_build_info)."""


class SluiceCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        config, xdp = s.config(), s.xdp()
        yield from plane_metrics(s.stats(), VipKinds.of(config, xdp), xdp, s.closed_by_control())
        if config is not None:
            yield from _limit_metrics(config)
        yield from _health_metrics(s, list(s.health()))
        yield from _reload_metrics(s)
        yield from _announce_metrics(s)
        yield _build_info(s.native_engine)


def build_registry(sources: Sources, *, process: bool = True) -> CollectorRegistry:
    """A registry with sluice's collector and (`process`) the standard ``process_*`` one (/proc)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SluiceCollector(sources))
    if process:
        ProcessCollector(registry=registry)
    return registry


def _build_info(native_engine: bool) -> Metric:
    info = GaugeMetricFamily(
        "sluice_build_info",
        "1, labelled with the sluice version, the Python version and whether the native engine is built",
        labels=["version", "python_version", "native_engine"],
    )
    info.add_metric([__version__, platform.python_version(), str(native_engine).lower()], 1.0)
    return info


def _limit_metrics(config: Config) -> Iterator[Metric]:
    conns = GaugeMetricFamily(
        "sluice_vip_max_connections", "Configured max_connections (TCP proxy VIPs)", labels=["vip"]
    )
    sessions = GaugeMetricFamily(
        "sluice_vip_max_sessions", "Configured udp.max_sessions (UDP proxy VIPs)", labels=["vip"]
    )
    table = GaugeMetricFamily(
        "sluice_vip_maglev_table_size",
        "Maglev lookup table size (VIPs scheduled by Maglev, every DSR VIP)",
        labels=["vip"],
    )
    for vip in sorted(config.vips, key=lambda v: v.name):
        if vip.mode == "proxy" and vip.protocol == "tcp":
            conns.add_metric([vip.name], vip.max_connections)
        if vip.mode == "proxy" and vip.protocol == "udp":
            sessions.add_metric([vip.name], vip.udp.max_sessions)
        if vip.mode == "dsr" or vip.scheduler == "maglev":
            table.add_metric([vip.name], vip.maglev_table_size)
    yield from (conns, sessions, table)


def _health_metrics(sources: Sources, records: list[BackendRecord]) -> Iterator[Metric]:
    weights, transitions = sources.weights(), sources.transitions()
    bl = ["vip", "backend"]
    up = GaugeMetricFamily("sluice_backend_up", "1 when the backend may take new flows", labels=bl)
    state = GaugeMetricFamily(
        "sluice_backend_state", "1 for the backend's current health state", labels=["vip", "backend", "state"]
    )
    weight = GaugeMetricFamily("sluice_backend_weight", "Effective weight the data plane uses", labels=bl)
    changed = GaugeMetricFamily(
        "sluice_backend_last_state_change_timestamp_seconds",
        "Unix time the backend entered its current health state (or was added)",
        labels=bl,
    )
    checks = CounterMetricFamily(
        "sluice_health_checks", "Active checks, by result", labels=["vip", "backend", "result"]
    )
    failures = CounterMetricFamily(
        "sluice_health_check_failures",
        "Failed active checks, by reason",
        labels=["vip", "backend", "reason"],
    )
    latency = histogram_family("sluice_health_check_duration_seconds", "Active check latency", bl)
    moved = CounterMetricFamily(
        "sluice_health_transitions",
        "Health state changes, by state entered",
        labels=["vip", "backend", "state"],
    )
    to_unix = sources.wall_clock() - sources.clock()
    for r in records:
        labels = [r.vip, str(r.address)]
        up.add_metric(labels, 1.0 if r.health.usable else 0.0)
        for s in State:
            state.add_metric([*labels, str(s)], 1.0 if r.health.state is s else 0.0)
        if (key := (r.vip, str(r.address))) in weights:
            weight.add_metric(labels, weights[key])
        changed.add_metric(labels, r.health.last_change + to_unix)
        checks.add_metric([*labels, "pass"], r.checks_total[True])
        checks.add_metric([*labels, "fail"], r.checks_total[False])
        for reason, n in sorted(r.check_failures.items()):
            failures.add_metric([*labels, reason], n)
        latency.add(labels, r.latency)
    for (vip, backend, s), n in sorted(transitions.items()):
        moved.add_metric([vip, backend, str(s)], n)
    yield from (up, state, weight, changed, checks, failures, latency.family, moved)


def _reload_metrics(sources: Sources) -> Iterator[Metric]:
    results = CounterMetricFamily("sluice_reload", "Config reloads, by result", labels=["result"])
    for result, n in sorted(sources.reloads().items()):
        results.add_metric([result], n)
    yield results
    if (last := sources.last_reload()) is not None:
        at, result = last
        yield GaugeMetricFamily(
            "sluice_reload_last_timestamp_seconds", "Unix time of the last reload (any result)", value=at
        )
        yield GaugeMetricFamily(
            "sluice_reload_last_success",
            "1 when the last reload was applied, 0 when it was rejected or failed",
            value=1.0 if result == "ok" else 0.0,
        )
    if (good := sources.last_good_reload()) is not None:
        yield GaugeMetricFamily(
            "sluice_reload_last_success_timestamp_seconds", "Unix time of the last reload applied", value=good
        )


def _announce_metrics(sources: Sources) -> Iterator[Metric]:
    changes = CounterMetricFamily(
        "sluice_announce_changes",
        "BGP announcements and withdrawals of a prefix by this node",
        labels=["prefix", "action"],
    )
    for (prefix, action), n in sorted(sources.announce_changes().items()):
        changes.add_metric([prefix, action], n)
    announced = GaugeMetricFamily(
        "sluice_announce_prefix_announced",
        "1 while this node announces the prefix over BGP",
        labels=["prefix"],
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
