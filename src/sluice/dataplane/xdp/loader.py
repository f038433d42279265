"""The libbpf user: open, load, pin, attach, test-run (build.py compiles; tcloader.py adds tc attach).

libbpf is the system library (Debian ``libbpf1``, ``libbpf.so.1``) used through ctypes. Maps are
pinned under ``/sys/fs/bpf/sluice/<instance>/`` so a restarted process reuses them (the connection table survives); a clean stop detaches the
program but leaves the pins, `remove_pins` deletes them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from sluice.dataplane.xdp.build import ToolchainError

log = logging.getLogger(__name__)

BPFFS: Final = Path("/sys/fs/bpf")
PIN_ROOT: Final = BPFFS / "sluice"

XDP_FLAGS_UPDATE_IF_NOEXIST: Final = 1 << 0
XDP_FLAGS_SKB_MODE: Final = 1 << 1
XDP_FLAGS_DRV_MODE: Final = 1 << 2

BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

XDP_ABORTED: Final = 0
XDP_DROP: Final = 1
XDP_PASS: Final = 2
XDP_TX: Final = 3
XDP_REDIRECT: Final = 4

AttachMode = Literal["native", "generic"]
_MODE_FLAGS: Final[dict[str, int]] = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class BpfError(OSError):
    """A libbpf or bpf(2) call failed; errno is set, the message names the call."""


# ---------------------------------------------------------------- libbpf through ctypes


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1 bpf.h), for `test_run` (test and bench only)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class _BatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts."""

    _fields_ = (("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64))


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_recent_messages: deque[str] = deque(maxlen=40)
_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None
_print_cb: Any = None


def _on_libbpf_print(level: int, fmt: bytes | None, args: int | None) -> int:
    assert _libc is not None
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    _recent_messages.append(text)
    if level <= 1:  # LIBBPF_WARN, LIBBPF_INFO
        log.debug("libbpf: %s", text)
    return 0


def _sig(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def libbpf() -> ctypes.CDLL:
    """The system libbpf.so.1 with the signatures sluice uses (loaded once)."""
    global _lib, _libc, _print_cb
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as exc:
        raise ToolchainError(f"cannot load libbpf.so.1 ({exc}); install the Debian package libbpf1") from None
    vp, ci, cu, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    _sig(lib, "bpf_object__open_file", vp, cs, vp)
    _sig(lib, "bpf_object__load", ci, vp)
    _sig(lib, "bpf_object__close", None, vp)
    _sig(lib, "bpf_object__next_map", vp, vp, vp)
    _sig(lib, "bpf_object__find_program_by_name", vp, vp, cs)
    _sig(lib, "bpf_program__fd", ci, vp)
    _sig(lib, "bpf_map__name", cs, vp)
    _sig(lib, "bpf_map__fd", ci, vp)
    _sig(lib, "bpf_map__set_pin_path", ci, vp, cs)
    _sig(lib, "bpf_map__type", ci, vp)
    _sig(lib, "bpf_map__key_size", cu, vp)
    _sig(lib, "bpf_map__value_size", cu, vp)
    _sig(lib, "bpf_map__max_entries", cu, vp)
    _sig(lib, "bpf_obj_get_info_by_fd", ci, ci, vp, ctypes.POINTER(cu))
    _sig(lib, "bpf_xdp_attach", ci, ci, ci, cu, vp)
    _sig(lib, "bpf_xdp_detach", ci, ci, cu, vp)
    _sig(lib, "bpf_xdp_query_id", ci, ci, ci, ctypes.POINTER(cu))
    _sig(lib, "bpf_map_update_elem", ci, ci, vp, vp, ctypes.c_uint64)
    _sig(lib, "bpf_map_lookup_elem", ci, ci, vp, vp)
    _sig(lib, "bpf_map_delete_elem", ci, ci, vp)
    _sig(lib, "bpf_map_get_next_key", ci, ci, vp, vp)
    _sig(lib, "bpf_map_update_batch", ci, ci, vp, vp, ctypes.POINTER(cu), ctypes.POINTER(_BatchOpts))
    _sig(lib, "bpf_obj_get", ci, cs)
    _sig(lib, "bpf_prog_get_fd_by_id", ci, cu)
    _sig(lib, "bpf_prog_test_run_opts", ci, ci, ctypes.POINTER(_TestRunOpts))
    _sig(lib, "libbpf_num_possible_cpus", ci)
    _sig(lib, "libbpf_set_print", vp, _PRINT_FN)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _sig(libc, "vsnprintf", ci, ctypes.c_char_p, ctypes.c_size_t, cs, vp)
    _libc = libc
    _print_cb = _PRINT_FN(_on_libbpf_print)
    lib.libbpf_set_print(_print_cb)
    _lib = lib
    return lib


def _check(rc: int, what: str) -> int:
    """libbpf 1.x returns -errno from int functions."""
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        err = ctypes.get_errno()
        detail = "; ".join(list(_recent_messages)[-8:])
        raise BpfError(err, f"{what}: {os.strerror(err)}" + (f" (libbpf: {detail})" if detail else ""))
    return ptr


def num_possible_cpus() -> int:
    return _check(libbpf().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# ---------------------------------------------------------------- raw map syscalls (used by maps.py)


def _addr(buf: Any) -> int:
    return ctypes.addressof(buf)


def map_update(fd: int, key: Any, value: Any, flags: int = BPF_ANY) -> None:
    _check(libbpf().bpf_map_update_elem(fd, _addr(key), _addr(value), flags), "bpf_map_update_elem")


def map_lookup(fd: int, key: Any, value: Any) -> bool:
    """Fill `value`; False if the key is absent."""
    rc = libbpf().bpf_map_lookup_elem(fd, _addr(key), _addr(value))
    if rc == -2:  # ENOENT
        return False
    _check(rc, "bpf_map_lookup_elem")
    return True


def map_delete(fd: int, key: Any) -> bool:
    rc = libbpf().bpf_map_delete_elem(fd, _addr(key))
    if rc == -2:
        return False
    _check(rc, "bpf_map_delete_elem")
    return True


def map_next_key(fd: int, key: Any | None, next_key: Any) -> bool:
    rc = libbpf().bpf_map_get_next_key(fd, _addr(key) if key is not None else None, _addr(next_key))
    if rc == -2:
        return False
    _check(rc, "bpf_map_get_next_key")
    return True


def map_update_batch(fd: int, keys_addr: int, values_addr: int, count: int, flags: int = BPF_ANY) -> None:
    """bpf_map_update_batch over `count` packed keys and values at the given addresses."""
    n = ctypes.c_uint32(count)
    opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts), elem_flags=flags, flags=0)
    _check(
        libbpf().bpf_map_update_batch(fd, keys_addr, values_addr, ctypes.byref(n), ctypes.byref(opts)),
        "bpf_map_update_batch",
    )
    if n.value != count:
        raise BpfError(0, f"bpf_map_update_batch: wrote {n.value} of {count}")


def obj_get(path: Path) -> int:
    """A file descriptor for a pinned map or program."""
    return _check(libbpf().bpf_obj_get(str(path).encode()), f"bpf_obj_get {path}")


def prog_fd_by_id(prog_id: int) -> int:
    """A file descriptor for the loaded program with id `prog_id` (the caller closes it). Bench only
    (bench/xdp.py test-runs the program an interface carries)."""
    return _check(libbpf().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id {prog_id}")


# ---------------------------------------------------------------- bpffs and pins


def _own_mount_namespace() -> bool:
    """Whether this process runs in a mount namespace of its own (not PID 1's), as under
    ``ip netns exec`` (which unshares one to remount /sys); unknown counts as own."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return True


def ensure_bpffs() -> bool:
    """Mount the BPF filesystem on /sys/fs/bpf if it is not mounted; True if the mount is private to
    this process's mount namespace (it and its pins vanish when the process exits: one warning)."""
    with open("/proc/mounts") as f:
        if any(line.split()[1:3] == [str(BPFFS), "bpf"] for line in f):
            return False
    proc = subprocess.run(
        ["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True, timeout=10, check=False
    )
    if proc.returncode != 0:
        raise BpfError(0, f"cannot mount bpffs on {BPFFS}: {proc.stderr.strip()}")
    if not _own_mount_namespace():
        log.info("mounted bpffs on %s", BPFFS)
        return False
    log.warning(
        "mounted a private bpffs on %s (this mount namespace had none, as under `ip netns exec`): the "
        "pinned maps and the connection table vanish when sluice exits; to keep them across restarts run "
        "sluice with `nsenter --net=/run/netns/<name>` instead (README: Direct Server Return with XDP)",
        BPFFS,
    )
    return True


def pin_dir(instance: str) -> Path:
    if not instance or "/" in instance or instance.startswith("."):
        raise ValueError(f"bad instance name {instance!r}")
    return PIN_ROOT / instance


def remove_pins(instance: str) -> None:
    """Delete an instance's pinned maps (its connection table is lost)."""
    path = pin_dir(instance)
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (the rest of the 256 bytes stays zero)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("rest", ctypes.c_uint8 * 232),
    )


def _pinned_shape(path: Path) -> tuple[int, int, int, int] | None:
    """(type, key size, value size, max entries) of a pinned map, None if not pinned."""
    if not path.exists():
        return None
    fd = obj_get(path)
    try:
        info = _MapInfo()
        n = ctypes.c_uint32(ctypes.sizeof(info))
        _check(
            libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)), "bpf_obj_get_info_by_fd"
        )
        return info.type, info.key_size, info.value_size, info.max_entries
    finally:
        os.close(fd)


def _reset_incompatible_pins(directory: Path, wanted: dict[str, tuple[int, int, int, int]]) -> None:
    """Pinned maps of another shape (sizes changed) cannot be reused: remove every pin (logged)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, shape in wanted.items():
        pinned = _pinned_shape(directory / name)
        if pinned is not None and pinned != shape:
            log.warning(
                "pinned map %s has shape %s, want %s: removing the pins in %s (the connection table is lost)",
                name,
                pinned,
                shape,
                directory,
            )
            for child in directory.iterdir():
                child.unlink()
            return


# ---------------------------------------------------------------- objects, programs, XDP


@dataclass
class LoadedObject:
    """A loaded BPF object: program and map file descriptors (valid until `close`)."""

    path: Path
    _obj: int
    programs: dict[str, int]
    maps: dict[str, int]

    def close(self) -> None:
        if self._obj:
            libbpf().bpf_object__close(self._obj)
            self._obj = 0


def load_object(path: Path, programs: tuple[str, ...], pins: Path | None = None) -> LoadedObject:
    """Open and load a compiled object; with `pins`, reuse (or create and pin) its maps there.

    Pinned maps whose shape differs from the object's (the config changed a size) are removed first."""
    lib = libbpf()
    if pins is not None:
        ensure_bpffs()
    _recent_messages.clear()
    obj = _check_ptr(lib.bpf_object__open_file(str(path).encode(), None), f"bpf_object__open_file {path}")
    try:
        names: list[tuple[str, int]] = []
        m = lib.bpf_object__next_map(obj, None)
        while m:
            names.append((lib.bpf_map__name(m).decode(), m))
            m = lib.bpf_object__next_map(obj, m)
        if pins is not None:
            shapes = {
                name: (
                    lib.bpf_map__type(m),
                    lib.bpf_map__key_size(m),
                    lib.bpf_map__value_size(m),
                    lib.bpf_map__max_entries(m),
                )
                for name, m in names
            }
            _reset_incompatible_pins(pins, shapes)
            for name, m in names:
                _check(lib.bpf_map__set_pin_path(m, str(pins / name).encode()), "bpf_map__set_pin_path")
        rc = lib.bpf_object__load(obj)
        if rc < 0:
            detail = "\n".join(list(_recent_messages)[-25:])
            raise BpfError(-rc, f"bpf_object__load {path.name}: {os.strerror(-rc)}\n{detail}")
        progs = {}
        for prog in programs:
            p = _check_ptr(lib.bpf_object__find_program_by_name(obj, prog.encode()), f"program {prog}")
            progs[prog] = _check(lib.bpf_program__fd(p), f"bpf_program__fd {prog}")
        fds = {name: _check(lib.bpf_map__fd(m), f"bpf_map__fd {name}") for name, m in names}
    except BaseException:
        lib.bpf_object__close(obj)
        raise
    return LoadedObject(path, obj, progs, fds)


def attach_xdp(
    ifindex: int, prog_fd: int, mode: AttachMode = "native", *, fallback: bool = True
) -> AttachMode:
    """Attach (or replace) the interface's XDP program; native mode falls back to generic (logged)."""
    lib = libbpf()
    rc = lib.bpf_xdp_attach(ifindex, prog_fd, _MODE_FLAGS[mode], None)
    if rc == 0:
        return mode
    if mode == "native" and fallback:
        log.warning(
            "native XDP attach on ifindex %d failed (%s); using generic mode", ifindex, os.strerror(-rc)
        )
        # A program attached in the other mode blocks this one: replace it in generic mode.
        _check(lib.bpf_xdp_attach(ifindex, prog_fd, XDP_FLAGS_SKB_MODE, None), "bpf_xdp_attach generic")
        return "generic"
    _check(rc, f"bpf_xdp_attach {mode}")
    return mode


def detach_xdp(ifindex: int, mode: AttachMode) -> None:
    rc = libbpf().bpf_xdp_detach(ifindex, _MODE_FLAGS[mode], None)
    if rc not in (0, -19):  # ENODEV: the interface is gone, so is the program
        _check(rc, "bpf_xdp_detach")


def xdp_attached_id(ifindex: int, mode: AttachMode) -> int:
    """The id of the XDP program attached in `mode` (0 = none)."""
    prog_id = ctypes.c_uint32(0)
    _check(libbpf().bpf_xdp_query_id(ifindex, _MODE_FLAGS[mode], ctypes.byref(prog_id)), "bpf_xdp_query_id")
    return prog_id.value


# ---------------------------------------------------------------- BPF_PROG_TEST_RUN (test and bench only)


@dataclass(frozen=True)
class TestRunResult:
    """What `test_run` returns. Test and bench only."""

    verdict: int
    data: bytes
    duration_ns: int = field(default=0, compare=False)  # the kernel's mean per run


def test_run(
    prog_fd: int, frame: bytes, *, headroom: int = 256, repeat: int = 1, ctx: ctypes.Structure | None = None
) -> TestRunResult:
    """Run a program `repeat` times on `frame` via BPF_PROG_TEST_RUN; returns verdict, output frame
    and mean ns per run. `ctx`: the program's context in (a tc program's __sk_buff fields).

    Test and bench only (the fixtures and bench/xdp.py); the data plane never calls it. It stays here
    because this module is the only libbpf user."""
    lib = libbpf()
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + headroom)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(out),
        data_size_in=len(frame),
        data_size_out=len(out),
        repeat=repeat,
    )
    if ctx is not None:
        opts.ctx_in, opts.ctx_size_in = ctypes.addressof(ctx), ctypes.sizeof(ctx)
    _check(lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "bpf_prog_test_run_opts")
    return TestRunResult(opts.retval, out.raw[: opts.data_size_out], opts.duration)


