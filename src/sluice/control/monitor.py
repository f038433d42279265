"""The health monitor: runs the active checks, reads passive signals, feeds `core.health`.

One `BackendHealth` per (VIP, backend). Every `step()`:

1. passive: reads the data plane's `BackendStats` and hands the deltas since the last step to each
   backend (no coupling beyond the counters every engine keeps anyway): successes are
   ``connect_ok`` (TCP connects established) plus ``datagrams_from_backend`` (UDP replies: UDP has
   no connect, a reply is the backend's proof of life), failures the sum of ``connect_errors``
   (failed connects; for UDP, ICMP port unreachable as ``refused``); the VIP's ejection budget
   (`core.health.ejection_budget`: ``max_ejected_percent``, never the last usable backend) is
   enforced here;
2. runs the checks that are due, concurrently, each bounded by its ``timeout``; a check is due
   ``interval`` (moved by up to ``jitter`` x interval) after the previous one started;
3. returns the transitions, after logging each once and counting it.

`run()` loops `step()` until cancelled and hands every batch to a callback (the controller).
Clock, sleep, checkers and randomness are injected so the tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from sluice.checks import CHECKERS, Checker, CheckResult
from sluice.config import CheckType, Config, Endpoint, HealthCheck, Vip
from sluice.core.health import Admin, BackendHealth, PassivePolicy, State, Transition, ejection_budget
from sluice.core.histogram import CHECK_LATENCY_BUCKETS_S, Histogram
from sluice.dataplane.stats import VipStats
from sluice.dataplane.xdp.checkpath import check_paths, check_target

log = logging.getLogger(__name__)

NO_CHECK: Final = HealthCheck(type="none")
"""What a VIP without a ``health:`` block gets (passes every interval, for re-admission after ejection)."""
PASSIVE_INTERVAL_S: Final = 0.25
"""Seconds between two reads of the data plane's connect counters."""

CheckerFactory = Callable[[HealthCheck], Checker]
StatsSource = Callable[[], Mapping[str, VipStats]]
RuntimeWeights = Callable[[str, Endpoint], int | None]
"""(VIP name, backend) -> the operator's runtime weight of that backend, None without one."""


def _no_runtime_weights(vip: str, backend: Endpoint) -> int | None:
    return None


@dataclass
class BackendRecord:
    """Monitor-side state of one backend of one VIP."""

    vip: str
    address: Endpoint
    target: Endpoint
    """Where the check goes (check_port applied; a dsr VIP's check goes to the VIP)."""
    health: BackendHealth
    next_check: float
    last_result: CheckResult | None = None
    checks_total: Counter[bool] = field(default_factory=Counter)
    check_failures: Counter[str] = field(default_factory=Counter)
    """Failed active checks by reason (`sluice.core.reasons.CHECK_FAILURES`)."""
    latency: Histogram = field(default_factory=lambda: Histogram(CHECK_LATENCY_BUCKETS_S))
    """Active check latencies (seconds)."""
    seen_ok: int = 0
    """connect_ok at the last passive read."""
    seen_replies: int = 0
    """datagrams_from_backend at the last passive read."""
    seen_failed: int = 0
    """Sum of connect_errors at the last passive read."""
    mark: int = 0
    """SO_MARK of the check (a dsr VIP's path to this backend, dataplane/xdp/checkpath.py); 0: none."""


@dataclass(frozen=True, slots=True)
class BackendTransition:
    vip: str
    backend: Endpoint
    transition: Transition


@dataclass
class _VipChecks:
    vip: Vip
    spec: HealthCheck
    checker: Checker
    backends: dict[Endpoint, BackendRecord]


def _delta(now: int, seen: int) -> int:
    """Growth of a counter since it was `seen`; one that went backwards was reset (listener
    recreated): count from zero."""
    return now - seen if now >= seen else now


