"""Announcing the VIPs over BGP: which prefixes this node announces, and when that changes.

Scale-out is plain routing: every LB node announces the same VIP prefixes, the router spreads flows
over the nodes with ECMP, and since every node builds the identical Maglev table from the same config
a flow that ECMP moves to another node still reaches the same backend.

The rule (`decide`, pure): a prefix is announced iff

- the node is not stopping (graceful shutdown withdraws *before* the data plane detaches), and
- some dsr VIP inside the prefix has a backend with weight > 0 in the effective config (health,
  drain and maintenance already folded in), and that VIP's interface passes the node check: it exists,
  is up (carrier too) and has an XDP program attached.

The `Announcer` holds the decision's inputs, recomputes after every controller push (`update`) and
every node check (`check_node`, periodic), and hands the set of prefixes to a `Speaker` (BIRD,
`control/bird.py`). Every announce and withdraw is logged with its reason, counted, and kept in a
bounded event list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Final, Literal, Protocol

from sluice.config import AnnounceOptions, Config, Vip
from sluice.dataplane.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Action = Literal["announce", "withdraw"]
MAX_EVENTS: Final = 256
"""Announce/withdraw events kept for the API (oldest dropped first)."""

REASON_STOPPING: Final = "shutdown"
REASON_NO_BACKEND: Final = "no usable backend"
REASON_NOT_CONFIGURED: Final = "not in the config"


class Speaker(Protocol):
    """What the announcer drives (BirdSpeaker; tests pass a recording fake)."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def apply(self, options: AnnounceOptions, prefixes: frozenset[str]) -> None:
        """Announce exactly `prefixes`."""

    async def close(self) -> None: ...


NodeCheck = Callable[[frozenset[str]], Awaitable[dict[str, str]]]
"""interfaces -> {interface: problem} for the ones that cannot forward (empty = all fine)."""


@dataclass(frozen=True)
class AnnounceEvent:
    at: float
    """Clock time (the announcer's clock, monotonic seconds)."""
    prefix: str
    action: Action
    reason: str


# ---------------------------------------------------------------- the decision (pure)


def _host_prefix(vip: Vip) -> str:
    ip = ip_address(vip.listen.host)
    return f"{ip}/{ip.max_prefixlen}"


def prefixes_of(config: Config) -> dict[str, tuple[Vip, ...]]:
    """prefix -> the dsr VIPs inside it; prefixes as configured, or every dsr VIP address as a host route."""
    dsr = [v for v in config.vips if v.mode == "dsr"]
    options = config.announce
    if options is None or options.prefixes is None:
        out: dict[str, list[Vip]] = {}
        for v in dsr:
            out.setdefault(_host_prefix(v), []).append(v)
        return {p: tuple(vs) for p, vs in sorted(out.items())}
    return {p: tuple(v for v in dsr if ip_address(v.listen.host) in ip_network(p)) for p in options.prefixes}


def decide(config: Config, problems: dict[str, str], *, stopping: bool) -> dict[str, str | None]:
    """prefix -> None when it is to be announced, else why not. `config` is the effective config;
    `problems` are the node check's failing interfaces."""
    out: dict[str, str | None] = {}
    for prefix, vips in prefixes_of(config).items():
        if stopping:
            out[prefix] = REASON_STOPPING
            continue
        reasons = []
        for vip in vips:
            assert vip.dsr is not None
            if not any(b.weight > 0 for b in vip.backends):
                reasons.append(f"vip {vip.name}: {REASON_NO_BACKEND}")
            elif vip.dsr.interface in problems:
                reasons.append(f"vip {vip.name}: {vip.dsr.interface}: {problems[vip.dsr.interface]}")
            else:
                break
        else:
            out[prefix] = "; ".join(reasons) or REASON_NO_BACKEND
            continue
        out[prefix] = None
    return out


def interfaces_of(config: Config) -> frozenset[str]:
    return frozenset(v.dsr.interface for v in config.vips if v.mode == "dsr" and v.dsr is not None)


# ---------------------------------------------------------------- the node check (I/O)


def link_problem(link: dict[str, object]) -> str | None:
    """Why an interface (an ``ip -j -d link show`` entry) cannot forward VIP traffic, or None."""
    flags = link.get("flags")
    flags = flags if isinstance(flags, list) else []
    if "UP" not in flags:
        return "down"
    if "LOWER_UP" not in flags:
        return "no carrier"
    if not isinstance(link.get("xdp"), dict):
        return "no XDP program attached"
    return None


