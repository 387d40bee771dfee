"""Rates for the progress line (internal to the runner), pure: amounts over a sliding window,
and time averages. Nothing here reads a clock: every call takes ``now``.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RateWindow", "TimeAverage"]

#: A window is counted in this many buckets (bounded memory whatever the rate).
_RATE_BUCKETS = 60


class RateWindow:
    """Amounts added over the last ``window`` seconds, in 60 buckets (bounded memory whatever
    the rate); for the progress line when a dimension has no limit for the governor to count."""

    __slots__ = ("_buckets", "_width")

    def __init__(self, window: float) -> None:
        self._width = window / _RATE_BUCKETS
        self._buckets: deque[list[float]] = deque()

    def add(self, now: float, amount: float) -> None:
        slot = math.floor(now / self._width)
        if self._buckets and self._buckets[-1][0] == slot:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([slot, amount])
        self._expire(slot)

    def total(self, now: float) -> float:
        self._expire(math.floor(now / self._width))
        return sum(amount for _, amount in self._buckets)

    def _expire(self, slot: int) -> None:
        while self._buckets and self._buckets[0][0] <= slot - _RATE_BUCKETS:
            self._buckets.popleft()


class TimeAverage:
    """The time average of a step function sampled at increasing times (each value holds
    until the next sample)."""

    __slots__ = ("_area", "_first", "_last_time", "_last_value")

    def __init__(self) -> None:
        self._area = 0.0
        self._first: float | None = None
        self._last_time = 0.0
        self._last_value = 0.0

    def sample(self, now: float, value: float) -> None:
        if self._first is None:
            self._first = now
        else:
            self._area += self._last_value * max(0.0, now - self._last_time)
        self._last_time, self._last_value = now, value

    def mean(self) -> float:
        if self._first is None:
            return 0.0
        span = self._last_time - self._first
        return self._area / span if span > 0 else self._last_value
