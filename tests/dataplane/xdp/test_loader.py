"""loader.py: compile cache, toolchain errors, pinned maps and attach-mode fallback."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.dataplane.xdp import build, loader
from sluice.dataplane.xdp.maps import BackendEntry, XdpMaps
from tests.dataplane.xdp.harness import DEFINES
from tests.support.privileged import needs


def test_missing_clang_names_the_debian_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no clang anywhere
    with pytest.raises(build.ToolchainError, match="apt-get install clang llvm libbpf-dev"):
        build.compile_object("sluice_xdp.bpf.c", DEFINES, tmp_path)


def test_objects_are_cached_by_sources_and_macros(tmp_path: Path) -> None:
    needs(commands=("clang",))
    first = build.compile_object("sluice_xdp.bpf.c", DEFINES, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert build.compile_object("sluice_xdp.bpf.c", DEFINES, tmp_path) == first
    assert first.stat().st_mtime_ns == mtime  # not rebuilt
    other = build.compile_object("sluice_xdp.bpf.c", {**DEFINES, "CT_SIZE": 2048}, tmp_path)
    assert other != first and other.exists()


def test_compile_error_is_reported(tmp_path: Path) -> None:
    needs(commands=("clang",))
    with pytest.raises(build.ToolchainError, match="clang failed"):
        build.compile_object("sluice_xdp.bpf.c", {"FLOW_KEY_WORDS": 9}, tmp_path)


def test_pinned_maps_outlive_the_object_and_are_reused(xdp_object_path: Path) -> None:
    needs(root=True)
    pins = loader.pin_dir(f"test-loader-{os.getpid()}")
    try:
        first = loader.load_object(xdp_object_path, ("sluice_xdp",), pins=pins)
        XdpMaps.from_fds(first.maps).backends.update(ctypes.c_uint32(3), BackendEntry(vip_index=7, flags=1))
        first.close()
        second = loader.load_object(xdp_object_path, ("sluice_xdp",), pins=pins)
        entry = XdpMaps.from_fds(second.maps).backends.lookup(ctypes.c_uint32(3))
        second.close()
        assert entry is not None and entry.vip_index == 7
    finally:
        loader.remove_pins(pins.name)
    assert not pins.exists()


def test_pins_of_another_size_are_replaced(xdp_object_path: Path, tmp_path: Path) -> None:
    needs(root=True, commands=("clang",))
    pins = loader.pin_dir(f"test-loader-resize-{os.getpid()}")
    try:
        small = loader.load_object(xdp_object_path, ("sluice_xdp",), pins=pins)
        XdpMaps.from_fds(small.maps).backends.update(ctypes.c_uint32(3), BackendEntry(vip_index=7, flags=1))
        small.close()
        bigger = build.compile_object("sluice_xdp.bpf.c", {**DEFINES, "MAX_BACKENDS": 1024}, tmp_path)
        obj = loader.load_object(bigger, ("sluice_xdp",), pins=pins)
        entry = XdpMaps.from_fds(obj.maps).backends.lookup(ctypes.c_uint32(3))
        obj.close()
        assert entry is not None and entry.vip_index == 0  # fresh maps
    finally:
        loader.remove_pins(pins.name)


def test_native_attach_falls_back_to_generic(xdp_object_path: Path) -> None:
    """`lo` has no native XDP: attaching there in native mode falls back to generic (in a namespace)."""
    needs(root=True, commands=("clang", "ip"))
    from sluice.lab.netns import Namespace

    with Namespace.create("xdp-attach") as ns:
        out = ns.run(
            sys.executable,
            "-m",
            "sluice.dataplane.xdp.decap",
            "attach",
            "lo",
            "--program",
            "sluice_pass",
            timeout=60,
        ).stdout
        assert "(generic)" in out
        assert "xdpgeneric" in ns.run("ip", "link", "show", "lo").stdout
        ns.run(sys.executable, "-m", "sluice.dataplane.xdp.decap", "detach", "lo", timeout=60)
        assert "xdp" not in ns.run("ip", "link", "show", "lo").stdout
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(ns.name) == 0
