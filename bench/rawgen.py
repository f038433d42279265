"""Raw UDP frame sender for bench/xdp.py: prebuilt Ethernet/IPv4/UDP frames out of an AF_PACKET socket
with sendmmsg(2) (through ctypes, batches of 256), as fast as it goes. Its own process, run in the
client namespace pinned to the generator core.

`python -m bench.rawgen --dev eth0 --dst-mac M --src-mac M --src IP --dst IP --dport P --seconds 4`
prints one JSON object: sent, enobufs (packets the device refused: the receive backlog was full),
seconds. Bounded in time (--seconds) and in count (--max-packets).

Why not trafgen: when RPS moves the receive side to another core, frames stay in flight in that
core's backlog and hold the socket's send buffer; trafgen's TX_RING then fails with EAGAIN ("Flushing
TX_RING failed") unless it raises the host-wide net.core.*mem_* sysctls, which the harness must not
touch (they cannot be set from a network namespace here). This sender sets its own buffer with
SO_SNDBUFFORCE instead, and blocks while the buffer is full.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import socket
import struct
import time

SO_SNDBUFFORCE = 32
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
BATCH = 256


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


def ip_checksum(data: bytes) -> int:
    """The internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(src: str, dst: str, sport: int, dport: int, body: bytes) -> bytes:
    """IPv4 (no options, DF clear, TTL 64) + UDP carrying `body`, with both checksums filled in."""
    udp_len = 8 + len(body)
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + body
    udp_sum = ip_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return ip + udp


def frame(dst_mac: str, src_mac: str, src: str, dst: str, sport: int, dport: int, payload: int) -> bytes:
    """Ethernet + `ipv4_udp` with `payload` bytes of 0x42."""
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    return eth + ipv4_udp(src, dst, sport, dport, b"\x42" * payload)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--src-mac", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--first-sport", type=int, default=10000)
    ap.add_argument("--flows", type=int, default=64, help="source ports first-sport .. first-sport+flows-1")
    ap.add_argument("--payload", type=int, default=18, help="UDP payload bytes (18: a 60 B frame)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--max-packets", type=int, default=20_000_000)
    ap.add_argument("--sndbuf", type=int, default=4 << 20)
    a = ap.parse_args()

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    sendmmsg = libc.sendmmsg
    sendmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, a.sndbuf)
    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    s.bind((a.dev, 0))

    flows = max(1, a.flows)
    frames = [
        frame(a.dst_mac, a.src_mac, a.src, a.dst, a.first_sport + i, a.dport, a.payload) for i in range(flows)
    ]
    buffers = [ctypes.create_string_buffer(f, len(f)) for f in frames]
    count = BATCH + flows  # a batch may start at any flow: msgs[off : off + BATCH] keeps the rotation
    iovs = (_Iovec * count)()
    msgs = (_Mmsghdr * count)()
    for i in range(count):
        buf = buffers[i % flows]
        iovs[i].iov_base = ctypes.addressof(buf)
        iovs[i].iov_len = len(frames[i % flows])
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    base = ctypes.addressof(msgs)
    size = ctypes.sizeof(_Mmsghdr)
    fd = s.fileno()

    sent = enobufs = attempted = 0
    clock = time.monotonic
    start = clock()
    stop_at = start + a.seconds
    while attempted < a.max_packets:
        if clock() >= stop_at:
            break
        off = attempted % flows
        n = sendmmsg(fd, base + off * size, BATCH, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                raise OSError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
            if err == errno.ENOBUFS:  # the head frame was refused (dropped) by the device
                enobufs += 1
                attempted += 1
            continue
        sent += n
        attempted += n
        if n < BATCH:  # stopped at a refused frame
            enobufs += 1
            attempted += 1
    elapsed = min(clock(), stop_at) - start
    print(json.dumps({"sent": sent, "enobufs": enobufs, "seconds": elapsed, "pps": sent / elapsed}))


if __name__ == "__main__":
    main()
