"""The config model: YAML -> validated, frozen objects.

Every error names the offending path (``vips[0].backends[2].address: ...``). A running sluice holds
one `Config`; a reload builds a new one and applies the difference, it never mutates the old one.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sluice.core.endpoint import Endpoint as Endpoint  # re-exported: the config's address type
from sluice.core.maglev import DEFAULT_TABLE_SIZE as DEFAULT_TABLE_SIZE
from sluice.core.maglev import is_prime
from sluice.core.scheduler import SchedulerName as SchedulerName

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


class ConfigError(Exception):
    """The config is invalid; `errors` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# ---------------------------------------------------------------- value types


def _to_endpoint(value: Any) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string like 127.0.0.1:9001, got {type(value).__name__}")
    return Endpoint.parse(value)


EndpointField = Annotated[
    Endpoint,
    BeforeValidator(_to_endpoint),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["127.0.0.1:8000", "[::1]:8000"]}),
]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_duration(value: Any) -> float:
    """``250ms``, ``3s``, ``5m`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 3s, 250ms or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 3s, 250ms or 5m, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


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


def _yaml_off(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as False.
    return "off" if value is False else value


# ---------------------------------------------------------------- model


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Backend(_Frozen):
    address: EndpointField
    """Where the backend listens (IP:port)."""
    weight: int = Field(default=1, ge=0, le=65535)
    """Relative share of new flows; 0 = takes no new flows."""
    check_port: int | None = Field(default=None, ge=1, le=65535)
    """Port the active health check connects to; unset = the backend's own port."""


class Timeouts(_Frozen):
    connect: Duration = 3.0
    """Seconds to wait for a backend connection (TCP)."""
    idle: Duration | None = None
    """Seconds with no bytes either way before a flow is closed (TCP 350, UDP 120 by default)."""


class UdpOptions(_Frozen):
    hash: UdpHash = "five_tuple"
    """What picks the backend: the whole 5-tuple, or the source IP only (keeps RTP+RTCP together)."""
    responses: int | None = Field(default=None, ge=1)
    """End a session after this many reply datagrams (DNS: 1); unset = no limit."""
    per_packet: bool = False
    """No session: every datagram is balanced on its own."""
    max_sessions: int = Field(default=65536, ge=1)
    """Bound of the session (NAT) table; the least recently used session is evicted beyond it."""


