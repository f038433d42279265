"""Machine and version facts recorded with every result."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata

from bench.proc import REPO


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _hypervisor() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " hypervisor" in f.read()
    except OSError:
        return False


def _run(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip()


def _first(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def versions() -> dict[str, str | None]:
    try:
        sluice = metadata.version("sluice-lb")
    except metadata.PackageNotFoundError:
        sluice = None
    rev = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or None
    dirty = bool(_run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "sluice": f"{sluice} ({rev}{'+dirty' if dirty else ''})" if sluice else None,
        "haproxy": _first(r"version (\S+)", _run(["haproxy", "-v"])),
        "nginx": _first(r"nginx/(\S+)", _run(["nginx", "-v"])),
        "iperf3": _first(r"iperf (\S+)", _run(["iperf3", "-v"])),
        "wrk": _first(r"wrk (\S+)", _run(["wrk", "-v"])),
        "python": platform.python_version(),
    }


def machine() -> dict[str, object]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "virtualised": _hypervisor(),
    }
