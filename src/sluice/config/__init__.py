"""The config model: YAML -> validated, frozen objects.

Every error names the offending path (``vips[0].backends[2].address: ...``). A running sluice holds
one `Config`; a reload builds a new one and applies the difference, it never mutates the old one.

The package's rooms: `values` (addresses, durations, the names accepted), `vip` (a VIP and its
backends), `health` (active checks, passive ejection), `announce` (BGP), `model` (the whole file,
``admin:``), `rules` (the rules across keys and VIPs), `messages` (errors in the user's words) and
`loading` (YAML, `ConfigError`). Import from here.
"""

from __future__ import annotations

from sluice.config.access_log import AccessLog
from sluice.config.announce import AnnounceOptions, BgpPeer
from sluice.config.health import HealthCheck, PassiveEjection
from sluice.config.loading import (
    MAX_CONFIG_BYTES,
    NATIVE_ENGINE_MODULE,
    ConfigError,
    config_json_schema,
    load_config,
    native_engine_built,
    parse_config,
    parse_config_text,
    read_config_text,
)
from sluice.config.model import AdminOptions, Config
from sluice.config.values import (
    DEFAULT_TCP_IDLE_S,
    DEFAULT_UDP_IDLE_S,
    MAX_DURATION_S,
    MAX_WORKERS,
    CheckType,
    Duration,
    EndpointField,
    EngineName,
    Mode,
    OnBackendDown,
    Protocol,
    ProxyProtocolVersion,
    UdpHash,
    Workers,
    parse_duration,
)
from sluice.config.vip import (
    MAX_CONNECTIONS,
    MAX_SESSIONS,
    MAX_TABLE_SIZE,
    Backend,
    DsrOptions,
    QuicOptions,
    Timeouts,
    UdpOptions,
    Vip,
)
from sluice.core.endpoint import Endpoint
from sluice.core.names import DEFAULT_TABLE_SIZE, SchedulerName

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "DEFAULT_TCP_IDLE_S",
    "DEFAULT_UDP_IDLE_S",
    "MAX_CONFIG_BYTES",
    "MAX_CONNECTIONS",
    "MAX_DURATION_S",
    "MAX_SESSIONS",
    "MAX_TABLE_SIZE",
    "MAX_WORKERS",
    "NATIVE_ENGINE_MODULE",
    "AccessLog",
    "AdminOptions",
    "AnnounceOptions",
    "Backend",
    "BgpPeer",
    "CheckType",
    "Config",
    "ConfigError",
    "DsrOptions",
    "Duration",
    "Endpoint",
    "EndpointField",
    "EngineName",
    "HealthCheck",
    "Mode",
    "OnBackendDown",
    "PassiveEjection",
    "Protocol",
    "ProxyProtocolVersion",
    "QuicOptions",
    "SchedulerName",
    "Timeouts",
    "UdpHash",
    "UdpOptions",
    "Vip",
    "Workers",
    "config_json_schema",
    "load_config",
    "native_engine_built",
    "parse_config",
    "parse_config_text",
    "parse_duration",
    "read_config_text",
]
