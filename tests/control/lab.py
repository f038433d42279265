"""Shim: the end-to-end helpers moved to tests/support/loopback.py. Import from there; this file goes
once no test imports ``tests.control.lab`` any more."""

from __future__ import annotations

from tests.support.loopback import (
    IO_TIMEOUT_S,
    Backend,
    Backends,
    Held,
    Load,
    free_port,
    probe,
    vip_config,
    wait_for,
)

__all__ = [
    "IO_TIMEOUT_S",
    "Backend",
    "Backends",
    "Held",
    "Load",
    "free_port",
    "probe",
    "vip_config",
    "wait_for",
]
