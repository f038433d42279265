"""tc (clsact) attachment through libbpf, for the health-check encapsulation program (checkroutes.py).

loader.py is the libbpf user for XDP; this module adds the tc calls (bpf_tc_*) on the same library, and
a BPF_PROG_TEST_RUN for tc programs with a mark in the context (tests only). Our filter is known by
its handle and priority, so a restarted process finds (and replaces or removes) one a crash left.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from typing import Final

from sluice.dataplane.xdp import loader

TC_HANDLE: Final = 0x5C1
TC_PRIORITY: Final = 0x5C
BPF_TC_EGRESS: Final = 1 << 1
BPF_TC_F_REPLACE: Final = 1 << 0
TC_ACT_OK: Final = 0
TC_ACT_SHOT: Final = 2


class _TcHook(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    )


class _TcOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    )


@functools.cache
def _tc_lib() -> ctypes.CDLL:
    """libbpf (loader.libbpf) with the signatures of its tc calls, set once."""
    lib = loader.libbpf()
    hook = ctypes.POINTER(_TcHook)
    loader._sig(lib, "bpf_tc_hook_create", ctypes.c_int, hook)
    for name in ("bpf_tc_attach", "bpf_tc_detach", "bpf_tc_query"):
        loader._sig(lib, name, ctypes.c_int, hook, ctypes.c_void_p)
    return lib


def _hook(ifindex: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=BPF_TC_EGRESS)


def _opts(prog_fd: int = 0, flags: int = 0) -> _TcOpts:
    return _TcOpts(
        sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, flags=flags, handle=TC_HANDLE, priority=TC_PRIORITY
    )


def tc_attach(ifindex: int, prog_fd: int) -> None:
    """Our egress filter on `ifindex` runs `prog_fd` (the clsact qdisc created if missing)."""
    lib = _tc_lib()
    hook = _hook(ifindex)
    rc = lib.bpf_tc_hook_create(ctypes.byref(hook))
    if rc < 0 and rc != -errno.EEXIST:
        raise loader.BpfError(-rc, f"bpf_tc_hook_create ifindex {ifindex}: {errno.errorcode.get(-rc)}")
    opts = _opts(prog_fd, BPF_TC_F_REPLACE)
    rc = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.addressof(opts))
    if rc < 0:
        raise loader.BpfError(-rc, f"bpf_tc_attach ifindex {ifindex}: {errno.errorcode.get(-rc)}")


def tc_attached(ifindex: int) -> bool:
    """Whether our egress filter is on `ifindex`."""
    opts = _opts()
    rc: int = _tc_lib().bpf_tc_query(ctypes.byref(_hook(ifindex)), ctypes.addressof(opts))
    return rc == 0


def tc_detach(ifindex: int) -> None:
    """Remove our egress filter from `ifindex` (absent: nothing to do)."""
    opts = _opts()
    rc = _tc_lib().bpf_tc_detach(ctypes.byref(_hook(ifindex)), ctypes.addressof(opts))
    if rc < 0 and rc not in (-errno.ENOENT, -errno.EINVAL, -errno.ENODEV):
        raise loader.BpfError(-rc, f"bpf_tc_detach ifindex {ifindex}: {errno.errorcode.get(-rc)}")


class _SkbCtx(ctypes.Structure):
    """The head of struct __sk_buff up to `mark` (the kernel zero-fills the rest)."""

    _fields_ = (("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32))


def test_run_skb(prog_fd: int, frame: bytes, mark: int, *, headroom: int = 256) -> loader.TestRunResult:
    """Run a tc program once on `frame` with skb->mark = `mark` (BPF_PROG_TEST_RUN). Tests only."""
    return loader.test_run(prog_fd, frame, headroom=headroom, ctx=_SkbCtx(mark=mark))


test_run_skb.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
