"""Regenerate tests/vectors/flow_hash.json: flow hash test vectors computed with core/flow.py.

    python tests/vectors/make_flow_hash_vectors.py           # rewrite the file
    python tests/vectors/make_flow_hash_vectors.py --check   # exit 1 if the file is not up to date

Deterministic (a fixed seed, no clock): running it twice gives the same bytes. The vectors are
shared with the XDP program's tests (tests/dataplane/xdp/test_flow_hash.py), which replay every
same-family TCP/UDP vector with non-zero ports through the BPF program.
"""

from __future__ import annotations

import json
import random
import sys
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from sluice.core.flow import FLOW_HASH_SEED, IPPROTO_TCP, IPPROTO_UDP, FiveTuple, flow_hash

PATH = Path(__file__).with_name("flow_hash.json")
SEED = 20260514
RANDOM_VECTORS = 1200
EDGE_PORTS = (0, 1, 65535)
SPECIAL_V4 = ("0.0.0.0", "255.255.255.255", "127.0.0.1", "198.18.0.1", "10.0.0.1")
SPECIAL_V6 = (
    "::",
    "::1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::1",
    "2001:db8::1",
    "::ffff:10.0.0.1",
)


def _vector(t: FiveTuple) -> dict[str, Any]:
    return {
        "src_ip": str(t.src_ip),
        "dst_ip": str(t.dst_ip),
        "src_port": t.src_port,
        "dst_port": t.dst_port,
        "proto": t.proto,
        "key_hex": t.key().hex(),
        "hash": flow_hash(t),
    }


def random_ip(rng: random.Random, v6: bool) -> IPv4Address | IPv6Address:
    return ip_address(rng.getrandbits(128)) if v6 else ip_address(rng.getrandbits(32))


def build_vectors() -> dict[str, Any]:
    """The whole file's content."""
    rng = random.Random(SEED)
    tuples: list[FiveTuple] = []
    # edge ports, both families, both protocols
    for v6 in (False, True):
        for sp in EDGE_PORTS:
            for dp in EDGE_PORTS:
                for proto in (IPPROTO_TCP, IPPROTO_UDP):
                    tuples.append(FiveTuple(random_ip(rng, v6), random_ip(rng, v6), sp, dp, proto))
    # special addresses
    for specials in (SPECIAL_V4, SPECIAL_V6):
        for src in specials:
            for dst in specials:
                proto = rng.choice((IPPROTO_TCP, IPPROTO_UDP))
                tuples.append(
                    FiveTuple(ip_address(src), ip_address(dst), rng.randrange(1, 65536), 443, proto)
                )
    # random flows: two in three IPv4
    for i in range(RANDOM_VECTORS):
        v6 = i % 3 == 2
        tuples.append(
            FiveTuple(
                random_ip(rng, v6),
                random_ip(rng, v6),
                rng.randrange(1, 65536),
                rng.randrange(1, 65536),
                rng.choice((IPPROTO_TCP, IPPROTO_UDP)),
            )
        )
    return {
        "description": "sluice flow hash: MurmurHash3 x86_32 of the 40-byte 5-tuple key (src/sluice/core/flow.py)",
        "flow_hash_seed": FLOW_HASH_SEED,
        "generator": f"tests/vectors/make_flow_hash_vectors.py (random.Random({SEED}))",
        "vectors": [_vector(t) for t in tuples],
    }


def render_vectors(content: dict[str, Any]) -> str:
    """`content` as JSON with one vector per line (diffs stay readable)."""
    content = dict(content)
    vectors = content.pop("vectors")
    head = json.dumps(content, indent=1)[:-2]  # without the closing "\n}"
    body = ",\n".join("  " + json.dumps(v) for v in vectors)
    return f'{head},\n "vectors": [\n{body}\n ]\n}}\n'


def render() -> str:
    return render_vectors(build_vectors())


def write_or_check(path: Path, text: str, argv: list[str], script: str) -> int:
    """Write `text` to `path`, or with --check exit 1 when the file differs from it."""
    if "--check" in argv:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is not up to date; run {script}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {len(json.loads(text)['vectors'])} vectors to {path}")
    return 0


def main(argv: list[str]) -> int:
    return write_or_check(PATH, render(), argv, Path(__file__).name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
