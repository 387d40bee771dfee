"""Circuit breaker: stop sending while the server is failing, then test the water.

CLOSED counts outcomes over a sliding window and trips to OPEN when the failure rate reaches
the policy's threshold (once enough calls were seen). OPEN refuses calls for a cool-down that
grows with consecutive trips, and is never shorter than a ``Retry-After`` the server named.
HALF_OPEN then lets a few probes through at once: enough successes close the circuit, any
failure opens it again for longer.

Only outcomes that say something about server health count (overload 429s, 5xx, connection
failures and timeouts); a 400 or a rate-limit 429 is reported with ``record_ignored``.

Calls still in flight when the breaker trips belong to the past: their results must neither
close nor trip the new episode. Read ``epoch`` when ``allow()`` returns 0 and pass it back to
``record_*`` to have those results recognised exactly. Without it the breaker attributes
results by count, conservatively: a success or ignored outcome is taken to belong to an older
call while any is outstanding (so a probe slot may stay taken a little longer than needed),
a failure is taken to be a probe's whenever a probe is outstanding.

Pure: time comes in as ``now``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from ..policy import BreakerPolicy

__all__ = ["BreakerState", "CircuitBreaker", "Transition"]

#: The sliding window is counted in this many bins (memory stays bounded).
_WINDOW_BINS = 64


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One change of state, for logs and metrics. ``open_for`` is the cool-down when the
    breaker opened, else None."""

    before: BreakerState
    after: BreakerState
    at: float
    open_for: float | None
    reason: str

    def __post_init__(self) -> None:
        if self.before is self.after:
            raise ValueError(f"a Transition changes state, got {self.before} -> {self.after}")
        if (self.after is BreakerState.OPEN) != (self.open_for is not None):
            raise ValueError("Transition.open_for is set exactly when the breaker opens")


class _Owner(enum.Enum):
    """Whom a reported result belongs to."""

    CURRENT = enum.auto()  # a call let through since the last trip (in HALF_OPEN: a probe)
    STALE = enum.auto()  # a call let through before the last trip
    UNKNOWN = enum.auto()  # no call is outstanding: reported without allow()


class _Bin:
    __slots__ = ("calls", "failures", "opened")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.calls = 0
        self.failures = 0


