"""The API status (the controller's snapshot) carries a VIP's QUIC counters."""

from __future__ import annotations

from dataclasses import asdict

import yaml

from sluice.config import parse_config
from tests.control.test_controller import build
from tests.control.test_flowquery_quic import CONFIG


async def test_the_api_status_carries_the_quic_counters() -> None:
    """The controller's snapshot (GET /api/v1/vips) shows a VIP's quic_routed / quic_fallback."""
    controller, plane, _, _ = build(parse_config(yaml.safe_load(CONFIG)))
    await controller.apply(controller.config)
    plane.vip_stats["h3"].quic_routed, plane.vip_stats["h3"].quic_fallback = 7, 2
    snap = {v.name: asdict(v) for v in controller.snapshot()}
    assert (snap["h3"]["quic_routed"], snap["h3"]["quic_fallback"]) == (7, 2)
    assert (snap["plain"]["quic_routed"], snap["plain"]["quic_fallback"]) == (0, 0)
