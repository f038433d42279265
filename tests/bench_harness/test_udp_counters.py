"""The UDP bench's counters: /proc/net texts, sluice's /metrics, the flood's packets, the ladder's rows."""

from __future__ import annotations

import socket
import struct

import pytest
from bench import dnsmsg, floodgen, rawgen, rounds, udpstats
from bench.udp_flood import UdpFlood, _own_drops
from bench.udp_ladder import UdpLadder, split_name, step_name

PROC_NET_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  101: 0100007F:5DC1 00000000:0000 07 00000000 00000000 00 00000000 00000000     0        0 1 2 0000000000000000 120
  102: 0100007F:5DC1 00000000:0000 07 00000000 00000000 00 00000000 00000000     0        0 2 2 0000000000000000 3
  103: 0100007F:0035 00000000:0000 07 00000000 00000000 00 00000000 00000000     0        0 3 2 0000000000000000 9
"""


def test_socket_drops_sum_the_sockets_of_the_port() -> None:
    assert udpstats.parse_socket_drops(PROC_NET_UDP, {0x5DC1}) == 123  # two reuseport sockets
    assert udpstats.parse_socket_drops(PROC_NET_UDP, {53}) == 9
    assert udpstats.parse_socket_drops(PROC_NET_UDP, {0x5DC1, 53}) == 132
    assert udpstats.parse_socket_drops(PROC_NET_UDP, {1}) == 0


def test_socket_drops_of_a_live_socket_are_read() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        assert udpstats.socket_drops([s.getsockname()[1]]) == 0


def test_snmp_udp_pairs_names_with_values() -> None:
    text = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts RcvbufErrors\nUdp: 10 2 7\n"
    assert udpstats.parse_snmp_udp(text) == {"InDatagrams": 10, "NoPorts": 2, "RcvbufErrors": 7}
    assert udpstats.parse_snmp_udp("Ip: x\n") == {}


METRICS = """\
# HELP sluice_vip_dropped_total Datagrams or flows dropped after acceptance
# TYPE sluice_vip_dropped_total counter
sluice_vip_dropped_total{reason="kernel_overflow",vip="bench"} 48158.0
sluice_vip_dropped_total{reason="send_buffer_full",vip="bench"} 12.0
sluice_vip_dropped_total{reason="queue_delay",vip="bench"} 7.0
sluice_vip_dropped_total{reason="send_buffer_full",vip="other"} 99.0
sluice_vip_refused_flows_total{reason="max_connections",vip="bench"} 3.0
sluice_vip_closed_flows_total{reason="responses",vip="bench"} 49940.0
sluice_vip_session_evictions_total{vip="bench"} 5.0
sluice_vip_flows_total{vip="bench"} 49949.0
sluice_backend_flows_total{backend="127.0.0.1:53",vip="bench"} 49949.0
sluice_backend_datagrams_total{backend="127.0.0.1:53",direction="to_backend",vip="bench"} 7.0
"""


def test_metrics_of_one_vip_by_reason() -> None:
    assert udpstats.parse_metrics(METRICS, "bench") == {
        "dropped.kernel_overflow": 48158.0,
        "dropped.send_buffer_full": 12.0,
        "dropped.queue_delay": 7.0,
        "refused.max_connections": 3.0,
        "closed.responses": 49940.0,
        "evictions": 5.0,
        "flows": 49949.0,
    }


def test_the_lbs_own_drops_leave_out_the_kernels() -> None:
    counters = udpstats.parse_metrics(METRICS, "bench")
    assert (
        _own_drops(counters) == 22.0
    )  # send_buffer_full, queue_delay, refused; kernel_overflow is the kernel's
    assert udpstats.delta({"a": 5.0, "b": 1.0}, {"a": 2.0, "c": 4.0}) == {"a": 3.0, "b": 1.0, "c": -4.0}


def _checksum_ok(data: bytes) -> bool:
    return rawgen.ip_checksum(data) == 0


def test_flood_packets_come_from_distinct_spoofed_sources_with_valid_checksums() -> None:
    srcs = floodgen.sources("198.18.0.1", 50_000)
    assert len(set(srcs)) == 50_000 and srcs[0] == "198.18.0.1" and srcs[-1] == "198.18.195.80"
    pkts = floodgen.packets(srcs[:3], "127.0.0.1", 5353)
    for i, p in enumerate(pkts):
        assert _checksum_ok(p[:20])  # the IPv4 header
        assert p[12:16] == socket.inet_aton(srcs[i]) and p[16:20] == socket.inet_aton("127.0.0.1")
        sport, dport, length, _ = struct.unpack("!HHHH", p[20:28])
        assert (sport, dport, length) == (floodgen.FIRST_SPORT + i, 5353, 8 + dnsmsg.QUERY_LEN)
        pseudo = p[12:20] + struct.pack("!BBH", 0, 17, length)
        assert _checksum_ok(pseudo + p[20:])  # the UDP checksum
        assert dnsmsg.parse_response(dnsmsg.build_response(p[28:])) == (i, 0)


@pytest.mark.parametrize(
    ("first", "count"), [("198.18.0.1", 200_000), ("10.0.0.1", 10), ("198.19.255.250", 10)]
)
def test_flood_sources_stay_inside_198_18_0_0_15(first: str, count: int) -> None:
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        floodgen.sources(first, count)


def test_ladder_row_names_round_trip() -> None:
    assert step_name("sluice-python", 20_000) == "sluice-python@20k"
    assert split_name("sluice-python@20k") == ("sluice-python", 20_000)
    with pytest.raises(ValueError, match="not a ladder row"):
        split_name("sluice")


def _row(peer: str, r: int, **metrics: float) -> rounds.Row:
    return {"peer": peer, "round": r, **metrics}


def test_ladder_ratios_divide_by_nginx_at_the_same_step() -> None:
    sc = UdpLadder(quick=True)
    rows = [
        _row("nginx@5k", 1, p50_ms=2.0),
        _row("sluice@5k", 1, p50_ms=1.0),
        _row("nginx@20k", 1, p50_ms=100.0),
        _row("sluice@20k", 1, p50_ms=50.0),
    ]
    medians, ratios = rounds.summarise(sc, rows)
    assert ratios["sluice@5k"]["p50_ms"] == 0.5
    assert ratios["sluice@20k"]["p50_ms"] == 0.5  # not 25: NGINX at 20k, not at 5k
    assert medians["nginx@20k"]["p50_ms"] == 100.0


def test_flood_compares_with_nginx_in_points_even_when_nginx_answers_nothing() -> None:
    sc = UdpFlood(quick=True)
    rows = [
        _row("nginx", 1, legit_answered_pct=0.0),
        _row("sluice", 1, legit_answered_pct=99.5),
        _row("nginx", 2, legit_answered_pct=60.0),
        _row("sluice", 2, legit_answered_pct=50.0),
        _row("sluice", 3, legit_answered_pct=80.0),  # no NGINX row in round 3
    ]
    sc.derive(rows)
    assert [r["legit_vs_nginx_pp"] for r in rows] == [0.0, 99.5, 0.0, -10.0, None]
    medians, ratios = rounds.summarise(sc, rows)
    met = {t["metric"]: t["met"] for t in rounds.evaluate(sc, medians, ratios)}
    assert medians["sluice"]["legit_answered_pct"] == 80.0
    assert medians["sluice"]["legit_vs_nginx_pp"] == pytest.approx(44.75)
    assert met == {"legit_answered_pct": False, "legit_vs_nginx_pp": True}  # 80 % < 99 %; +44.75 pp
