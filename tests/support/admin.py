"""A fake controller and reloader: the admin API and the CLI tested without data planes."""

from __future__ import annotations

from typing import Any

from sluice.config import ConfigError, Endpoint
from sluice.control.controller import BackendSnapshot, ReloadResult, UnknownBackend, VipSnapshot
from sluice.control.reload_diff import ReloadDiff
from sluice.control.snapshot import ServerInfo
from sluice.core.health import Admin
from tests.support.fakes import make_config

TOKEN = "s3cret-token-0123456789"


def backend(addr: str, state: str = "up", weight: int = 1) -> BackendSnapshot:
    return BackendSnapshot(
        address=addr,
        state=state,
        admin="active",
        weight=weight,
        effective_weight=weight if state == "up" else 0,
        active=2,
        flows_total=10,
        connect_attempts=10,
        connect_ok=10,
        connect_errors={},
        bytes_to_backend=1,
        bytes_from_backend=2,
        datagrams_to_backend=0,
        datagrams_from_backend=0,
        suspect=False,
        last_check="connected",
        last_check_latency_s=0.001,
        since_s=3.0,
    )


class FakeController:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.states = {"127.0.0.1:9001": "up", "127.0.0.1:9002": "up"}
        self.weights = {"127.0.0.1:9001": 1, "127.0.0.1:9002": 1}

    def snapshot(self) -> list[VipSnapshot]:
        return [
            VipSnapshot(
                name="web",
                protocol="tcp",
                listen="127.0.0.1:8000",
                mode="proxy",
                scheduler="maglev",
                active=4,
                flows_total=20,
                sessions=0,
                refused={},
                closed={"done": 16},
                rebalanced=0,
                backends=[backend(a, self.states[a], self.weights[a]) for a in self.states],
            )
        ]

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            version="9.9.9",
            started_at=1_700_000_000.0,
            uptime_s=3725.0,
            last_reload_at=None,
            last_reload_result=None,
            last_reload_error=None,
            reloads={},
        )

    def _check(self, vip: str, address: Endpoint) -> None:
        if vip != "web" or str(address) not in self.states:
            raise UnknownBackend(f"no backend {address} in {vip}")

    async def set_admin(self, vip_name: str, address: Endpoint, admin: Admin) -> None:
        self._check(vip_name, address)
        self.calls.append(("admin", str(address), admin))
        self.states[str(address)] = {"active": "up", "drain": "draining", "maintenance": "maintenance"}[admin]

    async def set_weight(self, vip_name: str, address: Endpoint, weight: int) -> None:
        self._check(vip_name, address)
        if weight > 65535:
            raise ValueError("weight must be 0..65535")
        self.calls.append(("weight", str(address), weight))
        self.weights[str(address)] = weight


class Reloader:
    """A reload that adds VIP ``dns`` (or, `valid` False, is refused); `dry_runs` counts dry runs."""

    def __init__(self) -> None:
        self.valid = True
        self.count = 0
        self.dry_runs = 0

    async def __call__(self, dry_run: bool = False) -> ReloadResult:
        self.count += 1
        self.dry_runs += dry_run
        if not self.valid:
            raise ConfigError(["vips[0].listen: expected IPv4:port or [IPv6]:port, got 'x'"])
        diff = ReloadDiff(vips_added=("dns",), added_detail={"dns": "udp/127.0.0.1:5353, 2 backends"})
        runtime = [
            "vip web: backend 127.0.0.1:9001 drain (set at runtime) stays; a restart of sluice undoes it"
        ]
        return ReloadResult(make_config(), diff, runtime, applied=not dry_run)
