"""DNS-shaped datagrams for the UDP bench (pure: bytes in, bytes out).

A query is a real DNS message (RFC 1035): header with RD set, one question ``<seq>-<sent>.bench.sluice.
IN A``, where the first label carries the query's sequence number and its send time (monotonic ns) in
hex, so a client learns both from the answer alone and keeps no per-query state. The backend answers
by `build_response`: the query with QR (and RA) set and one A record appended (a name pointer to the
question), as a DNS server would: a 56-byte query becomes a 72-byte response.
"""

from __future__ import annotations

import struct

ZONE = b"\x05bench\x06sluice\x00"
QTYPE_A_IN = b"\x00\x01\x00\x01"
ANSWER = b"\xc0\x0c" + QTYPE_A_IN + struct.pack("!IH", 60, 4) + bytes((198, 18, 0, 53))
_HEADER = struct.Struct("!HHHHHH")
_LABEL_LEN = 25  # 8 hex digits of seq, "-", 16 hex digits of the send time
QUERY_LEN = _HEADER.size + 1 + _LABEL_LEN + len(ZONE) + len(QTYPE_A_IN)
FLAG_QR = 0x8000
FLAG_RD = 0x0100
FLAG_RA = 0x0080


def build_query(seq: int, sent_ns: int) -> bytes:
    """The query numbered `seq` (0 .. 2**32-1), sent at `sent_ns` (0 .. 2**64-1); DNS id = seq's low 16 bits."""
    if not 0 <= seq < 1 << 32 or not 0 <= sent_ns < 1 << 64:
        raise ValueError(f"seq {seq} or sent_ns {sent_ns} out of range")
    label = b"%08x-%016x" % (seq, sent_ns)
    head = _HEADER.pack(seq & 0xFFFF, FLAG_RD, 1, 0, 0, 0)
    return head + bytes((_LABEL_LEN,)) + label + ZONE + QTYPE_A_IN


def build_response(query: bytes) -> bytes:
    """The answer a server gives to `query`: QR and RA set, ANCOUNT 1, one A record; b"" if `query`
    is not a one-question query (the backend then sends nothing, as a server drops garbage)."""
    if len(query) < _HEADER.size or query[2] & 0x80:
        return b""
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(query)
    if qdcount != 1:
        return b""
    return _HEADER.pack(ident, flags | FLAG_QR | FLAG_RA, 1, 1, 0, 0) + query[_HEADER.size :] + ANSWER


def parse_response(data: bytes) -> tuple[int, int] | None:
    """(seq, sent_ns) of a response to one of our queries; None if `data` is not one (no QR bit, an id
    that does not match the label, another name or a short datagram)."""
    if len(data) < QUERY_LEN or not data[2] & 0x80 or data[_HEADER.size] != _LABEL_LEN:
        return None
    start = _HEADER.size + 1
    label = data[start : start + _LABEL_LEN]
    if label[8:9] != b"-" or data[start + _LABEL_LEN : start + _LABEL_LEN + len(ZONE)] != ZONE:
        return None
    try:
        seq, sent_ns = int(label[:8], 16), int(label[9:], 16)
    except ValueError:
        return None
    if (seq & 0xFFFF) != int.from_bytes(data[:2], "big"):
        return None
    return seq, sent_ns
