"""core/siphash.py is SipHash-1-3: the Linux kernel's published hsiphash vectors (64-bit machines,
where hsiphash is SipHash-1-3 truncated to 32 bits) and CPython's own SipHash-1-3 agree with it."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from sluice.core.siphash import siphash13

KERNEL_KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
"""test_key_hsiphash of Linux lib/tests/siphash_kunit.c (BITS_PER_LONG == 64): bytes 00..0f."""
KERNEL_VECTORS = {
    0: 0x050FC4DC,
    1: 0x7D57CA93,
    2: 0x4DC7D44D,
    3: 0xE7DDF7FB,
    4: 0x88D38328,
    5: 0x49533B67,
    6: 0xC59F22A7,
    7: 0x9BB11140,
    8: 0x8D299A8E,
    9: 0x6C063DE4,
    15: 0x2A519956,
    16: 0x7D908B66,
    31: 0x8C21D1BC,
    39: 0x7B108392,
    40: 0x99E41531,
    41: 0x3F1AD944,
}
"""test_vectors_hsiphash[n] of the same file: the hash of the bytes 0, 1, ..., n-1 (40: the length of
sluice's flow key)."""


@pytest.mark.parametrize(("length", "expected"), sorted(KERNEL_VECTORS.items()))
def test_siphash13_matches_the_kernels_hsiphash_vectors(length: int, expected: int) -> None:
    assert siphash13(*KERNEL_KEY, bytes(range(length))) & 0xFFFFFFFF == expected


def test_siphash13_matches_cpythons_bytes_hash_with_the_zero_key() -> None:
    # CPython hashes bytes with SipHash-1-3 keyed by its hash secret; PYTHONHASHSEED=0 makes the
    # secret zero, so hash(b) is SipHash-1-3 with k0 = k1 = 0 (as a signed 64-bit value; -1 is
    # reserved and the empty string hashes to 0, so neither is compared).
    if sys.hash_info.algorithm != "siphash13":
        pytest.skip(f"this interpreter hashes with {sys.hash_info.algorithm}, not siphash13")
    rng = random.Random(5)
    samples = [rng.randbytes(n) for n in range(1, 64)] + [rng.randbytes(40) for _ in range(50)]
    code = "import sys\nfor line in sys.stdin:\n    print(hash(bytes.fromhex(line.strip())) % 2**64)\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input="\n".join(s.hex() for s in samples),
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "0"},
        check=True,
        timeout=60,
    )
    theirs = [int(x) for x in done.stdout.split()]
    assert theirs == [siphash13(0, 0, s) for s in samples]


def test_every_key_bit_and_every_message_bit_matters() -> None:
    data = bytes(range(40))
    base = siphash13(*KERNEL_KEY, data)
    k0, k1 = KERNEL_KEY
    assert all(siphash13(k0 ^ (1 << b), k1, data) != base for b in range(64))
    assert all(siphash13(k0, k1 ^ (1 << b), data) != base for b in range(64))
    for i in range(40):
        flipped = bytearray(data)
        flipped[i] ^= 0x80
        assert siphash13(k0, k1, bytes(flipped)) != base
