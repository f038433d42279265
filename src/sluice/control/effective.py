"""The effective config: the file's config with health, admin state and runtime weights folded in.

Pure (no I/O): the controller hands the result to the data planes, which then never need to know
about health. A backend that must take no new flows (down, rising, ejected, draining, maintenance)
gets weight 0: Maglev gives it no slots, so only the flows that hashed to it move, and the other
schedulers skip it. Its established flows are untouched (``on_backend_down: close`` and drain
timeouts close them through the data plane's `close_backend_flows`).

- **fail_open**: when no backend of a VIP is usable, ``fail_open: true`` sends to every backend that
  is not drained or in maintenance, with its configured weight; otherwise all weights are 0 and the
  data plane refuses new flows (counted as ``refused["no_backend"]``).
- **Slow start** (``slow_start: 30s``): for the weight-aware schedulers (round_robin, least_conn,
  random_two) a backend that became usable less than `slow_start` ago gets a share of its weight
  that ramps linearly from 10 % to 100 % in steps of 10 %. Weights of such VIPs are scaled by
  `SLOW_START_SCALE` (all of them, always, so the ratios stay exact and the scale never changes).
  **Maglev is left alone**: its table is a placement, not a rate, and changing a backend's weight
  would move other backends' flows on every step; a Maglev backend takes its full share as soon as
  it is up, and the table stays stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from sluice.config import Config, Endpoint, Vip
from sluice.core.health import slow_start_factor

SLOW_START_SCALE: Final = 10
"""Weights of slow-start VIPs are multiplied by this, so a 10 % step is still an integer."""


@dataclass(frozen=True, slots=True)
class BackendView:
    """What the effective config needs to know about one backend."""

    usable: bool
    """Health and admin state allow new flows."""
    admin_active: bool
    """Not drained, not in maintenance (fail_open only sends to these)."""
    usable_since: float | None = None
    weight: int | None = None
    """Runtime weight (``sluice backend weight``); None = the config's."""


UNKNOWN: Final = BackendView(usable=True, admin_active=True)
"""A backend the monitor does not know yet is taken as usable (it starts up)."""


def effective_vip(vip: Vip, views: Mapping[Endpoint, BackendView], now: float) -> Vip:
    """`vip` with every backend's weight replaced by the one the data plane should use."""
    configured = {
        b.address: (v.weight if (v := views.get(b.address, UNKNOWN)).weight is not None else b.weight)
        for b in vip.backends
    }
    usable = {b.address for b in vip.backends if views.get(b.address, UNKNOWN).usable}
    if not any(configured[a] > 0 for a in usable) and vip.fail_open:
        usable = {b.address for b in vip.backends if views.get(b.address, UNKNOWN).admin_active}
        ramp = False
    else:
        ramp = vip.slow_start is not None and vip.scheduler != "maglev"
    scale = SLOW_START_SCALE if vip.slow_start is not None and vip.scheduler != "maglev" else 1
    weights: dict[Endpoint, int] = {}
    for b in vip.backends:
        w = configured[b.address] if b.address in usable else 0
        if ramp and w > 0:
            factor = slow_start_factor(now, views.get(b.address, UNKNOWN).usable_since, vip.slow_start)
            w = w * max(1, round(factor * SLOW_START_SCALE))
        else:
            w *= scale
        weights[b.address] = w
    if all(weights[b.address] == b.weight for b in vip.backends):
        return vip
    backends = tuple(b.model_copy(update={"weight": weights[b.address]}) for b in vip.backends)
    return vip.model_copy(update={"backends": backends})


def effective_config(config: Config, views: Mapping[tuple[str, Endpoint], BackendView], now: float) -> Config:
    """Apply `effective_vip` to every VIP; `views` is keyed by (VIP name, backend address)."""
    vips = []
    for vip in config.vips:
        mine = {addr: view for (name, addr), view in views.items() if name == vip.name}
        vips.append(effective_vip(vip, mine, now))
    if all(a is b for a, b in zip(vips, config.vips, strict=True)):
        return config
    return config.model_copy(update={"vips": tuple(vips)})


def ramping(config: Config, views: Mapping[tuple[str, Endpoint], BackendView], now: float) -> bool:
    """Whether some backend is still in its slow start (the effective config changes with time)."""
    for vip in config.vips:
        if vip.slow_start is None or vip.scheduler == "maglev":
            continue
        for b in vip.backends:
            view = views.get((vip.name, b.address))
            if (
                view is not None
                and view.usable
                and slow_start_factor(now, view.usable_since, vip.slow_start) < 1
            ):
                return True
    return False
