"""The ``access_log:`` block of a VIP: defaults, bounds, where it is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.config import AccessLog, ConfigError, parse_config


def config(access_log: Any, **vip: Any) -> dict[str, Any]:
    return {
        "vips": [
            {
                "name": "web",
                "listen": "127.0.0.1:8080",
                "backends": [{"address": "127.0.0.1:9001"}],
                "access_log": access_log,
                **vip,
            }
        ]
    }


def test_defaults_and_a_full_block() -> None:
    assert parse_config(config(None)).vips[0].access_log is None
    assert parse_config(config({})).vips[0].access_log == AccessLog(format="plain", path="stderr", rate=1000)
    full = parse_config(config({"format": "json", "path": "/var/log/sluice/web.log", "rate": 50}))
    assert full.vips[0].access_log == AccessLog(format="json", path="/var/log/sluice/web.log", rate=50)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"format": "xml"}, "vips[0].access_log.format"),
        ({"path": "flows.log"}, "expected stderr or the absolute path of a file, got 'flows.log'"),
        ({"path": "/var/log/"}, "vips[0].access_log.path"),
        ({"rate": 0}, "vips[0].access_log.rate"),
        ({"rate": 10_000_001}, "vips[0].access_log.rate"),
        ({"rates": 5}, "vips[0].access_log.rates"),
    ],
)
def test_bad_blocks_are_reported_with_their_path(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(block))
    assert any(message in error for error in info.value.errors), info.value.errors


def test_a_dsr_vip_has_no_flow_log() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config({}, mode="dsr", dsr={"interface": "eth0"}))
    assert any("access_log is only supported for mode: proxy" in e for e in info.value.errors)
