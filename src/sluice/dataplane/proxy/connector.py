"""The I/O of a TCP backend connect: non-blocking ``connect_ex`` + ``add_writer``, one timer per attempt.

`sluice.core.connect.ConnectPlan` decides which backend to try next and when to give up; a
`Connector` opens the sockets, waits, sends the first bytes (PROXY header, early payload), counts
the attempts and errors, and reports the outcome through two callbacks. No task, no future.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable

from sluice.core.connect import ConnectPlan, GiveUp, connect_error_reason
from sluice.core.endpoint import Endpoint
from sluice.dataplane.stats import BackendStats, VipStats

log = logging.getLogger(__name__)

Address = tuple[str, int]


class BackendInfo:
    """What a connect to one backend needs, computed once: family, socket address, counters."""

    __slots__ = ("addr", "family", "stats")

    def __init__(self, backend: Endpoint, stats: BackendStats) -> None:
        self.family = socket.AF_INET6 if backend.family_v6 else socket.AF_INET
        self.addr: Address = (backend.host, backend.port)
        self.stats = stats


def errno_name(exc: BaseException) -> str | None:
    """``ECONNREFUSED``, ... for an OSError; ``ETIMEDOUT`` for a timeout of our own timer."""
    number = exc.errno if isinstance(exc, OSError) else None
    if number:
        return errno.errorcode.get(number)
    return "ETIMEDOUT" if isinstance(exc, TimeoutError) else None


class Connector:
    """One client on its way to a backend: `on_connected(sock, backend)` once a backend took the
    first bytes, or `on_gave_up(reason)` (a `refused` key) after the plan ran out or on an error."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        plan: ConnectPlan,
        first_bytes: bytes,
        timeout_s: float,
        backend_info: Callable[[Endpoint], BackendInfo],
        on_connected: Callable[[socket.socket, Endpoint], None],
        on_gave_up: Callable[[str], None],
        vip_name: str,
        vip_stats: VipStats,
    ) -> None:
        self._loop = loop
        self._plan = plan
        self._scheduler = plan.scheduler
        self._first = first_bytes
        self._timeout_s = timeout_s
        self._backend_info = backend_info
        self._on_connected = on_connected
        self._on_gave_up = on_gave_up
        self._vip_name = vip_name
        self._vip_stats = vip_stats
        self._started = 0.0
        """Loop time the current attempt's connect() was made (for `BackendStats.connect_latency`)."""
        self._sock: socket.socket | None = None
        self._backend: Endpoint | None = None
        self._info: BackendInfo | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._guarded(self._next)

    def cancel(self) -> None:
        """Abandon the attempt (the listener is closing): close the backend socket, count nothing."""
        self._drop_backend()

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            log.exception("vip %s: connecting to a backend failed", self._vip_name)
            self._give_up("internal_error")

    def _next(self) -> None:
        """Connect to the next backend the plan offers, or give up."""
        while not isinstance(decision := self._plan.next(), GiveUp):
            backend = decision.backend
            info = self._backend_info(backend)
            info.stats.connect_attempts += 1
            if len(self._plan.tried) > 1:
                self._vip_stats.retries += 1
            try:
                sock = socket.socket(info.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as exc:  # EMFILE and friends
                log.warning("vip %s: cannot open a backend socket: %s", self._vip_name, exc)
                self._give_up("no_resources")
                return
            self._scheduler.on_open(backend)
            self._sock, self._backend, self._info = sock, backend, info
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._started = self._loop.time()
                err = sock.connect_ex(info.addr)
            except OSError as exc:
                self._failed(exc)
                continue
            if err == 0:
                self._on_writable()
                return
            if err != errno.EINPROGRESS:
                self._failed(OSError(err, os.strerror(err)))
                continue
            self._wait()
            return
        self._give_up(decision.reason)

    def _on_writable(self) -> None:
        sock = self._sock
        assert sock is not None and self._backend is not None and self._info is not None
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if self._first:
                try:
                    sent = sock.send(self._first)
                except BlockingIOError:
                    sent = 0
                self._first = self._first[sent:]
                if self._first:  # the rest when the socket takes it, within the same timeout
                    self._wait()
                    return
        except OSError as exc:
            self._retry(exc)
            return
        self._stop_waiting()
        self._info.stats.connect_ok += 1
        self._info.stats.connect_latency.observe(self._loop.time() - self._started)
        self._sock = None
        self._on_connected(sock, self._backend)

    def _on_timeout(self) -> None:
        self._stop_waiting()
        self._retry(TimeoutError("connect timed out"))

    def _retry(self, exc: OSError) -> None:
        self._failed(exc)
        self._guarded(self._next)

    def _failed(self, exc: OSError) -> None:
        """The current attempt failed with `exc`: count it and release its socket."""
        assert self._info is not None
        self._info.stats.connect_errors[connect_error_reason(errno_name(exc))] += 1
        log.debug("vip %s: connect to %s failed: %r", self._vip_name, self._backend, exc)
        self._drop_backend()

    def _wait(self) -> None:
        """Call `_on_writable` when the socket is writable, `_on_timeout` after the connect timeout
        (one timeout for the connect and the first bytes together)."""
        if self._timer is None:
            assert self._sock is not None
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
            self._timer = self._loop.call_later(self._timeout_s, self._on_timeout)

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            assert self._sock is not None
            self._loop.remove_writer(self._sock.fileno())

    def _drop_backend(self) -> None:
        self._stop_waiting()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            assert self._backend is not None
            self._scheduler.on_close(self._backend)

    def _give_up(self, reason: str) -> None:
        self._drop_backend()
        self._on_gave_up(reason)
