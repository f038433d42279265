"""Child processes: start pinned to a core, wait until listening, stop by pid (never by name)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
LB_CORE = 0
GEN_CORE = 1
HOST = "127.0.0.1"


NICE = 0
"""Niceness of everything the harness starts (set by `--nice`): a negative value keeps colleagues'
CPU-bound jobs on the shared cores from preempting the LB and the generators mid-measurement."""


def pinned(cmd: list[str], core: int) -> list[str]:
    """`cmd` pinned to `core` (taskset), at niceness NICE."""
    prefix = ["nice", "-n", str(NICE)] if NICE else []
    return [*prefix, "taskset", "-c", str(core), *cmd]


class StartError(RuntimeError):
    """A peer, backend or generator did not come up."""


LAYOUT = "split"
"""split: the LB alone on core 0, generators and backends on core 1.
shared: the LB on core 1 too. On a VM where waking a process on the other vCPU costs an IPI exit,
shared shows the LB's own per-message cost and latency without that overhead."""


def cores() -> tuple[int, int]:
    """(LB core, generator core) for the current LAYOUT; on a 1-core machine both are 0."""
    n = os.cpu_count() or 1
    gen = GEN_CORE if n > 1 else LB_CORE
    return (gen, gen) if LAYOUT == "shared" else (LB_CORE, gen)


def pin_self() -> None:
    """The harness itself runs on the generator core so it never disturbs the LB core."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cores()[1]})


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


MAX_LIFETIME_S = 2400
"""A started server (LB, backend) is killed by `timeout` after this even if the harness died."""


def spawn(cmd: list[str], core: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `cmd` pinned to `core` in its own session, stdout+stderr to `log`, bounded lifetime."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["timeout", "-k", "5", str(MAX_LIFETIME_S), *pinned(cmd, core)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=child_env(),
            start_new_session=True,
        )


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Signal the child's own process group (its pgid is its pid), then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    for s, wait in ((sig, timeout), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, s)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(log: Path, n: int = 12) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _listening(port: int, proto: str) -> bool:
    kind = "tcp4" if proto == "tcp" else "udp4"
    for c in psutil.net_connections(kind=kind):
        ours = c.laddr and c.laddr.port == port and c.laddr.ip in (HOST, "0.0.0.0")
        if ours and (proto == "udp" or c.status == psutil.CONN_LISTEN):
            return True
    return False


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, proto: str, log: Path, what: str, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{what} exited with code {proc.returncode}: {log_tail(log)}")
        if _listening(port, proto):
            return
        time.sleep(0.05)
    stop(proc)
    raise StartError(f"{what} not listening on {proto}/{HOST}:{port} after {timeout:.0f}s: {log_tail(log)}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_used: set[int] = set()


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1, outside the ephemeral range."""
    lo, hi = _ephemeral_range()
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 32000)
        if lo <= port <= hi or port in _used:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((HOST, port))
        except OSError:
            continue
        _used.add(port)
        return port
    raise StartError("no free port found")


def run_json(cmd: list[str], core: int, timeout: float) -> tuple[str, str]:
    """Run a bounded client pinned to `core`; returns (stdout, stderr). Raises on failure/timeout."""
    proc = subprocess.Popen(
        pinned(cmd, core),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=child_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise StartError(f"{cmd[0]} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0 and not out.strip():
        raise StartError(
            f"{' '.join(cmd[:3])} exited {proc.returncode}: {err.decode(errors='replace')[-400:]}"
        )
    return out.decode(errors="replace"), err.decode(errors="replace")
