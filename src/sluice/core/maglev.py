"""Maglev consistent hashing: the lookup table of Eisenbud et al., NSDI'16, section 3.4.

The table
---------
M slots (M prime, default 65537). Backend i, with identity string ``name`` (``str(endpoint)``,
e.g. ``127.0.0.1:9001`` or ``[::1]:9001``), prefers the slots in the order of its permutation

    offset_i = h1(name) % M
    skip_i   = h2(name) % (M - 1) + 1
    permutation_i[j] = (offset_i + j * skip_i) % M          j = 0, 1, ..., M - 1

h1 and h2 are BLAKE2b-64 of the UTF-8 identity with two fixed personalisation strings (never
Python's randomised ``hash()``), so every process on every node builds the identical table.
Backends are sorted by identity first: the input order does not matter.

Population (the paper's algorithm, with weights as turn frequencies): rounds r = 0, 1, 2, ...; in
each round the backends take a turn in index order; a turn takes the backend's next preferred slot
that is still empty. Backend i (weight w_i, heaviest weight W) takes a turn in round r iff

    floor((r + 1) * w_i / W) > floor(r * w_i / W)

so over any W consecutive rounds it has exactly w_i turns: shares are proportional to weights, and
weight-0 backends get no slot. Population stops the moment the table is full.

Speed
-----
The population loop is inherently sequential (each turn depends on every earlier one), so it runs
in C: `sluice.core._maglev.populate`, a ~40-line loop built with the package (setup.py). It takes
about 1 ms for M = 65537 and 1000 backends. `_populate_reference` is the same loop in plain Python
(~70 ms): the fallback when the extension is missing, and the oracle the tests compare against.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from sluice.core.names import DEFAULT_TABLE_SIZE as DEFAULT_TABLE_SIZE  # re-exported
from sluice.core.names import is_prime as is_prime  # re-exported

_speedup: ModuleType | None
try:
    from sluice.core import _maglev as _speedup
except ImportError:  # pragma: no cover - built with the package; the Python loop is the fallback
    _speedup = None


_OFFSET_PERSON = b"sluice.maglev.h1"  # BLAKE2b personalisation (16 bytes max) for h1 -> offset
_SKIP_PERSON = b"sluice.maglev.h2"  # ... for h2 -> skip
_H1 = hashlib.blake2b(digest_size=8, person=_OFFSET_PERSON)
_H2 = hashlib.blake2b(digest_size=8, person=_SKIP_PERSON)

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, eq=False)
class MaglevTable:
    """A populated lookup table: slot -> index into `backends` (-1 = no backend)."""

    backends: tuple[str, ...]
    """Backend identities, sorted; `slots` holds indexes into this tuple."""
    slots: I32
    """int32 array of length M (read-only)."""

    @property
    def size(self) -> int:
        return len(self.slots)

    def lookup(self, hash32: int) -> str | None:
        """The backend for a flow hash: ``backends[slots[hash32 % M]]`` (None if the table is empty)."""
        return self.backend_at(hash32 % len(self.slots))

    def backend_at(self, slot: int) -> str | None:
        index = int(self.slots[slot])
        return None if index < 0 else self.backends[index]

    def counts(self) -> dict[str, int]:
        """Slots per backend (backends with no slot are listed with 0)."""
        found = np.bincount(self.slots[self.slots >= 0], minlength=len(self.backends))
        return {name: int(c) for name, c in zip(self.backends, found, strict=True)}

    def digest(self) -> str:
        """SHA-256 of the backends and the slots: equal digests = identical tables."""
        h = hashlib.sha256("\n".join(self.backends).encode())
        h.update(np.asarray(self.slots, dtype="<i4").tobytes())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaglevTable):
            return NotImplemented
        return self.backends == other.backends and bool(np.array_equal(self.slots, other.slots))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TableDiff:
    """What changed between two tables of the same size."""

    changed: I64
    """Indexes of the slots whose backend changed (sorted)."""
    moved: Mapping[tuple[str | None, str | None], int]
    """Number of changed slots per (old backend, new backend); None = empty slot."""
    size: int

    @property
    def slots_changed(self) -> int:
        return len(self.changed)

    @property
    def fraction_changed(self) -> float:
        """Share of the table (= share of the flow-hash space, i.e. of new flows) that moved."""
        return len(self.changed) / self.size if self.size else 0.0


def count_slots_changed(old: MaglevTable, new: MaglevTable) -> int:
    """Slots whose backend identity differs between two tables: what ``diff_tables(old, new)
    .slots_changed`` counts, without building the per-slot diff (~20x faster at M = 65537).
    Every slot when the table size changed."""
    if old.size != new.size:
        return new.size
    if old.backends == new.backends:
        return int(np.count_nonzero(old.slots != new.slots))
    # old index -> new index of the same identity (-2: gone); the extra last entry maps empty (-1) to -1
    index = {name: i for i, name in enumerate(new.backends)}
    lut = np.array([index.get(name, -2) for name in old.backends] + [-1], dtype=np.int32)
    return int(np.count_nonzero(lut[old.slots] != new.slots))


def build_table(backends: Sequence[tuple[str, int]], size: int = DEFAULT_TABLE_SIZE) -> MaglevTable:
    """Populate a Maglev table for (identity, weight) pairs; see the module docstring.

    Raises ValueError for a size that is not a prime, a negative weight or a duplicate identity.
    """
    names, weights = _prepare(backends, size)
    if not names:
        return _frozen(names, np.full(size, -1, dtype=np.int32))
    offsets, skips = permutation_parameters(names, size)
    weights_a = np.asarray(weights, dtype=np.int64)
    if _speedup is None:
        return _frozen(names, _populate_reference(offsets, skips, weights_a, size))
    slots = np.empty(size, dtype=np.int32)
    _speedup.populate(offsets, skips, weights_a, size, slots)
    return _frozen(names, slots)


def diff_tables(old: MaglevTable, new: MaglevTable) -> TableDiff:
    """Which slots changed and how many moved from which backend to which."""
    if old.size != new.size:
        raise ValueError(f"tables differ in size ({old.size} vs {new.size}); every slot changes")
    old_names = np.array([*old.backends, ""], dtype=object)
    new_names = np.array([*new.backends, ""], dtype=object)
    # identities, so that the same backend at a different index is not a change
    before = old_names[old.slots]  # -1 -> "" (the last entry)
    after = new_names[new.slots]
    changed = np.flatnonzero(before != after).astype(np.int64)
    pairs = Counter(zip(before[changed].tolist(), after[changed].tolist(), strict=True))
    moved = {(a or None, b or None): n for (a, b), n in sorted(pairs.items())}
    return TableDiff(changed=changed, moved=moved, size=new.size)


def permutation_parameters(names: Sequence[str], size: int) -> tuple[I64, I64]:
    """(offsets, skips) of each identity for a table of `size` slots (int64 arrays)."""
    d1 = []
    d2 = []
    for name in names:
        data = name.encode()
        h = _H1.copy()
        h.update(data)
        d1.append(h.digest())
        h = _H2.copy()
        h.update(data)
        d2.append(h.digest())
    h1 = np.frombuffer(b"".join(d1), dtype="<u8")
    h2 = np.frombuffer(b"".join(d2), dtype="<u8")
    offsets = (h1 % np.uint64(size)).astype(np.int64)
    skips = (h2 % np.uint64(size - 1)).astype(np.int64) + 1
    return offsets, skips


def _prepare(backends: Sequence[tuple[str, int]], size: int) -> tuple[list[str], list[int]]:
    if not is_prime(size):
        raise ValueError(f"the table size must be a prime number, got {size}")
    items = sorted((str(name), int(weight)) for name, weight in backends)
    names = [name for name, _ in items]
    for a, b in itertools.pairwise(names):
        if a == b:
            raise ValueError(f"duplicate backend {a!r}")
    for name, weight in items:
        if weight < 0:
            raise ValueError(f"backend {name!r}: weight must be >= 0, got {weight}")
    return names, [weight for _, weight in items]


def _frozen(names: Sequence[str], slots: I32) -> MaglevTable:
    slots.flags.writeable = False
    return MaglevTable(backends=tuple(names), slots=slots)


# ---------------------------------------------------------------- reference


def _populate_reference(offsets: I64, skips: I64, weights: I64, size: int) -> I32:
    """The population loop exactly as the paper writes it, in plain Python (slow)."""
    offs, steps, ws = offsets.tolist(), skips.tolist(), weights.tolist()
    slots = [-1] * size
    wmax = max(ws, default=0)
    nxt = list(offs)
    filled = 0
    r = 0
    while wmax > 0 and filled < size:
        for i, w in enumerate(ws):
            if (r + 1) * w // wmax == r * w // wmax:
                continue  # no turn for backend i in round r
            c = nxt[i]
            while slots[c] >= 0:
                c = (c + steps[i]) % size
            slots[c] = i
            nxt[i] = (c + steps[i]) % size
            filled += 1
            if filled == size:
                break
        r += 1
    return np.array(slots, dtype=np.int32)


def _build_table_reference(
    backends: Sequence[tuple[str, int]], size: int = DEFAULT_TABLE_SIZE
) -> MaglevTable:
    """`build_table` through the plain-Python loop; tests check both give the same table."""
    names, weights = _prepare(backends, size)
    offsets, skips = permutation_parameters(names, size)
    return _frozen(names, _populate_reference(offsets, skips, np.asarray(weights, dtype=np.int64), size))
