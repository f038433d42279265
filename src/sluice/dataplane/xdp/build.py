"""Compile the BPF C shipped in ``bpf/`` with clang, cached by a hash of the sources and the ``-D`` macros.

An object is rebuilt only when missing or stale; the size macros (``MAX_VIPS``...) come from the
config through `compile_object`'s `defines`, so the C and Python sizes cannot drift.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

BPF_DIR: Final = Path(__file__).parent / "bpf"
DEBIAN_PACKAGES: Final = "clang llvm libbpf-dev"


class ToolchainError(RuntimeError):
    """clang or the libbpf headers are missing; the message names the Debian packages."""


def _multiarch_include() -> list[str]:
    machine = platform.machine()
    path = Path(f"/usr/include/{machine}-linux-gnu")
    return [f"-I{path}"] if path.is_dir() else []


def default_cache_dir() -> Path:
    env = os.environ.get("SLUICE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice" / "bpf"


def clang_flags(defines: Mapping[str, int | str]) -> list[str]:
    """clang's flags for an XDP object (without the source and output): BPF target, -O2 with BTF (-g),
    warnings as errors, the multiarch include directory, a -D per macro (sorted by name)."""
    return [
        "-target",
        "bpf",
        "-O2",
        "-g",
        "-Wall",
        "-Werror",
        "-Wno-unused-parameter",
        *_multiarch_include(),
        *(f"-D{k}={defines[k]}" for k in sorted(defines)),
    ]


def compile_object(source: str, defines: Mapping[str, int], cache_dir: Path | None = None) -> Path:
    """Compile ``bpf/<source>`` with clang unless a cached object of the same sources and macros exists."""
    clang = shutil.which("clang")
    if clang is None or not Path("/usr/include/bpf/bpf_helpers.h").exists():
        missing = "clang" if clang is None else "the libbpf headers (bpf/bpf_helpers.h)"
        raise ToolchainError(
            f"cannot build the XDP program: {missing} not found; "
            f"install the Debian packages: apt-get install {DEBIAN_PACKAGES}"
        )
    flags = clang_flags(defines)
    digest = hashlib.sha256()
    for path in sorted(BPF_DIR.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update("\0".join(flags).encode())
    cache = cache_dir or default_cache_dir()
    out = cache / f"{source.removesuffix('.bpf.c')}-{digest.hexdigest()[:16]}.o"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(
        [clang, *flags, "-c", str(BPF_DIR / source), "-o", str(tmp)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ToolchainError(f"clang failed on {source}:\n{proc.stderr.strip()}")
    tmp.replace(out)
    log.info("compiled %s -> %s", source, out)
    return out
