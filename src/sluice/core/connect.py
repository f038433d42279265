"""The TCP connect policy and a client connection's phases (sans-IO).

The TCP listener (``dataplane/proxy/tcp.py``) does the I/O: it accepts, reads the PROXY header,
opens sockets and waits for them. This module decides:

- **which backend next**: `ConnectPlan.next` asks the scheduler for the flow's backend, excluding
  the ones already tried (Maglev walks on to the next slots, see `sluice.core.scheduler`);
- **retry or give up**: at most ``min(MAX_CONNECT_TRIES, number of backends)`` backends are tried;
  then the client is refused with ``connect_failed``, or with ``no_backend`` when the scheduler
  offered none at all;
- **the name of a failed connect**: `connect_error_reason` maps an errno name (``ECONNREFUSED``,
  ``ETIMEDOUT``, ...) to a `BackendStats.connect_errors` key of `sluice.core.reasons`.

A client connection goes through the phases of `Phase`; `NEXT_PHASES` is the table of the moves
allowed (it may end, refused or closed, in any phase).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sluice.core.endpoint import Endpoint
from sluice.core.flow import FiveTuple
from sluice.core.scheduler import Scheduler

__all__ = [
    "CONNECT_ERROR_BY_ERRNO",
    "MAX_CONNECT_TRIES",
    "NEXT_PHASES",
    "Connect",
    "ConnectPlan",
    "GiveUp",
    "Phase",
    "connect_error_reason",
]

MAX_CONNECT_TRIES: Final = 3
"""Backends tried per client connection (fewer when the VIP has fewer backends)."""


class Phase(StrEnum):
    """Where one accepted client connection is."""

    ACCEPTED = "accepted"
    """Just accepted (its socket being set up, no wait)."""
    PROXY_HEADER = "proxy_header"
    """Reading the client's PROXY header (VIPs with ``accept_proxy_protocol``)."""
    CONNECTING = "connecting"
    """Connecting to a backend and sending it the first bytes (PROXY header, early payload)."""
    ESTABLISHED = "established"
    """Bytes move both ways between the client and its backend."""


NEXT_PHASES: Final[Mapping[Phase, frozenset[Phase]]] = {
    Phase.ACCEPTED: frozenset({Phase.PROXY_HEADER, Phase.CONNECTING}),
    Phase.PROXY_HEADER: frozenset({Phase.CONNECTING}),
    Phase.CONNECTING: frozenset({Phase.ESTABLISHED}),
    Phase.ESTABLISHED: frozenset(),
}
"""The phase a connection may move to from each phase."""


CONNECT_ERROR_BY_ERRNO: Final[Mapping[str, str]] = {
    "ECONNREFUSED": "refused",
    "ETIMEDOUT": "timeout",
    "ECONNRESET": "reset",
    "EPIPE": "reset",
    "ECONNABORTED": "reset",
    "EHOSTUNREACH": "unreachable",
    "ENETUNREACH": "unreachable",
    "EHOSTDOWN": "unreachable",
    "ENETDOWN": "unreachable",
}
"""errno name -> `connect_errors` key; any other errno is ``other``."""


def connect_error_reason(errno_name: str | None) -> str:
    """The `connect_errors` key of a failed backend connect, from its errno name (None: unknown)."""
    return CONNECT_ERROR_BY_ERRNO.get(errno_name or "", "other")


@dataclass(frozen=True, slots=True)
class Connect:
    """Decision: connect to `backend` now."""

    backend: Endpoint


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Decision: refuse the client; `reason` is its `refused` key (connect_failed or no_backend)."""

    reason: str


class ConnectPlan:
    """One client connection's way to a backend: which to try, and when to stop.

    `backends` is the number of backends the VIP has: the tries are bounded by
    ``min(max_tries, backends)``. The scheduler's on_open/on_close bookkeeping stays with the caller
    (it counts the sockets it really opened)."""

    def __init__(
        self, scheduler: Scheduler, flow: FiveTuple, backends: int, max_tries: int = MAX_CONNECT_TRIES
    ) -> None:
        self.scheduler = scheduler
        self.flow = flow
        self.tries = min(max_tries, backends)
        self.tried: list[Endpoint] = []
        """Backends tried so far, in order."""

    def next(self) -> Connect | GiveUp:
        """The next backend to try, or why to give up."""
        if len(self.tried) < self.tries:
            backend = self.scheduler.pick(self.flow, exclude=self.tried)
            if backend is not None:
                self.tried.append(backend)
                return Connect(backend)
        return GiveUp("connect_failed" if self.tried else "no_backend")