test_run.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


@dataclass(frozen=True)
class TestRunEach:
    """What `test_run_each` returns: per run, the verdict and the kernel's duration. Test and bench only."""

    verdicts: list[int]
    durations_ns: list[int]


def test_run_each(prog_fd: int, frames: list[bytes], *, headroom: int = 256) -> TestRunEach:
    """Run an XDP program once on each of `frames` (one BPF_PROG_TEST_RUN per frame, repeat=1).

    repeat > 1 reuses one buffer, so a program that changes the frame's length (ipip encapsulation)
    sees its own output from the second run on: timing a path means one run per frame, each timed
    by the kernel. A run's duration includes the kernel's two clock reads around it; time an empty
    program the same way to know that floor. Test and bench only."""
    lib = libbpf()
    size = max((len(f) for f in frames), default=0)
    data_in = ctypes.create_string_buffer(size)
    out = ctypes.create_string_buffer(size + headroom)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(out)
    )
    verdicts, durations = [], []
    run = lib.bpf_prog_test_run_opts
    ref = ctypes.byref(opts)
    for frame in frames:
        ctypes.memmove(data_in, frame, len(frame))
        opts.data_size_in = len(frame)
        opts.data_size_out = len(out)
        opts.repeat = 1
        _check(run(prog_fd, ref), "bpf_prog_test_run_opts")
        verdicts.append(opts.retval)
        durations.append(opts.duration)
    return TestRunEach(verdicts, durations)


test_run_each.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
