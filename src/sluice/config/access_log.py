"""The per-VIP flow log (the ``access_log:`` block of a VIP)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sluice.config.values import FrozenModel

MAX_ACCESS_LOG_RATE = 1_000_000
"""Most flow log lines per second one VIP may write."""


class AccessLog(FrozenModel):
    """One line per ended flow (closed TCP connection, ended UDP session): client, VIP, backend,
    start, duration, bytes (and datagrams) each way, close reason, retries."""

    format: Literal["plain", "json"] = "plain"
    """plain: ``key=value`` fields after an ISO-8601 timestamp; json: one object per line."""
    path: str = "stderr"
    """Where the lines go: ``stderr``, or the absolute path of a file (appended to, created mode 0640)."""
    rate: int = Field(default=1000, ge=1, le=MAX_ACCESS_LOG_RATE)
    """Lines per second at most (a token bucket, bursts up to one second's worth); lines beyond it
    are dropped and counted in ``access_log_dropped``."""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if v == "stderr":
            return v
        if not v.startswith("/") or "\0" in v or v.endswith("/"):
            raise ValueError(f"expected stderr or the absolute path of a file, got {v!r}")
        return v
