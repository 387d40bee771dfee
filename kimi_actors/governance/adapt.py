"""How hard to push when the server pushes back: the working concurrency and the learned rate.

Two pure state machines, fed ``now`` and what happened, read by the admission gate:

- :class:`ConcurrencyAdapter`, AIMD on overload. Overload (429 ``engine_overloaded_error``)
  says the server is busy, not that our request was wrong: the answer is to offer less load,
  not to fail queued work. An overload lowers the working limit to ``decrease`` times the
  attempts still out (what the server is holding of ours), never raising it. The rest of a
  round's overloads lower it only as far as the server holds fewer of ours, so a round that
  overshot by a few costs one decrease, and one that overshot eightfold comes down in one
  round, not in six. Each success then adds ``1 / limit`` (one slot per round of answers).
  Before the first overload a slow start doubles the limit every ``ramp`` seconds in which it
  was reached, so a server that cannot take the configured concurrency sees a few overloads,
  not hundreds. Latency is not used: an
  LLM's latency is set by the length of its answer, not by the server's load.
- :class:`RateLearner`: a rate-limit 429 that names no limit ("We're receiving too many
  requests at the moment") makes what the server accepted over the trailing window the
  working RPM. It is probed upward at most once per window, by 1, 2, 4... while probes pass,
  back to 1 after a 429, and never above the configured limit.
"""

from __future__ import annotations

import math
from collections import deque

from ..policy import AdaptPolicy

__all__ = ["ConcurrencyAdapter", "RateLearner"]


class ConcurrencyAdapter:
    """The working concurrency under ``ceiling`` (the configured one; ``None``: unlimited)."""

    __slots__ = ("_ceiling", "_decreased_after", "_decreases", "_grow_at", "_limit", "_policy",
                 "_ramping", "_seq")

    def __init__(self, policy: AdaptPolicy, ceiling: int | None) -> None:
        self._policy = policy
        self._ceiling = ceiling
        top = math.inf if ceiling is None else float(ceiling)
        start = top if policy.start is None else min(top, float(policy.start))
        self._limit = start
        self._ramping = start < top
        self._grow_at = -math.inf
        self._seq = 0
        #: Attempts numbered up to this one were admitted before the last decrease (a round
        #: counts as one decrease in the statistics).
        self._decreased_after = 0
        self._decreases = 0

    @property
    def limit(self) -> int | None:
        """Attempts that may be out at once now (``None``: no bound)."""
        return None if math.isinf(self._limit) else max(1, int(self._limit))

    @property
    def ramping(self) -> bool:
        """Still in slow start (no overload seen, below the ceiling)."""
        return self._ramping

    @property
    def decreases(self) -> int:
        return self._decreases

    @property
    def at_floor(self) -> bool:
        """The limit cannot go lower: further overload means the service itself is down."""
        return self._limit <= self._policy.floor

    def admitted(self) -> int:
        """Number an admission (pass it back to :meth:`overloaded`)."""
        self._seq += 1
        return self._seq

    def ramp(self, out: int, now: float) -> float | None:
        """During slow start, double the limit when ``out`` (attempts out now) has reached it
        and ``ramp`` seconds passed since the last doubling. Returns when a doubling that is
        due only to time will happen (``None``: none is waiting on the clock)."""
        limit = self.limit
        if not self._ramping or limit is None or out < limit:
            return None  # a change in ``out`` comes with a ring of the gate's bell
        if now < self._grow_at:
            return self._grow_at
        top = math.inf if self._ceiling is None else float(self._ceiling)
        self._limit = min(top, self._limit * 2)
        self._ramping = self._limit < top
        self._grow_at = now + self._policy.ramp
        return None

    def overloaded(self, seq: int, out: int) -> bool:
        """Attempt ``seq`` was answered overloaded while ``out`` other attempts were still
        out (what the server is holding of ours). True when the limit is at its floor (the
        breaker's turn: see docs/design.md)."""
        if self.at_floor:
            return True
        self._ramping = False
        lowered = max(float(self._policy.floor), self._policy.decrease * max(out, 1))
        if lowered < self._limit:
            self._limit = lowered
            if seq > self._decreased_after:
                self._decreased_after = self._seq
                self._decreases += 1
        return False

    def succeeded(self) -> None:
        """An attempt was answered: one more slot per round of answers."""
        if self._ramping or math.isinf(self._limit):
            return
        top = math.inf if self._ceiling is None else float(self._ceiling)
        self._limit = min(top, self._limit + 1 / self._limit)

    def __repr__(self) -> str:
        return f"ConcurrencyAdapter(limit={self.limit}, ramping={self._ramping})"


class RateLearner:
    """The working request rate after 429s that name nothing; ``None`` while none came.

    ``window`` is the server's (its minute); ``ceiling`` the configured RPM (``None``:
    unlimited). It keeps the send times of the last window's requests and of those refused
    for their rate: the accepted ones are the difference (a request still in flight counts as
    accepted, as the server counted it on arrival).
    """

    __slots__ = ("_ceiling", "_limit", "_probe_at", "_refused", "_sent", "_step", "_window")

    def __init__(self, window: float, ceiling: int | None) -> None:
        self._window = window
        self._ceiling = ceiling
        self._sent: deque[float] = deque()
        self._refused: deque[float] = deque()
        self._limit: int | None = None
        self._step = 1
        self._probe_at = math.inf

    @property
    def limit(self) -> int | None:
        return self._limit

    def sent(self, now: float) -> None:
        """A request reached the wire."""
        self._sent.append(now)
        self._expire(self._sent, now)

    def sends(self, now: float) -> list[float]:
        """When the requests of the trailing window were sent, oldest first."""
        self._expire(self._sent, now)
        return list(self._sent)

    def refused(self, sent: float, now: float) -> int:
        """A 429 that named nothing answered the request sent at ``sent``: the working limit
        becomes what was accepted in the trailing window (at least 1). Returns it."""
        self._refused.append(sent)
        self._expire(self._sent, now)
        self._expire(self._refused, now)
        learned = max(1, len(self._sent) - len(self._refused))
        if self._ceiling is not None:
            learned = min(learned, self._ceiling)
        self._limit = learned
        self._step = 1
        self._probe_at = now + self._window
        return learned

    def probe(self, now: float) -> float | None:
        """Raise the working limit when a window has passed without a vague 429. Returns when
        the next probe is due (``None``: nothing learned, or back at the ceiling)."""
        if self._limit is None:
            return None
        if now >= self._probe_at:
            raised = self._limit + self._step
            self._step *= 2
            self._probe_at = now + self._window
            if self._ceiling is not None and raised >= self._ceiling:
                self._limit = None
                self._probe_at = math.inf
                return None
            self._limit = raised
        return self._probe_at

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self._window:
            times.popleft()

    def __repr__(self) -> str:
        return f"RateLearner(limit={self._limit}, step={self._step})"
