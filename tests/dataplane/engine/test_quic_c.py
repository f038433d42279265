"""Differential test of engine/quic.c against core/quic.py (the oracle)."""

from __future__ import annotations

import ctypes
import random
from functools import cache

import pytest

from sluice.core.quic import MAX_SERVER_ID_BITS, build_short_header_cid, read_server_id
from tests.core.test_quic import FIXTURES

from .cbuild import build_shared


@cache
def quic_c() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build_shared(("quic.c",))))
    lib.quic_server_id.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint)
    lib.quic_server_id.restype = ctypes.c_int64
    return lib


def c_server_id(datagram: bytes, bits: int) -> int:
    return int(quic_c().quic_server_id(datagram, len(datagram), bits))


@pytest.mark.parametrize(
    ("datagram", "bits", "expected"), [f[1:] for f in FIXTURES], ids=[f[0] for f in FIXTURES]
)
def test_c_equals_python_on_the_fixtures(datagram: bytes, bits: int, expected: int) -> None:
    assert c_server_id(datagram, bits) == read_server_id(datagram, bits) == expected


def test_c_equals_python_on_random_datagrams() -> None:
    rng = random.Random(14)
    routed = 0
    for _ in range(20_000):
        bits = rng.randint(1, MAX_SERVER_ID_BITS)
        if rng.random() < 0.5:  # a CID a backend built, maybe truncated
            server_id = rng.randrange(1 << bits)
            datagram = b"\x40" + build_short_header_cid(server_id, bits, rng.randbytes(rng.randint(0, 12)))
            datagram = datagram[: rng.randint(0, len(datagram))] if rng.random() < 0.2 else datagram
        else:
            datagram = rng.randbytes(rng.randint(0, 24))
        expected = read_server_id(datagram, bits)
        routed += expected > 0
        assert c_server_id(datagram, bits) == expected, (datagram.hex(), bits)
    assert routed > 5000
