"""Open-loop DNS-style load generator (dnsperf-like), its own process: queries at a fixed rate,
whatever the answers do, round-robin over `--sockets` client sockets; each query carries its sequence
number and send time (bench/dnsmsg.py), so an answer alone gives its latency.

`python -m bench.dnsgen --port P --rate 10000 --seconds 5 --timeout 1`
prints one JSON object: sent, answered (within the timeout), late, lost, loss_pct, latency p50/p99/avg
in ms, and how well the sender kept the rate (unsent, max_lag_ms). Bounded in count (rate x seconds,
at most --max-queries) and in time (sending stops at seconds + 1 s however far behind it is; then one
timeout to drain).
"""

from __future__ import annotations

import argparse
import json
import math
import select
import socket
import time
from typing import Any

from bench import dnsmsg, udpstats

BURST = 256  # most queries sent between two looks at the answers
SLIP_S = 1.0  # sending stops this long after `seconds` however far behind: the rest is `unsent`
RCVBUF = 4 << 20  # the client's own receive buffer: its drops would look like the LB's loss


def due(elapsed_s: float, rate: float, total: int) -> int:
    """How many queries should have been sent `elapsed_s` after the start: query i is due at i/rate
    (a millionth of a query of slack, so a float product like 0.043 * 5000 = 214.99999... counts 215)."""
    if elapsed_s < 0 or rate <= 0:
        return 0
    return min(total, math.floor(elapsed_s * rate + 1e-6) + 1)


def percentile(sorted_values: list[int], pct: float) -> int | None:
    """Nearest-rank percentile (the smallest value with at least pct % of the values at or below it)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(latencies_ns: list[int], sent: int) -> dict[str, float | None]:
    """Loss (sent but not answered in time) and the answered queries' latency, in ms."""
    ordered = sorted(latencies_ns)
    ms = 1e-6

    def at(p: float) -> float | None:
        v = percentile(ordered, p)
        return None if v is None else v * ms

    return {
        "loss_pct": 100.0 * (sent - len(ordered)) / sent if sent else None,
        "p50_ms": at(50),
        "p99_ms": at(99),
        "avg_ms": sum(ordered) / len(ordered) * ms if ordered else None,
        "max_ms": ordered[-1] * ms if ordered else None,
    }


def run(
    host: str, port: int, rate: float, seconds: float, sockets: int, timeout: float, max_queries: int
) -> dict[str, Any]:
    scheduled = min(max_queries, math.ceil(rate * seconds))
    socks = []
    ep = select.epoll()
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setblocking(False)
        s.bind((host, 0))
        s.connect((host, port))
        socks.append(s)
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    ports = [s.getsockname()[1] for s in socks]
    drops_before = udpstats.socket_drops(ports)

    clock = time.monotonic_ns
    timeout_ns = int(timeout * 1e9)
    answered = bytearray(scheduled)
    latencies: list[int] = []
    sent = late = bad = dup = send_errors = recv_errors = 0
    max_lag = 0.0
    start = last_sent_at = clock()
    stop_sending = start + int((seconds + SLIP_S) * 1e9)  # a sender this late stops: the rest is unsent
    while True:
        now = clock()
        elapsed = (now - start) / 1e9
        if sent < scheduled and now < stop_sending:
            n = min(BURST, due(elapsed, rate, scheduled) - sent)
            if n > 0:
                max_lag = max(max_lag, elapsed - sent / rate)
            for _ in range(n):
                try:
                    socks[sent % sockets].send(dnsmsg.build_query(sent, clock()))
                except OSError:  # a full send buffer or an ICMP error: the query is lost
                    send_errors += 1
                sent += 1
            if n > 0:
                last_sent_at = clock()
            wait = max(0.0, sent / rate - elapsed)
        else:  # drain: one timeout after the last query, or until every query is answered
            if now - last_sent_at > timeout_ns or len(latencies) + late >= sent:
                break
            wait = timeout / 4
        for fd, _ in ep.poll(min(wait, 0.05)):
            got_at = clock()
            s = by_fd[fd]
            for _ in range(BURST):
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                except OSError:
                    recv_errors += 1
                    break
                parsed = dnsmsg.parse_response(data)
                if parsed is None:
                    bad += 1
                    continue
                seq, sent_ns = parsed
                if seq >= len(answered) or answered[seq]:
                    dup += 1
                    continue
                answered[seq] = 1
                lat = got_at - sent_ns
                if lat > timeout_ns:
                    late += 1
                else:
                    latencies.append(lat)
    wall = (clock() - start) / 1e9
    client_drops = udpstats.socket_drops(ports) - drops_before
    for s in socks:
        s.close()
    return {
        "rate": rate,
        "seconds": seconds,
        "sockets": sockets,
        "timeout_s": timeout,
        "scheduled": scheduled,
        "sent": sent,
        "unsent": scheduled - sent,
        "answered": len(latencies),
        "late": late,
        "lost": sent - len(latencies),
        "bad": bad,
        "duplicates": dup,
        "send_errors": send_errors,
        "recv_errors": recv_errors,
        "client_drops": client_drops,
        "max_lag_ms": max_lag * 1e3,
        "wall_s": wall,
        **summarise(latencies, sent),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="queries per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sockets", type=int, default=64, help="client sockets, used round-robin")
    ap.add_argument("--timeout", type=float, default=1.0, help="an answer later than this is a loss")
    ap.add_argument("--max-queries", type=int, default=2_000_000)
    a = ap.parse_args()
    if a.rate <= 0 or a.seconds <= 0 or a.sockets < 1 or a.timeout <= 0:
        ap.error("--rate, --seconds and --timeout must be > 0, --sockets >= 1")
    print(json.dumps(run(a.host, a.port, a.rate, a.seconds, a.sockets, a.timeout, a.max_queries)))


if __name__ == "__main__":
    main()
