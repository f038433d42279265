"""Backend health: rise/fall, passive ejection and admin states, with the transitions kept as data.

Sans-IO: the shell (``control/monitor.py``) runs the checks, reads the data plane's counters and
passes results in with ``now`` (seconds, any monotonic clock); this module decides.

A backend has two independent dimensions, as in HAProxy:

- its **operational** state, which checks and traffic give it: ``up``, ``falling`` (up, but failing
  checks), ``down``, ``rising`` (down, but passing checks), ``ejected`` (taken out by passive
  ejection);
- its **admin** state, which an operator sets: ``active``, ``drain``, ``maintenance``.

The state shown everywhere (`BackendHealth.state`) is ``draining`` / ``maintenance`` while the admin
state says so, else the operational state: seven states in all. Checks keep running in every admin
state, so undraining a backend puts it straight back into the state its checks report.

Every input becomes exactly one `Event`; `TRANSITIONS` maps (operational state, event) to the next
state and `ADMIN_TRANSITIONS` does the same for the admin dimension. `format_table()` prints both
(the README's table is its output).

- A passing check is ``pass``, or ``rise`` once `rise` passes in a row are seen, or ``readmit``
  when the backend is ejected and its ejection time is over.
- A failing check is ``fail``, or ``fall`` once `fall` failures in a row are seen. A backend starts
  ``up`` (a fresh sluice serves at once), and the very first check decides: if it fails, that is
  already a ``fall``.
- Passive: the shell hands in how many flows the backend served and how many it failed since the
  last call. Served means a TCP connect established, or a UDP reply received (UDP has no connect:
  a reply is its proof of life); failed means a connect refused / reset / timed out, or a UDP
  ICMP port unreachable. A success clears the failure streak (when one interval holds both, the
  successes win: a backend that still answers is not ejected); failures extend it, and a streak of
  `consecutive_failures` is ``eject`` when the VIP's ejection budget (`ejection_budget`) allows:
  at most `max_ejected_percent` of its backends, and never its last usable one (passive ejection
  alone never takes a VIP dark; active checks still can). The n-th ejection in a row lasts
  n x `base_ejection_s` (at most `max_ejection_s`); after `max_ejection_s` of good service the
  count starts over.
  An ejected backend comes back (``readmit``) with the first passing active check after its
  ejection time (with check type ``none`` the shell feeds a pass every interval).

Usable backends (the scheduler may pick them) are those in state ``up`` or ``falling``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "ADMIN_TRANSITIONS",
    "TRANSITIONS",
    "USABLE",
    "Admin",
    "BackendHealth",
    "Event",
    "InvalidTransition",
    "PassivePolicy",
    "State",
    "Transition",
    "ejection_budget",
    "format_table",
    "slow_start_factor",
]


class State(StrEnum):
    UP = "up"
    FALLING = "falling"
    DOWN = "down"
    RISING = "rising"
    EJECTED = "ejected"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"


class Admin(StrEnum):
    ACTIVE = "active"
    DRAIN = "drain"
    MAINTENANCE = "maintenance"


class Event(StrEnum):
    PASS = "pass"
    """An active check passed (fewer than `rise` in a row)."""
    RISE = "rise"
    """An active check passed and `rise` passes in a row are reached."""
    FAIL = "fail"
    """An active check failed (fewer than `fall` in a row)."""
    FALL = "fall"
    """An active check failed and `fall` failures in a row are reached (or the very first check failed)."""
    EJECT = "eject"
    """Passive: `consecutive_failures` failures in a row, within the VIP's ejection budget."""
    READMIT = "readmit"
    """A passing check after the ejection time is over."""
    SET_ACTIVE = "set_active"
    SET_DRAIN = "set_drain"
    SET_MAINTENANCE = "set_maintenance"


class InvalidTransition(Exception):
    """An event that the table has no row for in the current state (a bug in the caller)."""


_U, _F, _D, _R, _E = State.UP, State.FALLING, State.DOWN, State.RISING, State.EJECTED

