"""The per-flow access log's records, their two line formats and its rate limit (sans-IO).

One `FlowRecord` per ended flow (a closed TCP connection or an ended UDP session), built by the data
plane when the flow ends; `format_line` turns it into one line, and a `TokenBucket` per VIP decides
whether the line is written or dropped (and counted). Time comes in: `start` is the wall clock when
the flow was accepted (Unix seconds), `now` of the bucket any monotonic clock.

The plain format is logfmt, fixed fields in a fixed order (``key=value``, values never contain a
space)::

    2026-12-02T00:57:34.123Z vip=web proto=tcp client=10.0.0.7:40000 listen=10.0.0.1:80
    backend=10.0.1.2:8080 duration=1.234 bytes_to_backend=517 bytes_from_backend=10240
    reason=done retries=0

(one line; UDP lines carry ``datagrams_to_backend=`` and ``datagrams_from_backend=`` after the bytes).
The JSON format is one object per line with the same keys (``start`` for the timestamp,
``duration_s`` for the duration, numbers as numbers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = ["FORMATS", "FlowRecord", "LogFormat", "TokenBucket", "format_line", "iso_timestamp"]

LogFormat = Literal["plain", "json"]
FORMATS: Final = ("plain", "json")


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One ended flow, as the flow log shows it."""

    vip: str
    """The VIP's name."""
    protocol: Literal["tcp", "udp"]
    client: str
    """The client's address (``ip:port``, ``[v6]:port``): the PROXY header's source when the VIP
    accepts one."""
    listen: str
    """The VIP address the client reached."""
    backend: str | None
    """The backend the flow went to (None: UDP ``per_packet``, one pick per datagram)."""
    start: float
    """Wall clock when the flow was accepted (Unix seconds)."""
    duration_s: float
    bytes_to_backend: int
    """Client payload bytes sent to the backend (PROXY headers not counted)."""
    bytes_from_backend: int
    """Backend bytes sent to the client."""
    reason: str
    """Why it ended: one of `sluice.core.reasons.CLOSED`."""
    retries: int = 0
    """Backend connects tried beyond the first (TCP)."""
    datagrams_to_backend: int | None = None
    """UDP: datagrams sent to the backend (None for TCP)."""
    datagrams_from_backend: int | None = None
    """UDP: datagrams sent to the client (None for TCP)."""

    def fields(self) -> dict[str, Any]:
        """The record as the JSON format's object, keys in the plain format's order."""
        out: dict[str, Any] = {
            "start": iso_timestamp(self.start),
            "vip": self.vip,
            "proto": self.protocol,
            "client": self.client,
            "listen": self.listen,
            "backend": self.backend,
            "duration_s": round(self.duration_s, 6),
            "bytes_to_backend": self.bytes_to_backend,
            "bytes_from_backend": self.bytes_from_backend,
        }
        if self.protocol == "udp":
            out["datagrams_to_backend"] = self.datagrams_to_backend or 0
            out["datagrams_from_backend"] = self.datagrams_from_backend or 0
        out["reason"] = self.reason
        out["retries"] = self.retries
        return out


def iso_timestamp(unix_s: float) -> str:
    """``2026-12-02T00:57:34.123Z``: ISO-8601 in UTC, milliseconds."""
    moment = datetime.fromtimestamp(unix_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_line(record: FlowRecord, fmt: LogFormat) -> str:
    """One line (no newline) of `record` in `fmt`."""
    fields = record.fields()
    if fmt == "json":
        return json.dumps(fields, separators=(",", ":"))
    if fmt != "plain":
        raise ValueError(f"unknown flow log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    start = fields.pop("start")
    fields["duration"] = fields.pop("duration_s")
    order = ["vip", "proto", "client", "listen", "backend", "duration", "bytes_to_backend"]
    order += ["bytes_from_backend", "datagrams_to_backend", "datagrams_from_backend", "reason", "retries"]
    parts = [start]
    for key in order:
        if key in fields:
            value = fields[key]
            parts.append(f"{key}={_plain(value)}")
    return " ".join(parts)


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    # Names and addresses never hold spaces; anything else would break the line's fields.
    return text.replace(" ", "_") if text else "-"


class TokenBucket:
    """At most `rate` tokens a second on average, `burst` at once (default: one second's worth).

    `take(now)` spends one token if there is one; `now` is any monotonic clock in seconds."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self._tokens = self.burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Spend a token at `now`: True if one was there."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