class DsrOptions(_Frozen):
    """How a ``mode: dsr`` VIP forwards packets from the XDP program."""

    interface: str = Field(min_length=1, max_length=15)
    """The LB interface the XDP program is attached to (receives VIP traffic)."""
    forwarding: Literal["l2", "ipip"] = "l2"
    """l2: rewrite MACs, backends on the same segment hold the VIP on lo; ipip: IP-in-IP to the backend."""
    next_hop_mac: str | None = Field(default=None, pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
    """ipip: destination MAC of the encapsulated packets (the router towards the backends)."""
    outer_source: str | None = None
    """ipip: prefix (e.g. 198.19.0.0/16) the outer source address is taken from, flow bits mixed in."""

    @model_validator(mode="after")
    def _ipip_needs(self) -> Self:
        if self.forwarding == "ipip" and (self.next_hop_mac is None or self.outer_source is None):
            raise ValueError("forwarding: ipip needs next_hop_mac and outer_source")
        if self.outer_source is not None:
            try:
                ip_network(self.outer_source, strict=True)
            except ValueError as exc:
                raise ValueError(f"outer_source: {exc}") from None
        return self


def _yaml_off_none(value: Any) -> Any:
    # `passive: off` / `passive: false` -> disabled (None).
    return None if value is False or value == "off" else value


class HealthCheck(_Frozen):
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
    path: str = Field(default="/", pattern=r"^/[^\s]*$")
    """http: the path requested with GET."""
    host: str | None = None
    """http: the Host header (default: the backend address)."""
    expect_status: tuple[int, ...] = (200,)
    """http: accepted status codes."""
    query_name: str | None = None
    """dns: the name queried; the answer's rcode must be NOERROR."""
    query_type: str = Field(default="A", pattern=r"^[A-Za-z0-9]{1,10}$")
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


class PassiveEjection(_Frozen):
    """Ejection from what the data plane sees (connect refused / reset / timeout); ``passive: off`` disables."""

    consecutive_failures: int = Field(default=5, ge=1, le=100000)
    """Failed connects in a row (no successful connect in between) that eject a backend."""
    base_ejection_time: Duration = 10.0
    """Seconds of the first ejection; the n-th ejection in a row lasts n times as long."""
    max_ejection_time: Duration = 300.0
    """Upper bound of one ejection (seconds)."""
    max_ejected_percent: int = Field(default=50, ge=0, le=100)
    """At most this share of a VIP's backends is ejected at once (one is always allowed)."""


class AdminOptions(_Frozen):
    """The admin REST API, `/metrics` and `/healthz` (the ``admin:`` block)."""

    listen: str = "127.0.0.1:9090"
    """IP:port, or the absolute path of a Unix socket."""
    token_file: str | None = None
    """File holding the bearer token changes need; without one, changes are only accepted on a Unix socket."""

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


_COMMUNITY = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")


class BgpPeer(_Frozen):
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
        return str(ip_address(v))


class AnnounceOptions(_Frozen):
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
        return str(IPv4Address(v))

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


class Vip(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    """Unique name, used in metrics and the API."""
    protocol: Protocol = "tcp"
    listen: EndpointField
    """The VIP address and port."""
    mode: Mode = "proxy"
    """proxy: full proxy in user space; dsr: XDP Direct Server Return."""
    scheduler: SchedulerName = "maglev"
    maglev_table_size: int = DEFAULT_TABLE_SIZE
    """Maglev lookup table size M (a prime, ideally >= 100 x number of backends)."""
    backends: tuple[Backend, ...]
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(default=10000, ge=1)
    """Per VIP; beyond it new connections are refused and counted."""
    proxy_protocol: Annotated[ProxyProtocolVersion, BeforeValidator(_yaml_off)] = "off"
    """PROXY protocol header sent to the backend carrying the client address."""
    accept_proxy_protocol: bool = False
    """Expect a PROXY v1/v2 header from the client side (TCP)."""
    udp: UdpOptions = UdpOptions()
    dsr: DsrOptions | None = None
    """Required with ``mode: dsr``."""
    health: HealthCheck | None = None
    """Active health check; unset = none (backends are up unless passive ejection takes them out)."""
    passive: Annotated[PassiveEjection | None, BeforeValidator(_yaml_off_none)] = PassiveEjection()
    """Passive ejection; ``off`` disables it."""
    on_backend_down: OnBackendDown = "keep"
    """What happens to a backend's established flows when it goes down: keep them, or close them."""
    fail_open: bool = False
    """When no backend is usable: true = keep sending to all of them, false = refuse new flows."""
    slow_start: Duration | None = None
    """Seconds over which a backend's weight ramps up after it comes up (weight-aware schedulers;
    Maglev placement does not change, see README "Slow start")."""
    drain_timeout: Duration = 300.0
    """Seconds a drained backend's established flows may continue before they are closed."""

    @field_validator("backends")
    @classmethod
    def _some_backends(cls, v: tuple[Backend, ...]) -> tuple[Backend, ...]:
        if not v:
            raise ValueError("a VIP needs at least one backend")
        return v

    @field_validator("maglev_table_size")
    @classmethod
    def _prime(cls, v: int) -> int:
        if not is_prime(v):
            raise ValueError(f"must be a prime number, got {v}")
        if v > 1_000_003:
            raise ValueError("must be at most 1000003")
        return v

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.timeouts.idle is None:
            idle = DEFAULT_TCP_IDLE_S if self.protocol == "tcp" else DEFAULT_UDP_IDLE_S
            object.__setattr__(self, "timeouts", self.timeouts.model_copy(update={"idle": idle}))
        if self.mode == "dsr" and self.dsr is None:
            raise ValueError("mode: dsr needs a dsr block (interface, forwarding)")
        if self.mode == "proxy" and self.dsr is not None:
            raise ValueError("a dsr block is only valid with mode: dsr")
        if self.accept_proxy_protocol and self.protocol != "tcp":
            raise ValueError("accept_proxy_protocol is only supported for tcp VIPs")
        if self.protocol == "udp" and self.proxy_protocol == "v1":
            raise ValueError("proxy_protocol: v1 has no UDP form; use v2 for udp VIPs")
        if self.mode == "proxy" and any(b.address == self.listen for b in self.backends):
            raise ValueError(f"backend {self.listen} is the VIP itself (the proxy would connect to itself)")
        return self

    @property
    def weighted_backends(self) -> tuple[tuple[Endpoint, int], ...]:
        """(address, weight) of every backend in config order: what a scheduler is built from."""
        return tuple((b.address, b.weight) for b in self.backends)

    @property
    def idle_timeout_s(self) -> float:
        assert self.timeouts.idle is not None  # filled in by the validator
        return self.timeouts.idle


class Config(_Frozen):
    """The whole file. Uniqueness rules (VIP names, listen addresses, backend addresses) are checked
    by `parse_config`, which reports them with their paths."""

    vips: tuple[Vip, ...]
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


def _duplicates(items: Iterable[tuple[str, str]], what: str) -> list[str]:
    """(path, key) pairs -> one error per key seen before, naming the first place."""
    first: dict[str, str] = {}
    errors = []
    for path, key in items:
        if key in first:
            errors.append(f"{path}: duplicate {what} {key} (first at {first[key]})")
        else:
            first[key] = path
    return errors


def _normal_endpoint(value: Any) -> str | None:
    try:
        return str(_to_endpoint(value))
    except ValueError:
        return None  # reported by the model


def _uniqueness_errors(data: dict[str, Any]) -> list[str]:
    vips = data.get("vips")
    if not isinstance(vips, list):
        return []
    names, listens, errors = [], [], []
    for i, vip in enumerate(vips):
        if not isinstance(vip, dict):
            continue
        if isinstance(vip.get("name"), str):
            names.append((f"vips[{i}].name", vip["name"]))
        if (listen := _normal_endpoint(vip.get("listen"))) is not None:
            listens.append((f"vips[{i}].listen", f"{vip.get('protocol', 'tcp')}/{listen}"))
        backends = vip.get("backends")
        if isinstance(backends, list):
            addrs = [
                (f"vips[{i}].backends[{j}].address", a)
                for j, b in enumerate(backends)
                if isinstance(b, dict) and (a := _normal_endpoint(b.get("address"))) is not None
            ]
            errors += _duplicates(addrs, "backend address")
    return _duplicates(names, "VIP name") + _duplicates(listens, "listen address") + errors


def _announce_errors(config: Config) -> list[str]:
    """Every announced prefix must hold a dsr VIP (else it would be announced for nothing)."""
    if config.announce is None:
        return []
    dsr = [ip_address(v.listen.host) for v in config.vips if v.mode == "dsr"]
    if not dsr:
        return ["announce: needs at least one VIP with mode: dsr"]
    return [
        f"announce.prefixes[{i}]: {p} holds no dsr VIP"
        for i, p in enumerate(config.announce.prefixes or ())
        if not any(a in ip_network(p) for a in dsr)
    ]


NATIVE_ENGINE_MODULE = "sluice.dataplane.engine._engine"
"""The C extension ``engine: native`` runs on (looked up, not imported: config sits below the planes)."""


def _engine_errors(config: Config) -> list[str]:
    """``engine: native`` needs the C extension built (what `sluice run` would stop on)."""
    if config.engine != "native":
        return []
    try:
        found = importlib.util.find_spec(NATIVE_ENGINE_MODULE) is not None
    except ImportError:
        found = False
    if found:
        return []
    return [
        f"engine: native needs the C extension {NATIVE_ENGINE_MODULE}, which is not built; use engine: python"
    ]


# ---------------------------------------------------------------- loading


def _format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_format_path(loc)}: {msg}")
    return lines


def parse_config(data: Any) -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping with a 'vips' list"])
    errors = _uniqueness_errors(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc) + errors) from None
    errors += _announce_errors(config) + _engine_errors(config)
    if errors:
        raise ConfigError(errors)
    return config


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it (5-10x faster on big files), else PyYAML's."""


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    return parse_config(data)


def config_json_schema() -> dict[str, Any]:
    return Config.model_json_schema()
