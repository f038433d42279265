"""Shim: the fakes moved to tests/support/fakes.py (`free_port` to tests/support/loopback.py). Import
from there; this file goes once no test imports ``tests.control.fakes`` any more."""

from __future__ import annotations

from tests.support.fakes import FakeClock, FakePlane, ScriptedChecks, ep, make_config
from tests.support.loopback import free_port

__all__ = ["FakeClock", "FakePlane", "ScriptedChecks", "ep", "free_port", "make_config"]
