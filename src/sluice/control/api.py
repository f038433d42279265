"""The admin REST API (aiohttp), plus ``/healthz`` and ``/metrics``.

Reads are open to whoever can reach the socket (127.0.0.1 or a Unix socket by default). Changes
(``POST``) need ``Authorization: Bearer <token>`` when ``admin.token_file`` is set; without a token
file they are accepted only over a Unix socket (its file permissions are the access control) and
refused with 403 on TCP. The API talks to a narrow `AdminTarget` (the controller in production, a
fake in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import resource
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import unquote

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sluice import __version__
from sluice.config import AdminOptions, Endpoint
from sluice.control import page, reload_api
from sluice.control.controller import UnknownBackend
from sluice.control.openapi import API as API
from sluice.control.openapi import MAX_BODY_BYTES as MAX_BODY_BYTES
from sluice.control.openapi import openapi_document as openapi_document
from sluice.control.reload_api import Reloader as Reloader
from sluice.control.snapshot import ServerInfo, VipSnapshot
from sluice.control.token import TokenError as TokenError  # re-exported: the server reads the token here
from sluice.control.token import read_token as read_token
from sluice.control.token import token_matches
from sluice.core.health import Admin

log = logging.getLogger(__name__)

"""Largest request body accepted (the weight endpoint's JSON)."""


class AdminTarget(Protocol):
    def snapshot(self) -> list[VipSnapshot]: ...

    def server_info(self) -> ServerInfo: ...

    async def set_admin(self, vip_name: str, address: Endpoint, admin: Admin) -> None: ...

    async def set_weight(self, vip_name: str, address: Endpoint, weight: int) -> None: ...


_TARGET = web.AppKey("target", AdminTarget)
_TOKEN = web.AppKey("token", str)
_UNIX = web.AppKey("unix", bool)
_RELOAD: web.AppKey[Reloader | None] = web.AppKey("reload")
_REGISTRY = web.AppKey("registry", object)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=1))


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _peer(request: web.Request) -> str:
    return request.remote or "the Unix socket"


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return await handler(request)
    token = request.app[_TOKEN]
    if token:
        given = request.headers.get(hdrs.AUTHORIZATION, "")
        if not (given.isascii() and given.isprintable()):
            log.warning(
                "admin API: %s %s from %s refused: the Authorization header is not printable ASCII",
                request.method,
                request.path,
                _peer(request),
            )
            return _error(400, "the Authorization header must be printable ASCII: Bearer <token>")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(value.strip(), token):
            log.warning(
                "admin API: %s %s from %s refused: %s",
                request.method,
                request.path,
                _peer(request),
                "wrong bearer token" if scheme.lower() == "bearer" else "no bearer token",
            )
            return _error(401, "a valid bearer token is needed for changes", **{"WWW-Authenticate": "Bearer"})
    elif not request.app[_UNIX]:
        return _error(403, "changes need admin.token_file, or the API on a Unix socket")
    return await handler(request)


def _vip_json(vip: VipSnapshot) -> dict[str, Any]:
    return dataclasses.asdict(vip)


def _find(request: web.Request) -> VipSnapshot:
    name = request.match_info["name"]
    for vip in request.app[_TARGET].snapshot():
        if vip.name == name:
            return vip
    raise web.HTTPNotFound(
        text=json.dumps({"error": f"no VIP named {name!r}"}), content_type="application/json"
    )


def _backend_address(request: web.Request) -> Endpoint:
    text = unquote(request.match_info["addr"])
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from None


async def _list_vips(request: web.Request) -> web.Response:
    return _json({"vips": [_vip_json(v) for v in request.app[_TARGET].snapshot()]})


async def _get_vip(request: web.Request) -> web.Response:
    return _json(_vip_json(_find(request)))


async def _get_backends(request: web.Request) -> web.Response:
    return _json({"backends": [dataclasses.asdict(b) for b in _find(request).backends]})


