"""XdpPlane sets up the check paths of the config it applies and removes them on close (a recording
CheckForwarding; the real one is exercised in tests/netns/test_dsr_checks.py). Root: the real program."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.config import Config, parse_config
from sluice.dataplane.xdp import loader
from sluice.dataplane.xdp.checkpath import check_paths, instance_prefix
from sluice.dataplane.xdp.checkroutes import CheckForwarding, Paths
from tests.dataplane.xdp.test_plane import WEB3, config, make_plane
from tests.support.privileged import needs


class RecordingForwarding(CheckForwarding):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[tuple[Paths, int]] = []
        self.closed = 0

    def apply(self, paths: Paths, prefix: int) -> None:
        self.applied.append((dict(paths), prefix))

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def instance() -> Iterator[str]:
    needs(root=True, commands=("clang",))
    name = f"test-plane-checks-{os.getpid()}"
    loader.remove_pins(name)
    yield name
    loader.remove_pins(name)


def checked(cfg: Config) -> Config:
    data = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    for vip in data["vips"]:
        if vip.get("mode") == "dsr":
            vip["health"] = {"type": "tcp"}
    return parse_config(data)


async def test_apply_installs_the_configs_check_paths_and_close_removes_them(
    instance: str, tmp_path: Path
) -> None:
    forwarding = RecordingForwarding()
    plane = make_plane(instance, tmp_path)
    plane.check_forwarding = forwarding
    cfg = checked(config(WEB3))
    try:
        await plane.apply(cfg)
        paths, prefix = forwarding.applied[-1]
        assert paths == check_paths(cfg) and len(paths) == 4  # 3 l2 web backends + 1 ipip dns backend
        assert prefix == instance_prefix("lb0")
        await plane.apply(config(WEB3))  # checks off: no paths
        assert forwarding.applied[-1] == ({}, prefix)
    finally:
        await plane.close()
    assert forwarding.closed == 1