def _passive_policy(vip: Vip) -> PassivePolicy | None:
    p = vip.passive
    if p is None:
        return None
    return PassivePolicy(p.consecutive_failures, p.base_ejection_time, p.max_ejection_time)


class Monitor:
    def __init__(
        self,
        stats: StatsSource,
        *,
        clock: Callable[[], float] = time.monotonic,
        checkers: Mapping[CheckType, CheckerFactory] = CHECKERS,
        rng: random.Random | None = None,
        passive_interval_s: float = PASSIVE_INTERVAL_S,
        runtime_weights: RuntimeWeights = _no_runtime_weights,
    ) -> None:
        self._stats = stats
        self.runtime_weights = runtime_weights
        """Runtime weights (the controller's): a backend at weight 0 takes no new flows, so it does
        not count as a usable backend left when the ejection budget is computed."""
        self.clock = clock
        self._checkers = checkers
        self._rng = rng or random.Random()
        self.passive_interval_s = passive_interval_s
        self._vips: dict[str, _VipChecks] = {}
        self._next_passive = 0.0
        self._wake = asyncio.Event()
        self.transitions: Counter[tuple[str, str, State]] = Counter()
        """(vip, backend, new state) -> times entered."""

    # ------------------------------------------------------------ config

    def configure(self, config: Config) -> None:
        """Follow a new config: backends that stay keep their state; new ones start up and are checked soon."""
        now = self.clock()
        wanted = {v.name: v for v in config.vips}
        paths = check_paths(config)
        for name in list(self._vips):
            if name not in wanted:
                del self._vips[name]
        for vip in config.vips:
            spec = vip.health or NO_CHECK
            current = self._vips.get(vip.name)
            if current is None or current.spec != spec:
                checker = self._checkers[spec.type](spec)
                old = current.backends if current is not None else {}
                current = self._vips[vip.name] = _VipChecks(vip, spec, checker, dict(old))
            current.vip = vip
            policy = _passive_policy(vip)
            keep: dict[Endpoint, BackendRecord] = {}
            for b in vip.backends:
                target, mark = check_target(vip, b, paths)
                record = current.backends.get(b.address)
                if record is None:
                    health = BackendHealth(spec.rise, spec.fall, policy, now)
                    first = now + self._rng.uniform(0.0, spec.jitter * spec.interval)
                    record = BackendRecord(vip.name, b.address, target, health, first, mark=mark)
                    self._seed_counters(record)
                else:
                    record.health.configure(spec.rise, spec.fall, policy)
                    record.target, record.mark = target, mark
                    record.next_check = min(record.next_check, now + spec.interval)
                keep[b.address] = record
            current.backends = keep
        self._wake.set()

    def _seed_counters(self, record: BackendRecord) -> None:
        vip_stats = self._stats().get(record.vip)
        bstats = vip_stats.backends.get(str(record.address)) if vip_stats is not None else None
        if bstats is not None:
            record.seen_ok = bstats.connect_ok
            record.seen_replies = bstats.datagrams_from_backend
            record.seen_failed = sum(bstats.connect_errors.values())

    # ------------------------------------------------------------ views and admin

    def records(self) -> list[BackendRecord]:
        return [r for v in self._vips.values() for r in v.backends.values()]

    def record(self, vip: str, backend: Endpoint) -> BackendRecord:
        """Raises KeyError for an unknown VIP or backend."""
        return self._vips[vip].backends[backend]

    def set_admin(self, vip: str, backend: Endpoint, admin: Admin) -> BackendTransition | None:
        record = self.record(vip, backend)
        t = record.health.set_admin(admin, self.clock())
        return self._note(record, t)

    # ------------------------------------------------------------ the loop

    async def step(self) -> list[BackendTransition]:
        """One round: passive reads (when due), then the due checks. Returns what changed."""
        now = self.clock()
        out: list[BackendTransition] = []
        if now >= self._next_passive:
            self._next_passive = now + self.passive_interval_s
            out += self._read_passive(now)
        due = [(v, r) for v in self._vips.values() for r in v.backends.values() if r.next_check <= now]
        if not due:
            return out
        for v, r in due:
            wait = v.spec.interval * (1.0 + self._rng.uniform(-v.spec.jitter, v.spec.jitter))
            r.next_check = now + wait
        results = await asyncio.gather(*(v.checker(r.target, r.mark) for v, r in due))
        done = self.clock()
        for (v, r), result in zip(due, results, strict=True):
            if self._vips.get(v.vip.name) is not v or v.backends.get(r.address) is not r:
                continue  # removed by a reload while the check ran
            r.last_result = result
            r.checks_total[result.ok] += 1
            if not result.ok:
                r.check_failures[result.reason] += 1
            if v.spec.type != "none":
                r.latency.observe(result.latency_s)
            t = r.health.on_check(result.ok, done, result.detail)
            if (bt := self._note(r, t)) is not None:
                out.append(bt)
        return out

    def next_due(self) -> float:
        """Clock time of the next check or passive read."""
        checks = (r.next_check for v in self._vips.values() for r in v.backends.values())
        return min(self._next_passive, *checks) if self._vips else self._next_passive

    async def run(self, on_step: Callable[[list[BackendTransition]], Awaitable[None]]) -> None:
        """Step forever (until cancelled); `on_step` gets every step's transitions (often none)."""
        while True:
            self._wake.clear()
            changes = await self.step()
            try:
                await on_step(changes)
            except Exception:
                log.exception("health: applying %d transitions failed", len(changes))
            delay = max(0.0, self.next_due() - self.clock())
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    # ------------------------------------------------------------ internals

    def _read_passive(self, now: float) -> list[BackendTransition]:
        out = []
        stats = self._stats()
        for v in self._vips.values():
            vip_stats = stats.get(v.vip.name)
            if vip_stats is None:
                continue
            budget = self._ejection_budget(v)
            for r in v.backends.values():
                bstats = vip_stats.backends.get(str(r.address))
                if bstats is None:
                    continue
                ok_now, failed_now = bstats.connect_ok, sum(bstats.connect_errors.values())
                replies_now = bstats.datagrams_from_backend
                ok = _delta(ok_now, r.seen_ok) + _delta(replies_now, r.seen_replies)
                failed = _delta(failed_now, r.seen_failed)
                r.seen_ok, r.seen_failed, r.seen_replies = ok_now, failed_now, replies_now
                t = r.health.on_traffic(ok, failed, now, may_eject=budget > 0)
                if t is not None and t.new is State.EJECTED:
                    budget -= 1
                if (bt := self._note(r, t)) is not None:
                    out.append(bt)
        return out

    def _ejection_budget(self, v: _VipChecks) -> int:
        if v.vip.passive is None:
            return 0
        in_use: set[Endpoint] = set()
        for b in v.vip.backends:
            runtime = self.runtime_weights(v.vip.name, b.address)
            if (b.weight if runtime is None else runtime) > 0:
                in_use.add(b.address)
        usable = sum(1 for r in v.backends.values() if r.health.usable and r.address in in_use)
        ejected = sum(1 for r in v.backends.values() if r.health.operational is State.EJECTED)
        return ejection_budget(len(v.backends), usable, ejected, v.vip.passive.max_ejected_percent)

    def _note(self, record: BackendRecord, t: Transition | None) -> BackendTransition | None:
        if t is None:
            return None
        self.transitions[(record.vip, str(record.address), t.new)] += 1
        level = logging.WARNING if t.new not in (State.UP, State.FALLING, State.RISING) else logging.INFO
        log.log(
            level,
            "vip %s backend %s: %s -> %s (%s%s)",
            record.vip,
            record.address,
            t.old,
            t.new,
            t.event,
            f": {t.detail}" if t.detail else "",
            extra={"vip": record.vip, "backend": str(record.address), "from": str(t.old), "to": str(t.new)},
        )
        return BackendTransition(record.vip, record.address, t)
