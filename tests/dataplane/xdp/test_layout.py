"""maps.py's ctypes structures agree with bpf/xdp_structs.h as compiled (BTF of the objects)."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path
from typing import Any

from sluice.dataplane.xdp.maps import STRUCTS
from tests.support.privileged import needs


def _btf_structs(obj: Path) -> dict[str, list[tuple[str, int, int]]]:
    """struct name -> [(member, byte offset, byte size)], plus '<size>' entries."""
    needs(commands=("bpftool",))
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(obj)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    types: dict[int, dict[str, Any]] = {t["id"]: t for t in json.loads(out)["types"]}

    def size_of(type_id: int) -> int:
        t = types[type_id]
        if t["kind"] in ("TYPEDEF", "VOLATILE", "CONST"):
            return size_of(t["type_id"])
        if t["kind"] == "ARRAY":
            return int(t["nr_elems"]) * size_of(t["type_id"])
        return int(t["size"])

    structs = {}
    for t in types.values():
        if t["kind"] == "STRUCT" and t.get("name") in STRUCTS:
            members = [(m["name"], m["bits_offset"] // 8, size_of(m["type_id"])) for m in t["members"]]
            structs[t["name"]] = [("<size>", 0, int(t["size"])), *members]
    return structs


def _ctypes_layout(cls: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    members = [(name, getattr(cls, name).offset, getattr(cls, name).size) for name, *_ in cls._fields_]
    return [("<size>", 0, ctypes.sizeof(cls)), *members]


def test_structs_match_btf(xdp_object_path: Path, decap_object_path: Path) -> None:
    found = _btf_structs(xdp_object_path) | _btf_structs(decap_object_path)
    assert set(found) == set(STRUCTS), "every mirrored struct must appear in a map of the objects"
    for name, cls in STRUCTS.items():
        assert _ctypes_layout(cls) == found[name], name