async def check_interfaces(interfaces: frozenset[str]) -> dict[str, str]:
    """The default node check: every dsr interface is up, has carrier and an XDP program."""
    problems: dict[str, str] = {}
    for name in sorted(interfaces):
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "-j",
            "-d",
            "link",
            "show",
            "dev",
            name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            problems[name] = "ip link: no answer"
            continue
        try:
            links = json.loads(out) if proc.returncode == 0 else []
        except ValueError:
            links = []
        if not links:
            problems[name] = "no such interface"
        elif (problem := link_problem(links[0])) is not None:
            problems[name] = problem
    return problems


# ---------------------------------------------------------------- the announcer


class Announcer:
    """Keeps the speaker's prefixes equal to `decide(...)`; called by the controller."""

    def __init__(
        self,
        options: AnnounceOptions,
        *,
        speaker: Speaker | None = None,
        node_check: NodeCheck = check_interfaces,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = MAX_EVENTS,
    ) -> None:
        if speaker is None:
            from sluice.control.bird import BirdSpeaker

            speaker = BirdSpeaker(options)
        self.options = options
        self.speaker = speaker
        self.node_check = node_check
        self.clock = clock
        self.announced: frozenset[str] = frozenset()
        """Prefixes the speaker announces now."""
        self.counts: Counter[tuple[str, Action]] = Counter()
        """(prefix, action) -> times."""
        self.errors = 0
        """Speaker failures (each retried at the next update or node check)."""
        self.events: deque[AnnounceEvent] = deque(maxlen=max_events)
        self.problems: dict[str, str] = {}
        """The last node check's failing interfaces."""
        self._config: Config | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the speaker (nothing announced yet) and the periodic node check."""
        await self.speaker.start()
        if self._task is None:
            self._task = asyncio.create_task(self._check_loop(), name="sluice-announce")

    async def update(self, config: Config) -> None:
        """The controller pushed `config` (effective) to the data planes: check the node, re-decide."""
        self._config = config
        if config.announce is not None:
            self.options = config.announce
        await self.check_node()

    async def check_node(self) -> None:
        """One node check, then make the speaker match the decision."""
        config = self._config
        if config is None:
            return
        self.problems = await self.node_check(interfaces_of(config)) if not self._stopping else {}
        await self._sync()

    async def shutdown(self) -> None:
        """Graceful stop, first step: withdraw everything, then wait `withdraw_delay` so the routers
        move the traffic away while this node still forwards it."""
        self._stopping = True
        had = bool(self.announced)
        await self._sync()
        if had:
            log.info("withdrawn; waiting %.1fs before the data plane detaches", self.options.withdraw_delay)
            await asyncio.sleep(self.options.withdraw_delay)

    async def close(self) -> None:
        """Withdraw (if not done yet) and stop the speaker."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        with contextlib.suppress(Exception):
            await self._sync()
        await self.speaker.close()

    def vip_announced(self, vip_name: str) -> bool:
        """Whether some announced prefix holds the VIP."""
        if self._config is None:
            return False
        return any(
            prefix in self.announced and any(v.name == vip_name for v in vips)
            for prefix, vips in prefixes_of(self._config).items()
        )

    def prefix_states(self) -> dict[str, bool]:
        """prefix -> announced now, for every prefix the config covers and every one still announced."""
        return {p: p in self.announced for p in sorted({*self.decision(), *self.announced})}

    def decision(self) -> dict[str, str | None]:
        if self._config is None:
            return {}
        if self._config.announce is None:
            return dict.fromkeys(self.announced, REASON_NOT_CONFIGURED)
        return decide(self._config, self.problems, stopping=self._stopping)

    async def _sync(self) -> None:
        async with self._lock:
            decision = self.decision()
            wanted = frozenset(p for p, reason in decision.items() if reason is None)
            if wanted == self.announced:
                return
            try:
                if not self.speaker.running:
                    await self.speaker.start()
                await self.speaker.apply(self.options, wanted)
            except Exception as exc:
                self.errors += 1
                log.error("announce %s failed (will retry): %s", sorted(wanted), exc)
                return
            now = self.clock()
            for prefix in sorted(wanted - self.announced):
                self._record(now, prefix, "announce", "usable")
            for prefix in sorted(self.announced - wanted):
                self._record(now, prefix, "withdraw", decision.get(prefix) or REASON_NOT_CONFIGURED)
            self.announced = wanted

    def _record(self, now: float, prefix: str, action: Action, reason: str) -> None:
        self.counts[(prefix, action)] += 1
        self.events.append(AnnounceEvent(now, prefix, action, reason))
        if action == "announce":
            log.info("bgp: announce %s", prefix)
        else:
            log.warning("bgp: withdraw %s (%s)", prefix, reason)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.node_check_interval)
            try:
                await self.check_node()
            except Exception as exc:  # a failing check must not end the loop
                log.error("node check failed: %s", exc)
