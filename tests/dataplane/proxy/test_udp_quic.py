"""QUIC connection-ID routing on both engines of the UDP proxy: a client that changes its source port
mid-connection stays on its backend; unknown IDs and down backends fall back to the hash.

The exchange is QUIC-shaped, not QUIC: a long-header "Initial" (first bit 1) from port A is hashed to
some backend, which answers with a long-header packet whose source connection ID carries its server
ID (`sluice.core.quic` layout); the client then sends short-header packets (first bit 0) with that
connection ID as destination from port B.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from ipaddress import ip_address

import pytest

from sluice.config import Backend, Endpoint, QuicOptions, UdpOptions, Vip
from sluice.core.flow import IPPROTO_UDP, FiveTuple
from sluice.core.quic import build_short_header_cid, read_server_id
from sluice.core.scheduler import build_scheduler
from tests.dataplane.proxy import udp_helpers
from tests.dataplane.proxy.helpers import run
from tests.dataplane.proxy.udp_helpers import Address, Client, _RawSocket, serving

BITS = 8
SERVER_IDS = (11, 22, 33)
CLIENTS = 30
VERSION = b"\x00\x00\x00\x01"


engine = pytest.fixture(autouse=True, params=udp_helpers.ENGINES)(udp_helpers.each_engine)
"""Every test once per engine: `make_listener` / `serving` build that engine's listener."""


def initial(client_cid: bytes) -> bytes:
    """A long-header packet as a client's first one: flags, version, DCID (random), SCID (the client's)."""
    return b"\xc0" + VERSION + b"\x08" + bytes(range(8)) + b"\x08" + client_cid + b"hello"


def short_header(dcid: bytes, payload: bytes) -> bytes:
    return b"\x41" + dcid + b"|" + payload


class QuicShapedBackend:
    """Answers an Initial with a long header carrying its own CID (server ID `server_id`) as SCID, and a
    short-header packet ``<flags><CID>|<payload>`` with ``<name>|<payload>``. Records the sources it saw."""

    def __init__(self, name: str, server_id: int) -> None:
        self.name = name
        self.server_id = server_id
        self.received: list[tuple[bytes, Address]] = []
        self.endpoint = Endpoint(ip_address("127.0.0.1"), 0)
        self._raw: _RawSocket | None = None

    async def start(self) -> QuicShapedBackend:
        self._raw = _RawSocket(("127.0.0.1", 0))
        self._raw.datagram_received = self._on_datagram  # type: ignore[method-assign]
        self.endpoint = Endpoint(ip_address("127.0.0.1"), self._raw.sock.getsockname()[1])
        return self

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        assert self._raw is not None
        self.received.append((data, addr))
        if data[0] & 0x80:
            client_cid = data[15:23]
            cid = build_short_header_cid(self.server_id, BITS, client_cid[:4])
            self._raw.sock.sendto(b"\xe0" + VERSION + b"\x08" + client_cid + bytes([len(cid)]) + cid, addr)
        else:
            self._raw.sock.sendto(f"{self.name}|".encode() + data.rsplit(b"|", 1)[1], addr)

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()


@contextlib.asynccontextmanager
async def quic_backends() -> AsyncIterator[list[QuicShapedBackend]]:
    backends = [await QuicShapedBackend(f"b{i}", sid).start() for i, sid in enumerate(SERVER_IDS)]
    try:
        yield backends
    finally:
        for b in backends:
            b.close()


def quic_vip(backends: Sequence[QuicShapedBackend], weights: Sequence[int] = (1, 1, 1), **udp: object) -> Vip:
    return Vip(
        name="quic-test",
        protocol="udp",
        listen=Endpoint(ip_address("127.0.0.1"), 0),
        quic=QuicOptions(server_id_bits=BITS),
        udp=UdpOptions(**udp),  # type: ignore[arg-type]
        backends=tuple(
            Backend(address=b.endpoint, server_id=b.server_id, weight=w)
            for b, w in zip(backends, weights, strict=True)
        ),
    )


def hashed_to(backends: Sequence[QuicShapedBackend], client: Client, vip: tuple[str, int]) -> str:
    """The backend the 5-tuple hash (maglev, `sluice flow`) gives `client`."""
    scheduler = build_scheduler("maglev", [(b.endpoint, 1) for b in backends])
    host, port = client.address
    flow = FiveTuple(ip_address(host), ip_address(vip[0]), port, vip[1], IPPROTO_UDP)
    picked = scheduler.pick(flow)
    return next(b.name for b in backends if b.endpoint == picked)


