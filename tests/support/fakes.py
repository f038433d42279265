"""Fakes for control-plane tests: a clock, scripted checkers, a data plane, config builders."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sluice.checks import CheckResult
from sluice.config import Config, Endpoint, HealthCheck, parse_config
from sluice.dataplane.stats import VipStats


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class ScriptedChecks:
    """Checker factory: every target passes unless `down` holds it."""

    def __init__(self) -> None:
        self.down: set[Endpoint] = set()
        self.calls: list[Endpoint] = []
        self.marks: dict[Endpoint, int] = {}
        """target -> the SO_MARK of its last check."""

    def factory(self, spec: HealthCheck) -> Any:
        async def check(target: Endpoint, mark: int = 0) -> CheckResult:
            self.calls.append(target)
            self.marks[target] = mark
            if target in self.down:
                return CheckResult(False, "refused", 0.002, "refused")
            return CheckResult(True, "connected", 0.001)

        return check

    def registry(self) -> dict[Any, Any]:
        return defaultdict(lambda: self.factory)


class FakePlane:
    """Records what it was given; `stats` are hand-made VipStats keyed by VIP name."""

    def __init__(self) -> None:
        self.applied: list[Config] = []
        self.vip_stats: dict[str, VipStats] = {}
        self.closed: list[tuple[str, Endpoint, str]] = []
        self.stopped = False
        self.is_closed = False

    async def apply(self, config: Config) -> None:
        self.applied.append(config)
        for vip in config.vips:
            stats = self.vip_stats.setdefault(vip.name, VipStats())
            for b in vip.backends:
                stats.backend(str(b.address))

    def stats(self) -> dict[str, VipStats]:
        return self.vip_stats

    async def close(self) -> None:
        self.is_closed = True

    def close_backend_flows(self, vip_name: str, backend: Endpoint, reason: str) -> int:
        self.closed.append((vip_name, backend, reason))
        stats = self.vip_stats[vip_name].backend(str(backend))
        n, stats.active = stats.active, 0
        return n

    async def stop_accepting(self) -> None:
        self.stopped = True

    def weights(self, vip: str = "web") -> dict[str, int]:
        return {str(b.address): b.weight for b in self.applied[-1].vip(vip).backends}


def make_config(backends: int = 3, **vip_fields: Any) -> Config:
    vip: dict[str, Any] = {
        "name": "web",
        "listen": "127.0.0.1:8000",
        "backends": [{"address": f"127.0.0.1:{9001 + i}"} for i in range(backends)],
        "health": {"type": "tcp", "interval": 1, "timeout": 0.5, "rise": 2, "fall": 2, "jitter": 0},
    }
    vip.update(vip_fields)
    return parse_config({"vips": [vip]})


def ep(port: int) -> Endpoint:
    return Endpoint.parse(f"127.0.0.1:{port}")
