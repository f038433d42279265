"""Tiny echo backends, run as their own process: `python -m bench.echo tcp|udp|dns PORT`.

dns: a UDP server that answers each DNS-shaped query with its response (bench/dnsmsg.py: the query
with QR set and one A record), and ignores anything else, as a DNS server would.

Blocking sockets, no event loop: the cheapest Python can do per message, so the backend's cost
stays small next to the LB's. Runs until SIGTERM (the harness stops it by pid).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable

from bench.dnsmsg import build_response

HOST = "127.0.0.1"


def _tcp_conn(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


def serve_tcp(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(1024)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_tcp_conn, args=(conn,), daemon=True).start()


def serve_udp(port: int, answer: Callable[[bytes], bytes] | None = None) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((HOST, port))
    recvfrom, sendto = s.recvfrom, s.sendto
    while True:
        data, addr = recvfrom(65536)
        if answer is not None and not (data := answer(data)):
            continue
        # e.g. ECONNREFUSED from an earlier ICMP: a UDP echo never stops for that
        with contextlib.suppress(OSError):
            sendto(data, addr)


def main() -> None:
    proto, port = sys.argv[1], int(sys.argv[2])
    if proto == "tcp":
        serve_tcp(port)
    elif proto == "dns":
        serve_udp(port, build_response)
    else:
        serve_udp(port)


if __name__ == "__main__":
    main()
