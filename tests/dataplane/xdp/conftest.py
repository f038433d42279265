"""Fixtures for the XDP program tests: compile once per session, fresh maps for every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.dataplane.xdp import build, loader
from tests.dataplane.xdp.harness import DEFINES, World, pinned_cpu
from tests.support.privileged import needs


@pytest.fixture(scope="session")
def xdp_object_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs(root=True, commands=("clang",))
    return build.compile_object("sluice_xdp.bpf.c", DEFINES, tmp_path_factory.mktemp("bpf-cache"))


@pytest.fixture(scope="session")
def decap_object_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs(root=True, commands=("clang",))
    return build.compile_object("sluice_decap.bpf.c", {}, tmp_path_factory.mktemp("bpf-cache-decap"))


@pytest.fixture(scope="session")
def pass_object_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs(root=True, commands=("clang",))
    return build.compile_object("sluice_pass.bpf.c", {}, tmp_path_factory.mktemp("bpf-cache-pass"))


@pytest.fixture
def world(xdp_object_path: Path) -> Iterator[World]:
    obj = loader.load_object(xdp_object_path, ("sluice_xdp",))
    try:
        yield from _pinned(World(obj))
    finally:
        obj.close()


def _pinned(w: World) -> Iterator[World]:
    for _ in pinned_cpu():
        yield w


@pytest.fixture
def decap(decap_object_path: Path) -> Iterator[loader.LoadedObject]:
    obj = loader.load_object(decap_object_path, ("sluice_decap",))
    try:
        yield obj
    finally:
        obj.close()


@pytest.fixture
def pass_stub(pass_object_path: Path) -> Iterator[loader.LoadedObject]:
    obj = loader.load_object(pass_object_path, ("sluice_pass",))
    try:
        yield obj
    finally:
        obj.close()
