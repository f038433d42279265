"""The effective config: health, admin state, runtime weights, fail_open and slow start."""

from __future__ import annotations

from typing import Any

from sluice.config import Config, Endpoint
from sluice.control.effective import SLOW_START_SCALE, BackendView, effective_config, ramping
from tests.support.fakes import ep, make_config

UP = BackendView(usable=True, admin_active=True, usable_since=0.0)
DOWN = BackendView(usable=False, admin_active=True)
DRAINED = BackendView(usable=False, admin_active=False)


def weights(config: Config) -> list[int]:
    return [b.weight for b in config.vips[0].backends]


def views(*states: BackendView) -> dict[tuple[str, Endpoint], BackendView]:
    return {("web", ep(9001 + i)): s for i, s in enumerate(states)}


def test_all_usable_is_the_same_object() -> None:
    config = make_config()
    assert effective_config(config, views(UP, UP, UP), 0.0) is config
    assert effective_config(config, {}, 0.0) is config  # unknown backends start usable


def test_unusable_backends_get_weight_zero() -> None:
    config = make_config()
    eff = effective_config(config, views(UP, DOWN, DRAINED), 0.0)
    assert weights(eff) == [1, 0, 0]
    assert weights(config) == [1, 1, 1]  # the running config is never mutated


def test_runtime_weight() -> None:
    config = make_config()
    v = BackendView(usable=True, admin_active=True, weight=7)
    assert weights(effective_config(config, views(v, UP, DOWN), 0.0)) == [7, 1, 0]


def test_all_down_refuses_unless_fail_open() -> None:
    assert weights(effective_config(make_config(), views(DOWN, DOWN, DOWN), 0.0)) == [0, 0, 0]
    fail_open = make_config(fail_open=True)
    assert weights(effective_config(fail_open, views(DOWN, DOWN, DRAINED), 0.0)) == [1, 1, 0]
    assert weights(effective_config(fail_open, views(DOWN, UP, DRAINED), 0.0)) == [0, 1, 0]


def test_slow_start_ramps_weight_aware_schedulers() -> None:
    fields: dict[str, Any] = {"scheduler": "round_robin", "slow_start": "10s"}
    config = make_config(**fields)
    fresh = BackendView(usable=True, admin_active=True, usable_since=100.0)
    s = SLOW_START_SCALE
    assert weights(effective_config(config, views(UP, UP, fresh), 100.0)) == [s, s, 1]
    assert weights(effective_config(config, views(UP, UP, fresh), 105.0)) == [s, s, 5]
    assert weights(effective_config(config, views(UP, UP, fresh), 110.0)) == [s, s, s]
    assert ramping(config, views(UP, UP, fresh), 105.0)
    assert not ramping(config, views(UP, UP, fresh), 110.0)


def test_slow_start_leaves_maglev_alone() -> None:
    config = make_config(slow_start="10s")
    fresh = BackendView(usable=True, admin_active=True, usable_since=100.0)
    assert effective_config(config, views(UP, UP, fresh), 101.0) is config
    assert not ramping(config, views(UP, UP, fresh), 101.0)
