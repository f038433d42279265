"""Schedulers: which backend a new flow goes to. Chosen by name from `REGISTRY`.

Sans-IO: a scheduler is told about flows (`pick`, `on_open`, `on_close`) and keeps only counts. A
backend with weight 0 never gets a new flow from any scheduler (it may still have open flows;
`on_open`/`on_close` keep counting them).

- ``maglev``: consistent hashing. ``slot = flow_hash(flow) % M`` in the Maglev table
  (`sluice.core.maglev`); the same flow always lands on the same backend, on every node. With
  `exclude` (a connect retry after a failure) the walk goes on to slot + 1, slot + 2, ... up to the
  first backend not excluded: deterministic, and bounded by M. A VIP with ``hash_key:`` hashes
  with that key (`HashKey`: SipHash-1-3, so a client cannot choose its slot); the others ignore it.
- ``round_robin``: smooth weighted round robin as nginx does it: every eligible backend gains its
  weight, the one with the most current weight is picked (first in config order on a tie) and
  loses the total of the weights. Weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
- ``least_conn``: the backend with the fewest active flows per unit of weight (active / weight,
  compared exactly); a tie goes to the heavier backend, then to the first in config order.
- ``random_two``: power of two choices: two different backends drawn at random in proportion to
  their weights (from the injected `random.Random`), then the one with fewer active / weight (the
  first drawn on a tie).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from sluice.core.endpoint import Endpoint
from sluice.core.flow import FiveTuple, HashKey, flow_hash
from sluice.core.maglev import DEFAULT_TABLE_SIZE, MaglevTable, build_table, count_slots_changed
from sluice.core.names import SchedulerName

"""The names `REGISTRY` knows (the config's ``scheduler:`` values)."""

WeightedBackends = Sequence[tuple[Endpoint, int]]
"""(endpoint, weight) per backend, in config order."""


class HasAddressAndWeight(Protocol):
    """A backend as the config describes it (`sluice.config.Backend`), accepted by `build_scheduler`."""

    @property
    def address(self) -> Endpoint: ...

    @property
    def weight(self) -> int: ...


class Scheduler(Protocol):
    name: SchedulerName

    def pick(self, flow: FiveTuple, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """The backend for a new flow; None = no eligible backend (all weight 0 or excluded)."""
        ...

    def on_open(self, backend: Endpoint) -> None:
        """A flow started on `backend` (least_conn / random_two bookkeeping)."""
        ...

    def on_close(self, backend: Endpoint) -> None:
        """A flow on `backend` ended."""
        ...


class _Base:
    """Shared state: the backends in config order, their weights and active flow counts."""

    name: SchedulerName

    def __init__(
        self,
        backends: WeightedBackends,
        *,
        table_size: int = DEFAULT_TABLE_SIZE,
        rng: random.Random | None = None,
        hash_key: HashKey | None = None,
    ) -> None:
        self.hash_key = hash_key
        """The VIP's flow-hash key (maglev); None = the unkeyed MurmurHash3."""
        self.backends: tuple[tuple[Endpoint, int], ...] = tuple(backends)
        """(endpoint, weight) in config order."""
        self.weights: dict[Endpoint, int] = dict(self.backends)
        if len(self.weights) != len(self.backends):
            raise ValueError("duplicate backend address")
        self.active: dict[Endpoint, int] = dict.fromkeys(self.weights, 0)
        """Open flows per backend, as told by on_open / on_close."""
        self._eligible = tuple(a for a, weight in self.backends if weight > 0)
        self._setup(table_size, rng)

    def _setup(self, table_size: int, rng: random.Random | None) -> None:
        """Scheduler-specific state (Maglev's table, round robin's counters, random_two's rng)."""

    def pick(self, flow: FiveTuple, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        raise NotImplementedError

    def eligible(self, exclude: Collection[Endpoint] = ()) -> Sequence[Endpoint]:
        """Backends that may take a new flow: weight > 0 and not excluded, in config order."""
        if not exclude:
            return self._eligible
        return [a for a in self._eligible if a not in exclude]

    def on_open(self, backend: Endpoint) -> None:
        if backend in self.active:  # a backend a reload removed is not counted
            self.active[backend] += 1

    def on_close(self, backend: Endpoint) -> None:
        if self.active.get(backend, 0) > 0:
            self.active[backend] -= 1

    def _less_loaded(self, a: Endpoint, b: Endpoint) -> bool:
        """active/weight of a < that of b (exact: cross-multiplied); weights are > 0."""
        return self.active[a] * self.weights[b] < self.active[b] * self.weights[a]


class MaglevScheduler(_Base):
    name: SchedulerName = "maglev"

    def _setup(self, table_size: int, rng: random.Random | None) -> None:
        self.table: MaglevTable = build_table([(str(a), weight) for a, weight in self.backends], table_size)
        by_identity = {str(a): a for a, _ in self.backends}
        self._endpoints = [by_identity[identity] for identity in self.table.backends]

    def pick(self, flow: FiveTuple, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        slots = self.table.slots
        size = len(slots)
        slot = flow_hash(flow, self.hash_key) % size
        index = int(slots[slot])
        if index < 0:
            return None
        if not exclude:
            return self._endpoints[index]
        if all(a in exclude for a in self._eligible):
            return None
        at = slots.item
        for step in range(size):
            index = at((slot + step) % size)
            if self._endpoints[index] not in exclude:
                return self._endpoints[index]
        return None  # unreachable: an eligible backend has slots


class RoundRobinScheduler(_Base):
    name: SchedulerName = "round_robin"

    def _setup(self, table_size: int, rng: random.Random | None) -> None:
        self._current: dict[Endpoint, int] = dict.fromkeys(self.weights, 0)

    def pick(self, flow: FiveTuple, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self.eligible(exclude)
        if not candidates:
            return None
        current = self._current
        total = 0
        best = candidates[0]
        for a in candidates:
            current[a] += self.weights[a]
            total += self.weights[a]
            if current[a] > current[best]:
                best = a
        current[best] -= total
        return best


class LeastConnScheduler(_Base):
    name: SchedulerName = "least_conn"

    def pick(self, flow: FiveTuple, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self.eligible(exclude)
        if not candidates:
            return None
        best = candidates[0]
        for a in candidates[1:]:
            if self._less_loaded(a, best) or (
                not self._less_loaded(best, a) and self.weights[a] > self.weights[best]
            ):
                best = a
        return best


class RandomTwoScheduler(_Base):
    name: SchedulerName = "random_two"

    def _setup(self, table_size: int, rng: random.Random | None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def pick(self, flow: FiveTuple, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self.eligible(exclude)
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        weights = [self.weights[a] for a in candidates]
        i = self.rng.choices(range(len(candidates)), weights)[0]
        weights[i] = 0
        j = self.rng.choices(range(len(candidates)), weights)[0]
        first, second = candidates[i], candidates[j]
        return second if self._less_loaded(second, first) else first


REGISTRY: dict[SchedulerName, type[_Base]] = {
    "maglev": MaglevScheduler,
    "round_robin": RoundRobinScheduler,
    "least_conn": LeastConnScheduler,
    "random_two": RandomTwoScheduler,
}


def build_scheduler(
    name: SchedulerName,
    backends: WeightedBackends | Sequence[HasAddressAndWeight],
    table_size: int = DEFAULT_TABLE_SIZE,
    rng: random.Random | None = None,
    hash_key: HashKey | None = None,
) -> Scheduler:
    """The scheduler called `name` over `backends`: (endpoint, weight) pairs in config order (or
    objects with `.address` and `.weight`, as the config's backends). `table_size` is Maglev's M;
    `rng` feeds random_two (tests inject a seeded one); `hash_key` keys Maglev's flow hash."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (have: {', '.join(REGISTRY)})") from None
    return cls(weighted(backends), table_size=table_size, rng=rng, hash_key=hash_key)


def weighted(backends: WeightedBackends | Sequence[HasAddressAndWeight]) -> WeightedBackends:
    """(endpoint, weight) pairs of `backends`, which may already be pairs."""
    return [b if isinstance(b, tuple) else (b.address, b.weight) for b in backends]


def maglev_slots_changed(old: Scheduler, new: Scheduler) -> int:
    """Maglev slots whose backend differs between the tables of two schedulers (a listener's
    `update`): `count_slots_changed` of their tables. Every slot when the table size or the hash key
    changed (a new key moves flows as a whole new table would); 0 unless both schedulers are Maglev."""
    if not (isinstance(old, MaglevScheduler) and isinstance(new, MaglevScheduler)):
        return 0
    if old.hash_key != new.hash_key:
        return len(new.table.slots)
    return count_slots_changed(old.table, new.table)