def _backend_json(request: web.Request, address: Endpoint) -> dict[str, Any]:
    vip = _find(request)
    for b in vip.backends:
        if b.address == str(address):
            return dataclasses.asdict(b)
    return {}


def _admin_action(admin: Admin) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        address = _backend_address(request)
        try:
            await request.app[_TARGET].set_admin(request.match_info["name"], address, admin)
        except UnknownBackend as exc:
            return _error(404, str(exc.args[0]))
        return _json(_backend_json(request, address))

    return handler


async def _set_weight(request: web.Request) -> web.Response:
    address = _backend_address(request)
    try:
        body = await request.json()
        weight = body["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error(400, 'expected a JSON body like {"weight": 3}')
    try:
        await request.app[_TARGET].set_weight(request.match_info["name"], address, weight)
    except UnknownBackend as exc:
        return _error(404, str(exc.args[0]))
    except ValueError as exc:
        return _error(400, str(exc))
    return _json(_backend_json(request, address))


async def _reload(request: web.Request) -> web.Response:
    return await reload_api.reload(request, request.app[_RELOAD])


async def _server(request: web.Request) -> web.Response:
    return await reload_api.server_info(request, request.app[_TARGET])


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "version": __version__})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[_REGISTRY]
    if registry is None:
        return _error(404, "no metrics registry")
    assert isinstance(registry, CollectorRegistry)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