async def handshake(client: Client, index: int) -> bytes:
    """The Initial from `client`; returns the connection ID the backend chose."""
    reply, _ = await client.request(initial(index.to_bytes(8, "big")))
    assert reply[0] & 0x80 and reply[6:14] == index.to_bytes(8, "big")
    return reply[15 : 15 + reply[14]]


def test_a_client_that_changes_its_port_stays_on_its_backend() -> None:
    async def scenario() -> None:
        async with quic_backends() as backends, serving(quic_vip(backends)) as lb:
            by_id = {b.server_id: b.name for b in backends}
            moved_by_hash = 0
            for i in range(CLIENTS):
                port_a = await Client.open(lb.address)
                port_b = await Client.open(lb.address)
                try:
                    cid = await handshake(port_a, i)
                    first = hashed_to(backends, port_a, lb.address)
                    assert by_id[read_server_id(b"\x40" + cid, BITS)] == first  # the hashed one answered
                    for seq in range(3):  # the connection goes on from another port
                        reply, source = await port_b.request(short_header(cid, f"c{i}:{seq}".encode()))
                        assert source[:2] == lb.address
                        assert reply == f"{first}|c{i}:{seq}".encode()
                    moved_by_hash += hashed_to(backends, port_b, lb.address) != first
                finally:
                    port_a.close()
                    port_b.close()
            assert moved_by_hash > 0  # without CID routing those would have gone elsewhere
            assert lb.stats.quic_routed == CLIENTS  # one session per port B
            assert lb.stats.quic_fallback == 0

    run("asyncio", scenario())


def test_unknown_ids_and_down_backends_fall_back_to_the_hash() -> None:
    async def scenario() -> None:
        async with quic_backends() as backends, serving(quic_vip(backends)) as lb:
            cases = [
                build_short_header_cid(99, BITS),  # no backend has 99
                b"\x80\x05" + bytes(6),  # CID version 2
                b"\x40\x00" + bytes(6),  # server id 0
            ]
            for n, cid in enumerate(cases):
                client = await Client.open(lb.address)
                try:
                    reply, _ = await client.request(short_header(cid, b"x"))
                    assert reply == f"{hashed_to(backends, client, lb.address)}|x".encode(), n
                finally:
                    client.close()
            assert (lb.stats.quic_routed, lb.stats.quic_fallback) == (0, len(cases))

            lb.update(quic_vip(backends, weights=(0, 1, 1)))  # b0 down (effective weight 0)
            cid_b0 = build_short_header_cid(SERVER_IDS[0], BITS)
            cid_b1 = build_short_header_cid(SERVER_IDS[1], BITS)
            for _ in range(5):
                client = await Client.open(lb.address)
                try:
                    reply, _ = await client.request(short_header(cid_b0, b"y"))
                    assert not reply.startswith(b"b0|")
                    reply, _ = await client.request(short_header(cid_b1, b"z"))  # same session: stays
                    assert reply.split(b"|")[0] != b"b0"
                finally:
                    client.close()
            assert lb.stats.quic_fallback == len(cases) + 5
            client = await Client.open(lb.address)
            try:
                reply, _ = await client.request(short_header(cid_b1, b"w"))
                assert reply == b"b1|w"
            finally:
                client.close()
            assert lb.stats.quic_routed == 1

    run("asyncio", scenario())


def test_long_headers_are_hashed_and_not_counted() -> None:
    async def scenario() -> None:
        async with quic_backends() as backends, serving(quic_vip(backends)) as lb:
            for i in range(10):
                client = await Client.open(lb.address)
                try:
                    cid = await handshake(client, i)
                    assert read_server_id(b"\x40" + cid, BITS) == next(
                        b.server_id for b in backends if b.name == hashed_to(backends, client, lb.address)
                    )
                finally:
                    client.close()
            assert (lb.stats.quic_routed, lb.stats.quic_fallback) == (0, 0)

    run("asyncio", scenario())


def test_per_packet_routes_every_short_header_datagram() -> None:
    async def scenario() -> None:
        async with quic_backends() as backends, serving(quic_vip(backends, per_packet=True)) as lb:
            client = await Client.open(lb.address)
            try:
                for backend in backends * 3:
                    cid = build_short_header_cid(backend.server_id, BITS)
                    reply, _ = await client.request(short_header(cid, b"p"))
                    assert reply == f"{backend.name}|p".encode()
            finally:
                client.close()
            assert lb.stats.quic_routed == 9

    run("asyncio", scenario())