class CircuitBreaker:
    """closed / open / half-open over a sliding window of outcomes."""

    __slots__ = ("_bin_width", "_bins", "_calls", "_consecutive_trips", "_current",
                 "_down_since", "_failures",
                 "_open_until", "_pending", "_policy", "_probe_successes", "_stale", "_state",
                 "_trips")

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self._state = BreakerState.CLOSED
        self._bin_width = policy.window / _WINDOW_BINS
        self._bins: deque[_Bin] = deque()
        self._calls = 0
        self._failures = 0
        self._open_until: float | None = None
        self._consecutive_trips = 0
        self._trips = 0
        self._probe_successes = 0
        #: Calls let through since the last trip and not yet reported (in HALF_OPEN: probes).
        self._current = 0
        #: Calls let through before the last trip and not yet reported.
        self._stale = 0
        self._pending: list[Transition] = []
        self._down_since: float | None = None

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    @property
    def trips(self) -> int:
        """How many times the breaker has opened (from CLOSED or HALF_OPEN)."""
        return self._trips

    @property
    def epoch(self) -> int:
        """Changes on every trip. Pass the value read when ``allow()`` returned 0 to the
        ``record_*`` call of that call so its result is placed exactly."""
        return self._trips

    def state(self, now: float) -> BreakerState:
        """The state at ``now``; an OPEN breaker whose cool-down is over becomes HALF_OPEN."""
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            if now >= self._open_until:
                self._pending.append(self._move(
                    BreakerState.HALF_OPEN, now, None, "cool-down over: probing"))
        return self._state

    def allow(self, now: float) -> float:
        """0.0: go ahead. Every call let through must later be reported exactly once, with
        ``record_success``/``record_failure``/``record_ignored`` (ignored when cancelled): in
        HALF_OPEN it holds a probe slot until then, and the breaker tells calls from before a
        trip apart by these counts.

        > 0: seconds until a call may be let through. While every probe slot is taken that
        time depends on when a probe reports, so the answer is the policy's ``open_for``: a
        waiter should ask again after it, or as soon as a probe reports, whichever is first."""
        if self._state is BreakerState.CLOSED:  # what nearly every call finds
            self._current += 1
            return 0.0
        state = self.state(now)
        if state is BreakerState.OPEN:
            assert self._open_until is not None
            return self._open_until - now
        if state is BreakerState.HALF_OPEN and self._current >= self._policy.half_open_probes:
            return self._policy.open_for
        self._current += 1
        return 0.0

    def record_success(self, now: float, *, epoch: int | None = None) -> Transition | None:
        if self._state is BreakerState.CLOSED and epoch == self._trips and self._current > 0:
            # What nearly every answer is: a call of this epoch, counted in the window.
            self._current -= 1
            self._count(now, failed=False)
            return None
        state = self.state(now)
        owner = self._attribute(prefer_stale=True, epoch=epoch)
        if owner is _Owner.STALE:
            return None
        if state is BreakerState.CLOSED:
            self._count(now, failed=False)
        elif state is BreakerState.HALF_OPEN and owner is _Owner.CURRENT:
            self._probe_successes += 1
            if self._probe_successes >= self._policy.half_open_probes:
                successes = self._probe_successes
                self._reset_window()
                self._consecutive_trips = 0
                return self._move(BreakerState.CLOSED, now, None,
                                  f"{successes} probes succeeded")
        return None

    def record_failure(
        self, now: float, retry_after: float | None = None, *, epoch: int | None = None
    ) -> Transition | None:
        """A failure that says the server is unhealthy. ``retry_after`` (seconds), when the
        server named one, makes an opening at least that long (and extends a current one)."""
        if retry_after is not None and (isinstance(retry_after, bool)
                                        or not isinstance(retry_after, int | float)
                                        or not math.isfinite(retry_after) or retry_after < 0):
            raise ValueError(f"retry_after must be a finite number of seconds >= 0, "
                             f"got {retry_after!r}")
        state = self.state(now)
        if state is BreakerState.OPEN:
            self._attribute(prefer_stale=True, epoch=epoch)
            if retry_after is not None:
                assert self._open_until is not None
                self._open_until = max(self._open_until, now + retry_after)
            return None
        # Without an epoch a failure goes to a probe whenever one is outstanding: wrongly
        # reopening is safe, wrongly ignoring a failed probe is not.
        if self._attribute(prefer_stale=False, epoch=epoch) is _Owner.STALE:
            return None
        if state is BreakerState.HALF_OPEN:
            return self._trip(now, retry_after, "a probe failed")
        self._count(now, failed=True)
        if self._calls >= self._policy.min_calls \
                and self._failures / self._calls >= self._policy.failure_rate:
            return self._trip(now, retry_after,
                              f"{self._failures} of {self._calls} calls failed in the last "
                              f"{self._policy.window:g} s")
        return None

    def record_ignored(self, now: float, *, epoch: int | None = None) -> None:
        """An outcome that says nothing about server health (a 400, a rate-limit 429, a
        cancelled call): it only frees the call's slot (a probe slot in HALF_OPEN)."""
        self.state(now)
        self._attribute(prefer_stale=True, epoch=epoch)

    def down_for(self, now: float) -> float:
        """Seconds since the breaker judged the service down (tripped from CLOSED), while it
        has not closed again; 0.0 when closed."""
        return 0.0 if self._down_since is None else now - self._down_since

    def open_until(self) -> float | None:
        """When the current opening ends, or None when the breaker is not open."""
        return self._open_until if self._state is BreakerState.OPEN else None

    @property
    def transitions_pending(self) -> bool:
        """Whether :meth:`pop_transitions` has any to return."""
        return bool(self._pending)

    def pop_transitions(self) -> list[Transition]:
        """Transitions that were not returned by a ``record_*`` call (OPEN -> HALF_OPEN, found
        by ``state()``, ``allow()`` or any ``record_*``), oldest first, for logging."""
        pending, self._pending = self._pending, []
        return pending

    def __repr__(self) -> str:
        return (f"CircuitBreaker(state={self._state.value}, trips={self._trips}, "
                f"open_until={self.open_until()!r})")

    def _attribute(self, *, prefer_stale: bool, epoch: int | None) -> _Owner:
        """Decide which outstanding call a result belongs to, and stop counting it."""
        if epoch is not None:
            stale = epoch != self._trips
        else:
            stale = self._stale > 0 and (prefer_stale or self._current == 0)
        if stale:
            self._stale = max(0, self._stale - 1)
            return _Owner.STALE
        if self._current > 0:
            self._current -= 1
            return _Owner.CURRENT
        return _Owner.UNKNOWN

    def _trip(self, now: float, retry_after: float | None, reason: str) -> Transition:
        self._trips += 1
        self._consecutive_trips += 1
        open_for = max(self._cool_down(), retry_after or 0.0)
        self._open_until = now + open_for
        self._stale += self._current
        self._current = 0
        self._reset_window()
        return self._move(BreakerState.OPEN, now, open_for, reason)

    def _cool_down(self) -> float:
        """``open_for * growth ** (consecutive trips - 1)``, capped, without overflowing."""
        policy = self._policy
        growths = self._consecutive_trips - 1
        if growths == 0 or policy.growth == 1:
            return policy.open_for
        if growths * math.log(policy.growth) >= math.log(policy.max_open_for / policy.open_for):
            return policy.max_open_for
        return min(policy.max_open_for, policy.open_for * policy.growth ** growths)

    def _move(self, after: BreakerState, now: float, open_for: float | None,
              reason: str) -> Transition:
        before, self._state = self._state, after
        self._probe_successes = 0
        if after is BreakerState.CLOSED:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = now
        if after is not BreakerState.OPEN:
            self._open_until = None
        return Transition(before=before, after=after, at=now, open_for=open_for, reason=reason)

    def _count(self, now: float, *, failed: bool) -> None:
        window = self._policy.window
        bins = self._bins
        while bins and bins[0].opened + window <= now:
            old = bins.popleft()
            self._calls -= old.calls
            self._failures -= old.failures
        if not bins or now - bins[-1].opened >= self._bin_width:
            bins.append(_Bin(now))
        bins[-1].calls += 1
        self._calls += 1
        if failed:
            bins[-1].failures += 1
            self._failures += 1

    def _reset_window(self) -> None:
        self._bins.clear()
        self._calls = 0
        self._failures = 0
