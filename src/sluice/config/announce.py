"""The ``announce:`` block: BGP announcement of the dsr VIPs through BIRD."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, ip_address, ip_network
from typing import Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from sluice.config.values import Duration, FrozenModel

_COMMUNITY = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")


class BgpPeer(FrozenModel):
    """One BGP neighbour of this node (usually the router in front of the LB nodes)."""

    address: str
    """The neighbour's IP address (directly connected)."""
    asn: int = Field(ge=1, le=4294967295)
    """The neighbour's AS number."""
    port: int = Field(default=179, ge=1, le=65535)
    """The neighbour's BGP port."""

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            return str(ip_address(v))
        except ValueError:
            raise ValueError(f"expected an IP address like 192.0.2.1 or 2001:db8::1, got {v!r}") from None


class AnnounceOptions(FrozenModel):
    """Announce the VIPs over BGP (the ``announce:`` block): a BIRD 2 speaker per node, driven by sluice.

    A prefix is announced while the XDP data plane is attached and some dsr VIP inside it has a usable
    backend; it is withdrawn when that stops, when the node check fails, and on graceful shutdown
    (before the data plane detaches)."""

    asn: int = Field(ge=1, le=4294967295)
    """Local AS number (every LB node usually shares one)."""
    router_id: str
    """BGP router ID of this node (an IPv4 address, unique per node)."""
    peers: tuple[BgpPeer, ...]
    """BGP neighbours (at least one)."""
    prefixes: tuple[str, ...] | None = None
    """Prefixes to announce; unset = every dsr VIP address as /32 (IPv6: /128). Each must hold a dsr VIP."""
    med: int | None = Field(default=None, ge=0, le=4294967295)
    """MULTI_EXIT_DISC sent with the prefixes; unset = none."""
    communities: tuple[str, ...] = ()
    """Communities added to the prefixes: ``65000:100`` (standard) or ``65000:1:2`` (large)."""
    hold_time: int = Field(default=90, ge=3, le=65535)
    """BGP hold time (seconds): a peer that stays silent this long is considered gone."""
    keepalive_time: int | None = Field(default=None, ge=1, le=21845)
    """Seconds between keepalives; unset = hold_time / 3."""
    connect_retry_time: int = Field(default=5, ge=1, le=65535)
    """Seconds between connection attempts to a peer (also the wait after a session error)."""
    withdraw_delay: Duration = 2.0
    """Seconds between the withdrawal and detaching the data plane on graceful shutdown (traffic leaves first)."""
    node_check_interval: Duration = 1.0
    """Seconds between two checks of the node itself (dsr interfaces up, XDP program attached)."""
    state_dir: str = "/run/sluice"
    """Directory of the generated bird.conf and the BIRD control socket."""
    bird: str = "bird"
    """The BIRD 2 daemon command."""
    birdc: str = "birdc"
    """The BIRD 2 client command."""

    @field_validator("router_id")
    @classmethod
    def _router_id(cls, v: str) -> str:
        try:
            return str(IPv4Address(v))
        except ValueError:
            raise ValueError(f"expected an IPv4 address like 192.0.2.1, got {v!r}") from None

    @field_validator("peers")
    @classmethod
    def _some_peers(cls, v: tuple[BgpPeer, ...]) -> tuple[BgpPeer, ...]:
        if not v:
            raise ValueError("at least one peer is needed")
        return v

    @field_validator("prefixes")
    @classmethod
    def _prefixes(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one prefix, or leave prefixes unset")
        return tuple(str(ip_network(p, strict=True)) for p in v)

    @field_validator("communities")
    @classmethod
    def _communities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            m = _COMMUNITY.match(c)
            if not m:
                raise ValueError(f"expected 65000:100 or 65000:1:2, got {c!r}")
            parts = [int(x) for x in m.groups() if x is not None]
            limit = 65535 if len(parts) == 2 else 4294967295
            if any(p > limit for p in parts):
                raise ValueError(f"community {c!r}: each part must be at most {limit}")
        return v

    @model_validator(mode="after")
    def _keepalive(self) -> Self:
        if self.keepalive_time is not None and self.keepalive_time * 3 > self.hold_time:
            raise ValueError("keepalive_time must be at most a third of hold_time")
        return self
