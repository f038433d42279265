"""The Prometheus collector over hand-made counters: exposition parses, values follow the objects,
DSR VIPs get the XDP series instead of the proxy's, every name follows the documented scheme."""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice import __version__
from sluice.config import Config, ConfigError, parse_config
from sluice.control.metrics import Sources, build_registry, xdp_counters
from sluice.control.monitor import BackendRecord
from sluice.core.health import BackendHealth, State
from sluice.dataplane.stats import VipStats
from sluice.server import metrics_sources
from tests.control.test_announce import config as announce_config
from tests.control.test_announce import controller as announcing_controller
from tests.control.test_announce import dsr_vip
from tests.control.test_controller import build, write
from tests.support.fakes import FakeClock, ep, make_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operating.md"


def exposition(sources: Sources, *, process: bool = False) -> str:
    return generate_latest(build_registry(sources, process=process)).decode()


def scrape(sources: Sources, *, process: bool = False) -> Samples:
    out = {}
    for family in text_string_to_metric_families(exposition(sources, process=process)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def two_vips() -> Config:
    """web: TCP proxy; dns: UDP proxy (round robin: no Maglev table); edge: TCP DSR."""
    return parse_config(
        {
            "vips": [
                {
                    "name": "web",
                    "listen": "127.0.0.1:8080",
                    "max_connections": 500,
                    "backends": [{"address": "127.0.0.1:9001"}],
                },
                {
                    "name": "dns",
                    "protocol": "udp",
                    "listen": "127.0.0.1:5353",
                    "scheduler": "round_robin",
                    "udp": {"max_sessions": 700},
                    "backends": [{"address": "127.0.0.1:9053"}],
                },
                {
                    "name": "edge",
                    "listen": "198.18.100.1:80",
                    "mode": "dsr",
                    "maglev_table_size": 251,
                    "dsr": {"interface": "lb0"},
                    "backends": [{"address": "198.18.1.11:80"}],
                },
            ]
        }
    )


def test_exposition_parses_and_follows_the_live_objects() -> None:
    stats = {"web": VipStats()}
    vs = stats["web"]
    b = vs.backend("127.0.0.1:9001")
    record = BackendRecord("web", ep(9001), ep(9001), BackendHealth(2, 3, None, 0.0), 0.0)
    record.latency.observe(0.003)
    record.latency.observe(0.2)
    record.checks_total[True] += 2
    sources = Sources(
        stats=lambda: stats,
        health=lambda: [record],
        weights=lambda: {("web", "127.0.0.1:9001"): 1},
        transitions=lambda: {("web", "127.0.0.1:9001", State.DOWN): 1},
        reloads=lambda: {"ok": 2, "invalid": 1},
    )
    web, bk = ("vip", "web"), ("backend", "127.0.0.1:9001")
    before = scrape(sources)
    assert before[("sluice_backend_flows_total", (bk, web))] == 0
    vs.flows_total += 3
    vs.active += 1
    b.flows_total += 3
    b.active += 1
    b.connect_attempts += 4
    b.connect_ok += 3
    b.connect_errors["refused"] += 1
    b.bytes_to_backend += 100
    b.connect_latency.observe(0.0007)
    b.connect_latency.observe(0.3)
    vs.refused["no_backend"] += 2
    vs.retries += 1
    vs.flow_duration.observe(12.0)
    vs.table_slots_changed += 21845
    after = scrape(sources)
    assert after[("sluice_backend_flows_total", (bk, web))] == 3
    assert after[("sluice_backend_flows_active", (bk, web))] == 1
    assert after[("sluice_vip_flows_total", (web,))] == 3
    assert after[("sluice_backend_connect_attempts_total", (bk, web))] == 4
    assert after[("sluice_backend_connects_established_total", (bk, web))] == 3
    assert after[("sluice_backend_connect_errors_total", (bk, ("reason", "refused"), web))] == 1
    assert after[("sluice_backend_bytes_total", (bk, ("direction", "to_backend"), web))] == 100
    assert after[("sluice_vip_refused_flows_total", (("reason", "no_backend"), web))] == 2
    assert after[("sluice_vip_connect_retries_total", (web,))] == 1
    assert after[("sluice_vip_maglev_slots_changed_total", (web,))] == 21845
    latency = "sluice_backend_connect_latency_seconds"
    assert after[(f"{latency}_bucket", (bk, ("le", "0.0005"), web))] == 0
    assert after[(f"{latency}_bucket", (bk, ("le", "0.001"), web))] == 1
    assert after[(f"{latency}_bucket", (bk, ("le", "0.25"), web))] == 1
    assert after[(f"{latency}_bucket", (bk, ("le", "0.5"), web))] == 2
    assert after[(f"{latency}_count", (bk, web))] == 2
    assert abs(after[(f"{latency}_sum", (bk, web))] - 0.3007) < 1e-9
    duration = "sluice_vip_flow_duration_seconds"
    assert after[(f"{duration}_bucket", (("le", "10.0"), web))] == 0
    assert after[(f"{duration}_bucket", (("le", "30.0"), web))] == 1
    assert after[(f"{duration}_count", (web,))] == 1
    assert after[("sluice_backend_up", (bk, web))] == 1
    assert after[("sluice_backend_state", (bk, ("state", "up"), web))] == 1
    assert after[("sluice_backend_state", (bk, ("state", "down"), web))] == 0
    assert after[("sluice_health_check_duration_seconds_count", (bk, web))] == 2
    assert after[("sluice_health_check_duration_seconds_bucket", (bk, ("le", "0.005"), web))] == 1
    assert after[("sluice_health_check_duration_seconds_bucket", (bk, ("le", "+Inf"), web))] == 2
    assert after[("sluice_health_transitions_total", (bk, ("state", "down"), web))] == 1
    assert after[("sluice_reload_total", (("result", "invalid"),))] == 1
    assert after[("sluice_health_checks_total", (bk, ("result", "pass"), web))] == 2


def test_check_failures_by_reason_and_last_state_change_as_unix_time() -> None:
    clock = FakeClock(100.0)
    health = BackendHealth(1, 1, None, 40.0)  # added at monotonic 40
    record = BackendRecord("web", ep(9001), ep(9001), health, 0.0)
    sources = Sources(stats=dict, health=lambda: [record], clock=clock, wall_clock=lambda: 1_000_000.0)
    key = (("backend", "127.0.0.1:9001"), ("vip", "web"))
    assert scrape(sources)[("sluice_backend_last_state_change_timestamp_seconds", key)] == 1_000_000.0 - 60
    record.check_failures["timeout"] += 2
    record.check_failures["bad_status"] += 1
    health.on_check(False, 90.0, "timeout")  # fall 1: down at monotonic 90
    got = scrape(sources)
    assert got[("sluice_backend_last_state_change_timestamp_seconds", key)] == 1_000_000.0 - 10
    assert got[("sluice_health_check_failures_total", (key[0], ("reason", "timeout"), key[1]))] == 2
    assert got[("sluice_health_check_failures_total", (key[0], ("reason", "bad_status"), key[1]))] == 1


def test_limits_follow_the_config_and_each_plane_gets_its_own_series() -> None:
    config = two_vips()
    stats = {name: VipStats() for name in ("web", "dns", "edge")}
    stats["web"].backend("127.0.0.1:9001")
    stats["edge"].backend("198.18.1.11:80").connect_attempts = 5  # what would read as 100% failure
    stats["edge"].table_slots_changed = 7
    xdp = {
        "global": {"rx_packets": 10, "pass_not_ip": 2, "pass_not_vip": 3, "drop_truncated_l3": 1},
        "vip:edge": {
            "packets": 4,
            "bytes": 400,
            "new_flows": 2,
            "ct_hits": 2,
            "icmp_forwarded": 1,
            "drop_no_backend": 1,
        },
        "backend:edge/198.18.1.11:80": {"packets": 4, "bytes": 400, "new_flows": 2},
    }
    got = scrape(Sources(stats=lambda: stats, config=lambda: config, xdp=lambda: xdp))
    web, dns, edge = ("vip", "web"), ("vip", "dns"), ("vip", "edge")
    assert got[("sluice_vip_max_connections", (web,))] == 500
    assert got[("sluice_vip_max_sessions", (dns,))] == 700
    assert got[("sluice_vip_maglev_table_size", (web,))] == 65537
    assert got[("sluice_vip_maglev_table_size", (edge,))] == 251
    assert ("sluice_vip_maglev_table_size", (dns,)) not in got  # round robin has no table
    assert ("sluice_vip_max_connections", (dns,)) not in got and (
        "sluice_vip_max_sessions",
        (web,),
    ) not in got

    per_vip = {(name, dict(labels).get("vip")) for name, labels in got}
    edge_series = {name for name, vip in per_vip if vip == "edge"}
    assert edge_series == {
        "sluice_vip_maglev_slots_changed_total",
        "sluice_vip_maglev_table_size",
        *(f"sluice_xdp_vip_{c}_total" for c in ("packets", "bytes", "new_flows", "dropped")),
        *(f"sluice_xdp_vip_conntrack_{c}_total" for c in ("hits", "misses", "expired")),
        "sluice_xdp_vip_icmp_too_big_total",
        "sluice_xdp_vip_quic_routed_total",
        "sluice_xdp_vip_quic_fallback_total",
        *(f"sluice_xdp_backend_{c}_total" for c in ("packets", "bytes", "new_flows")),
    }
    assert ("sluice_backend_connect_attempts_total", (("backend", "127.0.0.1:9001"), web)) in got
    assert ("sluice_vip_sessions", (web,)) not in got and ("sluice_vip_sessions", (dns,)) in got
    assert ("sluice_vip_connect_retries_total", (dns,)) not in got
    assert got[("sluice_xdp_packets_total", ())] == 10
    assert got[("sluice_xdp_passed_total", (("reason", "not_vip"),))] == 3
    assert got[("sluice_xdp_dropped_total", (("reason", "truncated_l3"),))] == 1
    assert got[("sluice_xdp_vip_icmp_too_big_total", (edge,))] == 1
    assert got[("sluice_xdp_vip_conntrack_misses_total", (edge,))] == 0
    assert got[("sluice_xdp_vip_dropped_total", (("reason", "no_backend"), edge))] == 1
    assert got[("sluice_xdp_backend_bytes_total", (("backend", "198.18.1.11:80"), edge))] == 400


def test_xdp_counters_only_from_a_plane_that_has_them() -> None:
    class Loaded:
        def xdp_counters(self) -> dict[str, dict[str, int]]:
            return {"global": {"rx_packets": 1}}

    class NotLoaded:
        def xdp_counters(self) -> dict[str, dict[str, int]]:
            raise RuntimeError("XdpPlane: apply() a config first")

    assert xdp_counters(Loaded()) == {"global": {"rx_packets": 1}}
    assert xdp_counters(NotLoaded()) is None
    assert xdp_counters(None) is None
    assert xdp_counters(object()) is None


def test_reload_time_and_success() -> None:
    last: list[tuple[float, str]] = []
    good: list[float] = []
    sources = Sources(
        stats=dict,
        last_reload=lambda: last[-1] if last else None,
        last_good_reload=lambda: good[-1] if good else None,
    )
    assert not {n for n in names(scrape(sources)) if n.startswith("sluice_reload_last")}
    last.append((1000.0, "ok"))
    good.append(1000.0)
    got = scrape(sources)
    assert got[("sluice_reload_last_success", ())] == 1
    assert got[("sluice_reload_last_timestamp_seconds", ())] == 1000.0
    last.append((1005.0, "invalid"))
    got = scrape(sources)
    assert got[("sluice_reload_last_success", ())] == 0
    assert got[("sluice_reload_last_timestamp_seconds", ())] == 1005.0
    assert got[("sluice_reload_last_success_timestamp_seconds", ())] == 1000.0


async def test_the_controllers_reloads_reach_the_reload_gauges(tmp_path: Path) -> None:
    controller, _, _, _ = build(make_config(backends=2))
    sources = metrics_sources(controller)
    await controller.apply(controller.config)
    path = tmp_path / "sluice.yaml"
    write(path, make_config(backends=3))
    before = time.time()
    await controller.reload(path)
    ok = scrape(sources)
    assert ok[("sluice_reload_last_success", ())] == 1
    assert before <= ok[("sluice_reload_last_timestamp_seconds", ())] <= time.time()
    assert (
        ok[("sluice_reload_last_success_timestamp_seconds", ())]
        == ok[("sluice_reload_last_timestamp_seconds", ())]
    )
    path.write_text("vips: [")
    with pytest.raises(ConfigError):
        await controller.reload(path)
    bad = scrape(sources)
    assert bad[("sluice_reload_last_success", ())] == 0
    assert (
        bad[("sluice_reload_last_timestamp_seconds", ())] >= ok[("sluice_reload_last_timestamp_seconds", ())]
    )
    assert (
        bad[("sluice_reload_last_success_timestamp_seconds", ())]
        == ok[("sluice_reload_last_success_timestamp_seconds", ())]
    )
    assert bad[("sluice_reload_total", (("result", "invalid"),))] == 1
    assert bad[("sluice_vip_max_connections", (("vip", "web"),))] == 10000  # the config's limits, live


def test_process_and_build_info() -> None:
    got = scrape(Sources(stats=dict, native_engine=True), process=True)
    info = [labels for name, labels in got if name == "sluice_build_info"]
    assert len(info) == 1
    assert dict(info[0])["version"] == __version__ and dict(info[0])["native_engine"] == "true"
    assert got[("process_max_fds", ())] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 3 <= got[("process_open_fds", ())] <= len(os.listdir("/proc/self/fd")) + 16
    assert got[("process_resident_memory_bytes", ())] > 1 << 20
    assert time.time() - 86400 < got[("process_start_time_seconds", ())] <= time.time()
    assert got[("process_cpu_seconds_total", ())] > 0


def documented() -> dict[str, str]:
    """Name -> type of every row of the docs/operating.md metrics table."""
    section = DOCS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|", section, re.MULTILINE))


def test_every_family_follows_the_scheme_and_is_documented() -> None:
    config = two_vips()
    stats = {"web": VipStats(), "dns": VipStats(), "edge": VipStats()}
    stats["web"].refused["no_backend"] = stats["web"].closed["done"] = stats["web"].dropped["x"] = 1
    stats["web"].backend("127.0.0.1:9001").connect_errors["refused"] = 1
    stats["dns"].backend("127.0.0.1:9053")
    stats["dns"].quic_routed = 1  # series only for a VIP that routed or fell back by QUIC CID
    record = BackendRecord("web", ep(9001), ep(9001), BackendHealth(2, 3, None, 0.0), 0.0)
    record.check_failures["refused"] = 1
    xdp = {
        "global": {"rx_packets": 1, "pass_not_ip": 1, "drop_bad_l3": 1},
        "vip:edge": {"drop_encap": 1},
        "backend:edge/x": {},
    }
    sources = Sources(
        stats=lambda: stats,
        config=lambda: config,
        health=lambda: [record],
        weights=lambda: {("web", "127.0.0.1:9001"): 1},
        transitions=lambda: {("web", "127.0.0.1:9001", State.DOWN): 1},
        reloads=lambda: {"ok": 1},
        last_reload=lambda: (1.0, "ok"),
        last_good_reload=lambda: 1.0,
        closed_by_control=lambda: {("web", "backend_down"): 1},
        xdp=lambda: xdp,
        announce_changes=lambda: {("198.18.100.1/32", "announce"): 1},
        announced=lambda: {"198.18.100.1/32": True},
        announce_errors=lambda: 0,
    )
    families = {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in text_string_to_metric_families(exposition(sources, process=True))
    }
    scheme = re.compile(
        r"^(sluice_(vip|backend|health|reload|announce|xdp)_[a-z0-9_]+|sluice_build_info|process_[a-z_]+)$"
    )
    assert [n for n in families if not scheme.match(n)] == []
    assert families == documented()
    empty = {f.name for f in text_string_to_metric_families(exposition(sources)) if not f.samples}
    assert empty == set(), "every family has a sample here, so the table is checked against real output"


async def test_announce_changes_and_state_per_prefix() -> None:
    health = {"type": "tcp", "interval": 1, "timeout": 0.5, "rise": 1, "fall": 1, "jitter": 0}
    cfg = announce_config(vips=[dsr_vip("web", "198.18.100.1:80", health=health)])
    c, speaker, checks, clock, _ = announcing_controller(cfg)
    sources = metrics_sources(c)
    p = ("prefix", "198.18.100.1/32")
    announce, withdraw = (("action", "announce"), p), (("action", "withdraw"), p)
    await c.start()
    try:
        up = scrape(sources)
        assert up[("sluice_announce_prefix_announced", (p,))] == 1
        assert up[("sluice_announce_changes_total", announce)] == 1
        assert ("sluice_announce_changes_total", withdraw) not in up
        assert up[("sluice_announce_errors_total", ())] == 0

        checks.down.add(cfg.vips[0].listen)  # health takes every backend out (dsr: checked on the VIP)
        clock.t = 1.0
        await c.on_health(await c.monitor.step())
        down = scrape(sources)
        assert down[("sluice_announce_prefix_announced", (p,))] == 0  # still listed while withdrawn
        assert down[("sluice_announce_changes_total", announce)] == 1
        assert down[("sluice_announce_changes_total", withdraw)] == 1
        assert (
            down[
                (
                    "sluice_health_check_failures_total",
                    (("backend", "198.18.2.11:80"), ("reason", "refused"), ("vip", "web")),
                )
            ]
            == 1
        )

        speaker.fail = True  # coming back, but BIRD refuses: counted, state unchanged
        checks.down.clear()
        clock.t = 2.0
        await c.on_health(await c.monitor.step())
        failed = scrape(sources)
        assert failed[("sluice_announce_errors_total", ())] == 1
        assert failed[("sluice_announce_prefix_announced", (p,))] == 0
    finally:
        await c.close()
    assert scrape(sources)[("sluice_announce_changes_total", announce)] == 1


def test_without_an_announce_block_the_announce_families_are_empty() -> None:
    families = {f.name: f for f in text_string_to_metric_families(exposition(Sources(stats=dict)))}
    assert families["sluice_announce_changes"].samples == []
    assert families["sluice_announce_prefix_announced"].samples == []
    assert "sluice_announce_errors" not in families
