"""Ping-pong latency client, its own process: send SIZE bytes, wait for SIZE back, N times.

`python -m bench.pingpong --port P [--n 20000] [--size 64] [--warmup 500] [--max-seconds 60]`
prints one JSON object: count, p50/p90/p99/p99.9/max in microseconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import time


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile in microseconds."""
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, round(q / 100 * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[k] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    a = ap.parse_args()

    s = socket.create_connection((a.host, a.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * a.size
    buf = bytearray(a.size)
    view = memoryview(buf)
    send, recv_into, clock = s.sendall, s.recv_into, time.perf_counter_ns
    samples: list[int] = []
    deadline = time.monotonic() + a.max_seconds
    for i in range(a.warmup + a.n):
        t0 = clock()
        send(payload)
        got = 0
        while got < a.size:
            n = recv_into(view[got:])
            if n == 0:
                raise SystemExit("connection closed by peer")
            got += n
        t1 = clock()
        if i >= a.warmup:
            samples.append(t1 - t0)
            if not len(samples) % 1000 and time.monotonic() > deadline:
                break
    s.close()
    samples.sort()
    print(
        json.dumps(
            {
                "count": len(samples),
                "p50_us": percentile(samples, 50),
                "p90_us": percentile(samples, 90),
                "p99_us": percentile(samples, 99),
                "p999_us": percentile(samples, 99.9),
                "max_us": samples[-1] / 1000 if samples else None,
                "mean_us": sum(samples) / len(samples) / 1000 if samples else None,
            }
        )
    )


if __name__ == "__main__":
    main()
