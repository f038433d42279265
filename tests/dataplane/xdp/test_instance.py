"""The XDP plane's operability (issue 15.5, 15.6): dsr.attach chooses the attach mode, shown in the log
and in `status()`; `instance:` names the pin directory, which a second plane of the same instance
cannot take. Real program and pins (root), fake neighbours, a recording attacher."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.config import Config, ConfigError, parse_config
from sluice.dataplane.xdp import instance as xdp_instance
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.instance import Attacher, InstanceInUse, attach_settings, default_instance
from sluice.dataplane.xdp.plane import XdpConfigError, XdpLimits, XdpPlane
from tests.dataplane.xdp.test_plane import FakeNeighbours
from tests.support.privileged import needs


class ModeAttacher:
    """Records the setting each attach got; 'native' fails like a driver without XDP support
    would make auto fall back (the real fallback is loader.attach_xdp's)."""

    def __init__(self) -> None:
        self.settings: list[str] = []

    def attach(self, ifindex: int, prog_fd: int, mode: str) -> str:
        self.settings.append(mode)
        return "native" if mode == "native" else "generic"

    def detach(self, ifindex: int, mode: str) -> None:
        pass


def dsr_config(
    *,
    attach: str | None = None,
    other_attach: str | None = None,
    instance: str | None = None,
    validate_only: bool = False,
) -> Config:
    """The config of two dsr VIPs on lb0 (`validate_only`: the model alone, not the loader's rules)."""

    def vip(name: str, port: int, mode: str | None) -> dict[str, Any]:
        dsr: dict[str, Any] = {"interface": "lb0"}
        if mode is not None:
            dsr["attach"] = mode
        return {
            "name": name,
            "listen": f"198.18.100.1:{port}",
            "mode": "dsr",
            "maglev_table_size": 251,
            "dsr": dsr,
            "backends": [{"address": f"198.18.1.11:{port}"}],
        }

    data: dict[str, Any] = {"vips": [vip("web", 80, attach), vip("alt", 81, other_attach or attach)]}
    if instance is not None:
        data["instance"] = instance
    return Config.model_validate(data) if validate_only else parse_config(data)


@pytest.fixture
def name() -> Iterator[str]:
    needs(root=True, commands=("clang",))
    n = f"test-inst-{os.getpid()}"
    loader.remove_pins(n)
    yield n
    loader.remove_pins(n)


def plane(tmp_path: Path, attacher: ModeAttacher, instance: str | None = None) -> XdpPlane:
    return XdpPlane(
        instance,
        neighbours=FakeNeighbours(),
        attacher=attacher,  # type: ignore[arg-type]
        limits=XdpLimits(max_vips=4, max_backends=64, conntrack_entries=1024),
        cache_dir=tmp_path / "cache",
        refresh_interval_s=0,
    )


def test_default_instance_is_the_dsr_interfaces() -> None:
    assert default_instance(["eth1", "eth0", "eth1"]) == "eth0+eth1"
    assert default_instance([]) == "default"
    assert dsr_config().instance is None


def test_attach_setting_defaults_to_auto_and_must_agree_per_interface() -> None:
    assert attach_settings(dsr_config().vips) == {"lb0": "auto"}
    assert attach_settings(dsr_config(attach="generic").vips) == {"lb0": "generic"}
    with pytest.raises(ConfigError, match=r"vips\[1\]\.dsr\.attach: native differs from vips\[0\]"):
        dsr_config(attach="generic", other_attach="native")  # what `sluice check` reports
    with pytest.raises(XdpConfigError, match=r"vips\[alt\]: dsr.attach native differs .* lb0"):
        attach_settings(dsr_config(attach="generic", other_attach="native", validate_only=True).vips)


def test_attacher_maps_settings_to_loader_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []

    def fake_attach(ifindex: int, prog_fd: int, mode: str, *, fallback: bool) -> str:
        calls.append((mode, fallback))
        return mode

    monkeypatch.setattr(xdp_instance.loader, "attach_xdp", fake_attach)
    a = Attacher()
    assert [a.attach(1, 2, s) for s in ("auto", "native", "generic")] == ["native", "native", "generic"]
    assert calls == [("native", True), ("native", False), ("generic", False)]  # only auto falls back


@pytest.mark.parametrize(
    ("setting", "mode"), [("generic", "generic"), ("native", "native"), (None, "generic")]
)
async def test_attach_mode_from_config_in_log_and_status(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, setting: str | None, mode: str
) -> None:
    attacher = ModeAttacher()
    p = plane(tmp_path, attacher)
    caplog.set_level(logging.INFO, logger="sluice.dataplane.xdp.plane")
    try:
        await p.apply(dsr_config(attach=setting, instance=name))
        expected = setting or "auto"
        assert attacher.settings == [expected]
        assert f"XDP program attached to lb0 ({mode} mode, dsr.attach: {expected})" in caplog.text
        status = p.status()
        assert status["interfaces"] == {"lb0": {"mode": mode, "attach": expected}}
        assert status["instance"] == name
        assert status["pin_dir"] == f"/sys/fs/bpf/sluice/{name}"
        # a reload that changes dsr.attach re-attaches in the new mode
        await p.apply(dsr_config(attach="generic" if setting != "generic" else "native", instance=name))
        assert len(attacher.settings) == 2
    finally:
        await p.close()


async def test_instance_from_config_names_the_pin_directory(name: str, tmp_path: Path) -> None:
    p = plane(tmp_path, ModeAttacher())
    try:
        await p.apply(dsr_config(instance=name))
        assert p.instance == name
        assert (loader.PIN_ROOT / name / "conntrack").exists()
    finally:
        await p.close()


async def test_instance_defaults_to_the_interface(tmp_path: Path) -> None:
    needs(root=True, commands=("clang",))
    loader.remove_pins("lb0")
    p = plane(tmp_path, ModeAttacher())
    try:
        await p.apply(dsr_config())
        assert p.instance == "lb0"
        assert (loader.PIN_ROOT / "lb0" / "vips").exists()
    finally:
        await p.close()
        loader.remove_pins("lb0")


async def test_second_plane_with_the_same_instance_is_refused(name: str, tmp_path: Path) -> None:
    first = plane(tmp_path, ModeAttacher())
    second = plane(tmp_path, ModeAttacher())
    try:
        await first.apply(dsr_config(instance=name))
        with pytest.raises(InstanceInUse, match=rf"XDP instance '{name}' is in use by another process"):
            await second.apply(dsr_config(instance=name))
        await first.close()
        await second.apply(dsr_config(instance=name))  # the lock went with the first plane
        assert second.status()["instance"] == name
    finally:
        await first.close()
        await second.close()


def test_second_process_with_the_same_instance_gets_a_clear_error(name: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    lock = xdp_instance.PinLock(name, loader.pin_dir(name))
    try:
        code = (
            "import sys; from sluice.dataplane.xdp import instance, loader\n"
            f"try: instance.PinLock({name!r}, loader.pin_dir({name!r}))\n"
            "except instance.InstanceInUse as exc: print(exc); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert f"XDP instance '{name}' is in use by another process" in proc.stdout
        assert "`instance:`" in proc.stdout
    finally:
        lock.release()
