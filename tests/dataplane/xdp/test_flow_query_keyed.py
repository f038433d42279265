"""A keyed dsr VIP (``hash_key:``) end to end: the XdpPlane writes the key into the VIP's entry, the
loaded program sends each new flow where `sluice flow` (with the key from the config) and the plane's
own `flow_backend` say, an answer without the key is wrong about as often as chance says, and
dropping the key again puts every flow back on its unkeyed backend, counted as a table change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.config import Config
from sluice.core.flow import FiveTuple, HashKey
from sluice.dataplane.xdp import loader
from tests.dataplane.xdp.harness import pinned_cpu
from tests.dataplane.xdp.test_flow_query import DNS3, VIP_ADDR, answer, program_backend, random_sources
from tests.dataplane.xdp.test_plane import WEB3, config, make_plane
from tests.support.privileged import needs

KEY = HashKey.from_hex("c0ffee00deadbeef0123456789abcdef")
TUPLES = 200  # per VIP
PORTS = {"web": 80, "dns": 53}


@pytest.fixture
def instance() -> Iterator[str]:
    needs(root=True, commands=("clang",))
    name = f"test-flowqk-{os.getpid()}"
    loader.remove_pins(name)
    yield name
    loader.remove_pins(name)


def keyed(cfg: Config, key: HashKey | None) -> Config:
    vips = tuple(v.model_copy(update={"hash_key": key}) if v.mode == "dsr" else v for v in cfg.vips)
    return cfg.model_copy(update={"vips": vips})


async def test_a_keyed_vip_goes_where_sluice_flow_says_with_the_key(instance: str, tmp_path: Path) -> None:
    unkeyed_cfg = config(WEB3, udp_backends=DNS3)
    keyed_cfg = keyed(unkeyed_cfg, KEY)
    plane = make_plane(instance, tmp_path)
    await plane.apply(keyed_cfg)
    try:
        for _ in pinned_cpu():
            for vip, seed in (("web", 3), ("dns", 4)):
                unkeyed_agrees = 0
                for src, sport in random_sources(seed, TUPLES):
                    got = program_backend(plane, vip, src, sport)
                    assert answer(keyed_cfg, vip, src, sport) == got, (vip, src, sport)
                    flow = FiveTuple.of((src, sport), (VIP_ADDR, PORTS[vip]), 6 if vip == "web" else 17)
                    where = plane.flow_backend(flow)
                    assert where is not None and where[0] == got
                    unkeyed_agrees += answer(unkeyed_cfg, vip, src, sport) == got
                # three backends: an unkeyed answer agrees with the keyed program about a third of the time
                assert unkeyed_agrees < TUPLES // 2, (vip, unkeyed_agrees)

            before = plane.stats()["web"].table_slots_changed
            await plane.apply(unkeyed_cfg)  # the key removed: flows hash as before, every slot "moved"
            assert (
                plane.stats()["web"].table_slots_changed - before == unkeyed_cfg.vip("web").maglev_table_size
            )
            for src, sport in random_sources(5, 50):
                assert program_backend(plane, "web", src, sport) == answer(unkeyed_cfg, "web", src, sport)
    finally:
        await plane.close()