def build_app(
    target: AdminTarget,
    *,
    token: str | None = None,
    over_unix: bool = False,
    reload: Reloader | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    app = web.Application(middlewares=[page.json_errors, _auth], client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(page.server_header)
    app[_TARGET] = target
    app[_TOKEN] = token or ""
    app[_UNIX] = over_unix
    app[_RELOAD] = reload
    app[_REGISTRY] = registry
    backend = API + "/vips/{name}/backends/{addr}"
    app.add_routes(
        [
            web.get(API + "/vips", _list_vips),
            web.get(API + "/vips/{name}", _get_vip),
            web.get(API + "/vips/{name}/backends", _get_backends),
            web.post(backend + "/drain", _admin_action(Admin.DRAIN)),
            web.post(backend + "/undrain", _admin_action(Admin.ACTIVE)),
            web.post(backend + "/maintenance", _admin_action(Admin.MAINTENANCE)),
            web.post(backend + "/weight", _set_weight),
            web.post(API + "/reload", _reload),
            web.get(API + "/server", _server),
            web.get(API + "/openapi.json", _openapi),
            web.get("/healthz", _healthz),
            web.get("/metrics", _metrics),
        ]
    )
    app.add_routes(page.routes())  # GET / (the status page) and /static/*
    return app


FD_RESERVE = 64
"""Descriptors kept for the data plane: admin connections are refused while fewer are free."""

_REFUSED_BODY = b'{"error": "too many admin connections, retry later"}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


def free_descriptors() -> int:
    """Descriptors this process may still open (RLIMIT_NOFILE minus those open); large if unknown."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 1 << 30
    return (1 << 30) if soft == resource.RLIM_INFINITY else soft - in_use


class _Refuse(asyncio.Protocol):
    """An admin connection over the cap: answered 503 and closed at once (its descriptor freed)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.WriteTransport subclasses: no isinstance check)
        cast(asyncio.WriteTransport, transport).write(_REFUSED)
        transport.close()


class _GuardedSite(web.BaseSite):
    """A site on a socket bound by `AdminServer`: each accepted connection passes `admit(open)` first,
    `open` being the connections this site serves (counted from accept, not from aiohttp's later
    ``connection_made``, so a burst of accepts cannot pass the cap)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, admit: Callable[[int], bool]) -> None:
        super().__init__(runner)
        self._sock = sock
        self._admit = admit
        self._live: set[asyncio.BaseProtocol] = set()

    @property
    def name(self) -> str:
        return str(self._sock.getsockname())

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        live = self._live
        lost = server.connection_lost

        def on_lost(handler: Any, exc: BaseException | None = None) -> None:
            live.discard(handler)
            lost(handler, exc)

        server.connection_lost = on_lost  # type: ignore[method-assign]

        def protocol() -> asyncio.BaseProtocol:
            if not self._admit(len(live)):
                return _Refuse()
            handler = server()
            handler.__class__ = _JsonErrorHandler  # same slots: only handle_error differs
            live.add(handler)
            return handler

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler whose answer to a request it could not parse, or to a handler
    that raised, is JSON with ``Server: sluice`` (aiohttp's own is text naming the Python and aiohttp
    versions: the app's hooks never see a request that did not parse). It still logs and closes."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)
        text = "internal error; the sluice log has the details"
        if status != 500:
            text = " ".join((message or "bad request").split())[:200]
        response = web.json_response({"error": text}, status=status, headers={hdrs.SERVER: page.SERVER})
        response.force_close()
        return response


class _HttpLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log for the admin API: a request its parser refuses (a 400: a control byte in
    a header, a bad request line) is one warning line; a handler's exception keeps its traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            detail = " ".join(str(exc.message).split())[:200]
            self.logger.warning("admin API: malformed request refused (%d): %s", exc.code, detail)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


class AdminServer:
    """Runs one admin app on the listen address of `options` (IP:port or a Unix socket path).

    Bounded: at most ``options.max_connections`` connections, each closed after
    ``options.idle_timeout`` without a complete request; none accepted while fewer than `fd_reserve`
    descriptors are free, so idle admin clients cannot take the data plane's descriptors. A refused
    connection gets a 503 and is counted in `refused`. The Unix socket is bound under a umask that
    gives it ``options.socket_mode`` from its first instant.
    """

    def __init__(
        self,
        options: AdminOptions,
        app_factory: Callable[[bool], web.Application],
        *,
        fd_reserve: int = FD_RESERVE,
    ) -> None:
        self.options = options
        self._factory = app_factory
        self._fd_reserve = fd_reserve
        self._runner: web.AppRunner | None = None
        self.refused = 0
        """Connections refused (over the cap, or descriptors short)."""
        self._refusing = False

    async def start(self) -> None:
        unix = self.options.unix_path
        runner = web.AppRunner(
            self._factory(unix is not None),
            access_log=None,
            keepalive_timeout=self.options.idle_timeout,
            logger=_HttpLog(logging.getLogger(__name__ + ".http")),
        )
        await runner.setup()
        try:
            sock = _bind_unix(unix, self.options.socket_mode) if unix is not None else self._bind_tcp()
            try:
                site = _GuardedSite(runner, sock, self._admit)
                await site.start()
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("admin API on %s", self.options.listen)

    def _bind_tcp(self) -> socket.socket:
        endpoint = self.options.endpoint
        assert endpoint is not None
        family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((endpoint.host, endpoint.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _admit(self, open_now: int) -> bool:
        """Called on every accepted admin connection, `open_now` being served: whether it may be."""
        if open_now < self.options.max_connections and free_descriptors() >= self._fd_reserve:
            self._refusing = False
            return True
        self.refused += 1
        if not self._refusing:  # one line per episode, not one per connection
            self._refusing = True
            log.warning(
                "admin API: refusing connections (%d open, cap %d; descriptors kept for the data plane: %d)",
                open_now,
                self.options.max_connections,
                self._fd_reserve,
            )
        return False

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with port 0)."""
        if self._runner is None:
            return None
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            for sock in sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return int(name[1])
        return None

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.options.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.options.unix_path)


def _bind_unix(path: str, mode: int) -> socket.socket:
    """A Unix stream socket bound at `path` with `mode` from the moment it exists (umask around bind:
    a chmod after bind would leave a window in which anyone may connect)."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, mode)  # exactly `mode` (the umask can only take bits away)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    os.unlink(path)
