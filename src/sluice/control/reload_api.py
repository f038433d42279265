"""The admin API's reload and process routes: ``POST /api/v1/reload`` (``?dry_run=true``: tell the
difference, apply nothing) and ``GET /api/v1/server`` (version, uptime, the last reload)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from aiohttp import web

from sluice.config import ConfigError
from sluice.control.controller import ReloadResult
from sluice.control.snapshot import ServerInfo

Reloader = Callable[[bool], Awaitable[ReloadResult]]
"""Re-reads and applies the config file (the argument: dry run, apply nothing); raises ConfigError
for an invalid one."""

DRY_RUN_VALUES: Final = {"true": True, "1": True, "false": False, "0": False}
"""What ``?dry_run=`` accepts."""


class HasServerInfo(Protocol):
    def server_info(self) -> ServerInfo: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=1))


def result_json(result: ReloadResult) -> dict[str, Any]:
    """The reload's answer: the VIPs now configured (or, dry run, that would be), the difference as
    data and as one line per change, and the notes on runtime state."""
    return {
        "ok": True,
        "applied": result.applied,
        "vips": [v.name for v in result.config.vips],
        "changes": result.diff.to_json(),
        "lines": result.diff.lines(),
        "runtime": result.runtime,
    }


async def reload(request: web.Request, reloader: Reloader | None) -> web.Response:
    if reloader is None:
        return _json({"error": "this server has no config file to reload"}, status=501)
    text = request.query.get("dry_run", "false").lower()
    if text not in DRY_RUN_VALUES:
        return _json({"error": f"dry_run must be true or false, got {text!r}"}, status=400)
    try:
        result = await reloader(DRY_RUN_VALUES[text])
    except ConfigError as exc:
        return _json({"ok": False, "errors": exc.errors}, status=400)
    except OSError as exc:
        return _json({"ok": False, "errors": [f"applying failed: {exc}"]}, status=500)
    return _json(result_json(result))


async def server_info(request: web.Request, target: HasServerInfo) -> web.Response:
    return _json(dataclasses.asdict(target.server_info()))