TRANSITIONS: Final[Mapping[tuple[State, Event], State]] = {
    (_U, Event.PASS): _U,
    (_U, Event.RISE): _U,
    (_U, Event.FAIL): _F,
    (_U, Event.FALL): _D,
    (_U, Event.EJECT): _E,
    (_F, Event.PASS): _U,
    (_F, Event.RISE): _U,
    (_F, Event.FAIL): _F,
    (_F, Event.FALL): _D,
    (_F, Event.EJECT): _E,
    (_D, Event.PASS): _R,
    (_D, Event.RISE): _U,
    (_D, Event.FAIL): _D,
    (_D, Event.FALL): _D,
    (_R, Event.PASS): _R,
    (_R, Event.RISE): _U,
    (_R, Event.FAIL): _D,
    (_R, Event.FALL): _D,
    (_E, Event.PASS): _E,
    (_E, Event.RISE): _E,
    (_E, Event.FAIL): _E,
    (_E, Event.FALL): _D,
    (_E, Event.READMIT): _U,
}
"""Operational transitions: (state, event) -> next state."""

ADMIN_TRANSITIONS: Final[Mapping[tuple[Admin, Event], Admin]] = {
    (admin, event): target
    for admin in Admin
    for event, target in (
        (Event.SET_ACTIVE, Admin.ACTIVE),
        (Event.SET_DRAIN, Admin.DRAIN),
        (Event.SET_MAINTENANCE, Admin.MAINTENANCE),
    )
}
"""Admin transitions: any admin state may be set from any other."""

_SHOWN_ADMIN: Final[Mapping[Admin, State]] = {
    Admin.DRAIN: State.DRAINING,
    Admin.MAINTENANCE: State.MAINTENANCE,
}

USABLE: Final = frozenset({State.UP, State.FALLING})
"""States in which the scheduler may pick a backend."""

SLOW_START_MIN: Final = 0.1
"""Share of its weight a backend gets at the very start of its slow start."""


