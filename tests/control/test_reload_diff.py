"""What a reload changes, as data and as one line per change (control/reload_diff.py)."""

from __future__ import annotations

from typing import Any

from sluice.config import Config, parse_config
from sluice.control.reload_diff import diff_configs, runtime_notes
from sluice.core.maglev import build_table, count_slots_changed
from tests.support.fakes import ep


def config(*vips: dict[str, Any], **top: Any) -> Config:
    return parse_config({"vips": list(vips), **top})


def vip(name: str = "web", ports: tuple[int, ...] = (9001, 9002, 9003), **fields: Any) -> dict[str, Any]:
    weights = fields.pop("weights", {})
    return {
        "name": name,
        "listen": fields.pop("listen", "127.0.0.1:8000"),
        "maglev_table_size": fields.pop("maglev_table_size", 251),
        "backends": [{"address": f"127.0.0.1:{p}", "weight": weights.get(p, 1)} for p in ports],
        **fields,
    }


def test_the_same_config_changes_nothing() -> None:
    c = config(vip())
    diff = diff_configs(c, c, c, c)
    assert diff.empty and diff.lines() == []


def test_vips_added_and_removed() -> None:
    old = config(vip("web"), vip("old", listen="127.0.0.1:8001"))
    new = config(vip("web"), vip("dns", listen="127.0.0.1:5353", protocol="udp", ports=(5301,)))
    diff = diff_configs(old, new, old, new)
    assert diff.lines() == ["vip dns added (udp/127.0.0.1:5353, 1 backends)", "vip old removed"]
    assert diff.to_json()["vips_added"] == ["dns"] and diff.to_json()["vips_removed"] == ["old"]


def test_backends_added_removed_reweighted_and_the_maglev_slots_that_move() -> None:
    old = config(vip(ports=(9001, 9002, 9003)))
    new = config(vip(ports=(9001, 9003, 9004), weights={9003: 3}))
    diff = diff_configs(old, new, old, new)
    expected = count_slots_changed(
        build_table([("127.0.0.1:9001", 1), ("127.0.0.1:9002", 1), ("127.0.0.1:9003", 1)], 251),
        build_table([("127.0.0.1:9001", 1), ("127.0.0.1:9003", 3), ("127.0.0.1:9004", 1)], 251),
    )
    assert 0 < expected < 251
    assert diff.lines() == [
        "vip web: backend 127.0.0.1:9004 added (weight 1)",
        "vip web: backend 127.0.0.1:9002 removed",
        "vip web: backend 127.0.0.1:9003 weight 1 -> 3",
        f"vip web: maglev {expected} of 251 slots move to another backend ({100 * expected / 251:.1f}% of new flows)",
    ]
    change = diff.to_json()["vips_changed"][0]
    assert change["maglev_slots_moved"] == expected and change["maglev_table_size"] == 251
    assert change["reweighted"] == [{"address": "127.0.0.1:9003", "old": 1, "new": 3}]


def test_slots_come_from_the_effective_weights() -> None:
    """A backend already at weight 0 (down) that the file removes moves no slot."""
    old, new = config(vip(ports=(9001, 9002))), config(vip(ports=(9001,)))
    old_effective = config(vip(ports=(9001, 9002), weights={9002: 0}))
    diff = diff_configs(old, new, old_effective, new)
    assert diff.lines() == ["vip web: backend 127.0.0.1:9002 removed"]
    assert diff.vips_changed[0].slots_moved == 0


def test_settings_changed_name_their_keys_and_values() -> None:
    old = config(vip(), shutdown_timeout="30s")
    new = config(
        vip(timeouts={"idle": "300s"}, max_connections=5, health={"type": "tcp", "interval": "2s"}),
        shutdown_timeout="10s",
        admin={"listen": "127.0.0.1:7000"},
    )
    lines = diff_configs(old, new, old, new).lines()
    assert "vip web: timeouts.idle 350.0 -> 300.0" in lines
    assert "vip web: max_connections 10000 -> 5" in lines
    assert any(line.startswith('vip web: health unset -> {"type":"tcp"') for line in lines)
    assert "shutdown_timeout 30.0 -> 10.0" in lines
    assert any(
        line.startswith("admin unset -> ") and line.endswith("(takes effect at the next restart)")
        for line in lines
    )


def test_a_scheduler_change_is_a_setting_and_no_slot_count() -> None:
    old, new = config(vip()), config(vip(scheduler="round_robin"))
    diff = diff_configs(old, new, old, new)
    assert diff.lines() == ['vip web: scheduler "maglev" -> "round_robin"']
    assert diff.vips_changed[0].slots_moved is None


def test_runtime_state_is_reported_as_undone_or_kept_until_a_restart() -> None:
    new = config(vip(ports=(9001, 9002), weights={9002: 4}))
    lines = runtime_notes(
        new,
        admin={("web", ep(9001)): "drain", ("web", ep(9003)): "maintenance"},
        weights={("web", ep(9001)): 7, ("web", ep(9002)): 9, ("web", ep(9003)): 2},
        dropped={("web", ep(9002)), ("web", ep(9003))},
    )
    assert lines == [
        "vip web: backend 127.0.0.1:9001 drain (set at runtime) stays; a restart of sluice undoes it",
        "vip web: backend 127.0.0.1:9003 maintenance (set at runtime) ends: the reload removes the backend",
        "vip web: backend 127.0.0.1:9001 runtime weight 7 (set at runtime) stays; a restart of sluice undoes it",
        "vip web: backend 127.0.0.1:9002 runtime weight 9 (set at runtime) ends: the file sets weight 4",
        "vip web: backend 127.0.0.1:9003 runtime weight 2 (set at runtime) ends: the reload removes the backend",
    ]
