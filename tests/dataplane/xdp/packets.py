"""Frame builders for the XDP fixtures (struct only, no scapy).

Checksums: IPv4 header checksums are real (the program writes real outer headers and the tests compare
bytes); TCP/UDP checksums are left zero because the program neither checks nor changes them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_LLDP = 0x88CC

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def mac(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def mac_str(raw: Sequence[int]) -> str:
    """The text form of a MAC read from a frame or a map entry."""
    return ":".join(f"{b:02x}" for b in raw)


def eth(dst: str, src: str, ethertype: int, payload: bytes, *, vlan: int | None = None) -> bytes:
    if vlan is None:
        return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload
    return mac(dst) + mac(src) + struct.pack("!HHH", ETH_VLAN, vlan, ethertype) + payload


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    frag: int = 0,
    options: bytes = b"",
    ident: int = 1,
    tos: int = 0,
    tot_len: int | None = None,
    ihl: int | None = None,
    version: int = 4,
) -> bytes:
    hl = 20 + len(options)
    ihl = hl // 4 if ihl is None else ihl
    length = hl + len(payload) if tot_len is None else tot_len
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            (version << 4) | ihl,
            tos,
            length,
            ident,
            frag,
            ttl,
            proto,
            0,
            IPv4Address(src).packed,
            IPv4Address(dst).packed,
        )
        + options
    )
    csum = checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6(
    src: str,
    dst: str,
    nexthdr: int,
    payload: bytes,
    *,
    hop: int = 64,
    flow: int = 0,
    payload_len: int | None = None,
) -> bytes:
    plen = len(payload) if payload_len is None else payload_len
    return (
        struct.pack(
            "!IHBB16s16s",
            (6 << 28) | flow,
            plen,
            nexthdr,
            hop,
            IPv6Address(src).packed,
            IPv6Address(dst).packed,
        )
        + payload
    )


def tcp(
    sport: int,
    dport: int,
    flags: int = TCP_SYN,
    payload: bytes = b"",
    *,
    doff: int = 5,
    seq: int = 1000,
    ack: int = 0,
) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"", *, length: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload


def icmp(icmp_type: int, code: int, rest: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHI", icmp_type, code, 0, rest)
    return header[:2] + struct.pack("!H", checksum(header + payload)) + header[4:] + payload


def arp_request(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    body = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        ETH_IPV4,
        6,
        4,
        1,
        mac(sender_mac),
        IPv4Address(sender_ip).packed,
        b"\0" * 6,
        IPv4Address(target_ip).packed,
    )
    return eth("ff:ff:ff:ff:ff:ff", sender_mac, ETH_ARP, body)


def ip_packet(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    """IPv4 or IPv6 by address family."""
    if isinstance(ip_address(src), IPv4Address):
        return ipv4(src, dst, proto, payload)
    return ipv6(src, dst, proto, payload)


def ethertype_of(src: str) -> int:
    return ETH_IPV4 if isinstance(ip_address(src), IPv4Address) else ETH_IPV6
