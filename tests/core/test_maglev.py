"""Maglev lookup table: exact paper semantics (fast build == plain reference), balance, minimal
disruption, weights, determinism across input order and processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.maglev import (
    DEFAULT_TABLE_SIZE,
    MaglevTable,
    _build_table_reference,
    build_table,
    diff_tables,
    permutation_parameters,
)

SMALL_PRIMES = [2, 3, 5, 7, 11, 13, 17, 31, 61, 101, 251, 509, 1021]
FAST = settings(max_examples=100, deadline=None, derandomize=True)


def name(i: int) -> str:
    """A backend identity as str(Endpoint) spells it; every third one IPv6."""
    if i % 3 == 2:
        return f"[2001:db8::{i:x}]:443"
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{8000 + i % 7}"


def equal(n: int) -> list[tuple[str, int]]:
    return [(name(i), 1) for i in range(n)]


backend_lists = st.lists(
    st.tuples(st.integers(0, 1 << 20).map(name), st.sampled_from([0, 1, 1, 1, 2, 3, 5, 10, 100])),
    max_size=40,
    unique_by=lambda b: b[0],
)


# ---------------------------------------------------------------- exact semantics


@FAST
@given(backends=backend_lists, size=st.sampled_from(SMALL_PRIMES))
def test_fast_build_equals_reference(backends: list[tuple[str, int]], size: int) -> None:
    assert build_table(backends, size) == _build_table_reference(backends, size)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(n=st.integers(2, 300), size=st.sampled_from([1021, 2039, 4093]), seed=st.integers(0, 1000))
def test_fast_build_equals_reference_many_backends(n: int, size: int, seed: int) -> None:
    rng = random.Random(seed)
    weighted = rng.random() < 0.5
    backends = [(name(i), rng.choice([0, 1, 2, 7]) if weighted else 1) for i in range(n)]
    assert build_table(backends, size) == _build_table_reference(backends, size)


@pytest.mark.parametrize(
    ("backends", "size"),
    [
        (equal(1000), DEFAULT_TABLE_SIZE),
        (equal(100), DEFAULT_TABLE_SIZE),
        (equal(2), DEFAULT_TABLE_SIZE),
        ([(name(i), 1 + i % 5) for i in range(1000)], DEFAULT_TABLE_SIZE),
        ([(name(i), random.Random(i).choice([0, 1, 3, 20])) for i in range(37)], DEFAULT_TABLE_SIZE),
        ([(name(0), 1), (name(1), 65535)], DEFAULT_TABLE_SIZE),
        ([(name(i), 1 if i else 400) for i in range(300)], 10007),
    ],
    ids=["1000x1", "100x1", "2x1", "1000x1..5", "37-mixed", "1:65535", "300-one-heavy"],
)
def test_fast_build_equals_reference_large(backends: list[tuple[str, int]], size: int) -> None:
    assert build_table(backends, size) == _build_table_reference(backends, size)


def test_the_c_population_loop_is_built() -> None:
    """build_table runs the compiled loop (setup.py builds it with the package); a missing
    extension would silently fall back to the ~70x slower Python loop."""
    from sluice.core import maglev

    assert maglev._speedup is not None


def test_the_c_loop_rejects_bad_buffers() -> None:
    from sluice.core import _maglev

    one = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="mismatched"):
        _maglev.populate(one, one, np.zeros(2, dtype=np.int64), 5, np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match="out of range"):
        _maglev.populate(one, one, one, 5, np.zeros(5, dtype=np.int32))  # skip 0


def test_permutation_follows_the_paper() -> None:
    """Slot j of backend i's preference list is (offset + j * skip) % M: the reference table is
    also what a literal simulation over explicit permutation lists gives."""
    backends = [("127.0.0.1:9001", 1), ("127.0.0.1:9002", 1), ("[::1]:9003", 2), ("[::1]:9004", 0)]
    M = 31
    names = sorted(n for n, _ in backends)
    weights = dict(backends)
    offsets, skips = permutation_parameters(names, M)
    perms = [[(int(o) + j * int(s)) % M for j in range(M)] for o, s in zip(offsets, skips, strict=True)]
    assert all(sorted(p) == list(range(M)) for p in perms)  # M prime: full permutations
    entry = [-1] * M
    nxt = [0] * len(names)
    wmax = max(weights.values())
    filled, r = 0, 0
    while filled < M:
        for i, n in enumerate(names):
            w = weights[n]
            if filled == M or (r + 1) * w // wmax == r * w // wmax:
                continue
            while entry[perms[i][nxt[i]]] >= 0:
                nxt[i] += 1
            entry[perms[i][nxt[i]]] = i
            nxt[i] += 1
            filled += 1
        r += 1
    assert build_table(backends, M).slots.tolist() == entry


def test_hashes_are_pinned() -> None:
    """Every node (and every sluice version) must build the same table: the identity hashes and a
    small table are pinned here; a change is a compatibility break for mixed-version clusters."""
    offsets, skips = permutation_parameters(["127.0.0.1:9001", "[::1]:9001"], DEFAULT_TABLE_SIZE)
    assert offsets.tolist() == [60625, 781]
    assert skips.tolist() == [42446, 52727]
    t = build_table([("127.0.0.1:9001", 1), ("127.0.0.1:9002", 1), ("[::1]:9003", 2)], 13)
    assert t.backends == ("127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003")
    assert t.slots.tolist() == [0, 2, 1, 2, 2, 2, 1, 0, 2, 2, 0, 2, 1]


# ---------------------------------------------------------------- balance and weights


@pytest.mark.parametrize(("n", "size"), [(1, 101), (7, 701), (100, 10007), (650, DEFAULT_TABLE_SIZE)])
def test_equal_weights_balance(n: int, size: int) -> None:
    assert size >= 100 * n
    counts = build_table(equal(n), size).counts()
    assert len(counts) == n
    assert max(counts.values()) / min(counts.values()) <= 1.02


@pytest.mark.parametrize(
    "weights",
    [[1, 10], [1, 2, 3], [5, 1, 1], [3, 3, 1, 0], [1, 1000]],
    ids=lambda w: ":".join(map(str, w)),
)
def test_weighted_shares_follow_weights(weights: list[int]) -> None:
    table = build_table([(name(i), w) for i, w in enumerate(weights)], DEFAULT_TABLE_SIZE)
    counts = table.counts()
    total = sum(weights)
    for i, w in enumerate(weights):
        share = counts[name(i)] / table.size
        if w == 0:
            assert counts[name(i)] == 0
        else:
            assert abs(share / (w / total) - 1) <= 0.02, (i, w, share)


def test_weighted_shares_many_backends() -> None:
    backends = [(name(i), 10 if i % 10 == 0 else 1) for i in range(200)]
    counts = build_table(backends, DEFAULT_TABLE_SIZE).counts()
    heavy = sum(c for (n, w), c in zip(backends, (counts[n] for n, _ in backends), strict=True) if w == 10)
    expected = 20 * 10 / (20 * 10 + 180)
    assert abs(heavy / DEFAULT_TABLE_SIZE / expected - 1) <= 0.02


def test_weight_zero_gets_nothing_and_changes_nothing() -> None:
    base = equal(20)
    with_idle = [*base, ("10.9.9.9:80", 0)]
    a, b = build_table(base, 1021), build_table(with_idle, 1021)
    assert b.counts()["10.9.9.9:80"] == 0
    assert diff_tables(a, b).slots_changed == 0


def test_no_usable_backend_gives_an_empty_table() -> None:
    for backends in ([], [("10.0.0.1:80", 0), ("10.0.0.2:80", 0)]):
        table = build_table(backends, 31)
        assert (table.slots == -1).all()
        assert table.lookup(12345) is None
    assert build_table([("10.0.0.1:80", 3)], 31).counts() == {"10.0.0.1:80": 31}


# ---------------------------------------------------------------- disruption


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_removing_a_backend_moves_little_else(n: int) -> None:
    backends = equal(n)
    full = build_table(backends, DEFAULT_TABLE_SIZE)
    for victim, _ in random.Random(n).sample(backends, 3):
        smaller = build_table([b for b in backends if b[0] != victim], DEFAULT_TABLE_SIZE)
        diff = diff_tables(full, smaller)
        own = full.counts()[victim]
        # all of the victim's slots move ...
        assert sum(c for (old, _), c in diff.moved.items() if old == victim) == own
        assert victim not in smaller.backends
        # ... and at most 1 % of the others'
        others = sum(c for (old, _), c in diff.moved.items() if old != victim)
        assert others <= 0.01 * (full.size - own), others
        # adding it back restores the very same table
        assert build_table(backends, DEFAULT_TABLE_SIZE) == full


# ---------------------------------------------------------------- determinism


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), size=st.sampled_from([13, 251, 4093]))
def test_input_order_does_not_matter(data: st.DataObject, size: int) -> None:
    backends = data.draw(backend_lists.filter(lambda b: len(b) > 0))
    shuffled = data.draw(st.permutations(backends))
    assert build_table(shuffled, size) == build_table(backends, size)


CHILD = (
    "from sluice.core.maglev import build_table\n"
    "print(build_table([(f'10.0.0.{i}:80', 1 + i % 3) for i in range(50)], 4093).digest())\n"
    "print(build_table([(f'[2001:db8::{i}]:443', 1) for i in range(300)]).digest())\n"
)


def test_same_table_in_every_process() -> None:
    """PYTHONHASHSEED randomises hash(); the table must not depend on it."""
    here = [
        build_table([(f"10.0.0.{i}:80", 1 + i % 3) for i in range(50)], 4093).digest(),
        build_table([(f"[2001:db8::{i}]:443", 1) for i in range(300)]).digest(),
    ]
    assert here[0] == "d1a2c374592f020085cded26d9fb7dff009e653e17dfc38d964e6d43c3e71632"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, timeout=60
        )
        assert out.stdout.split() == here


# ---------------------------------------------------------------- API


def test_lookup_is_backend_of_slot_hash_mod_m() -> None:
    table = build_table(equal(5), 101)
    rng = random.Random(3)
    for _ in range(200):
        h = rng.getrandbits(32)
        assert table.lookup(h) == table.backends[int(table.slots[h % 101])]
    assert table.slots.dtype == np.int32
    with pytest.raises(ValueError):
        table.slots[0] = 1  # read-only


@pytest.mark.parametrize(
    ("backends", "size", "message"),
    [
        (equal(3), 100, "prime"),
        (equal(3), 1, "prime"),
        ([("10.0.0.1:80", -1)], 13, "weight"),
        ([("10.0.0.1:80", 1), ("10.0.0.1:80", 2)], 13, "duplicate"),
    ],
)
def test_bad_input_is_refused(backends: list[tuple[str, int]], size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_table(backends, size)


def test_diff_tables() -> None:
    a = build_table(equal(4), 31)
    b = build_table([*equal(3), (name(9), 1)], 31)
    diff = diff_tables(a, b)
    before = [a.backend_at(i) for i in range(31)]
    after = [b.backend_at(i) for i in range(31)]
    assert diff.changed.tolist() == [i for i in range(31) if before[i] != after[i]]
    assert sum(diff.moved.values()) == diff.slots_changed == len(diff.changed)
    for (old, new), count in diff.moved.items():
        assert count == sum(1 for i in diff.changed if (before[i], after[i]) == (old, new))
    assert diff.fraction_changed == diff.slots_changed / 31
    assert diff_tables(a, a).slots_changed == 0
    emptied = diff_tables(a, build_table([], 31))
    assert emptied.slots_changed == 31
    assert set(emptied.moved) == {(n, None) for n in a.backends}
    with pytest.raises(ValueError):
        diff_tables(a, build_table(equal(4), 37))


def test_table_equality_and_digest() -> None:
    a = build_table(equal(4), 31)
    assert a == build_table(list(reversed(equal(4))), 31)
    assert a != build_table(equal(5), 31)
    assert a.digest() == build_table(equal(4), 31).digest() != build_table(equal(5), 31).digest()
    assert isinstance(a, MaglevTable) and a.size == 31
