"""The ``#define``s that maps.py and plane.py copy by hand agree with bpf/xdp_consts.h (as the layout
test does for the structs); no compiler needed: the header's ``#define NAME value`` lines are parsed."""

from __future__ import annotations

import re

import pytest

from sluice.core.maglev import DEFAULT_TABLE_SIZE
from sluice.dataplane.xdp import maps, plane
from sluice.dataplane.xdp.build import BPF_DIR

_DEFINE = re.compile(r"^\s*#define\s+([A-Z][A-Z0-9_]*)\s+(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*(?:/\*.*)?$")


def header_defines(name: str = "xdp_consts.h") -> dict[str, int]:
    """NAME -> value of every ``#define NAME <integer>`` line of a header in bpf/."""
    out: dict[str, int] = {}
    for line in (BPF_DIR / name).read_text().splitlines():
        m = _DEFINE.match(line)
        if m:
            out[m.group(1)] = int(m.group(2), 0)
    return out


# constants maps.py copies from the header, under the same names
MIRRORED = (
    "NO_BACKEND",
    "FWD_L2",
    "FWD_IPIP",
    "BACKEND_F_ACTIVE",
    "VIP_F_HASH_KEYED",
    "FAMILY_V4",
    "FAMILY_V6",
)


def test_parser_reads_the_header() -> None:
    defines = header_defines()
    assert defines["NO_BACKEND"] == 0xFFFFFFFF  # "0xffffffffu": the suffix is dropped
    assert defines["MAX_VIPS"] == 64  # inside #ifndef, with a trailing comment
    assert "SLUICE_XDP_CONSTS_H" not in defines  # an include guard has no value


@pytest.mark.parametrize("name", MIRRORED)
def test_maps_constant_matches_header(name: str) -> None:
    defines = header_defines()
    assert name in defines, f"{name} is mirrored in maps.py but not defined in xdp_consts.h"
    assert getattr(maps, name) == defines[name], name


def test_protocol_numbers_match_header() -> None:
    defines = header_defines()
    assert {"tcp": defines["PROTO_TCP"], "udp": defines["PROTO_UDP"]} == plane.PROTO_NUMBERS


def test_default_maglev_size_matches_header() -> None:
    assert header_defines()["MAGLEV_SIZE"] == DEFAULT_TABLE_SIZE
