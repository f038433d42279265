"""The data planes' metric families: the proxy's (`VipStats`, both engines) and the XDP program's.

A proxy VIP gets the ``sluice_vip_*`` / ``sluice_backend_*`` traffic series (TCP-only ones such as
connects for TCP VIPs, UDP-only ones such as sessions for UDP VIPs); a DSR VIP gets the
``sluice_xdp_*`` series read from the BPF maps instead (packets, bytes, new flows, conntrack), since
the XDP program sees no connect, no close and no return traffic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from sluice.config import Config
from sluice.core.histogram import Histogram
from sluice.core.reasons import QUIC
from sluice.dataplane.stats import VipStats

XdpCounters = Mapping[str, Mapping[str, int]]
"""The XDP plane's raw counters (`XdpPlane.xdp_counters`): ``global``, ``vip:<name>``,
``backend:<vip>/<backend>`` -> counter field -> value (summed over CPUs)."""

XDP_VIP_COUNTERS: Final = (
    ("packets", "sluice_xdp_vip_packets", "Packets forwarded to a backend"),
    ("bytes", "sluice_xdp_vip_bytes", "Frame bytes forwarded to a backend (as received)"),
    ("new_flows", "sluice_xdp_vip_new_flows", "New flows (TCP SYNs, new or expired UDP flows)"),
    ("ct_hits", "sluice_xdp_vip_conntrack_hits", "Packets that followed their connection-table entry"),
    (
        "ct_misses",
        "sluice_xdp_vip_conntrack_misses",
        "TCP packets other than a SYN without a usable connection-table entry (sent by Maglev)",
    ),
    ("expired", "sluice_xdp_vip_conntrack_expired", "Connection-table entries ignored as idle"),
    (
        "quic_routed",
        "sluice_xdp_vip_quic_routed",
        "QUIC short-header packets sent to the backend their CID names",
    ),
    (
        "quic_fallback",
        "sluice_xdp_vip_quic_fallback",
        "QUIC short-header packets whose CID named no usable backend (hashed instead)",
    ),
    (
        "icmp_forwarded",
        "sluice_xdp_vip_icmp_too_big",
        "ICMP too-big (PMTU) messages sent to the flow's backend",
    ),
)
"""(struct vip_stats field, family, help) of the per-VIP XDP counters besides the drops."""
XDP_BACKEND_COUNTERS: Final = (
    ("packets", "sluice_xdp_backend_packets", "Packets forwarded to the backend"),
    ("bytes", "sluice_xdp_backend_bytes", "Frame bytes forwarded to the backend (as received)"),
    ("new_flows", "sluice_xdp_backend_new_flows", "New flows Maglev gave the backend"),
)


@dataclass(frozen=True)
class VipKinds:
    """Which VIPs are DSR, TCP, UDP (from the config; without one every proxy series is emitted)."""

    dsr: frozenset[str] = frozenset()
    tcp: frozenset[str] | None = None
    udp: frozenset[str] | None = None

    @classmethod
    def of(cls, config: Config | None, xdp: XdpCounters | None) -> VipKinds:
        from_xdp = {key[4:] for key in xdp or {} if key.startswith("vip:")}
        if config is None:
            return cls(dsr=frozenset(from_xdp))
        return cls(
            dsr=frozenset(v.name for v in config.vips if v.mode == "dsr") | from_xdp,
            tcp=frozenset(v.name for v in config.vips if v.protocol == "tcp"),
            udp=frozenset(v.name for v in config.vips if v.protocol == "udp"),
        )

    def is_tcp(self, vip: str) -> bool:
        return self.tcp is None or vip in self.tcp

    def is_udp(self, vip: str) -> bool:
        return self.udp is None or vip in self.udp


@dataclass
class HistogramFamily:
    """A histogram family filled from `Histogram` objects."""

    family: HistogramMetricFamily

    def add(self, labels: list[str], h: Histogram) -> None:
        buckets = [("+Inf" if b == float("inf") else repr(b), float(n)) for b, n in h.cumulative()]
        self.family.add_metric(labels, buckets, h.total)


def histogram_family(name: str, documentation: str, labels: list[str]) -> HistogramFamily:
    return HistogramFamily(HistogramMetricFamily(name, documentation, labels=labels))


@dataclass
class _Proxy:
    """The proxy families, filled VIP by VIP."""

    vl: list[str] = field(default_factory=lambda: ["vip"])
    bl: list[str] = field(default_factory=lambda: ["vip", "backend"])

    def __post_init__(self) -> None:
        vl, bl, vr = self.vl, self.bl, ["vip", "reason"]
        g, c = GaugeMetricFamily, CounterMetricFamily
        self.vip_active = g(
            "sluice_vip_flows_active", "Flows (connections, UDP sessions) open now", labels=vl
        )
        self.vip_total = c("sluice_vip_flows", "Flows accepted and sent to a backend", labels=vl)
        self.refused = c("sluice_vip_refused_flows", "New flows refused, by reason", labels=vr)
        self.dropped = c("sluice_vip_dropped", "Datagrams or flows dropped after acceptance", labels=vr)
        self.closed = c("sluice_vip_closed_flows", "Flows ended, by reason", labels=vr)
        self.duration = histogram_family(
            "sluice_vip_flow_duration_seconds",
            "Closed flows: seconds from accept (TCP) or first datagram (UDP)",
            vl,
        )
        self.retries = c(
            "sluice_vip_connect_retries",
            "Backend connects redispatched to another backend after a failed one (TCP)",
            labels=vl,
        )
        self.sessions = g("sluice_vip_sessions", "UDP session-table entries now", labels=vl)
        self.evictions = c("sluice_vip_session_evictions", "UDP sessions evicted (table full)", labels=vl)
        self.moved = c(
            "sluice_vip_flows_moved",
            "Flows (UDP sessions) moved to another backend because theirs went away",
            labels=vl,
        )
        self.quic = c(
            "sluice_vip_quic",
            "QUIC connection-ID routing (UDP proxy VIPs with quic): quic_routed, quic_fallback (sessions)",
            labels=[*vl, "outcome"],
        )
        self.access_log = c(
            "sluice_vip_access_log_dropped",
            "Flow log lines dropped (over access_log.rate, queue or ring full, write failed)",
            labels=vl,
        )
        self.active = g("sluice_backend_flows_active", "Flows open now per backend", labels=bl)
        self.total = c("sluice_backend_flows", "Flows sent to a backend", labels=bl)
        self.attempts = c("sluice_backend_connect_attempts", "Backend connects started (TCP)", labels=bl)
        self.established = c(
            "sluice_backend_connects_established", "Backend connects established (TCP)", labels=bl
        )
        self.errors = c(
            "sluice_backend_connect_errors",
            "Failed backend connects, by reason (TCP)",
            labels=[*bl, "reason"],
        )
        self.latency = histogram_family(
            "sluice_backend_connect_latency_seconds", "Seconds from connect() to established (TCP)", bl
        )
        self.bytes_ = c("sluice_backend_bytes", "Bytes moved", labels=[*bl, "direction"])
        self.datagrams = c("sluice_backend_datagrams", "Datagrams moved (UDP)", labels=[*bl, "direction"])

    def add(self, vip: str, s: VipStats, kinds: VipKinds) -> None:
        tcp, udp = kinds.is_tcp(vip), kinds.is_udp(vip)
        self.vip_active.add_metric([vip], s.active)
        self.vip_total.add_metric([vip], s.flows_total)
        for family, counts in ((self.refused, s.refused), (self.dropped, s.dropped), (self.closed, s.closed)):
            for reason, n in sorted(counts.items()):
                family.add_metric([vip, reason], n)
        self.duration.add([vip], s.flow_duration)
        self.access_log.add_metric([vip], s.access_log_dropped)
        if tcp:
            self.retries.add_metric([vip], s.retries)
        if udp:
            self.sessions.add_metric([vip], s.sessions)
            self.evictions.add_metric([vip], s.evictions)
            self.moved.add_metric([vip], s.rebalanced)
            if s.quic_routed or s.quic_fallback:
                for outcome in QUIC:
                    self.quic.add_metric([vip, outcome], getattr(s, outcome))
        for backend, b in sorted(s.backends.items()):
            labels = [vip, backend]
            self.active.add_metric(labels, b.active)
            self.total.add_metric(labels, b.flows_total)
            if tcp:
                self.attempts.add_metric(labels, b.connect_attempts)
                self.established.add_metric(labels, b.connect_ok)
                for reason, n in sorted(b.connect_errors.items()):
                    self.errors.add_metric([*labels, reason], n)
                self.latency.add(labels, b.connect_latency)
            self.bytes_.add_metric([*labels, "to_backend"], b.bytes_to_backend)
            self.bytes_.add_metric([*labels, "from_backend"], b.bytes_from_backend)
            if udp:
                self.datagrams.add_metric([*labels, "to_backend"], b.datagrams_to_backend)
                self.datagrams.add_metric([*labels, "from_backend"], b.datagrams_from_backend)

    def families(self) -> Iterator[Metric]:
        yield from (self.vip_active, self.vip_total, self.refused, self.dropped, self.closed)
        yield from (self.duration.family, self.retries, self.sessions, self.evictions, self.moved, self.quic)
        yield from (self.active, self.total, self.attempts, self.established, self.errors)
        yield from (self.latency.family, self.bytes_, self.datagrams, self.access_log)


def plane_metrics(
    stats: Mapping[str, VipStats],
    kinds: VipKinds,
    xdp: XdpCounters | None,
    closed_by_control: Mapping[tuple[str, str], int],
) -> Iterator[Metric]:
    proxy = _Proxy()
    slots = CounterMetricFamily(
        "sluice_vip_maglev_slots_changed",
        "Maglev table slots whose backend changed, summed over table rebuilds (divided by the table "
        "size: the share of new flows moved)",
        labels=["vip"],
    )
    for vip, s in sorted(stats.items()):
        slots.add_metric([vip], s.table_slots_changed)
        if vip not in kinds.dsr:
            proxy.add(vip, s, kinds)
    yield from proxy.families()
    yield slots
    closed = CounterMetricFamily(
        "sluice_vip_flows_closed_by_control",
        "Flows the controller had the data plane close (backend_down, drain_timeout)",
        labels=["vip", "reason"],
    )
    for (vip, reason), n in sorted(closed_by_control.items()):
        closed.add_metric([vip, reason], n)
    yield closed
    if xdp is not None:
        yield from xdp_metrics(xdp)


def xdp_metrics(xdp: XdpCounters) -> Iterator[Metric]:
    """The XDP program's counters: global (packets seen, passed and dropped by reason), per DSR VIP and
    per backend."""
    seen = CounterMetricFamily("sluice_xdp_packets", "Packets the XDP program saw")
    passed = CounterMetricFamily(
        "sluice_xdp_passed",
        "Packets passed to the kernel (XDP_PASS) before a VIP matched, by reason",
        labels=["reason"],
    )
    dropped = CounterMetricFamily(
        "sluice_xdp_dropped", "Malformed packets dropped before a VIP matched, by reason", labels=["reason"]
    )
    for name, n in sorted(xdp.get("global", {}).items()):
        if name == "rx_packets":
            seen.add_metric([], n)
        elif name.startswith("pass_"):
            passed.add_metric([name.removeprefix("pass_")], n)
        elif name.startswith("drop_"):
            dropped.add_metric([name.removeprefix("drop_")], n)
    yield from (seen, passed, dropped)
    vip_families = [CounterMetricFamily(f, h, labels=["vip"]) for _, f, h in XDP_VIP_COUNTERS]
    vip_dropped = CounterMetricFamily(
        "sluice_xdp_vip_dropped", "Packets of a DSR VIP dropped, by reason", labels=["vip", "reason"]
    )
    backend_families = [
        CounterMetricFamily(f, h, labels=["vip", "backend"]) for _, f, h in XDP_BACKEND_COUNTERS
    ]
    for key, counters in sorted(xdp.items()):
        kind, _, name = key.partition(":")
        if kind == "vip":
            for (fname, _, _), family in zip(XDP_VIP_COUNTERS, vip_families, strict=True):
                family.add_metric([name], counters.get(fname, 0))
            for fname, n in sorted(counters.items()):
                if fname.startswith("drop_"):
                    vip_dropped.add_metric([name, fname.removeprefix("drop_")], n)
        elif kind == "backend":
            vip, _, backend = name.partition("/")
            for (fname, _, _), family in zip(XDP_BACKEND_COUNTERS, backend_families, strict=True):
                family.add_metric([vip, backend], counters.get(fname, 0))
    yield from vip_families
    yield vip_dropped
    yield from backend_families
