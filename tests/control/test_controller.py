"""The controller over a fake data plane: effective config, admin states, reload, shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from sluice.config import Config, ConfigError
from sluice.control.controller import Controller, UnknownBackend
from sluice.control.monitor import Monitor
from sluice.core.health import Admin, State
from tests.support.fakes import FakeClock, FakePlane, ScriptedChecks, ep, make_config


def build(config: Config) -> tuple[Controller, FakePlane, FakeClock, ScriptedChecks]:
    plane, clock, checks = FakePlane(), FakeClock(), ScriptedChecks()
    holder: list[Controller] = []
    monitor = Monitor(lambda: holder[0].stats(), clock=clock, checkers=checks.registry())
    controller = Controller(config, {"proxy": lambda: plane}, monitor=monitor, clock=clock)
    holder.append(controller)
    return controller, plane, clock, checks


async def tick(controller: Controller, clock: FakeClock, t: float) -> None:
    clock.t = t
    await controller.on_health(await controller.monitor.step())


async def test_a_down_backend_gets_weight_zero_and_comes_back() -> None:
    controller, plane, clock, checks = build(make_config())
    await controller.apply(controller.config)
    assert plane.weights() == {"127.0.0.1:9001": 1, "127.0.0.1:9002": 1, "127.0.0.1:9003": 1}
    await tick(controller, clock, 0.0)
    checks.down.add(ep(9002))
    await tick(controller, clock, 1.0)
    assert plane.weights()["127.0.0.1:9002"] == 1  # falling: still usable
    await tick(controller, clock, 2.0)
    assert plane.weights()["127.0.0.1:9002"] == 0
    assert plane.closed == []  # on_backend_down: keep
    checks.down.clear()
    await tick(controller, clock, 3.0)
    await tick(controller, clock, 4.0)
    assert plane.weights()["127.0.0.1:9002"] == 1
    assert controller.config.vips[0].backends[1].weight == 1


async def test_on_backend_down_close_closes_its_flows() -> None:
    controller, plane, clock, checks = build(make_config(on_backend_down="close"))
    await controller.apply(controller.config)
    await tick(controller, clock, 0.0)
    checks.down.add(ep(9001))
    await tick(controller, clock, 1.0)
    await tick(controller, clock, 2.0)
    assert plane.closed == [("web", ep(9001), "backend_down")]


async def test_drain_stops_new_flows_then_closes_the_rest_after_drain_timeout() -> None:
    controller, plane, _, _ = build(make_config(drain_timeout="200ms"))
    await controller.apply(controller.config)
    plane.vip_stats["web"].backend("127.0.0.1:9003").active = 4
    await controller.set_admin("web", ep(9003), Admin.DRAIN)
    assert plane.weights()["127.0.0.1:9003"] == 0
    assert controller.monitor.record("web", ep(9003)).health.state is State.DRAINING
    assert plane.closed == []
    await asyncio.sleep(0.3)
    assert plane.closed == [("web", ep(9003), "drain_timeout")]
    assert controller.closed_by_control[("web", "drain_timeout")] == 4
    await controller.set_admin("web", ep(9003), Admin.ACTIVE)
    assert plane.weights()["127.0.0.1:9003"] == 1


async def test_undrain_before_the_deadline_keeps_flows() -> None:
    controller, plane, _, _ = build(make_config(drain_timeout="100ms"))
    await controller.apply(controller.config)
    await controller.set_admin("web", ep(9001), Admin.MAINTENANCE)
    await controller.set_admin("web", ep(9001), Admin.ACTIVE)
    await asyncio.sleep(0.2)
    assert plane.closed == []


async def test_runtime_weight_and_unknown_backends() -> None:
    controller, plane, _, _ = build(make_config())
    await controller.apply(controller.config)
    await controller.set_weight("web", ep(9001), 5)
    assert plane.weights()["127.0.0.1:9001"] == 5
    with pytest.raises(UnknownBackend):
        await controller.set_weight("web", ep(9999), 5)
    with pytest.raises(UnknownBackend):
        await controller.set_admin("nope", ep(9001), Admin.DRAIN)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        await controller.set_weight("web", ep(9001), -1)


def write(path: Path, config: Config) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))


async def test_reload_applies_the_difference_and_keeps_overrides(tmp_path: Path) -> None:
    controller, plane, _, _ = build(make_config(backends=3))
    await controller.apply(controller.config)
    await controller.set_admin("web", ep(9001), Admin.DRAIN)
    await controller.set_weight("web", ep(9002), 9)
    path = tmp_path / "sluice.yaml"
    write(path, make_config(backends=4))
    await controller.reload(path)
    assert plane.weights() == {
        "127.0.0.1:9001": 0,
        "127.0.0.1:9002": 9,
        "127.0.0.1:9003": 1,
        "127.0.0.1:9004": 1,
    }
    path.write_text("vips: [")
    applied = len(plane.applied)
    with pytest.raises(ConfigError):
        await controller.reload(path)
    assert len(plane.applied) == applied and len(controller.config.vips[0].backends) == 4
    assert controller.reloads == {"ok": 1, "invalid": 1}


async def test_graceful_shutdown_waits_for_flows_up_to_the_timeout() -> None:
    controller, plane, _, _ = build(make_config())
    await controller.start()
    stats = plane.vip_stats["web"]
    stats.active = 2

    async def finish() -> None:
        await asyncio.sleep(0.1)
        stats.active = 0

    task = asyncio.create_task(finish())
    left = await controller.shutdown(timeout_s=2.0)
    await task
    assert (left, plane.stopped, plane.is_closed) == (0, True, True)

    controller, plane, _, _ = build(make_config())
    await controller.start()
    plane.vip_stats["web"].active = 3
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await controller.shutdown(timeout_s=0.2) == 3
    assert 0.2 <= loop.time() - start < 1.0 and plane.is_closed


async def test_snapshot_shows_state_and_weights() -> None:
    controller, _plane, clock, checks = build(make_config())
    await controller.apply(controller.config)
    checks.down.add(ep(9003))
    await tick(controller, clock, 0.0)
    snap = controller.snapshot()
    assert [b.state for b in snap[0].backends] == ["up", "up", "down"]
    assert [b.effective_weight for b in snap[0].backends] == [1, 1, 0]
    assert snap[0].backends[2].last_check == "refused"


async def test_reload_returns_and_logs_one_line_per_change_and_dry_run_applies_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller, plane, _, _ = build(make_config(backends=3))
    await controller.apply(controller.config)
    await controller.set_admin("web", ep(9001), Admin.DRAIN)
    await controller.set_weight("web", ep(9002), 9)
    path = tmp_path / "sluice.yaml"
    write(path, make_config(backends=4))
    applied = len(plane.applied)
    caplog.set_level(logging.INFO, logger="sluice.control.controller")
    caplog.clear()

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "sluice.control.controller"]

    dry = await controller.reload(path, dry_run=True)
    assert not dry.applied and len(plane.applied) == applied and len(controller.config.vips[0].backends) == 3
    assert controller.reloads == {} and controller.last_reload is None and logged() == []
    assert dry.diff.lines()[0] == "vip web: backend 127.0.0.1:9004 added (weight 1)"
    assert dry.diff.lines()[1].startswith("vip web: maglev ")
    assert dry.runtime == [
        "vip web: backend 127.0.0.1:9001 drain (set at runtime) stays; a restart of sluice undoes it",
        "vip web: backend 127.0.0.1:9002 runtime weight 9 (set at runtime) stays; a restart of sluice undoes it",
    ]

    result = await controller.reload(path)
    assert result.applied and len(controller.config.vips[0].backends) == 4
    assert result.diff.lines() == dry.diff.lines()  # the dry run predicted what was applied
    assert logged()[0] == f"reloaded {path}: 1 VIPs, 2 changes"
    assert logged()[1:] == [f"reload: {line}" for line in result.diff.lines() + result.runtime]
    info = controller.server_info()
    assert info.last_reload_result == "ok" and info.last_reload_at is not None and info.reloads == {"ok": 1}


async def test_a_rejected_reload_is_one_error_line_and_shows_in_server_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller, _, _, _ = build(make_config())
    await controller.apply(controller.config)
    path = tmp_path / "sluice.yaml"
    path.write_text("vips: [")
    with pytest.raises(ConfigError):
        await controller.reload(path, dry_run=True)
    assert caplog.records == [] and controller.reloads == {}
    with pytest.raises(ConfigError):
        await controller.reload(path)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelname == "ERROR" and errors[0].exc_info is None
    assert errors[0].getMessage().startswith(f"reload of {path} rejected, keeping the running config: ")
    assert "\n" not in errors[0].getMessage()
    info = controller.server_info()
    assert info.last_reload_result == "invalid" and info.last_reload_error and info.reloads == {"invalid": 1}


async def test_a_reload_that_changes_a_runtime_weight_reports_it_undone(tmp_path: Path) -> None:
    controller, plane, _, _ = build(make_config(backends=2))
    await controller.apply(controller.config)
    await controller.set_weight("web", ep(9002), 9)
    path = tmp_path / "sluice.yaml"
    new = make_config(backends=2)
    vip = new.vips[0]
    backends = (vip.backends[0], vip.backends[1].model_copy(update={"weight": 4}))
    write(path, new.model_copy(update={"vips": (vip.model_copy(update={"backends": backends}),)}))
    result = await controller.reload(path)
    assert result.runtime == [
        "vip web: backend 127.0.0.1:9002 runtime weight 9 (set at runtime) ends: the file sets weight 4"
    ]
    assert "vip web: backend 127.0.0.1:9002 weight 1 -> 4" in result.diff.lines()
    assert plane.weights()["127.0.0.1:9002"] == 4
