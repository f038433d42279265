"""Network namespaces and veth pairs for labs, driven through the `ip` command.

Every namespace a lab creates is named ``<prefix><run id>-<role>`` where the prefix is ``slc`` plus
a run id unique to the process, so `sweep_stale` can remove leftovers of earlier crashed runs
(namespaces with the prefix whose owner process is gone) without touching anything else.
Needs root.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "slc"


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and its stderr."""


def sh(args: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def run_id() -> str:
    """Unique per process: the pid, so a sweep can tell whether the owner still lives."""
    return f"{PREFIX}{os.getpid()}"


def list_namespaces() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by processes that no longer exist; returns their names."""
    removed = []
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            sh(["ip", "netns", "delete", name], check=False)
            removed.append(name)
    return removed


@dataclass
class Namespace:
    """One network namespace. Use as a context manager, or call `delete`."""

    name: str
    _deleted: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, role: str, *, prefix: str | None = None) -> Namespace:
        """``<prefix><role>``, the prefix by default this process's ``<run id>-``; lo up."""
        name = f"{run_id()}-{role}" if prefix is None else f"{prefix}{role}"
        sh(["ip", "netns", "add", name])
        ns = cls(name)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.name, *args], check=check, timeout=timeout)

    def popen(
        self, *args: str, stdout: int | None = None, stderr: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside the namespace; the caller ends it by its pid."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], stdout=stdout, stderr=stderr)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def delete(self) -> None:
        if not self._deleted:
            sh(["ip", "netns", "delete", self.name], check=False)
            self._deleted = True

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def veth(a: Namespace | None, a_name: str, b: Namespace | None, b_name: str) -> None:
    """Create a veth pair with one end in namespace `a` and the other in `b` (None = the caller's)."""
    sh(["ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name])
    for ns, name in ((a, a_name), (b, b_name)):
        if ns is not None:
            sh(["ip", "link", "set", name, "netns", ns.name])


def addr(ns: Namespace, dev: str, cidr: str) -> None:
    ns.run("ip", "addr", "add", cidr, "dev", dev)
    ns.run("ip", "link", "set", dev, "up")
