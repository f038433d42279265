"""One accepted TCP client connection of the python engine, from accept to close (`TcpListener`
in tcp.py owns them): its `phase`, its `Splice` once established, and its idle timer."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

from sluice.config import Endpoint
from sluice.core.connect import NEXT_PHASES, Phase
from sluice.core.scheduler import Scheduler
from sluice.dataplane.proxy.connector import Connector
from sluice.dataplane.proxy.splice import Splice
from sluice.dataplane.stats import BackendStats

if TYPE_CHECKING:
    from sluice.dataplane.proxy.tcp import TcpListener


class Connection:
    """One accepted client connection, from accept to close. `phase` says where it is; what a phase
    needs is set when it is entered: the PROXY header `task`, the `connector`, then the backend and
    the `splice` (plus the idle timer) once established."""

    def __init__(self, listener: TcpListener, client: socket.socket) -> None:
        self._listener = listener
        self.client = client
        self.phase = Phase.ACCEPTED
        self.task: asyncio.Task[None] | None = None
        self.connector: Connector | None = None
        self.backend: Endpoint | None = None
        self.counted_by: Scheduler | None = None
        """The scheduler whose on_open saw this connection (on_close goes there too)."""
        self.splice: Splice | None = None
        self._bstats: BackendStats | None = None
        self._loop = asyncio.get_running_loop()
        self._last_active = 0.0
        self._accepted = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self.accepted = time.time()
        """Wall clock at accept; with `peer`, `local`, `retries` and the bytes, what the flow log shows."""
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.retries = 0
        self.bytes_to_backend = self.bytes_from_backend = 0

    def age(self) -> float:
        """Seconds since accept (the loop's monotonic clock; `accepted` is the wall-clock start)."""
        return self._loop.time() - self._accepted

    def enter(self, phase: Phase) -> None:
        if phase not in NEXT_PHASES[self.phase]:
            raise RuntimeError(f"a connection cannot go from {self.phase} to {phase}")
        self.phase = phase

    def establish(
        self, backend_sock: socket.socket, backend: Endpoint, counted_by: Scheduler
    ) -> BackendStats:
        """Join the client and its backend; raises OSError when no pipe can be made (EMFILE)."""
        listener = self._listener
        bstats = listener.backend_info(backend).stats
        self.splice = Splice(
            self.client,
            backend_sock,
            on_closed=self._on_closed,
            on_a_to_b=self._on_to_backend,
            on_b_to_a=self._on_from_backend,
            names=("client", "backend"),
            use_splice=listener.use_splice,
            buffer_size=listener.buffer_size,
            pipes=listener.pipes,
            lingerer=listener.lingerer,
        )
        self.enter(Phase.ESTABLISHED)
        self.connector = None
        self.backend, self.counted_by, self._bstats = backend, counted_by, bstats
        self._last_active = self._loop.time()
        return bstats

    def start(self) -> None:
        assert self.splice is not None
        self._arm_idle()
        self.splice.start()

    def close(self, reason: str) -> None:
        """Close an established connection (counted in ``closed[reason]``)."""
        assert self.splice is not None
        self.splice.close(reason)

    def _on_to_backend(self, n: int) -> None:
        assert self._bstats is not None
        self._bstats.bytes_to_backend += n
        self.bytes_to_backend += n
        self._last_active = self._loop.time()

    def _on_from_backend(self, n: int) -> None:
        assert self._bstats is not None
        self._bstats.bytes_from_backend += n
        self.bytes_from_backend += n
        self._last_active = self._loop.time()

    def _arm_idle(self) -> None:
        deadline = self._last_active + self._listener.vip.idle_timeout_s
        self._idle = self._loop.call_at(deadline, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        # Activity only moves a timestamp; the timer notices it here and re-arms once.
        if self._loop.time() >= self._last_active + self._listener.vip.idle_timeout_s - 0.001:
            self.close("idle_timeout")
        else:
            self._arm_idle()

    def _on_closed(self, reason: str) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._listener.connection_closed(self, reason)
        self._listener.stats.flow_duration.observe(self.age())
        assert self._bstats is not None
        self._bstats.active -= 1
