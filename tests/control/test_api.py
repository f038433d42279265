"""The admin API against a fake controller: reads, changes, auth, reload, openapi, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientSession, UnixConnector, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import AdminOptions
from sluice.control.api import API, AdminServer, TokenError, build_app, openapi_document, read_token
from sluice.control.client import read_token_file
from sluice.control.metrics import Sources, build_registry
from sluice.core.health import Admin
from sluice.dataplane.stats import VipStats
from tests.support.admin import TOKEN, FakeController, Reloader
from tests.support.loopback import free_port
from tests.support.privileged import needs


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
    body = await r.json()
    assert r.status == 200 and body["ok"] is True and body["applied"] is True and body["vips"] == ["web"]
    assert body["changes"]["vips_added"] == ["dns"]
    assert body["lines"] == ["vip dns added (udp/127.0.0.1:5353, 2 backends)"]
    assert body["runtime"][0].startswith("vip web: backend 127.0.0.1:9001 drain")
    r = await client.post("/api/v1/reload?dry_run=true", headers=AUTH)
    assert (await r.json())["applied"] is False and reloader.dry_runs == 1
    r = await client.post("/api/v1/reload?dry_run=maybe", headers=AUTH)
    assert r.status == 400 and "dry_run must be true or false" in (await r.json())["error"]
    assert reloader.count == 2
    reloader.valid = False
    r = await client.post("/api/v1/reload", headers=AUTH)
    body = await r.json()
    assert r.status == 400 and body["ok"] is False and body["errors"][0].startswith("vips[0].listen")


async def test_server_info_has_version_uptime_and_the_last_reload(
    api: tuple[TestClient[Any, Any], FakeController, Reloader],
) -> None:
    client, _, _ = api
    r = await client.get("/api/v1/server")
    assert r.status == 200
    assert await r.json() == {
        "version": "9.9.9",
        "started_at": 1_700_000_000.0,
        "uptime_s": 3725.0,
        "last_reload_at": None,
        "last_reload_result": None,
        "last_reload_error": None,
        "reloads": {},
    }


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
        assert oct(path.stat().st_mode & 0o777) == "0o600"  # owner-only by default
    finally:
        await tcp.close()
        await unix.close()
    assert not path.exists()


def test_read_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    assert read_token(path) == TOKEN
    path.write_text("short\n")
    with pytest.raises(TokenError, match="at least 16"):
        read_token(path)
    with pytest.raises(TokenError, match="cannot read"):
        read_token(tmp_path / "missing")


def test_the_cli_client_reads_the_token_as_the_server_does(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}  \nsecond line\n")
    path.chmod(0o600)
    assert read_token_file(path) == read_token(path) == TOKEN
    assert read_token_file(None) is None
    path.write_text("short\n")
    with pytest.raises(TokenError, match="at least 16"):  # refused before any request is sent
        read_token_file(path)
    with pytest.raises(OSError, match="cannot read"):  # what `sluice backend` reports as unreadable
        read_token_file(tmp_path / "missing")


async def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send `request` as bytes (headers a client library would refuse to send); the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (b"Bearer \xff\xfe\xfd", 400),
        ("Bearer t\u00f6ken-0123456789abcdef".encode(), 400),
        (b"Bearer " + TOKEN.encode() + b"\xc3", 400),
        (b"\xe2\x82\xac " + TOKEN.encode(), 400),
        (b"Bearer", 401),
        (b"Bearer ", 401),
        (b"Basic dXNlcjpwYXNz", 401),
        (b"bearer  wrong", 401),
        (b" ", 401),
    ],
)
async def test_a_malformed_authorization_header_is_400_or_401_and_one_log_line(
    caplog: pytest.LogCaptureFixture, authorization: bytes, status: int
) -> None:
    fake, reloader = FakeController(), Reloader()
    async with TestServer(build_app(fake, token=TOKEN, reload=reloader)) as server:
        caplog.clear()
        for path in (b"/api/v1/reload", b"/api/v1/vips/web/backends/127.0.0.1:9001/drain"):
            request = (
                b"POST " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                b"Authorization: " + authorization + b"\r\nContent-Length: 0\r\n\r\n"
            )
            answer, body = await raw_request(server.port, request)
            assert answer == status, body
            assert "error" in json.loads(body)
    assert fake.calls == [] and reloader.count == 0
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 2, [r.getMessage() for r in records]  # one line per request
    assert all(r.name == "sluice.control.api" and r.exc_info is None for r in records)
    assert all("refused" in r.getMessage() for r in records)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [0o600, 0o660], ids=oct)
@pytest.mark.usefixtures("umask_000")
async def test_the_unix_socket_never_exists_with_a_wider_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    """Under umask 000 the socket is checked the instant bind returns: never wider than its mode."""
    path = tmp_path / "admin.sock"
    modes_at_bind: list[int] = []
    real_bind = socket.socket.bind

    def bind_and_look(sock: socket.socket, address: Any) -> None:
        real_bind(sock, address)
        if address == str(path):
            modes_at_bind.append(os.stat(path).st_mode & 0o777)

    monkeypatch.setattr(socket.socket, "bind", bind_and_look)
    admin = AdminServer(
        AdminOptions(listen=str(path), socket_mode=mode),
        lambda unix: build_app(FakeController(), over_unix=unix),
    )
    await admin.start()
    try:
        assert modes_at_bind == [mode]
        assert path.stat().st_mode & 0o777 == mode
    finally:
        await admin.close()


async def test_another_user_cannot_connect_to_the_unix_socket() -> None:
    needs(root=True)
    where = Path(tempfile.mkdtemp(prefix="sluice-admin-", dir="/tmp"))
    try:
        where.chmod(0o755)  # the directory lets everyone through: only the socket's mode decides
        path = where / "admin.sock"
        admin = AdminServer(
            AdminOptions(listen=str(path)), lambda unix: build_app(FakeController(), over_unix=unix)
        )
        await admin.start()
        try:
            assert connect_as(65534, str(path)) == "refused: permission"
            assert connect_as(0, str(path)) == "connected"
        finally:
            await admin.close()
    finally:
        shutil.rmtree(where)


def connect_as(uid: int, path: str) -> str:
    """Connect to `path` from a child process running as `uid` (only plain syscalls after fork)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 13: "refused: permission"}.get(os.waitstatus_to_exitcode(status), "error")


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 30):
        data += chunk
    return data


