"""The status page (``GET /``): served by sluice itself, then driven in a real headless Chromium.

The browser test talks the Chrome DevTools protocol over aiohttp's websocket client (no extra
package): it loads the page of an in-process controller carrying traffic, compares what the page
shows with the JSON API, kills a backend and waits for its row to turn red, checks that nothing
changes without the token (and that the buttons work with it), and saves screenshots in tmp_path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sluice.control import page
from sluice.control.api import build_app
from sluice.control.controller import BackendSnapshot, Controller, VipSnapshot
from sluice.control.metrics import build_registry
from sluice.server import metrics_sources
from tests.support.admin import TOKEN, FakeController, backend
from tests.support.loopback import Backends, Held, Load, free_port, vip_config, wait_for
from tests.support.privileged import needs

STATIC = Path(page.__file__).parent / "static"

# ---------------------------------------------------------------- HTTP, no browser


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(FakeController(), token=TOKEN))) as c:
        yield c


async def test_page_and_assets_are_served_by_sluice(client: TestClient[Any, Any]) -> None:
    r = await client.get("/")
    assert r.status == 200 and r.content_type == "text/html"
    html = await r.text()
    assert r.headers["Content-Security-Policy"] == page.CONTENT_SECURITY_POLICY
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [u for u in referenced if u.startswith("/static/")]
    assert {"/static/app.js", "/static/style.css", "/static/favicon.svg"} <= set(assets)
    for url in assets:
        asset = await client.get(url)
        assert asset.status == 200, url
        assert asset.content_type == page.ASSETS[url.removeprefix("/static/")]
    # only the page's own links, no other origin
    assert all(u.startswith("/") for u in referenced), referenced
    assert (await client.head("/")).status == 200


def test_assets_name_no_other_origin() -> None:
    """No CDN: the only absolute URL in the page's files is the SVG namespace."""
    for name in page.ASSETS:
        text = (STATIC / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)


