"""The Prometheus collector over hand-made counters: exposition parses, values follow the objects."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.control.metrics import Sources, build_registry
from sluice.control.monitor import BackendRecord
from sluice.core.health import BackendHealth, State
from sluice.dataplane.stats import VipStats
from tests.control.fakes import ep


def scrape(sources: Sources) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(build_registry(sources)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


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
    assert before[("sluice_flows_total", (bk, web))] == 0
    vs.flows_total += 3
    vs.active += 1
    b.flows_total += 3
    b.active += 1
    b.connect_attempts += 4
    b.connect_ok += 3
    b.connect_errors["refused"] += 1
    b.bytes_to_backend += 100
    vs.refused["no_backend"] += 2
    after = scrape(sources)
    assert after[("sluice_flows_total", (bk, web))] == 3
    assert after[("sluice_flows_active", (bk, web))] == 1
    assert after[("sluice_vip_flows_total", (web,))] == 3
    assert after[("sluice_connect_attempts_total", (bk, web))] == 4
    assert after[("sluice_connects_established_total", (bk, web))] == 3
    assert after[("sluice_connect_errors_total", (bk, ("reason", "refused"), web))] == 1
    assert after[("sluice_bytes_total", (bk, ("direction", "to_backend"), web))] == 100
    assert after[("sluice_refused_flows_total", (("reason", "no_backend"), web))] == 2
    assert after[("sluice_backend_up", (bk, web))] == 1
    assert after[("sluice_backend_state", (bk, ("state", "up"), web))] == 1
    assert after[("sluice_backend_state", (bk, ("state", "down"), web))] == 0
    assert after[("sluice_health_check_duration_seconds_count", (bk, web))] == 2
    assert after[("sluice_health_check_duration_seconds_bucket", (bk, ("le", "0.005"), web))] == 1
    assert after[("sluice_health_check_duration_seconds_bucket", (bk, ("le", "+Inf"), web))] == 2
    assert after[("sluice_health_transitions_total", (bk, ("state", "down"), web))] == 1
    assert after[("sluice_reloads_total", (("result", "invalid"),))] == 1
    assert after[("sluice_health_checks_total", (bk, ("result", "pass"), web))] == 2
