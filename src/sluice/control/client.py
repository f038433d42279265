"""A small client for the admin API (what `sluice status|backend|reload|top` use) and its tables.

Standard library HTTP over TCP or a Unix socket; the rendering is rich tables built from the
API's JSON, with rates computed from two snapshots. Addresses in a table are never cut: their
columns do not wrap and get the width of their longest address; the other columns wrap instead.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from sluice.config.model import DEFAULT_ADMIN_PORT
from sluice.control.token import read_token

DEFAULT_API = f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}"
STATE_STYLE = {
    "up": "green",
    "falling": "yellow",
    "rising": "cyan",
    "down": "bold red",
    "ejected": "red",
    "draining": "magenta",
    "maintenance": "blue",
}


class ApiError(Exception):
    """The API answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_api(text: str) -> str:
    """`text` as the client uses it: ``http(s)://host:port`` unchanged, ``host:port`` (or
    ``[IPv6]:port``) as ``http://host:port``, a path (it holds a ``/``) as a Unix socket path.
    Raises ValueError for anything else."""
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"{text!r}: bad port") from None
        if not parts.hostname:
            raise ValueError(f"{text!r}: no host")
        return text
    if "/" in text:
        return text
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return f"http://{text}"
    raise ValueError(
        f"{text!r}: expected host:port (e.g. 127.0.0.1:{DEFAULT_ADMIN_PORT}), http://host:port, or the "
        "path of a Unix socket (with a /, e.g. ./admin.sock)"
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """`api` is what `parse_api` accepts: ``http://host:port``, ``host:port`` or the path of the
    admin Unix socket (ValueError otherwise)."""

    def __init__(self, api: str = DEFAULT_API, token: str | None = None, timeout_s: float = 5.0) -> None:
        self.api = parse_api(api)
        self.token = token
        self.timeout_s = timeout_s

    def _connection(self) -> http.client.HTTPConnection:
        if not self.api.startswith(("http://", "https://")):
            return _UnixConnection(self.api, self.timeout_s)
        parts = urlsplit(self.api)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=self.timeout_s)
        return http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=self.timeout_s)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token and method != "GET":
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except OSError as exc:
            raise ApiError(
                0,
                f"cannot reach the admin API at {self.api}: {exc} (is sluice running, and is this its admin.listen?)",
            ) from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(response.status, f"not JSON: {raw[:200]!r}") from None
        if response.status >= 400:
            if isinstance(payload, dict) and "errors" in payload:
                raise ApiError(response.status, "\n".join(payload["errors"]))
            message = payload.get("error", response.reason) if isinstance(payload, dict) else response.reason
            raise ApiError(response.status, str(message))
        return payload

    def vips(self) -> list[dict[str, Any]]:
        vips: list[dict[str, Any]] = self.request("GET", "/api/v1/vips")["vips"]
        return vips

    def backend_action(
        self, vip: str, address: str, action: str, weight: int | None = None
    ) -> dict[str, Any]:
        path = f"/api/v1/vips/{quote(vip, safe='')}/backends/{quote(address, safe=':')}/{action}"
        result: dict[str, Any] = self.request(
            "POST", path, {"weight": weight} if action == "weight" else None
        )
        return result

    def reload(self, *, dry_run: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/reload" + ("?dry_run=true" if dry_run else ""))
        return result

    def server_info(self) -> dict[str, Any]:
        """Version, start time, uptime and the last reload (``GET /api/v1/server``)."""
        info: dict[str, Any] = self.request("GET", "/api/v1/server")
        return info


def read_token_file(path: str | Path | None) -> str | None:
    """The token of `--token-file` (None without one), validated as the server does: a file shared
    with group or others is refused (with the chmod that fixes it); raises `TokenError` (an OSError)."""
    return None if path is None else read_token(path)


def _rate(now: dict[str, Any], before: dict[str, Any] | None, key: str, dt: float) -> str:
    if before is None or dt <= 0:
        return "-"
    return f"{max(0, now[key] - before[key]) / dt:.1f}"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``4d03h``: two units at most."""
    s = int(max(0.0, seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // sub_size:02d}{sub}"
    return f"{s}s"


def status_header(info: dict[str, Any], now: float) -> str:
    """One line: version, uptime and the last reload (when and how it went), from `server_info`."""
    line = f"sluice {info['version']}, up {human_duration(info['uptime_s'])}"
    at = info.get("last_reload_at")
    if at is None:
        return line + ", no reload since start"
    line += f", last reload {human_duration(now - at)} ago: {info['last_reload_result']}"
    if info.get("last_reload_error"):
        line += f" ({info['last_reload_error']})"
    return line


def _check(b: dict[str, Any]) -> str:
    if b["last_check"] is None:
        return "-"
    latency = b.get("last_check_latency_s")
    return f"{b['last_check']} {latency * 1000:.1f}ms" if latency else b["last_check"]


def _short_bytes(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if n < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if n >= 100 or unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


COLUMNS: Final = (
    ("backend", "left"),
    ("state", "left"),
    ("since", "right"),
    ("weight", "right"),
    ("active", "right"),
    ("flows", "right"),
    ("flows/s", "right"),
    ("conn err", "right"),
    ("bytes in/out", "right"),
    ("B/s in/out", "right"),
    ("last check", "left"),
)
"""Every column of a VIP's table; "in" is client to backend, "out" backend to client."""
DROP_ORDER: Final = ("B/s in/out", "flows/s", "conn err", "flows", "bytes in/out", "since", "last check")
"""Columns left out, in this order, while a table is wider than the terminal (the address, state,
weight and active flows always stay; the address column is never narrowed)."""


def _rows(vip: dict[str, Any], before: dict[str, Any] | None, dt: float) -> list[dict[str, str | Text]]:
    old = {b["address"]: b for b in before["backends"]} if before is not None else {}
    rows: list[dict[str, str | Text]] = []
    for b in vip["backends"]:
        prev = old.get(b["address"])
        weight = str(b["effective_weight"])
        if b["effective_weight"] != b["weight"]:
            weight += f" ({b['weight']})"
        rates = "-"
        if prev is not None and dt > 0:
            rate_in = max(0, b["bytes_to_backend"] - prev["bytes_to_backend"]) / dt
            rate_out = max(0, b["bytes_from_backend"] - prev["bytes_from_backend"]) / dt
            rates = f"{_short_bytes(rate_in)}/{_short_bytes(rate_out)}"
        state = b["state"] + (" (suspect)" if b["suspect"] else "")
        rows.append(
            {
                "backend": b["address"],
                "state": Text(state, style=STATE_STYLE.get(b["state"], "")),
                "since": human_duration(b["since_s"]),
                "weight": weight,
                "active": str(b["active"]),
                "flows": str(b["flows_total"]),
                "flows/s": _rate(b, prev, "flows_total", dt),
                "conn err": str(sum(b["connect_errors"].values())),
                "bytes in/out": f"{_short_bytes(b['bytes_to_backend'])}/{_short_bytes(b['bytes_from_backend'])}",
                "B/s in/out": rates,
                "last check": _check(b),
            }
        )
    return rows


def _vip_title(vip: dict[str, Any]) -> str:
    title = f"{vip['name']}  {vip['protocol']}/{vip['listen']}  {vip['mode']}, {vip['scheduler']}"
    refused = sum(vip["refused"].values())
    return title + (f"  refused {refused}" if refused else "")


def vip_table(
    vip: dict[str, Any], before: dict[str, Any] | None = None, dt: float = 0.0, width: int | None = None
) -> Table:
    """One VIP: its address in the title, one row per backend (state and since when, weights, active
    flows, totals, rates from `before` `dt` seconds ago, the last check and its latency). Columns
    of `DROP_ORDER` are left out until the table fits `width` (None: all of them)."""
    rows = _rows(vip, before, dt)
    shown = [name for name, _ in COLUMNS]
    for drop in (None, *DROP_ORDER):
        if drop is not None:
            shown.remove(drop)
        table = _build(vip, rows, shown)
        if width is None or _width(table) <= width:
            break
    return table


def _build(vip: dict[str, Any], rows: list[dict[str, str | Text]], shown: list[str]) -> Table:
    table = Table(
        title=_vip_title(vip),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        expand=False,
    )
    for name, justify in COLUMNS:
        if name not in shown:
            continue
        if name == "backend":
            longest = max((len(str(row["backend"])) for row in rows), default=0)
            table.add_column(name, justify="left", no_wrap=True, min_width=max(longest, len(name)))
        else:
            table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(row[name] for name in shown))
    return table


def _width(table: Table) -> int:
    console = Console(width=100_000)
    return console.measure(table).maximum


def status_view(
    vips: list[dict[str, Any]],
    before: list[dict[str, Any]] | None = None,
    dt: float = 0.0,
    *,
    header: str | None = None,
    width: int | None = None,
) -> Group:
    """`header` (see `status_header`), then one `vip_table` per VIP."""
    old = {v["name"]: v for v in before or []}
    parts: list[Text | Table] = [Text(header, style="bold")] if header else []
    parts += [vip_table(v, old.get(v["name"]), dt, width) for v in vips]
    return Group(*parts)


def widen_to_fit(console: Console, view: Group) -> None:
    """Widen `console` to the narrowest table of `view` when the terminal is narrower still: its lines
    then wrap in the terminal, but no address is cut (rich would cut every column to fit)."""
    need = max((_width(t) for t in view.renderables if isinstance(t, Table)), default=0)
    if need > console.width:
        console.width = need
