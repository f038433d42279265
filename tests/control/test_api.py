"""The admin API against a fake controller: reads, changes, auth, reload, openapi, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, UnixConnector
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import AdminOptions, Config, ConfigError, Endpoint
from sluice.control.api import AdminServer, TokenError, build_app, openapi_document, read_token
from sluice.control.controller import BackendSnapshot, UnknownBackend, VipSnapshot
from sluice.control.metrics import Sources, build_registry
from sluice.core.health import Admin
from sluice.dataplane.stats import VipStats
from tests.control.fakes import free_port, make_config

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
    def __init__(self) -> None:
        self.valid = True
        self.count = 0

    async def __call__(self) -> Config:
        self.count += 1
        if not self.valid:
            raise ConfigError(["vips[0].listen: expected IPv4:port or [IPv6]:port, got 'x'"])
        return make_config()


@pytest.fixture
async def api() -> AsyncIterator[tuple[TestClient[Any, Any], FakeController, Reloader]]:
    fake, reloader = FakeController(), Reloader()
    stats = {"web": VipStats(active=3)}
    app = build_app(fake, token=TOKEN, reload=reloader, registry=build_registry(Sources(stats=lambda: stats)))
    async with TestClient(TestServer(app)) as client:
        yield client, fake, reloader


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_reads_are_open(api: tuple[TestClient[Any, Any], FakeController, Reloader]) -> None:
    client, _, _ = api
    r = await client.get("/api/v1/vips")
    assert r.status == 200
    body = await r.json()
    assert [v["name"] for v in body["vips"]] == ["web"]
    r = await client.get("/api/v1/vips/web/backends")
    assert [b["address"] for b in (await r.json())["backends"]] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert (await client.get("/api/v1/vips/nope")).status == 404
    assert (await (await client.get("/healthz")).json())["status"] == "ok"


async def test_changes_need_the_token(api: tuple[TestClient[Any, Any], FakeController, Reloader]) -> None:
    client, fake, reloader = api
    url = "/api/v1/vips/web/backends/127.0.0.1:9001/drain"
    r = await client.post(url)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = await client.post(url, headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    assert (await client.post("/api/v1/reload")).status == 401
    assert fake.calls == [] and reloader.count == 0
    r = await client.post(url, headers=AUTH)
    assert r.status == 200 and (await r.json())["state"] == "draining"
    r = await client.post("/api/v1/vips/web/backends/127.0.0.1:9001/undrain", headers=AUTH)
    assert (await r.json())["state"] == "up"
    r = await client.post("/api/v1/vips/web/backends/127.0.0.1:9002/maintenance", headers=AUTH)
    assert (await r.json())["state"] == "maintenance"
    assert [c[2] for c in fake.calls] == [Admin.DRAIN, Admin.ACTIVE, Admin.MAINTENANCE]


async def test_weight_and_errors(api: tuple[TestClient[Any, Any], FakeController, Reloader]) -> None:
    client, fake, _ = api
    url = "/api/v1/vips/web/backends/127.0.0.1:9002/weight"
    r = await client.post(url, json={"weight": 7}, headers=AUTH)
    assert r.status == 200 and (await r.json())["weight"] == 7
    for body in ({"weight": "7"}, {"w": 1}, {"weight": True}):
        assert (await client.post(url, json=body, headers=AUTH)).status == 400
    assert (await client.post(url, data=b"not json", headers=AUTH)).status == 400
    assert (await client.post(url, json={"weight": 70000}, headers=AUTH)).status == 400
    r = await client.post("/api/v1/vips/web/backends/127.0.0.1:1/weight", json={"weight": 1}, headers=AUTH)
    assert r.status == 404
    r = await client.post("/api/v1/vips/web/backends/not-an-address/drain", headers=AUTH)
    assert r.status == 400
    assert fake.calls == [("weight", "127.0.0.1:9002", 7)]


async def test_reload_reports_invalid_config(
    api: tuple[TestClient[Any, Any], FakeController, Reloader],
) -> None:
    client, _, reloader = api
    r = await client.post("/api/v1/reload", headers=AUTH)
    assert r.status == 200 and (await r.json()) == {"ok": True, "vips": ["web"]}
    reloader.valid = False
    r = await client.post("/api/v1/reload", headers=AUTH)
    body = await r.json()
    assert r.status == 400 and body["ok"] is False and body["errors"][0].startswith("vips[0].listen")


async def test_openapi_and_metrics(api: tuple[TestClient[Any, Any], FakeController, Reloader]) -> None:
    client, _, _ = api
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and doc == openapi_document()
    assert "/api/v1/vips/{name}/backends/{addr}/drain" in doc["paths"]
    assert set(doc["components"]["schemas"]["Backend"]["properties"]) >= {"state", "effective_weight"}
    r = await client.get("/metrics")
    assert r.status == 200
    families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert families["sluice_vip_flows_active"].samples[0].value == 3


async def test_without_token_changes_only_over_the_unix_socket(tmp_path: Path) -> None:
    fake = FakeController()
    tcp = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{free_port()}"), lambda unix: build_app(fake, over_unix=unix)
    )
    path = tmp_path / "admin.sock"
    unix = AdminServer(AdminOptions(listen=str(path)), lambda unix: build_app(fake, over_unix=unix))
    await tcp.start()
    await unix.start()
    try:
        url = "/api/v1/vips/web/backends/127.0.0.1:9001/drain"
        async with ClientSession() as s:
            r = await s.post(f"http://127.0.0.1:{tcp.port}{url}")
            assert r.status == 403
            r = await s.get(f"http://127.0.0.1:{tcp.port}/api/v1/vips")
            assert r.status == 200
        async with ClientSession(connector=UnixConnector(path=str(path))) as s:
            r = await s.post(f"http://localhost{url}")
            assert r.status == 200
        assert oct(path.stat().st_mode & 0o777) == "0o660"
    finally:
        await tcp.close()
        await unix.close()
    assert not path.exists()


def test_read_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert read_token(path) == TOKEN
    path.write_text("short\n")
    with pytest.raises(TokenError, match="at least 16"):
        read_token(path)
    with pytest.raises(TokenError, match="cannot read"):
        read_token(tmp_path / "missing")
