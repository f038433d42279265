"""The native engine extension (module.c): worker threads with their epoll loops, the TCP full proxy."""

from typing import Final

REFUSED: Final[tuple[str, ...]]
CLOSED: Final[tuple[str, ...]]
CONNECT_ERRORS: Final[tuple[str, ...]]
DROPPED: Final[tuple[str, ...]]
QUIC: Final[tuple[str, ...]]
SCHEDULERS: Final[tuple[str, ...]]
CONNECT_LATENCY_BOUNDS_US: Final[tuple[int, ...]]
FLOW_DURATION_BOUNDS_US: Final[tuple[int, ...]]
PROXY_HEADER_MAX: Final[int]
PIPE_SIZE: Final[int]
POOL_FREE_MAX: Final[int]
COPY_BUFFER_SIZE: Final[int]
FLOWLOG_RING: Final[int]

BackendSpec = tuple[str, int, int, int]
"""host, port, weight, counter slot."""
TableSpec = tuple[int, list[BackendSpec], bytes, float, float, int, int, bool | bytes, bytes]
"""scheduler index, backends (config order), Maglev slots (int32, config-order indexes), connect timeout
(s), idle timeout (s), max_connections, proxy_protocol out (0 off, 1, 2), accept_proxy_protocol (False,
or the prefixes allowed to send a PROXY header: family 4/6, length, 16 address bytes each), hash_key
(b"": unkeyed, or its 16 secret bytes)."""
UdpTableSpec = tuple[
    int,
    list[BackendSpec],
    bytes,
    float,
    float,
    int,
    int,
    bool | bytes,
    bytes,
    int,
    int,
    bool,
    bool,
    float,
    int,
    bytes,
]
"""TableSpec + udp max_sessions (all workers), responses (0: no limit), per_packet, hash source_ip,
max_queue_delay (s, 0: no bound), quic server_id_bits (0: off), the QUIC server ID of every backend
(uint32 native order, config order; 0: not routable)."""
UdpCounters = tuple[int, int, int, tuple[int, ...], dict[int, int], tuple[tuple[int, int], ...], int, int]
"""sessions, evictions, rebalanced, dropped (DROPPED order), {errno: dropped}, (datagrams to, from) per
slot, quic_routed, quic_fallback."""
HistogramCounters = tuple[tuple[int, ...], int]
"""count per bucket (the bounds of CONNECT_LATENCY_BOUNDS_US / FLOW_DURATION_BOUNDS_US, then +Inf), sum (us)."""
FlowRecordTuple = tuple[
    int, int, tuple[int, bytes, int], tuple[int, bytes, int], int, int, int, int, int, int, int, int
]
"""start_us, duration_us, (family, ip, port) of the client and of the VIP address, backend slot (-1
none), udp, reason index, retries, bytes to / from the backend, datagrams to / from the backend."""
BackendCounters = tuple[int, int, int, int, tuple[int, ...], int, int, HistogramCounters]
"""active, flows_total, connect_attempts, connect_ok, connect_errors, bytes_to_backend, bytes_from_backend,
connect latency."""
Counters = tuple[
    int, int, tuple[int, ...], tuple[int, ...], int, int, tuple[BackendCounters, ...], int, HistogramCounters
]
"""active, flows_total, refused, closed, buffered, peak, per backend slot, retries, flow duration."""

class Engine:
    def __init__(self, workers: int, conns_per_worker: int = ..., max_vips: int = ...) -> None: ...
    @property
    def workers(self) -> int: ...
    def vip_add(
        self,
        host: str,
        port: int,
        use_splice: bool,
        buffer_size: int,
        backend_slots: int,
        table: TableSpec | UdpTableSpec,
        udp: bool = ...,
        receive_buffer: int = ...,
        held_max: int = ...,
        quarantine_s: float = ...,
        /,
    ) -> tuple[int, int]: ...
    def vip_update(self, vip_id: int, table: TableSpec | UdpTableSpec, /) -> None: ...
    def stop_accepting(self, vip_id: int, /) -> None: ...
    def close_backend_flows(self, vip_id: int, slot: int, reason: int, /) -> int: ...
    def counters(self, vip_id: int, worker: int = -1, used: int = -1, /) -> Counters: ...
    def vip_remove(self, vip_id: int, /) -> Counters: ...
    def vip_detach(self, vip_id: int, /) -> None: ...
    def vip_free(self, vip_id: int, /) -> None: ...
    def udp_counters(self, vip_id: int, worker: int = -1, used: int = -1, /) -> UdpCounters: ...
    def udp_held(self, vip_id: int, /) -> list[tuple[int, bool]]: ...
    def udp_gro(self, vip_id: int, /) -> bool: ...
    def flowlog_enable(self, vip_id: int, on: bool, /) -> None: ...
    def flowlog_drain(self, vip_id: int, max: int = ..., /) -> tuple[list[FlowRecordTuple], int]: ...
    def close(self) -> None: ...
