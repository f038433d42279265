"""A bounded session (NAT) table: LRU eviction, idle timeout and response counting. Sans-IO.

The UDP proxy keeps one entry per client address; the entry's value is whatever the shell needs
(its upstream socket, the backend). The table never touches those values: it decides when a session
ends and hands it back in a `SessionClosed` event, and the shell closes the socket.

- Time comes in as `now` (seconds, any monotonic clock). Every datagram either way refreshes a
  session, so the table is kept in least-recently-used order and the front entry is both the next
  to evict and the next to time out: `expire` and `next_deadline` are O(1) per expired entry.
- `max_sessions` bounds the table. Opening a session in a full table evicts the least recently used
  one (reason ``evicted``).
- `responses` (NGINX's ``proxy_responses``): the number of reply datagrams expected per client
  datagram. The session ends (reason ``responses``) once ``replies >= requests * responses``; with
  ``responses=1`` a DNS query ends its session as soon as the answer has been relayed. A client that
  sends two queries before the first answer keeps its session until both answers are back.
- Keys are any hashable value; the table is generic in key and value types.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

__all__ = ["EVICTED", "IDLE_TIMEOUT", "RESPONSES", "Session", "SessionClosed", "SessionTable"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

IDLE_TIMEOUT: Final = "idle_timeout"
"""No datagram either way for `idle_timeout_s` seconds."""
RESPONSES: Final = "responses"
"""Every expected reply has been seen."""
EVICTED: Final = "evicted"
"""The table was full and this was the least recently used session."""


@dataclass(slots=True, eq=False)
class Session(Generic[K, V]):
    """One table entry. The shell may replace `value` (e.g. when the session moves to another backend)."""

    key: K
    value: V
    created: float
    """`now` when the session was opened (seconds)."""
    last_seen: float
    """`now` of the last datagram either way (seconds)."""
    requests: int = 0
    """Datagrams from the client."""
    replies: int = 0
    """Datagrams to the client."""
    bytes_in: int = 0
    """Bytes from the client (the sizes given to `request`)."""
    bytes_out: int = 0
    """Bytes to the client (the sizes given to `reply`)."""


@dataclass(frozen=True, slots=True)
class SessionClosed(Generic[K, V]):
    """A session left the table; the shell releases what `value` holds."""

    key: K
    value: V
    reason: str
    """``idle_timeout``, ``responses``, ``evicted`` or the reason the shell passed to `remove`."""
    created: float = field(default=0.0, compare=False)
    """The session's `Session.created` (for its duration)."""
    session: Session[K, V] | None = field(default=None, compare=False)
    """The entry as it was when it left (its counts and `created`, for the flow log)."""


class SessionTable(Generic[K, V]):
    """Sessions keyed by `K`, in least-recently-used order."""

    def __init__(self, max_sessions: int, idle_timeout_s: float, responses: int | None = None) -> None:
        self._entries: OrderedDict[K, Session[K, V]] = OrderedDict()
        self.max_sessions = 1
        self.idle_timeout_s = 1.0
        self.responses: int | None = None
        self.configure(max_sessions, idle_timeout_s, responses)

    def configure(
        self, max_sessions: int, idle_timeout_s: float, responses: int | None = None
    ) -> list[SessionClosed[K, V]]:
        """Change the limits (a reload). Shrinking below the current size evicts the oldest entries."""
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        if responses is not None and responses < 1:
            raise ValueError(f"responses must be at least 1 or None, got {responses}")
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.responses = responses
        return self._evict(len(self._entries) - max_sessions)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Session[K, V]]:
        """Entries from least to most recently used."""
        return iter(list(self._entries.values()))

    def get(self, key: K) -> Session[K, V] | None:
        """Look up without refreshing."""
        return self._entries.get(key)

    def open(self, key: K, value: V, now: float) -> tuple[Session[K, V], list[SessionClosed[K, V]]]:
        """Add a session (the first datagram of a flow, not yet counted: call `request` next).

        Returns the new entry and the sessions evicted to make room for it.
        """
        if key in self._entries:
            raise KeyError(f"session {key!r} is already open")
        evicted = self._evict(len(self._entries) + 1 - self.max_sessions)
        session: Session[K, V] = Session(key, value, now, now)
        self._entries[key] = session
        return session, evicted

    def request(self, key: K, now: float, size: int = 0) -> Session[K, V] | None:
        """A datagram of `size` bytes from the client: refresh the session and count it. None if
        there is none."""
        session = self._entries.get(key)
        if session is not None:
            self._entries.move_to_end(key)
            session.last_seen = now
            session.requests += 1
            session.bytes_in += size
        return session

    def reply(self, key: K, now: float, size: int = 0) -> SessionClosed[K, V] | None:
        """A datagram of `size` bytes to the client: refresh and count it; returns the close event
        when this was the last expected reply (`responses`)."""
        session = self._entries.get(key)
        if session is None:
            return None
        session.replies += 1
        session.bytes_out += size
        if self.responses is not None and session.replies >= session.requests * self.responses:
            del self._entries[key]
            return SessionClosed(key, session.value, RESPONSES, session.created, session)
        self._entries.move_to_end(key)
        session.last_seen = now
        return None

    def remove(self, key: K, reason: str) -> SessionClosed[K, V] | None:
        """Take a session out for a reason of the shell's; None if it was not there."""
        session = self._entries.pop(key, None)
        return (
            None if session is None else SessionClosed(key, session.value, reason, session.created, session)
        )

    def clear(self, reason: str) -> list[SessionClosed[K, V]]:
        """Remove every session (shutdown)."""
        closed = [SessionClosed(s.key, s.value, reason, s.created, s) for s in self._entries.values()]
        self._entries.clear()
        return closed

    def expire(self, now: float) -> list[SessionClosed[K, V]]:
        """Remove the sessions idle for at least `idle_timeout_s` at `now`."""
        closed: list[SessionClosed[K, V]] = []
        while self._entries:
            key, session = next(iter(self._entries.items()))
            if session.last_seen + self.idle_timeout_s > now:  # the same sum as next_deadline
                break
            del self._entries[key]
            closed.append(SessionClosed(key, session.value, IDLE_TIMEOUT, session.created, session))
        return closed

    def next_deadline(self) -> float | None:
        """When the next session times out if nothing refreshes it; None for an empty table."""
        if not self._entries:
            return None
        return next(iter(self._entries.values())).last_seen + self.idle_timeout_s

    def _evict(self, count: int) -> list[SessionClosed[K, V]]:
        evicted: list[SessionClosed[K, V]] = []
        for _ in range(max(count, 0)):
            key, session = self._entries.popitem(last=False)
            evicted.append(SessionClosed(key, session.value, EVICTED, session.created, session))
        return evicted
