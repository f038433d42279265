"""A small client for the admin API (what `sluice status|backend|reload|top` use) and its tables.

Standard library HTTP over TCP or a Unix socket; the rendering is rich tables built from the
API's JSON, with rates computed from two snapshots.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from rich.table import Table
from rich.text import Text

from sluice.control.token import read_token

DEFAULT_API = "http://127.0.0.1:9090"
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
    """`api` is ``http://host:port`` or the path of the admin Unix socket."""

    def __init__(self, api: str = DEFAULT_API, token: str | None = None, timeout_s: float = 5.0) -> None:
        self.api = api
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
            raise ApiError(0, f"cannot reach the admin API at {self.api}: {exc}") from None
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

    def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/reload")
        return result


def read_token_file(path: str | Path | None) -> str | None:
    """The token of `--token-file` (None without one), validated as the server does, except that a
    file shared with group or others is used with a loud warning (the server refuses it); raises
    `TokenError` (an OSError)."""
    return None if path is None else read_token(path, shared_ok=True)


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


def status_table(
    vips: list[dict[str, Any]], before: list[dict[str, Any]] | None = None, dt: float = 0.0
) -> Table:
    """One row per backend: state, weights, active flows, totals and rates (from `before`, `dt` ago)."""
    table = Table(title="sluice", expand=False)
    for column, justify in (
        ("vip", "left"),
        ("backend", "left"),
        ("state", "left"),
        ("weight", "right"),
        ("active", "right"),
        ("flows", "right"),
        ("flows/s", "right"),
        ("conn err", "right"),
        ("in/s", "right"),
        ("out/s", "right"),
        ("check", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    old = {(v["name"], b["address"]): b for v in before or [] for b in v["backends"]}
    for vip in vips:
        label = f"{vip['name']}\n{vip['protocol']}/{vip['listen']}"
        refused = sum(vip["refused"].values())
        if refused:
            label += f"\nrefused {refused}"
        for i, b in enumerate(vip["backends"]):
            prev = old.get((vip["name"], b["address"]))
            weight = str(b["effective_weight"])
            if b["effective_weight"] != b["weight"]:
                weight += f" ({b['weight']})"
            rate_in = rate_out = "-"
            if prev is not None and dt > 0:
                rate_in = _human_bytes(max(0, b["bytes_to_backend"] - prev["bytes_to_backend"]) / dt)
                rate_out = _human_bytes(max(0, b["bytes_from_backend"] - prev["bytes_from_backend"]) / dt)
            state = b["state"] + (" (suspect)" if b["suspect"] else "")
            table.add_row(
                label if i == 0 else "",
                b["address"],
                Text(state, style=STATE_STYLE.get(b["state"], "")),
                weight,
                str(b["active"]),
                str(b["flows_total"]),
                _rate(b, prev, "flows_total", dt),
                str(sum(b["connect_errors"].values())),
                rate_in,
                rate_out,
                b["last_check"] or "-",
            )
        table.add_section()
    return table
