"""Active health checkers: the I/O that feeds `sluice.core.health`.

Chosen by name from `CHECKERS` (the ``health.type`` of a VIP). A checker is built once per VIP from
its `HealthCheck` config and then called with each backend's check target; it never raises for a
failing backend: it returns a `CheckResult` (ok, a short detail for logs and the API, latency).
Every call is bounded by the config's ``timeout``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from sluice.checks.base import Checker, CheckFailed, CheckResult, NoneChecker
from sluice.checks.datagram import DnsChecker, UdpChecker
from sluice.checks.stream import HttpChecker, TcpChecker, TcpExpectChecker
from sluice.config import CheckType, HealthCheck

__all__ = ["CHECKERS", "CheckFailed", "CheckResult", "Checker", "build_checker"]

CHECKERS: Final[Mapping[CheckType, Callable[[HealthCheck], Checker]]] = {
    "tcp": TcpChecker,
    "tcp_expect": TcpExpectChecker,
    "http": HttpChecker,
    "dns": DnsChecker,
    "udp": UdpChecker,
    "none": NoneChecker,
}


def build_checker(spec: HealthCheck) -> Checker:
    return CHECKERS[spec.type](spec)
