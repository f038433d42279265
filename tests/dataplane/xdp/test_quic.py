"""QUIC connection-ID routing in the XDP program, through BPF_PROG_TEST_RUN: fixtures (long headers
hashed, short headers by server ID, every fallback) and a differential run against core/quic.py."""

from __future__ import annotations

import ctypes
import random

import pytest

from sluice.core.flow import IPPROTO_UDP
from sluice.core.quic import build_short_header_cid, read_server_id
from sluice.dataplane.xdp.loader import XDP_TX
from sluice.dataplane.xdp.maps import QuicIdKey, vip_key
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import CLIENT4, CLIENT_MAC, LB_MAC, TBackend, World, model_backend, model_l2

BITS = 8
IDS = {1: 0, 2: 1, 3: 2}  # server ID -> position of the v4udp backend


def enable_quic(world: World, bits: int = BITS) -> dict[int, TBackend]:
    """Turn on QUIC routing for the v4udp VIP (as the plane's vip_meta / write_quic_ids do)."""
    v = world.vips["v4udp"]
    key = vip_key(v.addr, v.port, v.proto)
    meta = world.maps.vips.lookup(key)
    assert meta is not None
    meta.quic_bits = bits
    world.maps.vips.update(key, meta)
    out = {}
    for server_id, position in IDS.items():
        b = v.backends[position]
        world.maps.quic_ids.update(QuicIdKey(v.index, server_id), ctypes.c_uint32(b.index))
        out[server_id] = b
    return out


def frame(sport: int, payload: bytes) -> bytes:
    v_addr = "198.18.100.1"
    return P.eth(
        LB_MAC, CLIENT_MAC, P.ETH_IPV4, P.ipv4(CLIENT4, v_addr, IPPROTO_UDP, P.udp(sport, 53, payload))
    )


def short(server_id: int, rest: bytes = b"\x00" * 20) -> bytes:
    return b"\x41" + build_short_header_cid(server_id, BITS) + rest


def initial() -> bytes:
    return b"\xc3\x00\x00\x00\x01\x08" + build_short_header_cid(2, BITS) + b"\x08" + bytes(8) + bytes(30)


def quic_counters(world: World) -> tuple[int, int]:
    c = world.maps.vip_counters(world.vips["v4udp"].index)
    return c["quic_routed"], c["quic_fallback"]


def port_hashed_elsewhere(world: World, backend: TBackend, start: int) -> int:
    """A client port whose 5-tuple Maglev gives another backend than `backend`."""
    v = world.vips["v4udp"]
    return next(p for p in range(start, start + 100) if model_backend(v, CLIENT4, p) != backend)


def test_short_header_goes_to_the_backend_its_cid_names(world: World) -> None:
    backends = enable_quic(world)
    for server_id, b in backends.items():
        port = port_hashed_elsewhere(world, b, 41000 + 100 * server_id)
        f = frame(port, short(server_id))
        result = world.run(f)
        assert (result.verdict, result.data) == (XDP_TX, model_l2(f, b))
    assert quic_counters(world) == (3, 0)


@pytest.mark.parametrize(
    ("description", "payload", "fallback"),
    [
        ("long header (Initial) carrying a known CID", initial(), 0),
        ("empty payload", b"", 0),
        ("unknown server id", short(9), 1),
        ("server id 0", b"\x41\x40\x00" + bytes(20), 1),
        ("CID version 2", b"\x41\x80\x04" + bytes(20), 1),
        ("CID version 0", b"\x41\x00\x04" + bytes(20), 1),
        ("truncated: 8 payload bytes", short(2)[:8], 1),
        ("one byte, short header", b"\x41", 1),
    ],
)
def test_everything_else_is_hashed(world: World, description: str, payload: bytes, fallback: int) -> None:
    enable_quic(world)
    v = world.vips["v4udp"]
    f = frame(42001, payload)
    result = world.run(f)
    assert (result.verdict, result.data) == (XDP_TX, model_l2(f, model_backend(v, CLIENT4, 42001))), (
        description
    )
    assert quic_counters(world) == (0, fallback)


def test_an_inactive_backend_falls_back(world: World) -> None:
    backends = enable_quic(world)
    v = world.vips["v4udp"]
    world.set_backend(v, backends[2], active=False)
    world.write_slots(v, [b.index for b in v.backends if b != backends[2]] * 7)
    f = frame(42101, short(2))
    result = world.run(f)
    assert (result.verdict, result.data) == (XDP_TX, model_l2(f, model_backend(v, CLIENT4, 42101)))
    assert quic_counters(world) == (0, 1)


def test_a_vip_without_quic_hashes_short_headers(world: World) -> None:
    v = world.vips["v4udp"]
    f = frame(42201, short(2))
    result = world.run(f)
    assert (result.verdict, result.data) == (XDP_TX, model_l2(f, model_backend(v, CLIENT4, 42201)))
    assert quic_counters(world) == (0, 0)


def test_a_client_that_changes_its_port_stays_on_its_backend(world: World) -> None:
    """Initial from port A: Maglev (a connection entry); the backend's CID names it; short headers from
    port B (which Maglev gives another backend) reach it, before and after B's own long header."""
    backends = enable_quic(world)
    v = world.vips["v4udp"]
    port_a = 43001
    first = model_backend(v, CLIENT4, port_a)
    f = frame(port_a, initial())
    assert world.run(f).data == model_l2(f, first)
    server_id = next(s for s, b in backends.items() if b == first)
    port_b = port_hashed_elsewhere(world, first, 43100)
    for _ in range(3):
        f = frame(port_b, short(server_id, b"stream data"))
        result = world.run(f)
        assert (result.verdict, result.data) == (XDP_TX, model_l2(f, first))
    f = frame(port_b, initial())  # a long header from B (say a new connection) is hashed
    assert world.run(f).data == model_l2(f, model_backend(v, CLIENT4, port_b))
    f = frame(port_b, short(server_id))  # the connection entry B now has does not win over the CID
    assert world.run(f).data == model_l2(f, first)
    assert quic_counters(world) == (4, 0)


def test_program_equals_core_on_random_payloads(world: World) -> None:
    backends = enable_quic(world)
    v = world.vips["v4udp"]
    rng = random.Random(14)
    routed = fallback = 0
    for n in range(400):
        if n % 2:
            payload = b"\x40" + build_short_header_cid(
                rng.choice([1, 2, 3, rng.randrange(1 << BITS)]), BITS, rng.randbytes(rng.randint(0, 6))
            )
            payload = payload[: rng.randint(0, len(payload))] if n % 5 == 0 else payload
        else:
            payload = rng.randbytes(rng.randint(0, 16))
        port = 44000 + n
        server_id = read_server_id(payload, BITS)
        target = backends.get(server_id) if server_id > 0 else None
        routed += target is not None
        fallback += server_id >= 0 and target is None
        expected = target or model_backend(v, CLIENT4, port)
        f = frame(port, payload)
        assert world.run(f).data == model_l2(f, expected), payload.hex()
    assert quic_counters(world) == (routed, fallback)
    assert routed > 10 and fallback > 10
