"""Flows moved by table changes: the proxy listeners count the Maglev slots each update moves."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from sluice.config import Backend, Endpoint, Vip
from sluice.core.maglev import diff_tables
from sluice.core.scheduler import MaglevScheduler, build_scheduler, maglev_slots_changed
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener

M = 251


def backends(ports: range, weights: dict[int, int] | None = None) -> tuple[Backend, ...]:
    w = weights or {}
    return tuple(Backend(address=Endpoint(ip_address("127.0.0.1"), p), weight=w.get(p, 1)) for p in ports)


def maglev(bs: tuple[Backend, ...], size: int = M) -> MaglevScheduler:
    scheduler = build_scheduler("maglev", bs, table_size=size)
    assert isinstance(scheduler, MaglevScheduler)
    return scheduler


@pytest.mark.parametrize(
    "new",
    [
        backends(range(9001, 9011)),  # identical
        backends(range(9001, 9010)),  # one removed
        backends(range(9001, 9012)),  # one added
        backends(range(9001, 9011), {9003: 3, 9004: 0}),  # re-weighted, one at weight 0
        backends(range(9005, 9015)),  # four removed, four added
        backends(range(9001, 9011), dict.fromkeys(range(9001, 9011), 0)),  # all at weight 0: empty table
    ],
)
def test_count_equals_diff_tables(new: tuple[Backend, ...]) -> None:
    old = maglev(backends(range(9001, 9011)))
    expected = diff_tables(old.table, maglev(new).table).slots_changed
    assert maglev_slots_changed(old, maglev(new)) == expected
    assert maglev_slots_changed(maglev(new), old) == expected  # from an empty table too


def test_a_new_table_size_moves_every_slot_and_other_schedulers_move_none() -> None:
    bs = backends(range(9001, 9004))
    assert maglev_slots_changed(maglev(bs), maglev(bs, 257)) == 257
    rr = build_scheduler("round_robin", bs)
    assert maglev_slots_changed(maglev(bs), rr) == maglev_slots_changed(rr, maglev(bs)) == 0


def vip(protocol: str, bs: tuple[Backend, ...], **fields: object) -> Vip:
    """Never started: the listen port only has to be valid."""
    return Vip.model_validate(
        {
            "name": "v",
            "protocol": protocol,
            "listen": "127.0.0.1:8000",
            "maglev_table_size": M,
            "backends": bs,
            **fields,
        }
    )


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_listeners_add_up_the_slots_each_update_moves(protocol: str) -> None:
    first = backends(range(9001, 9011))
    lb = TcpListener(vip("tcp", first)) if protocol == "tcp" else UdpListener(vip("udp", first))
    assert lb.stats.table_slots_changed == 0
    second = backends(range(9001, 9010))
    third = backends(range(9001, 9012), {9002: 4})
    lb.update(vip(protocol, second))
    lb.update(vip(protocol, third))
    expected = (
        diff_tables(maglev(first).table, maglev(second).table).slots_changed
        + diff_tables(maglev(second).table, maglev(third).table).slots_changed
    )
    assert 0 < expected < 2 * M
    assert lb.stats.table_slots_changed == expected
    lb.update(vip(protocol, third, max_connections=5))  # no backend change: no slot moves
    assert lb.stats.table_slots_changed == expected
