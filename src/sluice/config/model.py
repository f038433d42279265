"""The whole config file (`Config`) and its ``admin:`` block."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import (
    Field,
    field_validator,
)

from sluice.config.announce import AnnounceOptions
from sluice.config.values import Duration, EngineName, FrozenModel, Matches, Workers
from sluice.config.vip import Vip
from sluice.core.endpoint import Endpoint

DEFAULT_ADMIN_PORT: Final = 7667
"""The admin API's default TCP port (on 127.0.0.1). Not 9090 (Prometheus's own) nor any port of the
Prometheus exporters' range (9100-10000, their wiki's "default port allocations"), nor the admin
ports of HAProxy (8404), Envoy (9901), Traefik (8080) or Consul (8500); absent from Debian's
/etc/services, and below Linux's ephemeral range (32768-60999), so no outgoing connection holds it."""


InstanceName = Annotated[
    str,
    Matches(
        r"[A-Za-z0-9][A-Za-z0-9_@+.-]{0,62}",
        "a name of letters, digits, '_', '@', '+', '.' and '-' (at most 63, starting with a letter or digit)",
    ),
]


class AdminOptions(FrozenModel):
    """The admin REST API, `/metrics` and `/healthz` (the ``admin:`` block)."""

    listen: str = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
    """IP:port, or the absolute path of a Unix socket."""
    token_file: str | None = None
    """File holding the bearer token changes need (mode 0600: a file group or others may read is
    refused); without one, changes are only accepted on a Unix socket."""
    socket_mode: int = 0o600
    """Unix socket: who may connect, as file permissions, 0600 (the user sluice runs as, and root) or
    0660 (also the socket's group). Without a token file whoever may connect may change backends.
    The socket is created with this mode (never wider, whatever the umask)."""
    max_connections: int = Field(default=64, ge=1, le=4096)
    """Admin connections open at once; beyond it (or when the process has fewer than 64 descriptors
    left, kept for the data plane) new ones are answered 503 and closed."""
    idle_timeout: Duration = 15.0
    """Seconds a connection may stay open without a complete request (headers included) before it is closed."""

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _socket_mode(cls, v: Any) -> Any:
        if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3}", v):
            v = int(v, 8)
        if type(v) is not int or v not in (0o600, 0o660):
            raise ValueError(f"expected 0600 (owner only) or 0660 (owner and group), got {v!r}")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("/"):
            if len(v.encode()) > 107:
                raise ValueError("a Unix socket path must be at most 107 bytes")
            return v
        return str(Endpoint.parse(v))

    @property
    def unix_path(self) -> str | None:
        return self.listen if self.listen.startswith("/") else None

    @property
    def endpoint(self) -> Endpoint | None:
        return None if self.listen.startswith("/") else Endpoint.parse(self.listen)


class Config(FrozenModel):
    """The whole file. Uniqueness rules (VIP names, listen addresses, backend addresses) and the rules
    across keys (config/rules.py) are checked by `parse_config`, which reports them with their paths."""

    vips: tuple[Vip, ...]
    """The virtual services (at least one)."""
    admin: AdminOptions | None = None
    """The admin API; unset = no admin server."""
    shutdown_timeout: Duration = 30.0
    """Seconds established flows may continue after SIGTERM/SIGINT before they are closed."""
    announce: AnnounceOptions | None = None
    """BGP announcement of the dsr VIPs (anycast scale-out); unset = nothing is announced."""
    engine: EngineName | None = None
    """The proxy data plane's engine: native = the C engine, python = the asyncio one; unset = native
    when the extension is importable, else python."""
    workers: Workers = "auto"
    """Engine worker threads (1..256); auto = CPUs available to the process."""
    instance: InstanceName | None = None
    """Name of this sluice's XDP state: its maps are pinned in /sys/fs/bpf/sluice/<instance>/, and two
    processes with the same instance are refused. Unset = the dsr interfaces' names, sorted, joined
    by "+" (e.g. ``eth0``): one instance per interface set, as one XDP program per interface."""

    @field_validator("vips")
    @classmethod
    def _some_vips(cls, v: tuple[Vip, ...]) -> tuple[Vip, ...]:
        if not v:
            raise ValueError("at least one VIP is needed")
        return v

    def vip(self, name: str) -> Vip:
        for v in self.vips:
            if v.name == name:
                return v
        raise KeyError(name)