def format_table() -> str:
    """Both transition tables as Markdown (for the docs)."""
    lines = ["| state | event | next state |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for (s, e), t in TRANSITIONS.items()]
    lines += [
        f"| any | {e} | {_SHOWN_ADMIN.get(t, 'the operational state')} |"
        for (a, e), t in ADMIN_TRANSITIONS.items()
        if a is Admin.ACTIVE
    ]
    return "\n".join(lines)


def slow_start_factor(now: float, usable_since: float | None, slow_start_s: float | None) -> float:
    """Share (SLOW_START_MIN..1) of its weight a backend usable since `usable_since` gets at `now`."""
    if slow_start_s is None or usable_since is None:
        return 1.0
    elapsed = now - usable_since
    if elapsed >= slow_start_s:
        return 1.0
    return max(SLOW_START_MIN, elapsed / slow_start_s)


def ejection_budget(backends: int, usable: int, ejected: int, max_ejected_percent: int) -> int:
    """How many more of a VIP's backends passive ejection may take out now (0 or more).

    `backends` in the VIP, `usable` of them in use now (usable and not at weight 0), `ejected` of
    them ejected now. At most `max_ejected_percent` of `backends` (rounded down, but at least one)
    are ejected at once, and the last usable backend never is: with one usable backend left an
    ejection would refuse every new flow (``no_backend``), which is worse than a backend that
    fails some of them. 0 percent disables ejection.
    """
    if max_ejected_percent <= 0 or backends <= 0:
        return 0
    limit = max(1, backends * max_ejected_percent // 100)
    return max(0, min(limit - ejected, usable - 1))


@dataclass(frozen=True, slots=True)
class PassivePolicy:
    consecutive_failures: int
    base_ejection_s: float
    max_ejection_s: float


@dataclass(frozen=True, slots=True)
class Transition:
    """The shown state changed. The shell logs and counts it."""

    old: State
    new: State
    event: Event
    now: float
    detail: str = ""


class BackendHealth:
    """One backend of one VIP."""

    def __init__(self, rise: int, fall: int, passive: PassivePolicy | None, now: float) -> None:
        self.configure(rise, fall, passive)
        self.operational = State.UP
        self.admin = Admin.ACTIVE
        self.passes = 0
        """Passing checks in a row."""
        self.failures = 0
        """Failing checks in a row."""
        self.checked = False
        """At least one check result has been seen."""
        self.connect_failures = 0
        """Passive: failures in a row (no success in between)."""
        self.ejections = 0
        """Ejections in a row (sets the length of the next one)."""
        self.ejected_until: float | None = None
        self.usable_since: float | None = now
        """`now` at which the backend last became usable (for slow start); None while unusable."""
        self.last_change = now
        self.last_detail = ""

    # ------------------------------------------------------------ views

    @property
    def state(self) -> State:
        return _SHOWN_ADMIN.get(self.admin, self.operational)

    @property
    def usable(self) -> bool:
        return self.state in USABLE

    @property
    def suspect(self) -> bool:
        """Passive failures seen since the last successful connect, not (yet) enough to eject."""
        return self.connect_failures > 0 and self.operational in USABLE

    # ------------------------------------------------------------ inputs

    def configure(self, rise: int, fall: int, passive: PassivePolicy | None) -> None:
        """New thresholds (a reload); the current state and streaks stay."""
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, got {rise}, {fall}")
        self.rise, self.fall, self.passive = rise, fall, passive

    def on_check(self, ok: bool, now: float, detail: str = "") -> Transition | None:
        """An active check result."""
        self.last_detail = detail
        first = not self.checked
        self.checked = True
        if ok:
            self.passes = min(self.passes + 1, self.rise)
            self.failures = 0
            if self.operational is State.EJECTED:
                over = self.ejected_until is None or now >= self.ejected_until
                event = Event.READMIT if over else Event.PASS
            else:
                event = Event.RISE if self.passes >= self.rise else Event.PASS
        else:
            self.failures = min(self.failures + 1, self.fall)
            self.passes = 0
            event = Event.FALL if first or self.failures >= self.fall else Event.FAIL
        return self._operational_event(event, now, detail)

    def on_traffic(
        self, connects_ok: int, connects_failed: int, now: float, may_eject: bool = True
    ) -> Transition | None:
        """Passive: successes (TCP connects established, UDP replies received) and failures (failed
        connects, UDP ICMP port unreachable) the data plane counted since the last call.

        `may_eject` is the VIP's ejection budget (`ejection_budget`) not spent yet; without it the
        streak keeps growing and the backend stays suspect.
        """
        policy = self.passive
        if policy is None or self.admin is not Admin.ACTIVE or self.operational not in USABLE:
            self.connect_failures = 0
            return None
        if (
            self.ejections
            and self.usable_since is not None
            and now - self.usable_since >= policy.max_ejection_s
        ):
            self.ejections = 0
        if connects_ok > 0:
            self.connect_failures = 0
            return None
        self.connect_failures += connects_failed
        if self.connect_failures < policy.consecutive_failures or not may_eject:
            return None
        self.ejections += 1
        length = min(policy.base_ejection_s * self.ejections, policy.max_ejection_s)
        self.ejected_until = now + length
        detail = f"{self.connect_failures} failures in a row; ejected for {length:g}s"
        self.connect_failures = 0
        return self._operational_event(Event.EJECT, now, detail)

    def set_admin(self, admin: Admin, now: float) -> Transition | None:
        event = {
            Admin.ACTIVE: Event.SET_ACTIVE,
            Admin.DRAIN: Event.SET_DRAIN,
            Admin.MAINTENANCE: Event.SET_MAINTENANCE,
        }[admin]
        old = self.state
        was_usable = self.usable
        self.admin = ADMIN_TRANSITIONS[(self.admin, event)]
        return self._changed(old, was_usable, event, now, f"admin {admin}")

    # ------------------------------------------------------------ internals

    def _operational_event(self, event: Event, now: float, detail: str) -> Transition | None:
        try:
            target = TRANSITIONS[(self.operational, event)]
        except KeyError:
            raise InvalidTransition(f"no transition for event {event} in state {self.operational}") from None
        old = self.state
        was_usable = self.usable
        if target is not self.operational:
            if self.operational is State.EJECTED:
                self.ejected_until = None
            self.operational = target
        return self._changed(old, was_usable, event, now, detail)

    def _changed(
        self, old: State, was_usable: bool, event: Event, now: float, detail: str
    ) -> Transition | None:
        if self.usable and not was_usable:
            self.usable_since = now
        elif not self.usable:
            self.usable_since = None
        new = self.state
        if new is old:
            return None
        self.last_change = now
        return Transition(old, new, event, now, detail)
