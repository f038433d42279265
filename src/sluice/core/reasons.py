"""The one table of reason strings every data plane counts under (python engine, native engine, XDP).

`VipStats.refused`, `.dropped`, `.closed`, `BackendStats.connect_errors` and the health monitor's
check failures are keyed by these strings; metrics use them as Prometheus labels. The native engine's C enums carry the same names in
the same order (`dataplane/engine/reasons.h`), checked by a test. Add a reason here first.
"""

from __future__ import annotations

from typing import Final

REFUSED: Final = (
    "max_connections",  # the VIP's max_connections was reached (TCP)
    "bad_proxy_header",  # the client's PROXY header was malformed or the client closed before it ended
    "proxy_header_timeout",  # no complete PROXY header within the connect timeout
    "no_backend",  # the scheduler offered no backend (all weight 0, down or excluded)
    "connect_failed",  # every backend tried failed to connect (TCP)
    "client_gone",  # the client went away before a backend was chosen
    "no_resources",  # no socket or pipe could be made (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    "proxy_header",  # the PROXY header for the backend could not be built (e.g. a scoped IPv6 client)
    "shutting_down",  # the VIP stopped accepting new flows (UDP)
    "internal_error",  # a bug: logged with its traceback
    "accept_failed",  # accept(2) failed (EMFILE, ENFILE, ENOBUFS, ENOMEM): per failed call, not per client (TCP)
    "proxy_not_allowed",  # a PROXY header is expected, but the peer is outside accept_proxy_protocol.from
)
"""Why a new flow was turned away before it reached a backend."""

CLOSED: Final = (
    "done",  # both sides ended their stream (FIN both ways)
    "idle_timeout",  # no byte or datagram either way for the idle timeout
    "client_reset",
    "client_error",
    "backend_reset",
    "backend_error",
    "shutdown",  # the listener closed (reload removed the VIP, or sluice stopped)
    "backend_down",  # on_backend_down: close
    "drain_timeout",  # a drained backend's flows outlived drain_timeout
    "responses",  # UDP: every expected reply was seen
    "evicted",  # UDP: the session table was full and this was the least recently used session
    "no_backend",  # UDP: the session's backend went away and no other could take it
    "no_resources",  # UDP: a rebalanced session's new socket could not be made; TCP: no pipe for bytes to move
)
"""Why an established flow (TCP connection or UDP session) ended."""

QUIC: Final = (
    "quic_routed",  # a short-header QUIC packet went to the backend its connection ID names
    "quic_fallback",  # a short-header QUIC packet whose CID named no usable backend: hashed instead
)
"""The per-VIP counters of QUIC connection-ID routing (`sluice.core.quic`); counted per new UDP session
(proxy, native engine; per datagram with ``per_packet``) and per packet (XDP)."""

CONNECT_ERRORS: Final = ("refused", "timeout", "unreachable", "reset", "other")
"""Why a backend connect failed (TCP connect, or ICMP unreachable for a UDP session)."""

DROPPED: Final = (
    "truncated",  # a datagram larger than the receive buffer (MSG_TRUNC)
    "too_large",  # EMSGSIZE on send
    "send_buffer_full",  # EAGAIN/ENOBUFS on send: dropped, never queued without bound
    "backend_refused",  # ICMP port unreachable from the backend
    "no_backend",
    "unknown_source",  # a reply from an address that is not the session's backend
    "kernel_overflow",  # dropped by the kernel at a full listen socket (SO_RXQ_OVFL, native engine)
    "queue_delay",  # waited in the listen socket's queue longer than udp.max_queue_delay (SO_TIMESTAMPNS)
)
"""Why a datagram was dropped after it was received (other errno names may appear, in lower case)."""

CHECK_FAILURES: Final = (
    "refused",  # TCP connect refused (RST), or ICMP port unreachable for a udp check
    "timeout",  # no (complete) answer within the check's timeout
    "reset",  # the connection was reset after it was made
    "unreachable",  # no route to the backend (host or network unreachable, interface down)
    "closed",  # the backend closed the connection before it answered
    "bad_reply",  # an answer that is not what the check expects (no match, not HTTP, a malformed DNS reply)
    "bad_status",  # an HTTP status outside expect_status, a DNS rcode other than NOERROR
    "other",  # any other error (its detail is in the API's last_check)
)
"""Why an active health check failed (python only: the control plane runs the checks)."""
