"""Value types of the config: addresses, durations, the names it accepts, the frozen model base."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

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

_UNITS = (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile("".join(rf"(?:({_NUMBER})\s*{unit}\s*)?" for unit, _ in _UNITS))
DURATION_EXAMPLES = "3s, 250ms, 5m, 1h or 1m30s"


def parse_duration(value: Any) -> float:
    """``250ms``, ``3s``, ``5m``, ``1h``, a compound such as ``1m30s`` or ``1h2m`` (units in that
    order, each at most once), or a bare number of seconds -> seconds: finite, positive and at most
    `MAX_DURATION_S` (``.nan``, ``.inf`` and huge values are refused)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like {DURATION_EXAMPLES}, got {value!r}")
    if isinstance(value, int | float):
        seconds = _seconds(value)
    elif isinstance(value, str) and len(value) <= 64 and (m := _compound(value)) is not None:
        seconds = m
    else:
        raise ValueError(f"expected a duration like {DURATION_EXAMPLES}, got {_short(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {_short(value)}")
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {_short(value)}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration must be at most {MAX_DURATION_S:.0f}s (7 days), got {_short(value)}")
    return seconds


def _compound(text: str) -> float | None:
    """Seconds of ``1h2m3.5s250ms`` (any non-empty subset of the units, in this order), else None."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or all(g is None for g in m.groups()):
        return None
    return sum(float(g) * scale for g, (_, scale) in zip(m.groups(), _UNITS, strict=True) if g is not None)


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
    WithJsonSchema(
        {
            "type": ["string", "number"],
            "pattern": r"^\s*(\d+(\.\d+)?\s*(h|m|s|ms)\s*)+$",
            "examples": ["3s", "250ms", "1m30s", "1h"],
        }
    ),
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
    """Immutable, no unknown keys; each field's docstring is its JSON Schema description."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


@dataclass(frozen=True)
class Matches:
    """``Annotated[str, Matches(pattern, what)]``: the whole string must match `pattern`; a mismatch
    says `what` was expected (never the regular expression). The JSON Schema carries the pattern."""

    pattern: str
    what: str

    def _check(self, value: Any) -> Any:
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value):
            raise ValueError(f"expected {self.what}, got {_short(value)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "pattern": f"^(?:{self.pattern})$"}


def _network(value: Any) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a prefix like 10.0.0.0/8 or 2001:db8::/32, got {_short(value)}")
    try:
        return ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"expected a prefix like 10.0.0.0/8 or 2001:db8::/32, got {_short(value)}") from None
    raise ValueError(f"{value} has host bits set; the prefix is {loose}")


Prefix = Annotated[
    IPv4Network | IPv6Network,
    BeforeValidator(_network),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["10.0.0.0/8", "2001:db8::/32"]}),
]
"""An IPv4 or IPv6 prefix (CIDR, host bits zero)."""


def yaml_off_none(value: Any) -> Any:
    # `passive: off` / `passive: false` -> disabled (None).
    return None if value is False or value == "off" else value
