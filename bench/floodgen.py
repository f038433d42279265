"""Spoofed-source UDP flood, its own process: DNS-shaped queries (bench/dnsmsg.py) from `--sources`
distinct IPv4 addresses (from --first-source up, 198.18.0.0/15 by default), one source port each,
to one VIP, at a fixed rate. Prebuilt IPv4/UDP packets out of a raw socket (IPPROTO_RAW: the header
is ours) with sendmmsg(2) in paced batches; the sources take turns, so each sends once every
sources/rate seconds. Run inside the flood lab's network namespace (bench/udp_flood.py), where the
VIP is on lo and the spoofed addresses route to a dummy device.

`python -m bench.floodgen --port P --sources 50000 --rate 20000 --seconds 8`
prints "ready" once its packets are built and the socket is open (the flood starts then), and at the
end one JSON object: sent, errors, seconds, pps. Bounded in time (--seconds) and in count
(rate x seconds, at most --max-packets).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import math
import socket
import time

from bench import dnsmsg
from bench.dnsgen import due
from bench.rawgen import _Iovec, _Mmsghdr, ipv4_udp

BATCH = 64
FIRST_SPORT = 1024
SPOOF_NET = ipaddress.ip_network("198.18.0.0/15")


def sources(first: str, count: int) -> list[str]:
    """`count` consecutive addresses from `first`, all inside 198.18.0.0/15 (else ValueError)."""
    start = ipaddress.ip_address(first)
    last = start + (count - 1)
    if count < 1 or start not in SPOOF_NET or last not in SPOOF_NET:
        raise ValueError(f"{count} sources from {first} leave {SPOOF_NET}")
    return [str(start + i) for i in range(count)]


def packets(srcs: list[str], dst: str, dport: int) -> list[bytes]:
    """One query packet per source; source i sends from port FIRST_SPORT + i % 64000 with DNS id i."""
    return [
        ipv4_udp(src, dst, FIRST_SPORT + i % 64000, dport, dnsmsg.build_query(i, 0))
        for i, src in enumerate(srcs)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dst", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sources", type=int, default=50_000)
    ap.add_argument("--first-source", default="198.18.0.1")
    ap.add_argument("--rate", type=float, required=True, help="datagrams per second, all sources together")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-packets", type=int, default=10_000_000)
    a = ap.parse_args()
    if a.rate <= 0 or a.seconds <= 0:
        ap.error("--rate and --seconds must be > 0")

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    sendmmsg = libc.sendmmsg
    sendmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)

    pkts = packets(sources(a.first_source, a.sources), a.dst, a.port)
    buffers = [ctypes.create_string_buffer(p, len(p)) for p in pkts]
    n_src = len(pkts)
    count = n_src + BATCH  # a batch may start at any source: msgs[off : off + BATCH] wraps around
    iovs = (_Iovec * count)()
    msgs = (_Mmsghdr * count)()
    for i in range(count):
        iovs[i].iov_base = ctypes.addressof(buffers[i % n_src])
        iovs[i].iov_len = len(pkts[i % n_src])
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    base, size = ctypes.addressof(msgs), ctypes.sizeof(_Mmsghdr)

    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.connect((a.dst, 0))  # sendmmsg without addresses: to the VIP
    fd = s.fileno()
    print("ready", flush=True)
    total = min(a.max_packets, math.ceil(a.rate * a.seconds))
    sent = errors = attempted = 0
    clock = time.monotonic
    start = clock()
    stop_at = start + a.seconds
    while attempted < total:
        now = clock()
        if now >= stop_at:
            break
        n = min(BATCH, due(now - start, a.rate, total) - attempted)
        if n <= 0:
            time.sleep(max(0.0, min(0.01, attempted / a.rate - (now - start))))
            continue
        r = sendmmsg(fd, base + (attempted % n_src) * size, n, 0)
        if r < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                raise OSError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
            errors += 1
            attempted += 1  # the refused head datagram is dropped; the schedule moves on
            continue
        sent += r
        attempted += r
    elapsed = min(clock(), stop_at) - start
    print(json.dumps({"sent": sent, "errors": errors, "seconds": elapsed, "pps": sent / elapsed}))


if __name__ == "__main__":
    main()
