"""Health of backends: the active check (``health:``) and passive ejection (``passive:``)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from sluice.config.values import CheckType, Duration, FrozenModel, Matches

HttpPath = Annotated[str, Matches(r"/\S*", "a path starting with / and without blanks, like /healthz")]
DnsType = Annotated[str, Matches(r"[A-Za-z0-9]{1,10}", "a DNS record type like A, AAAA or SOA")]


class HealthCheck(FrozenModel):
    """Active health check of every backend of a VIP (the ``health:`` block)."""

    type: CheckType = "tcp"
    """tcp: connect; tcp_expect: send/expect; http: GET + status; dns: query, NOERROR; udp: send/expect; none."""
    interval: Duration = 2.0
    """Seconds between two checks of one backend."""
    timeout: Duration = 1.0
    """Seconds one check may take before it counts as failed (at most `interval`)."""
    rise: int = Field(default=2, ge=1, le=100)
    """Consecutive successes that bring a down backend up."""
    fall: int = Field(default=3, ge=1, le=100)
    """Consecutive failures that take an up backend down."""
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)
    """Fraction of `interval` each wait is randomly moved by (0.1 = +-10 %), so checks do not align."""
    send: str | None = None
    """tcp_expect / udp: payload sent after connecting (UTF-8; YAML escapes like \\r\\n work in double quotes)."""
    expect: str | None = None
    """tcp_expect / udp: the reply must contain this text."""
    expect_regex: str | None = None
    """tcp_expect / udp: the reply must match this regular expression (searched, UTF-8 / bytes)."""
    path: HttpPath = "/"
    """http: the path requested with GET."""
    host: str | None = None
    """http: the Host header (default: the backend address)."""
    expect_status: tuple[int, ...] = (200,)
    """http: accepted status codes."""
    query_name: str | None = None
    """dns: the name queried; the answer's rcode must be NOERROR."""
    query_type: DnsType = "A"
    """dns: the record type queried (A, AAAA, SOA, ...)."""

    @field_validator("expect_status", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return (v,) if isinstance(v, int) else v

    @field_validator("expect_status")
    @classmethod
    def _status_codes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 100 <= code <= 599 for code in v):
            raise ValueError("expected one or more HTTP status codes 100..599")
        return v

    @field_validator("expect_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v.encode())
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _per_type(self) -> Self:
        if self.timeout > self.interval:
            raise ValueError("timeout must not be longer than interval")
        if self.type == "tcp_expect" and self.expect is None and self.expect_regex is None:
            raise ValueError("type tcp_expect needs expect or expect_regex")
        if self.type == "udp" and not self.send:
            raise ValueError("type udp needs send (a probe payload)")
        if self.type == "dns" and not self.query_name:
            raise ValueError("type dns needs query_name")
        if self.expect is not None and self.expect_regex is not None:
            raise ValueError("give expect or expect_regex, not both")
        return self


class PassiveEjection(FrozenModel):
    """Ejection from what the data plane sees (connect refused / reset / timeout; for UDP, ICMP port
    unreachable, while each reply from the backend counts as a success); ``passive: off`` disables."""

    consecutive_failures: int = Field(default=5, ge=1, le=100000)
    """Failures in a row (no established connect or UDP reply in between) that eject a backend."""
    base_ejection_time: Duration = 10.0
    """Seconds of the first ejection; the n-th ejection in a row lasts n times as long."""
    max_ejection_time: Duration = 300.0
    """Upper bound of one ejection (seconds)."""
    max_ejected_percent: int = Field(default=50, ge=0, le=100)
    """At most this share of a VIP's backends is ejected at once (rounded down, but one is allowed);
    the last usable backend is never ejected (passive ejection alone never takes a VIP dark)."""