async def test_admin_connections_are_capped_and_idle_ones_closed(caplog: pytest.LogCaptureFixture) -> None:
    admin = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{free_port()}", max_connections=4, idle_timeout=0.5),
        lambda unix: build_app(FakeController(), over_unix=unix),
    )
    await admin.start()
    assert admin.port is not None
    held = [await asyncio.open_connection("127.0.0.1", admin.port) for _ in range(3)]
    try:
        # a slow client: part of a request, never the end of its headers
        held[0][1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        status, _ = await raw_request(
            admin.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200  # the 4th connection is served
        fourth = await asyncio.open_connection("127.0.0.1", admin.port)
        held.append(fourth)
        status, body = await raw_request(admin.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "too many admin connections" in json.loads(body)["error"]
        assert admin.refused == 1
        assert [r.getMessage() for r in caplog.records if "refusing connections" in r.getMessage()]
        # idle connections (the slow one included) are closed by the server, freeing their slots
        for reader, _ in held:
            assert await read_until_closed(reader) == b""
        status, _ = await raw_request(
            admin.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200
    finally:
        for _, writer in held:
            writer.close()
        await admin.close()


async def test_no_admin_connection_when_descriptors_are_short(monkeypatch: pytest.MonkeyPatch) -> None:
    import sluice.control.api as api_module

    admin = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{free_port()}"),
        lambda unix: build_app(FakeController(), over_unix=unix),
        fd_reserve=64,
    )
    await admin.start()
    assert admin.port is not None
    try:
        monkeypatch.setattr(api_module, "free_descriptors", lambda: 63)
        status, _ = await raw_request(admin.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and admin.refused == 1
        monkeypatch.setattr(api_module, "free_descriptors", lambda: 64)
        status, _ = await raw_request(
            admin.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 200
    finally:
        await admin.close()


def test_free_descriptors_follows_the_limit() -> None:
    import resource

    from sluice.control.api import free_descriptors

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = free_descriptors()
    assert 0 < before < soft
    extra = [socket.socket() for _ in range(10)]
    try:
        assert free_descriptors() == before - 10
    finally:
        for s in extra:
            s.close()


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every API route (the status page's HTML routes are not the API's)."""
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and (path.startswith(API) or path in ("/healthz", "/metrics")):
            routes.add((route.method.lower(), path))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, ops in openapi_document()["paths"].items() for method in ops}


def fill(template: str, name: str, addr: str) -> str:
    return template.replace("{name}", quote(name, safe="")).replace("{addr}", quote(addr, safe=""))


WALK_NAMES = ("web", "nope")
WALK_ADDRS = ("127.0.0.1:9001", "127.0.0.1:1", "not-an-address", "[::1]:70000")
WALK_AUTH: tuple[bytes | None, ...] = (
    None,
    f"Bearer {TOKEN}".encode(),
    b"Bearer wrong-token-0123456789",
    b"Bearer \xff\xfe",
    b"Basic x",
)
WALK_BODIES = (b"", b'{"weight": 3}', b'{"weight": 70000}', b'{"weight": "3"}', b"not json", b" " * 5000)


async def test_the_openapi_document_lists_every_route_and_every_status_answered() -> None:
    """Walk every route with good and bad names, addresses, tokens and bodies, on each kind of server
    (token, no token over TCP and over the Unix socket, no reload, no registry): every status answered
    is one the document lists for that operation (issue 16.5)."""
    doc = openapi_document()
    apps = {
        "token": build_app(
            FakeController(), token=TOKEN, reload=Reloader(), registry=build_registry(Sources(stats=dict))
        ),
        "tcp, no token": build_app(FakeController()),
        "unix, no token": build_app(FakeController(), over_unix=True, reload=Reloader()),
    }
    failing = Reloader()
    failing.valid = False
    apps["invalid reload"] = build_app(FakeController(), token=TOKEN, reload=failing)
    unseen: list[str] = []
    for kind, app in apps.items():
        assert api_routes(app) == documented_routes(), kind
        async with TestServer(app) as server:
            for method, template in sorted(documented_routes()):
                listed = set(doc["paths"][template][method]["responses"])
                answered = set()
                cases = itertools.product(
                    WALK_NAMES if "{name}" in template else ("-",),
                    WALK_ADDRS if "{addr}" in template else ("-",),
                    WALK_AUTH if method == "post" else (None,),
                    WALK_BODIES if template.endswith("/weight") else (b"", b" " * 5000),
                )
                for name, addr, auth, body in cases:
                    request = (
                        method.upper().encode()
                        + b" "
                        + fill(template, name, addr).encode()
                        + b" HTTP/1.1\r\n"
                        b"Host: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                        + (b"Authorization: " + auth + b"\r\n" if auth is not None else b"")
                        + b"Content-Length: %d\r\n\r\n" % len(body)
                        + body
                    )
                    status, _ = await raw_request(server.port, request)
                    answered.add(str(status))
                assert "500" not in answered or template == API + "/reload"
                unseen += [f"{kind}: {method} {template} answered {s}" for s in sorted(answered - listed)]
    assert unseen == []


async def test_a_request_the_http_parser_refuses_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A control byte in a header never reaches the app: aiohttp's parser answers 400, and logs it as
    one warning line instead of an ERROR with a traceback (found by tests/fuzz/test_api_fuzz.py)."""
    admin = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{free_port()}"), lambda unix: build_app(FakeController(), token=TOKEN)
    )
    await admin.start()
    assert admin.port is not None
    try:
        caplog.clear()
        status, _ = await raw_request(
            admin.port,
            b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x03\x87\r\n"
            b"Connection: close\r\nContent-Length: 0\r\n\r\n",
        )
        assert status == 400
    finally:
        await admin.close()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)]
    assert "malformed request refused (400)" in records[0].getMessage()


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET / HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n", b"BAD\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n"],
    ids=["control byte in a header", "bad method", "NUL in the path"],
)
async def test_a_request_the_parser_refuses_is_answered_json_naming_no_versions(request_bytes: bytes) -> None:
    """aiohttp answers those itself, before the app: text and ``Server: Python/3.x aiohttp/3.x`` unless
    the admin server's connection handler rewrites them."""
    admin = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{free_port()}"), lambda unix: build_app(FakeController(), token=TOKEN)
    )
    await admin.start()
    assert admin.port is not None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(request_bytes)
        data = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
    finally:
        await admin.close()
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert head.split(b" ")[1] == b"400"
    assert headers[b"Server"] == b"sluice" and b"Python" not in head and b"aiohttp" not in head
    assert headers[b"Content-Type"].startswith(b"application/json")
    assert json.loads(body)["error"]


async def test_a_handler_that_raises_is_a_json_500_naming_no_versions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(FakeController):
        def snapshot(self) -> Any:
            raise RuntimeError("a bug")

    admin = AdminServer(AdminOptions(listen=f"127.0.0.1:{free_port()}"), lambda unix: build_app(Broken()))
    await admin.start()
    try:
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{admin.port}/api/v1/vips") as r:
            assert r.status == 500 and r.headers["Server"] == "sluice"
            assert await r.json() == {"error": "internal error; the sluice log has the details"}
    finally:
        await admin.close()
    assert any(
        r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records
    )  # the traceback is logged
