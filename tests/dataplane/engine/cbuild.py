"""Build the native engine's pure C files (pick.c, proxy_header*.c) into a shared library and load it
with ctypes, so differential tests can call them beside their Python twins in core/.

The library is built once per content (sources, headers and flags hashed into its name) in a cache
directory under the system temp dir; a compile error fails the test with the compiler's output.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from functools import cache
from ipaddress import ip_address
from pathlib import Path

from sluice.core.proxy_protocol import ProxyHeaderError, parse_proxy_header
from tests.support.privileged import needs

ENGINE_DIR = Path(__file__).resolve().parents[3] / "src" / "sluice" / "dataplane" / "engine"
PROXY_HEADER_SOURCES = ("proxy_header.c", "proxy_header_v1.c", "proxy_header_v2.c")
"""The PROXY header codec: which format (proxy_header.c), v1 text, v2 binary and TLVs."""
PURE_SOURCES = ("pick.c", *PROXY_HEADER_SOURCES)
"""The engine files that know nothing of sockets or Python."""
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-fPIC", "-shared")


def build_shared(sources: tuple[str, ...] = PURE_SOURCES, *, compiler: str = "gcc") -> Path:
    """Compile `sources` (names in ENGINE_DIR) into a shared library; return its path (cached)."""
    needs(commands=(compiler,))
    digest = hashlib.sha256(" ".join((compiler, *CFLAGS, *sources)).encode())
    for path in sorted(ENGINE_DIR.glob("*.h")) + [ENGINE_DIR / s for s in sources]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out_dir = Path(tempfile.gettempdir()) / f"sluice-cbuild-{os.getuid()}"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    lib = out_dir / f"engine-{digest.hexdigest()[:20]}.so"
    if lib.exists():
        return lib
    partial = out_dir / f"{lib.name}.{os.getpid()}.tmp"
    cmd = [compiler, *CFLAGS, "-o", str(partial), *(str(ENGINE_DIR / s) for s in sources)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    os.replace(partial, lib)  # atomic: a concurrent run sees the whole library or none
    return lib


class ProxyAddrs(ctypes.Structure):
    """struct proxy_addrs of proxy_header.h."""

    _fields_ = [
        ("family", ctypes.c_int),
        ("src", ctypes.c_uint8 * 16),
        ("dst", ctypes.c_uint8 * 16),
        ("src_port", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
    ]


class SchedTable(ctypes.Structure):
    """struct sched_table of pick.h."""

    _fields_ = [
        ("kind", ctypes.c_int),
        ("n", ctypes.c_uint32),
        ("weights", ctypes.POINTER(ctypes.c_uint32)),
        ("m", ctypes.c_uint32),
        ("slots", ctypes.POINTER(ctypes.c_int32)),
    ]


SCHED_KINDS = {"maglev": 0, "round_robin": 1, "least_conn": 2, "random_two": 3}
"""enum sched_kind of pick.h, by core/scheduler.py's REGISTRY names."""
FLOW_KEY_LEN = 40
PROXY_PARSE_INCOMPLETE = 0
PROXY_PARSE_INVALID = -1


@cache
def engine_c() -> ctypes.CDLL:
    """The pure C files of the engine, built with gcc, with every prototype declared."""
    lib = ctypes.CDLL(str(build_shared()))
    u8p = ctypes.POINTER(ctypes.c_uint8)
    lib.flow_key_build.argtypes = [u8p, u8p, u8p, ctypes.c_uint16, ctypes.c_uint16, ctypes.c_uint8]
    lib.flow_key_build.restype = None
    lib.flow_hash.argtypes = [u8p]
    lib.flow_hash.restype = ctypes.c_uint32
    lib.sched_pick.argtypes = [
        ctypes.POINTER(SchedTable),
        ctypes.c_uint32,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_double,
        ctypes.c_double,
    ]
    lib.sched_pick.restype = ctypes.c_int32
    lib.proxy_header_parse.argtypes = [u8p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ProxyAddrs)]
    lib.proxy_header_parse.restype = ctypes.c_int
    lib.proxy_header_build.argtypes = [
        u8p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ProxyAddrs),
    ]
    lib.proxy_header_build.restype = ctypes.c_int
    return lib


# ----------------------------------------------------------------------------- PROXY header outcomes

Outcome = tuple[str, int, int, bytes, int, bytes, int]
"""(kind, consumed, family, source address, source port, destination address, destination port);
kind is "complete", "incomplete" or "invalid"; addresses are 16 bytes (IPv4 in the first 4)."""
INCOMPLETE: Outcome = ("incomplete", 0, 0, bytes(16), 0, bytes(16), 0)
INVALID: Outcome = ("invalid", 0, 0, bytes(16), 0, bytes(16), 0)


def _packed16(host: str) -> bytes:
    return ip_address(host).packed.ljust(16, b"\0")


def python_parse(data: bytes, max_length: int) -> Outcome:
    """core.proxy_protocol.parse_proxy_header's answer, in the form `c_parse` gives."""
    try:
        parsed = parse_proxy_header(data, max_length=max_length)
    except ProxyHeaderError:
        return INVALID
    if parsed is None:
        return INCOMPLETE
    header, consumed = parsed
    if header.source is None or header.destination is None:
        return ("complete", consumed, 0, bytes(16), 0, bytes(16), 0)
    (src, src_port), (dst, dst_port) = header.source, header.destination
    family = ip_address(src).version
    return ("complete", consumed, family, _packed16(src), src_port, _packed16(dst), dst_port)


def c_parse(data: bytes, max_length: int) -> Outcome:
    """proxy_header.c's proxy_header_parse on `data` (a copy without slack after its last byte)."""
    buf = (ctypes.c_uint8 * max(1, len(data))).from_buffer_copy(data.ljust(1, b"\0"))
    out = ProxyAddrs()
    result = int(engine_c().proxy_header_parse(buf, len(data), max_length, ctypes.byref(out)))
    if result == PROXY_PARSE_INVALID:
        return INVALID
    if result == PROXY_PARSE_INCOMPLETE:
        return INCOMPLETE
    assert result > 0, result
    if out.family == 0:
        return ("complete", result, 0, bytes(16), 0, bytes(16), 0)
    return ("complete", result, out.family, bytes(out.src), out.src_port, bytes(out.dst), out.dst_port)
