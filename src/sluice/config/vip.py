"""The VIP model: a VIP, its backends, timeouts, UDP, QUIC and DSR options."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sluice.config.access_log import AccessLog
from sluice.config.health import HealthCheck, PassiveEjection
from sluice.config.values import (
    DEFAULT_TCP_IDLE_S,
    DEFAULT_UDP_IDLE_S,
    Duration,
    EndpointField,
    FrozenModel,
    Matches,
    Mode,
    OnBackendDown,
    Prefix,
    Protocol,
    ProxyProtocolVersion,
    UdpHash,
    yaml_off,
    yaml_off_none,
)
from sluice.core.endpoint import Endpoint
from sluice.core.flow import HashKey
from sluice.core.names import DEFAULT_TABLE_SIZE, SchedulerName, is_prime
from sluice.core.quic import MAX_SERVER_ID_BITS, ServerIds

MAX_TABLE_SIZE = 1_000_003
"""Largest ``maglev_table_size`` accepted (a prime; what the XDP plane's table map is sized for)."""
MAX_CONNECTIONS = 10_000_000
"""Largest ``max_connections`` of one VIP."""
MAX_SESSIONS = 10_000_000
"""Largest ``udp.max_sessions`` of one VIP."""


VipName = Annotated[
    str,
    Matches(
        r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
        "a name of letters, digits, '_', '.' and '-' (at most 63, starting with a letter or digit)",
    ),
]
MacAddress = Annotated[
    str, Matches(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", "a MAC address like 02:00:00:00:00:01")
]


class Backend(FrozenModel):
    """One backend of a VIP."""

    address: EndpointField
    """Where the backend listens (IP:port)."""
    weight: int = Field(default=1, ge=0, le=65535)
    """Relative share of new flows; 0 = takes no new flows."""
    check_port: int | None = Field(default=None, ge=1, le=65535)
    """Port the active health check connects to; unset = the backend's own port."""
    server_id: int | None = Field(default=None, ge=1, le=2**MAX_SERVER_ID_BITS - 1)
    """QUIC (a VIP with a ``quic`` block): the server ID this backend writes into its connection
    IDs; unset on every backend = 1, 2, 3, ... in config order."""


class Timeouts(FrozenModel):
    """How long a VIP waits (the ``timeouts:`` block)."""

    connect: Duration = 3.0
    """Seconds to wait for a backend connection (TCP)."""
    idle: Duration | None = None
    """Seconds with no bytes either way before a flow is closed (TCP 350, UDP 120 by default)."""


MIN_QUEUE_DELAY_S = 0.001
"""Shortest ``udp.max_queue_delay`` accepted (seconds): below it ordinary scheduling delays drop."""
MAX_QUEUE_DELAY_S = 10.0
"""Longest ``udp.max_queue_delay`` accepted (seconds): past that a datagram's answer is useless anyway."""
EXPECTED_DATAGRAMS_PER_S = 20_000
"""Datagrams per second one listen socket is sized for when ``udp.receive_buffer`` is unset (the
native engine has one listen socket per worker)."""
DATAGRAM_TRUESIZE = 2048
"""Bytes of socket memory the kernel charges a queued datagram (its skb truesize: buffer + struct
sk_buff, not the payload; a NIC driver's page fragment is typically 2 KiB whatever the payload)."""
RECEIVE_BUFFER_MIN = 212_992
"""Smallest default listen SO_RCVBUF asked (bytes): the kernel's usual net.core.rmem_default."""
RECEIVE_BUFFER_MAX = 4 << 20
"""Largest default listen SO_RCVBUF asked (bytes); udp.receive_buffer may ask more."""


class UdpOptions(FrozenModel):
    """Options of a ``protocol: udp`` VIP (the ``udp:`` block)."""

    hash: UdpHash = "five_tuple"
    """What picks the backend: the whole 5-tuple, or the source IP only (keeps RTP+RTCP together)."""
    responses: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """End a session after this many reply datagrams (DNS: 1); unset = no limit."""
    per_packet: bool = False
    """No session: every datagram is balanced on its own."""
    max_sessions: int = Field(default=65536, ge=1, le=MAX_SESSIONS)
    """Bound of the session (NAT) table; the least recently used session is evicted beyond it."""
    max_queue_delay: Duration = 0.05
    """Seconds a client datagram may wait in the listen socket's queue (its kernel receive
    timestamp, SO_TIMESTAMPNS, against the clock when sluice reads it); an older one is dropped and
    counted as dropped ``queue_delay``. 1 ms .. 10 s, default 50 ms: an overloaded VIP answers late
    by at most this much instead of by seconds, and 50 ms is under the retry timers of DNS stub
    resolvers (1-5 s), SIP (T1 500 ms) and RTP jitter buffers, so a datagram dropped here would
    have been useless (or duplicated by a retry) anyway. Applies at once on reload."""
    receive_buffer: int | None = Field(default=None, ge=4096, le=2**31 - 1)
    """Bytes of the listen socket's receive buffer (SO_RCVBUF, capped by net.core.rmem_max); unset =
    sized from max_queue_delay (`default_receive_buffer`: 1,024,000 bytes for 50 ms). Set when the
    VIP starts. Datagrams the kernel drops at a full buffer are counted (native engine: dropped
    ``kernel_overflow``)."""

    @field_validator("max_queue_delay")
    @classmethod
    def _queue_delay_bounds(cls, value: float) -> float:
        if not MIN_QUEUE_DELAY_S <= value <= MAX_QUEUE_DELAY_S:
            raise ValueError(f"must be 1ms to 10s, got {value * 1000:g}ms")
        return value

    @property
    def listen_receive_buffer(self) -> int:
        """The SO_RCVBUF the listen sockets ask for: ``receive_buffer``, else the default."""
        return self.receive_buffer or default_receive_buffer(self.max_queue_delay)


def default_receive_buffer(max_queue_delay_s: float) -> int:
    """The listen SO_RCVBUF (bytes) that holds about `max_queue_delay_s` of traffic at
    `EXPECTED_DATAGRAMS_PER_S`: rate x delay x `DATAGRAM_TRUESIZE` / 2, since the kernel doubles the
    value asked (the doubled value is what the queued skbs' truesize is charged against), clamped to
    `RECEIVE_BUFFER_MIN` .. `RECEIVE_BUFFER_MAX`. 50 ms: 20,000/s x 0.05 s = 1,000 datagrams x 2,048
    bytes = 2,048,000 bytes of skb memory -> ask 1,024,000. Older datagrams than the bound that still
    fit are dropped by the queue-delay check; this only keeps the queue from holding seconds."""
    wanted = round(EXPECTED_DATAGRAMS_PER_S * max_queue_delay_s * DATAGRAM_TRUESIZE / 2)
    return max(RECEIVE_BUFFER_MIN, min(RECEIVE_BUFFER_MAX, wanted))


class QuicOptions(FrozenModel):
    """QUIC connection-ID routing of a UDP VIP (see `sluice.core.quic` for the layout)."""

    server_id_bits: int = Field(ge=1, le=MAX_SERVER_ID_BITS)
    """Bits of server ID after the 2-bit CID version in a short-header packet's connection ID."""


class DsrOptions(FrozenModel):
    """How a ``mode: dsr`` VIP forwards packets from the XDP program."""

    interface: str = Field(min_length=1, max_length=15)
    """The LB interface the XDP program is attached to (receives VIP traffic)."""
    forwarding: Literal["l2", "ipip"] = "l2"
    """l2: rewrite MACs, backends on the same segment hold the VIP on lo; ipip: IP-in-IP to the backend."""
    next_hop_mac: MacAddress | None = None
    """ipip: destination MAC of the encapsulated packets (the router towards the backends)."""
    outer_source: str | None = None
    """ipip: prefix (e.g. 198.19.0.0/16) the outer source address is taken from, flow bits mixed in."""
    attach: Literal["auto", "native", "generic"] = "auto"
    """How the XDP program is attached to `interface`: native (in the driver), generic (after the
    kernel built its packet buffer: works everywhere, slower), auto = native, else generic (logged).
    VIPs on one interface must agree."""

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


MAX_PROXY_SOURCES = 64
"""Most prefixes in ``accept_proxy_protocol.from``."""
PLAIN_TRUE_REFUSED = (
    "`true` would believe a PROXY header from any peer, so any client reaching the VIP could pose as "
    "any source address (to the backends and to the flow hash); say who may send one: "
    "accept_proxy_protocol: {from: [CIDR, ...]} (the load balancers or proxies in front; HAProxy's "
    "accept-proxy is used behind an ACL for the same reason)"
)


class AcceptProxyProtocol(FrozenModel):
    """Who may send a PROXY v1/v2 header in front of a client connection."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, use_attribute_docstrings=True
    )
    from_: tuple[Prefix, ...] = Field(alias="from", min_length=1, max_length=MAX_PROXY_SOURCES)
    """Prefixes of the peers whose header is believed; any other peer is refused (proxy_not_allowed)."""

    def allows(self, host: str) -> bool:
        """Whether a connection from `host` (an IP address string) may carry a PROXY header."""
        address = ip_address(host)
        return any(address in net for net in self.from_)


def _accept_proxy_protocol(value: Any) -> Any:
    if value is False or value is None:
        return None
    if value is True:
        raise ValueError(PLAIN_TRUE_REFUSED)
    return value


def _hash_key(value: Any) -> HashKey:
    """``hash_key:`` as written: 32 hex digits, quoted. No error repeats the value (it is the secret)."""
    if isinstance(value, HashKey):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"expected a string of 32 hex digits, got {type(value).__name__} (quote the key: YAML "
            "reads bare digits as a number)"
        )
    return HashKey.from_hex(value)


HashKeyField = Annotated[
    HashKey,
    PlainValidator(_hash_key),
    PlainSerializer(lambda _: "<secret>", return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^[0-9A-Fa-f]{32}$", "writeOnly": True}),
]
"""A `HashKey` in the config: parsed from hex, dumped as ``<secret>``."""


class Vip(FrozenModel):
    name: VipName
    """Unique name, used in metrics and the API."""
    protocol: Protocol = "tcp"
    """tcp or udp: what the VIP listens for and forwards."""
    listen: EndpointField
    """The VIP address and port."""
    mode: Mode = "proxy"
    """proxy: full proxy in user space; dsr: XDP Direct Server Return."""
    scheduler: SchedulerName = "maglev"
    """How a new flow picks its backend: maglev (consistent hash of the flow), or another scheduler."""
    maglev_table_size: int = DEFAULT_TABLE_SIZE
    """Maglev lookup table size M (a prime up to `MAX_TABLE_SIZE`, ideally >= 100 x number of backends)."""
    hash_key: HashKeyField | None = None
    """Secret key of the flow hash (maglev): 32 hex digits (16 random bytes, `openssl rand -hex 16`),
    the same on every node of the VIP. Set: flows hash with SipHash-1-3 under it, so a client cannot
    choose ports that land on one backend; unset: the public MurmurHash3. Never shown (logs, API,
    errors); changing it moves flows like a new table (README "Flow hash and hash_key")."""
    backends: tuple[Backend, ...]
    """Where the flows go (at least one)."""
    timeouts: Timeouts = Timeouts()
    """Connect and idle timeouts."""
    max_connections: int = Field(default=10000, ge=1, le=MAX_CONNECTIONS)
    """Per VIP; beyond it new connections are refused and counted."""
    proxy_protocol: Annotated[ProxyProtocolVersion, BeforeValidator(yaml_off)] = "off"
    """PROXY protocol header sent to the backend carrying the client address."""
    accept_proxy_protocol: Annotated[AcceptProxyProtocol | None, BeforeValidator(_accept_proxy_protocol)] = (
        None
    )
    """Expect a PROXY v1/v2 header from the client side (TCP), from the peers listed in ``from``;
    ``false`` / unset: none expected."""
    udp: UdpOptions = UdpOptions()
    """UDP sessions (udp VIPs only)."""
    quic: QuicOptions | None = None
    """UDP: route short-header QUIC packets by the server ID in their connection ID; unset = off."""
    dsr: DsrOptions | None = None
    """Required with ``mode: dsr``."""
    health: HealthCheck | None = None
    """Active health check; unset = none (backends are up unless passive ejection takes them out)."""
    passive: Annotated[PassiveEjection | None, BeforeValidator(yaml_off_none)] = PassiveEjection()
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
    access_log: AccessLog | None = None
    """One line per ended flow (``mode: proxy``); unset = no flow log."""

    @field_validator("backends")
    @classmethod
    def _some_backends(cls, v: tuple[Backend, ...]) -> tuple[Backend, ...]:
        if not v:
            raise ValueError("a VIP needs at least one backend")
        return v

    @field_validator("maglev_table_size")
    @classmethod
    def _prime(cls, v: int) -> int:
        # The bound first: trial division of a 17-digit number takes minutes.
        if v > MAX_TABLE_SIZE:
            raise ValueError(f"must be at most {MAX_TABLE_SIZE}")
        if not is_prime(v):
            raise ValueError(f"must be a prime number, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Self:
        # Keys only one protocol takes, and the dsr rules, are in config/rules.py (reported with paths).
        if self.timeouts.idle is None:
            idle = DEFAULT_TCP_IDLE_S if self.protocol == "tcp" else DEFAULT_UDP_IDLE_S
            object.__setattr__(self, "timeouts", self.timeouts.model_copy(update={"idle": idle}))
        if self.mode == "dsr" and self.dsr is None:
            raise ValueError("mode: dsr needs a dsr block (interface, forwarding)")
        if self.mode == "proxy" and self.dsr is not None:
            raise ValueError("a dsr block is only valid with mode: dsr")
        if self.hash_key is not None and self.scheduler != "maglev":
            raise ValueError(f"hash_key keys Maglev's flow hash; scheduler {self.scheduler} hashes no flows")
        self._check_quic()
        if self.access_log is not None and self.mode != "proxy":
            raise ValueError("access_log is only supported for mode: proxy VIPs")
        if self.mode == "proxy" and any(b.address == self.listen for b in self.backends):
            raise ValueError(f"backend {self.listen} is the VIP itself (the proxy would connect to itself)")
        return self

    def _check_quic(self) -> None:
        explicit = [b.server_id for b in self.backends if b.server_id is not None]
        if self.quic is None:
            if explicit:
                raise ValueError("server_id is only valid on the backends of a VIP with a quic block")
            return
        if explicit and len(explicit) != len(self.backends):
            raise ValueError("quic: set server_id on every backend or on none (then 1, 2, ... in order)")
        limit = 2**self.quic.server_id_bits - 1
        for server_id, backend in self.server_ids:
            if server_id > limit:
                raise ValueError(
                    f"backend {backend}: server_id {server_id} does not fit in "
                    f"quic.server_id_bits {self.quic.server_id_bits} (1..{limit})"
                )
        if len(set(explicit)) != len(explicit):
            dup = sorted({i for i in explicit if explicit.count(i) > 1})
            raise ValueError(f"quic: server_id {dup[0]} is given to more than one backend")

    @property
    def server_ids(self) -> tuple[tuple[int, Endpoint], ...]:
        """QUIC: (server ID, backend) of every backend (explicit ``server_id``, else its 1-based
        position in config order); empty without a ``quic`` block."""
        if self.quic is None:
            return ()
        return tuple(
            (b.server_id if b.server_id is not None else n, b.address) for n, b in enumerate(self.backends, 1)
        )

    @property
    def quic_routing(self) -> ServerIds | None:
        """QUIC: the server IDs of the backends that take new flows (weight > 0), which a connection
        ID may route to; None without a ``quic`` block."""
        if self.quic is None:
            return None
        weight = {b.address: b.weight for b in self.backends}
        return ServerIds.of(self.quic.server_id_bits, ((i, a) for i, a in self.server_ids if weight[a] > 0))

    @property
    def weighted_backends(self) -> tuple[tuple[Endpoint, int], ...]:
        """(address, weight) of every backend in config order: what a scheduler is built from."""
        return tuple((b.address, b.weight) for b in self.backends)

    @property
    def idle_timeout_s(self) -> float:
        assert self.timeouts.idle is not None  # filled in by the validator
        return self.timeouts.idle