async def test_unknown_routes_and_methods_answer_json(client: TestClient[Any, Any]) -> None:
    r = await client.get("/nope")
    assert r.status == 404 and await r.json() == {"error": "no such resource: GET /nope"}
    r = await client.get("/static/secret.txt")
    assert r.status == 404 and "error" in await r.json()
    r = await client.get("/static/index.html")  # the page itself lives at /
    assert r.status == 404
    r = await client.get("/api/v1/reload")
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert (await r.json())["error"].startswith("GET is not allowed on /api/v1/reload")
    r = await client.post("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 405 and "error" in await r.json()
    r = await client.post(
        "/api/v1/vips/web/backends/127.0.0.1:9001/weight",
        data=b"x" * 10_000,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert r.status == 413 and "4096" in (await r.json())["error"]
    # a handler's own JSON error passes unchanged
    r = await client.get("/api/v1/vips/nope")
    assert await r.json() == {"error": "no VIP named 'nope'"}


async def test_server_header_names_no_versions(client: TestClient[Any, Any]) -> None:
    for path in ("/", "/api/v1/vips", "/nope", "/healthz"):
        r = await client.get(path)
        assert r.headers["Server"] == "sluice", path
    r = await client.post("/api/v1/reload")
    assert r.status == 401 and r.headers["Server"] == "sluice"


# ---------------------------------------------------------------- the DevTools protocol


class DevTools:
    """One websocket to Chromium's browser endpoint; pages are flat sessions on it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=5000)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data["id"], None) if "id" in data else None
            if future is None:
                self.events.append(data)
            elif not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools websocket closed"))

    async def call(
        self, method: str, session: str | None = None, timeout_s: float = 20.0, **params: Any
    ) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, timeout_s)

    def of(self, session: str, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.events if e.get("sessionId") == session and e["method"] == method]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Tab:
    def __init__(self, devtools: DevTools, session: str) -> None:
        self.devtools = devtools
        self.session = session

    async def call(self, method: str, timeout_s: float = 20.0, **params: Any) -> dict[str, Any]:
        return await self.devtools.call(method, self.session, timeout_s, **params)

    async def evaluate(self, expression: str, timeout_s: float = 20.0) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            timeout_s=timeout_s + 5.0,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise AssertionError(f"in the page: {text}")
        return result["result"].get("value")

    async def until(self, predicate: str, timeout_s: float) -> Any:
        """Wait (bounded) until the JS expression `predicate` is truthy; checked at once and after
        every render of the page (its "sluice:render" event). Returns its value, None on timeout."""
        script = f"""new Promise((resolve) => {{
            const test = () => {{ try {{ return ({predicate}); }} catch (e) {{ return false; }} }};
            const finish = (v) => {{
                document.removeEventListener("sluice:render", check); clearTimeout(timer); resolve(v);
            }};
            const check = () => {{ const v = test(); if (v) finish(v); }};
            const timer = setTimeout(() => finish(null), {int(timeout_s * 1000)});
            document.addEventListener("sluice:render", check);
            check();
        }})"""
        return await self.evaluate(script, timeout_s=timeout_s)

    async def type_text(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", text=text)

    async def click(self, selector: str) -> None:
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (e) e.click(); return !!e; }})()"
        )
        assert found, f"nothing matches {selector}"

    async def screenshot(self, path: Path) -> bytes:
        result = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(result["data"])
        path.write_bytes(data)
        return data


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[DevTools]:
    """A headless Chromium with a fresh profile; yields its DevTools connection, stops it (by PID)."""
    needs(commands=("chromium",))
    with tempfile.TemporaryDirectory(prefix="sluice-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            "chromium",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        stderr: deque[str] = deque(maxlen=200)
        endpoint: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def drain() -> None:  # read stderr to its end, so Chromium never blocks on it
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                stderr.append(line)
                if line.startswith("DevTools listening on ") and not endpoint.done():
                    endpoint.set_result(line.removeprefix("DevTools listening on "))
            if not endpoint.done():
                endpoint.set_exception(RuntimeError("chromium exited:\n" + "\n".join(stderr)))

        reader = asyncio.create_task(drain())
        session = aiohttp.ClientSession()
        devtools = None
        try:
            url = await asyncio.wait_for(endpoint, 30.0)
            devtools = DevTools(await session.ws_connect(url, max_msg_size=64 * 1024 * 1024))
            yield devtools
        finally:
            if devtools is not None:
                with contextlib.suppress(Exception):
                    await devtools.call("Browser.close", timeout_s=5.0)
                await devtools.close()
            await session.close()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await reader


async def open_tab(devtools: DevTools, url: str) -> Tab:
    target = await devtools.call("Target.createTarget", url="about:blank")
    attached = await devtools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    tab = Tab(devtools, attached["sessionId"])
    for domain in ("Page", "Runtime", "Network", "Log"):
        await tab.call(f"{domain}.enable")
    await tab.call(
        "Emulation.setDeviceMetricsOverride", width=1500, height=1000, deviceScaleFactor=1, mobile=False
    )
    await tab.call("Page.navigate", url=url)
    return tab


# ---------------------------------------------------------------- the page in the browser

INTERVAL, TIMEOUT, FALL = 0.2, 0.2, 2
HEALTH = {"type": "tcp", "interval": INTERVAL, "timeout": TIMEOUT, "rise": 2, "fall": FALL, "jitter": 0.1}
REFRESH_S = 0.25
"""The page's poll interval in this test (``?refresh=``)."""
MAX_CONNECTIONS = 14

ROWS_JS = """Array.from(document.querySelectorAll('section.vip tr[data-backend]')).map((tr) => ({
    vip: tr.dataset.vip, address: tr.dataset.backend, state: tr.dataset.state,
    cells: Object.fromEntries(Array.from(tr.querySelectorAll('td[data-field]')).map(
        (td) => [td.dataset.field, {text: td.textContent, value: td.dataset.value ?? null}])),
}))"""

VIEW_JS = """(() => {
    const head = (f) => document.querySelector(`section.vip .vip-head [data-field="${f}"]`).textContent;
    const out = {vip: {active: head('active'), flows_total: head('flows_total'), refused: head('refused')},
                 backends: {}};
    for (const tr of document.querySelectorAll('section.vip tr[data-backend]')) {
        const td = (f) => tr.querySelector(`td[data-field="${f}"]`);
        out.backends[tr.dataset.backend] = {
            state: tr.dataset.state, admin: td('admin').textContent, weight: td('weight').textContent,
            effective_weight: td('effective_weight').textContent, active: td('active').textContent,
            flows_total: td('flows_total').textContent, connect_errors: td('connect_errors').textContent,
            bytes_to_backend: td('bytes_to_backend').dataset.value,
            bytes_from_backend: td('bytes_from_backend').dataset.value, flows_rate: td('flows_rate').textContent,
        };
    }
    return out;
})()"""
"""What the page shows, in the terms of `expected` (same keys, same order)."""


def _parse_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(unit)


def check_bytes_text(rows: list[dict[str, Any]]) -> None:
    """The human byte counts ("1.2 KiB") agree with the exact ones."""
    for row in rows:
        for field in ("bytes_to_backend", "bytes_from_backend"):
            cell = row["cells"][field]
            exact = int(cell["value"])
            assert exact > 0 and abs(_parse_bytes(cell["text"]) - exact) <= max(1.0, exact * 0.001), cell


def expected(vip: dict[str, Any]) -> dict[str, Any]:
    """The same view computed from the API's JSON (counters at rest: rates 0.0)."""
    return {
        "vip": {
            "active": str(vip["active"]),
            "flows_total": str(vip["flows_total"]),
            "refused": str(sum(vip["refused"].values())),
        },
        "backends": {
            b["address"]: {
                "state": b["state"],
                "admin": b["admin"],
                "weight": str(b["weight"]),
                "effective_weight": str(b["effective_weight"]),
                "active": str(b["active"]),
                "flows_total": str(b["flows_total"]),
                "connect_errors": str(sum(b["connect_errors"].values())),
                "bytes_to_backend": str(b["bytes_to_backend"]),
                "bytes_from_backend": str(b["bytes_from_backend"]),
                "flows_rate": "0.0",
            }
            for b in vip["backends"]
        },
    }


async def refused(vip_port: int) -> None:
    """A connection the VIP turns away: reset (or closed) before any greeting."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", vip_port)
    except ConnectionResetError:
        return
    try:
        data = await asyncio.wait_for(reader.read(100), 5.0)
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
    assert data == b"", data


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


async def test_status_page_in_a_browser(backends: Backends, tmp_path: Path) -> None:
    needs(commands=("chromium",))
    b0, b1, b2 = [await backends.add() for _ in range(3)]
    vip_port = free_port()
    controller = Controller(
        vip_config([b0, b1, b2], vip_port, health=HEALTH, max_connections=MAX_CONNECTIONS)
    )
    await controller.start()
    app = build_app(controller, token=TOKEN, registry=build_registry(metrics_sources(controller)))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    api = aiohttp.ClientSession()
    load = Load(vip_port, workers=2, max_flows=5000, pause_s=0.01)
    held: list[Held] = []

    async def api_vip() -> dict[str, Any]:
        async with api.get(base + "/api/v1/vips") as r:
            vip: dict[str, Any] = (await r.json())["vips"][0]
            return vip

    async def api_backend(address: str) -> dict[str, Any]:
        return next(b for b in (await api_vip())["backends"] if b["address"] == address)

    try:
        held = [await Held.open(vip_port) for _ in range(9)]
        load.start()
        async with chromium() as devtools:
            tab = await open_tab(devtools, f"{base}/?refresh={REFRESH_S}")

            # traffic: three rows, each with a positive flows/s, and the charts drawn
            rates = await tab.until(
                """(() => { const v = Array.from(document.querySelectorAll('td[data-field="flows_rate"]'))
                    .map((td) => Number(td.dataset.value)); return v.length === 3 && v.every((x) => x > 0) && v; })()""",
                timeout_s=15.0,
            )
            assert rates, await tab.evaluate(ROWS_JS)
            lines = await tab.evaluate("document.querySelectorAll('section.vip svg.chart polyline').length")
            assert lines >= 3 + 2  # one line per backend, connects and established
            await load.stop()
            assert load.errors() == 0

            # one flow over max_connections is refused
            extra = [await Held.open(vip_port) for _ in range(MAX_CONNECTIONS - len(held))]
            await refused(vip_port)
            for h in extra:
                h.close()
            await wait_for(lambda: controller.snapshot()[0].active == len(held), timeout_s=5.0)

            # at rest, the page shows what the API says
            vip = await api_vip()
            assert vip["refused"] == {"max_connections": 1}
            want = expected(vip)
            assert want["vip"]["active"] == "9" and int(want["vip"]["flows_total"]) > 9
            want_json = json.dumps(json.dumps(want, separators=(",", ":")))  # as JSON.stringify writes it
            matched = await tab.until(f"JSON.stringify({VIEW_JS}) === {want_json}", 10.0)
            assert (await tab.evaluate(VIEW_JS)) == want
            assert matched
            check_bytes_text(await tab.evaluate(ROWS_JS))
            chip = await tab.evaluate(
                "document.querySelector('[data-refused=\"max_connections\"]').dataset.value"
            )
            assert chip == "1"
            shot = await tab.screenshot(tmp_path / "status-page-live.png")
            assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000

            # a killed backend turns red within the check interval (+ the page's poll + margin)
            await b1.kill()
            bound = INTERVAL * (FALL + 1) + TIMEOUT + REFRESH_S + 3.0
            down = await tab.until(
                f"document.querySelector('tr[data-backend=\"{b1.address}\"]').dataset.state === 'down'",
                timeout_s=bound,
            )
            assert down, await tab.evaluate(ROWS_JS)
            assert (await api_backend(b1.address))["state"] == "down"
            colors = await tab.evaluate(
                f"""(() => {{ const tr = document.querySelector('tr[data-backend="{b1.address}"]');
                    return [getComputedStyle(tr).backgroundColor,
                            getComputedStyle(tr.querySelector('td.state')).color]; }})()"""
            )
            for css in colors:
                r, g, b = _rgb(css)
                assert r > g + 20 and r > b + 20, colors  # red (the row a pale red, the state text red)
            up_colors = await tab.evaluate(
                f"getComputedStyle(document.querySelector('tr[data-backend=\"{b0.address}\"] td.state')).color"
            )
            r, g, b = _rgb(up_colors)
            assert g > r, up_colors  # a healthy row is not red
            transitions = await tab.evaluate(
                f"Array.from(document.querySelectorAll('#transitions li[data-backend=\"{b1.address}\"]'))"
                ".map((li) => li.dataset.to)"
            )
            assert "down" in transitions, transitions
            assert await tab.until(
                "document.querySelector('section.vip svg.chart rect.s-down') !== null", 5.0
            )

            # no token: the buttons are disabled and a click changes nothing
            assert await tab.evaluate(
                "Array.from(document.querySelectorAll('td.actions button')).every((b) => b.disabled)"
            )
            await tab.click(f'tr[data-backend="{b0.address}"] button[data-action="drain"]')
            assert (await api_backend(b0.address))["admin"] == "active"
            assert await tab.evaluate("document.getElementById('mode').textContent") == "read-only"

            # a wrong token: the API refuses (401) and the page says so
            await tab.type_text("#token", "not-the-token-0123456789")
            await tab.click("#token-use")
            assert await tab.evaluate("document.querySelector('td.actions button').disabled") is False
            await tab.click(f'tr[data-backend="{b0.address}"] button[data-action="drain"]')
            message = await tab.until(
                "document.getElementById('message').dataset.kind === 'error'"
                " && document.getElementById('message').textContent",
                timeout_s=5.0,
            )
            assert message and "401" in message, message
            assert (await api_backend(b0.address))["admin"] == "active"

            # the token: drain, re-weight, undrain from the page
            await tab.type_text("#token", TOKEN)
            await tab.click("#token-use")
            assert await tab.evaluate("sessionStorage.getItem('sluice.token')") == TOKEN
            assert await tab.evaluate("document.getElementById('token').value") == ""
            assert await tab.evaluate("localStorage.length") == 0
            await tab.click(f'tr[data-backend="{b0.address}"] button[data-action="drain"]')
            assert await tab.until(
                f"document.querySelector('tr[data-backend=\"{b0.address}\"]').dataset.state === 'draining'",
                5.0,
            )
            assert (await api_backend(b0.address))["admin"] == "drain"
            await tab.evaluate(
                f"document.querySelector('tr[data-backend=\"{b2.address}\"] input[data-input=\"weight\"]').value = '5'"
            )
            await tab.click(f'tr[data-backend="{b2.address}"] button[data-action="weight"]')
            assert await tab.until(
                f'document.querySelector(\'tr[data-backend="{b2.address}"] td[data-field="weight"]\')'
                ".textContent === '5'",
                5.0,
            )
            assert (await api_backend(b2.address))["weight"] == 5
            await tab.click(f'tr[data-backend="{b0.address}"] button[data-action="undrain"]')
            assert await tab.until(
                f"document.querySelector('tr[data-backend=\"{b0.address}\"]').dataset.state === 'up'", 5.0
            )
            assert (await api_backend(b0.address))["admin"] == "active"

            shot = await tab.screenshot(tmp_path / "status-page.png")
            assert shot.startswith(b"\x89PNG\r\n\x1a\n")
            print(f"\nscreenshots: {tmp_path / 'status-page-live.png'} {tmp_path / 'status-page.png'}")

            # the page ran without a script error, and asked nothing of any other origin
            assert devtools.of(tab.session, "Runtime.exceptionThrown") == []
            console_errors = [
                e
                for e in devtools.of(tab.session, "Runtime.consoleAPICalled")
                if e["type"] in ("error", "assert")
            ]
            assert console_errors == []
            log_errors = [
                e["entry"]
                for e in devtools.of(tab.session, "Log.entryAdded")
                if e["entry"]["level"] == "error"
                and not (e["entry"]["source"] == "network" and "401" in e["entry"]["text"])
            ]
            assert log_errors == []
            urls = {e["request"]["url"] for e in devtools.of(tab.session, "Network.requestWillBeSent")}
            assert urls and all(u.startswith(base + "/") for u in urls), urls

            # sluice gone: the page says so instead of showing stale numbers as live
            await server.close()
            link = await tab.until(
                "document.getElementById('link').dataset.link === 'error'"
                " && document.getElementById('link').textContent",
                timeout_s=10.0,
            )
            assert link and link.startswith("API unreachable"), link
    finally:
        await load.stop()
        for h in held:
            h.close()
        await api.close()
        await server.close()
        await controller.close()


class KindsController(FakeController):
    """One VIP of each kind (TCP proxy, UDP proxy, DSR) whose counters grow on every read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def snapshot(self) -> list[VipSnapshot]:
        self.reads += 1
        n = self.reads
        tcp = dataclasses.replace(super().snapshot()[0], flows_total=20 * n)

        def grown(b: BackendSnapshot, **extra: Any) -> BackendSnapshot:
            return dataclasses.replace(
                b, flows_total=10 * n, bytes_to_backend=1000 * n, bytes_from_backend=3000 * n, **extra
            )

        udp_backend = grown(
            backend("127.0.0.1:5301"),
            datagrams_to_backend=7 * n,
            datagrams_from_backend=7 * n,
            last_check=MARKUP,
        )
        dsr_backend = grown(backend("198.18.0.10:80", state="down"))
        return [
            dataclasses.replace(tcp, backends=[grown(b) for b in tcp.backends]),
            dataclasses.replace(
                tcp, name="dns", protocol="udp", listen="127.0.0.1:53", sessions=42, backends=[udp_backend]
            ),
            dataclasses.replace(
                tcp, name="edge", listen="198.18.0.1:80", mode="dsr", announced=True, backends=[dsr_backend]
            ),
        ]


MARKUP = '<img src="/nope" data-injected="1">'
"""A string from the API that the page must show as text, never parse as HTML."""


async def test_page_shows_udp_and_dsr_vips_as_text(tmp_path: Path) -> None:
    needs(commands=("chromium",))
    server = TestServer(build_app(KindsController(), token=TOKEN), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with chromium() as devtools:
            tab = await open_tab(devtools, f"{base}/?refresh={REFRESH_S}&window=60")
            # rates need two samples; all three VIPs' flows/s become positive
            rates = await tab.until(
                """(() => { const v = Array.from(document.querySelectorAll('.vip-head [data-field="flows_rate"]'))
                    .map((b) => Number(b.textContent)); return v.length === 3 && v.every((x) => x > 0) && v; })()""",
                timeout_s=10.0,
            )
            assert rates
            view = await tab.evaluate(
                """Array.from(document.querySelectorAll('section.vip')).map((s) => ({
                    name: s.dataset.vip,
                    captions: Array.from(s.querySelectorAll('figcaption')).map((c) => c.textContent),
                    sessions: s.querySelector('.vip-head [data-field="sessions"]')?.textContent ?? null,
                    announced: s.querySelector('.vip-head [data-field="announced"]')?.textContent ?? null,
                    states: Array.from(s.querySelectorAll('tr[data-backend]')).map((tr) => tr.dataset.state),
                }))"""
            )
            assert [v["name"] for v in view] == ["web", "dns", "edge"]
            web, dns, edge = view
            assert web["captions"][1] == "connects vs established /s" and web["sessions"] is None
            assert dns["captions"][1] == "datagrams/s to and from backends" and dns["sessions"] == "42"
            assert edge["captions"][1].startswith("bytes/s to backends") and edge["announced"] == "yes"
            assert edge["states"] == ["down"]
            # the API's strings are text: the markup is shown, no element was made from it
            check = await tab.evaluate(
                'document.querySelector(\'tr[data-backend="127.0.0.1:5301"] td[data-field="last_check"]\').textContent'
            )
            assert check.startswith(MARKUP)
            assert await tab.evaluate("document.querySelectorAll('[data-injected]').length") == 0
            await tab.screenshot(tmp_path / "status-page-kinds.png")
            assert devtools.of(tab.session, "Runtime.exceptionThrown") == []
    finally:
        await server.close()
