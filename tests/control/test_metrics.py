"""The Prometheus collector over hand-made counters: exposition parses, values follow the objects."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.control.metrics import Sources, build_registry
from sluice.control.monitor import BackendRecord
from sluice.core.health import BackendHealth, State
from sluice.dataplane.stats import VipStats
from sluice.server import metrics_sources
from tests.control.test_announce import config as announce_config
from tests.control.test_announce import controller as announcing_controller
from tests.control.test_announce import dsr_vip
from tests.support.fakes import ep


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
    vs.table_slots_changed += 21845
    after = scrape(sources)
    assert after[("sluice_flows_total", (bk, web))] == 3
    assert after[("sluice_flows_active", (bk, web))] == 1
    assert after[("sluice_vip_flows_total", (web,))] == 3
    assert after[("sluice_connect_attempts_total", (bk, web))] == 4
    assert after[("sluice_connects_established_total", (bk, web))] == 3
    assert after[("sluice_connect_errors_total", (bk, ("reason", "refused"), web))] == 1
    assert after[("sluice_bytes_total", (bk, ("direction", "to_backend"), web))] == 100
    assert after[("sluice_refused_flows_total", (("reason", "no_backend"), web))] == 2
    assert after[("sluice_maglev_slots_changed_total", (web,))] == 21845
    assert after[("sluice_backend_up", (bk, web))] == 1
    assert after[("sluice_backend_state", (bk, ("state", "up"), web))] == 1
    assert after[("sluice_backend_state", (bk, ("state", "down"), web))] == 0
    assert after[("sluice_health_check_duration_seconds_count", (bk, web))] == 2
    assert after[("sluice_health_check_duration_seconds_bucket", (bk, ("le", "0.005"), web))] == 1
    assert after[("sluice_health_check_duration_seconds_bucket", (bk, ("le", "+Inf"), web))] == 2
    assert after[("sluice_health_transitions_total", (bk, ("state", "down"), web))] == 1
    assert after[("sluice_reloads_total", (("result", "invalid"),))] == 1
    assert after[("sluice_health_checks_total", (bk, ("result", "pass"), web))] == 2


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
        assert up[("sluice_announced", (p,))] == 1
        assert up[("sluice_announce_changes_total", announce)] == 1
        assert ("sluice_announce_changes_total", withdraw) not in up
        assert up[("sluice_announce_errors_total", ())] == 0

        checks.down |= {b.address for b in cfg.vips[0].backends}  # health takes every backend out
        clock.t = 1.0
        await c.on_health(await c.monitor.step())
        down = scrape(sources)
        assert down[("sluice_announced", (p,))] == 0  # still listed while withdrawn
        assert down[("sluice_announce_changes_total", announce)] == 1
        assert down[("sluice_announce_changes_total", withdraw)] == 1

        speaker.fail = True  # coming back, but BIRD refuses: counted, state unchanged
        checks.down.clear()
        clock.t = 2.0
        await c.on_health(await c.monitor.step())
        failed = scrape(sources)
        assert failed[("sluice_announce_errors_total", ())] == 1
        assert failed[("sluice_announced", (p,))] == 0
    finally:
        await c.close()
    assert scrape(sources)[("sluice_announce_changes_total", announce)] == 1


def test_without_an_announce_block_the_announce_families_are_empty() -> None:
    text = generate_latest(build_registry(Sources(stats=dict))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["sluice_announce_changes"].samples == []
    assert families["sluice_announced"].samples == []
    assert "sluice_announce_errors" not in families
