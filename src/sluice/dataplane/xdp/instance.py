"""Which XDP state a process owns and how it attaches: the instance name, its pin-directory lock, the
attach mode per interface.

- The **instance** names the pin directory ``/sys/fs/bpf/sluice/<instance>/``. It comes from the
  config's ``instance:``; unset, it is the dsr interfaces' names, sorted and joined by ``+`` (``eth0``,
  ``eth0+eth1``): an interface carries one XDP program, so two processes serving the same interfaces
  are the same instance, and two on different interfaces never share maps.
- The pin directory is **locked** (flock on the directory, held while the plane runs): a second
  process with the same instance gets `InstanceInUse` at start instead of sharing (and overwriting)
  the first one's maps. The lock dies with the process, so a crash never leaves it behind.
- The **attach mode** is ``dsr.attach`` of the VIPs on an interface: auto = native, then generic
  (logged); native or generic = only that mode (an error if it fails).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from sluice.config import Vip
from sluice.dataplane.xdp import loader

AttachSetting = Literal["auto", "native", "generic"]


class XdpConfigError(ValueError):
    """A dsr VIP the XDP plane cannot serve as configured (the message names the VIP)."""


class InstanceInUse(RuntimeError):
    """Another process holds this instance's pin directory."""


def default_instance(interfaces: Iterable[str]) -> str:
    """The instance of a config without ``instance:``: its dsr interfaces, sorted, joined by "+"."""
    names = sorted(set(interfaces))
    return "+".join(names) if names else "default"


def attach_settings(vips: Sequence[Vip]) -> dict[str, AttachSetting]:
    """interface -> dsr.attach of its VIPs; VIPs on one interface that disagree are an error."""
    out: dict[str, AttachSetting] = {}
    first: dict[str, str] = {}
    for vip in vips:
        assert vip.dsr is not None
        name, mode = vip.dsr.interface, vip.dsr.attach
        if name in out and out[name] != mode:
            raise XdpConfigError(
                f"vips[{vip.name}]: dsr.attach {mode} differs from vips[{first[name]}] "
                f"({out[name]}) on the same interface {name}"
            )
        out.setdefault(name, mode)
        first.setdefault(name, vip.name)
    return out


class Attacher:
    """Attach/detach through loader.py (tests pass a recording fake). Returns the mode in use."""

    def attach(self, ifindex: int, prog_fd: int, mode: AttachSetting) -> loader.AttachMode:
        if mode == "auto":
            return loader.attach_xdp(ifindex, prog_fd, "native", fallback=True)
        return loader.attach_xdp(ifindex, prog_fd, mode, fallback=False)

    def detach(self, ifindex: int, mode: loader.AttachMode) -> None:
        loader.detach_xdp(ifindex, mode)


class PinLock:
    """An exclusive, non-blocking flock on an instance's pin directory (created if missing)."""

    def __init__(self, instance: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InstanceInUse(
                    f"XDP instance {instance!r} is in use by another process (its pin directory {directory} "
                    "is locked): give each sluice process on this host its own `instance:` in the config"
                ) from None
            raise
        self.instance = instance
        self.directory = directory
        self.fresh = not any(directory.iterdir())
        """Nothing was pinned when the lock was taken: whatever is pinned now, this process pinned."""
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
