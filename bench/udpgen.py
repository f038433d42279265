"""UDP request/response load generator, its own process (no asyncio, no C): epoll over
non-blocking sockets, a window of requests in flight per socket, lost ones timed out.

`python -m bench.udpgen --port P --sockets 200 --window 1 --size 64 --seconds 5`
prints one JSON object: sent, received, lost (timed out), seconds, rate.
Bounded in time (--seconds, plus one timeout to drain) and in count (--max-requests).
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--window", type=int, default=1, help="requests in flight per socket")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=0.2, help="a request unanswered this long is lost")
    ap.add_argument("--max-requests", type=int, default=50_000_000)
    a = ap.parse_args()

    payload = b"q" * a.size
    socks: dict[int, socket.socket] = {}
    inflight: dict[int, int] = {}
    last: dict[int, float] = {}
    ep = select.epoll()
    for _ in range(a.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((a.host, 0))
        s.connect((a.host, a.port))
        fd = s.fileno()
        socks[fd], inflight[fd], last[fd] = s, 0, 0.0
        ep.register(fd, select.EPOLLIN)

    sent = received = lost = send_errors = 0
    clock = time.monotonic
    start = clock()
    stop_at = start + a.seconds
    sending = True
    drain_until = stop_at

    def fill(fd: int, now: float) -> None:
        nonlocal sent, send_errors
        s = socks[fd]
        while sending and inflight[fd] < a.window and sent < a.max_requests:
            try:
                s.send(payload)
            except BlockingIOError:
                break
            except OSError as exc:  # ECONNREFUSED after an ICMP: count it, carry on
                send_errors += 1
                if exc.errno != errno.ECONNREFUSED:
                    break
                continue
            sent += 1
            inflight[fd] += 1
            last[fd] = now

    now = clock()
    for fd in socks:
        fill(fd, now)
    next_sweep = now + a.timeout
    while True:
        now = clock()
        if sending and (now >= stop_at or sent >= a.max_requests):
            sending = False
            drain_until = now + a.timeout
        if not sending and (now >= drain_until or not any(inflight.values())):
            break
        for fd, _ in ep.poll(a.timeout / 4):
            s = socks[fd]
            got = 0
            while True:
                try:
                    s.recv(65536)
                except BlockingIOError:
                    break
                except OSError:
                    send_errors += 1
                    break
                got += 1
            if got:
                received += got
                inflight[fd] = max(0, inflight[fd] - got)
                last[fd] = now
                fill(fd, now)
        if now >= next_sweep:  # requests unanswered for a whole timeout are lost: refill
            next_sweep = now + a.timeout / 2
            for fd in socks:
                if inflight[fd] and now - last[fd] >= a.timeout:
                    lost += inflight[fd]
                    inflight[fd] = 0
                    fill(fd, now)
    elapsed = min(clock(), stop_at) - start
    lost += sum(inflight.values())
    print(
        json.dumps(
            {
                "sent": sent,
                "received": received,
                "lost": lost,
                "send_errors": send_errors,
                "seconds": elapsed,
                "round_trips_per_s": received / elapsed if elapsed > 0 else 0.0,
            }
        )
    )


if __name__ == "__main__":
    main()
