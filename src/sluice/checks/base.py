"""What every checker shares: the result type, the timeout and latency wrapper, reply matching."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from sluice.config import Endpoint, HealthCheck
from sluice.core.connect import CONNECT_ERROR_BY_ERRNO
from sluice.core.reasons import CHECK_FAILURES

MAX_REPLY_BYTES = 65536
"""The most a send/expect check reads before it gives up on finding its pattern."""


class CheckFailed(Exception):
    """Raised inside a probe; its message is the result's detail, `reason` its `CHECK_FAILURES` key."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        if reason not in CHECK_FAILURES:
            raise ValueError(f"unknown check failure reason {reason!r}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str
    """Short reason: ``ok``, ``refused``, ``timeout``, ``status 503``, ..."""
    latency_s: float
    """Seconds the check took (up to the timeout)."""
    reason: str = "other"
    """Why a failed check failed (`sluice.core.reasons.CHECK_FAILURES`); unused when `ok`."""


class Checker(Protocol):
    async def __call__(self, target: Endpoint, mark: int = 0) -> CheckResult:
        """Check the backend at `target`; never raises for a failing backend. A non-zero `mark` is set
        on the check's socket (SO_MARK, needs CAP_NET_ADMIN): the policy routing of a DSR check path
        (dataplane/xdp/checkpath.py) steers it to one backend."""


def marked_socket(target: Endpoint, kind: socket.SocketKind, mark: int) -> socket.socket:
    """A non-blocking socket for `target`'s family, with SO_MARK `mark` (0: none)."""
    sock = socket.socket(socket.AF_INET6 if target.family_v6 else socket.AF_INET, kind)
    try:
        sock.setblocking(False)
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except BaseException:
        sock.close()
        raise
    return sock


def failure_reason(exc: BaseException) -> str:
    """The `CHECK_FAILURES` key of an error raised inside a probe."""
    if isinstance(exc, CheckFailed):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, EOFError):
        return "closed"
    if isinstance(exc, OSError) and exc.errno:
        return CONNECT_ERROR_BY_ERRNO.get(errno.errorcode.get(exc.errno, ""), "other")
    return "other"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class ProbeChecker:
    """Base: runs `probe` under the timeout, measures it and turns errors into a failed result."""

    def __init__(self, spec: HealthCheck, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        self.spec = spec
        self.timeout_s = spec.timeout
        self.max_reply_bytes = max_reply_bytes
        self.send = spec.send.encode() if spec.send else b""
        self.expect = spec.expect.encode() if spec.expect is not None else None
        self.expect_re = re.compile(spec.expect_regex.encode()) if spec.expect_regex is not None else None

    async def __call__(self, target: Endpoint, mark: int = 0) -> CheckResult:
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                detail = await self.probe(target, mark)
        except (OSError, TimeoutError, CheckFailed, EOFError, ValueError) as exc:
            return CheckResult(False, describe_error(exc), time.monotonic() - start, failure_reason(exc))
        return CheckResult(True, detail, time.monotonic() - start)

    async def probe(self, target: Endpoint, mark: int) -> str:
        raise NotImplementedError

    def matches(self, reply: bytes) -> bool:
        """Whether `reply` satisfies expect / expect_regex (any reply when neither is set)."""
        if self.expect is not None:
            return self.expect in reply
        if self.expect_re is not None:
            return self.expect_re.search(reply) is not None
        return True


class NoneChecker:
    """``type: none``: always passes (passive ejection still applies)."""

    def __init__(self, spec: HealthCheck) -> None:
        self.spec = spec

    async def __call__(self, target: Endpoint, mark: int = 0) -> CheckResult:
        return CheckResult(True, "no check", 0.0)
