"""The status page on the admin listener: ``GET /`` and its assets, served from the package.

The page is static HTML, CSS and plain JavaScript (``control/static/``; no CDN, no build step). Its
script polls the JSON API the CLI uses (``/api/v1/vips``, ``/healthz``) and computes rates, health
transitions and the charts of the last minutes in the browser: there is no second data path. It
changes nothing unless the user types the admin token, which stays in the tab's sessionStorage and
goes out as ``Authorization: Bearer`` with the drain / undrain / maintenance / weight requests.

Also here, for the whole admin app: `json_errors` (unknown routes and wrong methods answer JSON like
every other error) and `server_header` (``Server: sluice``, naming no Python or aiohttp version).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web

STATIC_PREFIX: Final = "/static/"
ASSETS: Final = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""Every file the page is made of (name -> media type); nothing else under /static/ is served."""

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only sluice's own assets and API: no third-party script, style or request, no framing."""

SERVER: Final = "sluice"

_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load_assets() -> dict[str, bytes]:
    folder = importlib.resources.files("sluice.control").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}


def routes() -> list[web.RouteDef]:
    """``GET /`` (the page) and ``GET /static/{name}`` (its assets), read once from the package."""
    assets = _load_assets()

    def respond(name: str) -> web.Response:
        return web.Response(
            body=assets[name], headers={**_HEADERS, hdrs.CONTENT_TYPE: ASSETS[name] + "; charset=utf-8"}
        )

    async def index(request: web.Request) -> web.Response:
        return respond("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets or name == "index.html":
            return web.json_response({"error": f"no asset {name!r}"}, status=404)
        return respond(name)

    return [web.get("/", index), web.get(STATIC_PREFIX + "{name}", asset)]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route, method not allowed, body too large) as ``{"error": ...}``.

    Errors a handler already wrote as JSON pass unchanged."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {}
        if isinstance(exc, web.HTTPNotFound):
            message = f"no such resource: {request.method} {request.path}"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
            headers[hdrs.ALLOW] = ",".join(sorted(exc.allowed_methods))
        else:
            message = exc.text or exc.reason or "error"
        return web.json_response({"error": message}, status=exc.status, headers=headers)


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` hook: ``Server: sluice`` instead of aiohttp's Python/aiohttp versions."""
    response.headers[hdrs.SERVER] = SERVER
