"""Value types of the config: addresses, durations, the names it accepts, the frozen model base."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
)

from sluice.core.endpoint import Endpoint

Protocol = Literal["tcp", "udp"]
Mode = Literal["proxy", "dsr"]
ProxyProtocolVersion = Literal["off", "v1", "v2"]
UdpHash = Literal["five_tuple", "source_ip"]
CheckType = Literal["tcp", "tcp_expect", "http", "dns", "udp", "none"]
OnBackendDown = Literal["keep", "close"]

EngineName = Literal["native", "python"]
MAX_WORKERS = 256
DEFAULT_TCP_IDLE_S = 350.0
DEFAULT_UDP_IDLE_S = 120.0


def to_endpoint(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string like 127.0.0.1:9001, got {type(value).__name__}")
    return Endpoint.parse(value)


EndpointField = Annotated[
    Endpoint,
    BeforeValidator(to_endpoint),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["127.0.0.1:8000", "[::1]:8000"]}),
]

MAX_DURATION_S = 7 * 86400.0
"""Longest duration any field accepts (one week, 604800 s): every timer and timeout is bounded."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_duration(value: Any) -> float:
    """``250ms``, ``3s``, ``5m`` or a bare number of seconds -> seconds: finite, positive and at most
    `MAX_DURATION_S` (``.nan``, ``.inf`` and huge values are refused)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 3s, 250ms or 5m")
    if isinstance(value, int | float):
        seconds = _seconds(value)
    elif isinstance(value, str) and len(value) <= 64 and (m := _DURATION.fullmatch(value.strip())):
        seconds = _seconds(float(m.group(1)) * _UNIT_S[m.group(2)])
    else:
        raise ValueError(f"expected a duration like 3s, 250ms or 5m, got {_short(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration must be at most {MAX_DURATION_S:.0f}s (7 days), got {_short(value)}")
    return seconds


def _seconds(value: float) -> float:
    """A number as seconds; an int too large for a float is infinite (then refused)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?(ms|s|m)$"}),
]


def _workers(value: Any) -> Any:
    """``auto`` or a whole number of threads 1..MAX_WORKERS (not a bool, not a string of digits)."""
    if value == "auto" or (type(value) is int and 1 <= value <= MAX_WORKERS):
        return value
    raise ValueError(f"expected auto or a number of worker threads 1..{MAX_WORKERS}, got {value!r}")


Workers = Annotated[
    Literal["auto"] | int,
    BeforeValidator(_workers),
    WithJsonSchema({"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS}]}),
]


def yaml_off(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as False.
    return "off" if value is False else value


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def yaml_off_none(value: Any) -> Any:
    # `passive: off` / `passive: false` -> disabled (None).
    return None if value is False or value == "off" else value
