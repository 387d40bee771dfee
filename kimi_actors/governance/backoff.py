"""How long to wait before a retry, and whether a retry may happen at all.

Full jitter (a uniform draw below a capped exponential) spreads a crowd of failed callers
evenly instead of sending them back in waves. A wait the server named (``Retry-After`` or
Kimi's "try again after N seconds") wins over the computed delay and is never shortened.
The retry budget bounds retries to a fraction of first attempts over a sliding window, so
retries can never multiply the request rate however much fails.

Pure: time comes in as ``now``, randomness from an injected ``random.Random``.
"""

from __future__ import annotations

import math
import random
from collections import deque

from ..policy import RetryPolicy

__all__ = ["RetryBudget", "backoff_delay", "retry_delay"]

#: A server-named wait gets up to this fraction of itself (at most one second) added on top.
_SERVER_JITTER_FRACTION = 0.1
_SERVER_JITTER_MAX = 1.0
#: The budget's window is counted in this many bins (memory stays bounded).
_BUDGET_BINS = 64


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full-jitter delay before retry number ``attempt`` (1 = the first retry):
    uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``. Safe for any attempt number."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1 (1 = first retry), got {attempt!r}")
    try:
        ceiling = min(policy.cap, math.ldexp(policy.base, attempt - 1))
    except OverflowError:  # base * 2 ** (attempt - 1) beyond any float: far above the cap
        ceiling = policy.cap
    return rng.uniform(0.0, ceiling)


def retry_delay(
    attempt: int, policy: RetryPolicy, rng: random.Random, server_wait: float | None
) -> float:
    """The delay before retry ``attempt``. A server-named wait wins and is honoured in full,
    with a little jitter on top (up to 10 %, at most 1 s) so callers told the same wait do not
    return in lockstep; otherwise ``backoff_delay``."""
    if server_wait is None:
        return backoff_delay(attempt, policy, rng)
    if not math.isfinite(server_wait) or server_wait < 0:
        raise ValueError(f"server_wait must be a finite number of seconds >= 0, "
                         f"got {server_wait!r}")
    spread = min(_SERVER_JITTER_MAX, _SERVER_JITTER_FRACTION * server_wait)
    return server_wait + rng.uniform(0.0, spread)


class _Bin:
    __slots__ = ("attempts", "opened", "retries")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.attempts = 0
        self.retries = 0


class RetryBudget:
    """Retries allowed = ``budget_floor + budget_ratio * first attempts``, minus retries
    already spent, all counted over the last ``budget_window`` seconds.

    Counts are kept in bins of ``budget_window / 64`` seconds, so memory is bounded and the
    window is exact to within one bin.
    """

    __slots__ = ("_attempts", "_bin_width", "_bins", "_policy", "_retries")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._bin_width = policy.budget_window / _BUDGET_BINS
        self._bins: deque[_Bin] = deque()
        self._attempts = 0
        self._retries = 0

    def record_attempt(self, now: float) -> None:
        """Count a first attempt (not a retry): it earns ``budget_ratio`` of a retry."""
        self._bin(now).attempts += 1
        self._attempts += 1

    def try_spend(self, now: float) -> bool:
        """Spend one retry if the budget allows; False means: do not retry, fail instead."""
        if self.available(now) < 1:
            return False
        self._bin(now).retries += 1
        self._retries += 1
        return True

    def available(self, now: float) -> float:
        """Retries that may still be spent now (fractional: ratios accumulate)."""
        self._expire(now)
        earned = self._policy.budget_floor + self._policy.budget_ratio * self._attempts
        return max(0.0, earned - self._retries)

    def wait(self, now: float) -> float:
        """Seconds until one retry may be spent, counting only what expires (new first
        attempts can only shorten it); ``inf`` when expiry alone never frees one."""
        if self.available(now) >= 1:
            return 0.0
        policy = self._policy
        attempts, retries = self._attempts, self._retries
        for old in self._bins:
            attempts -= old.attempts
            retries -= old.retries
            if policy.budget_floor + policy.budget_ratio * attempts - retries >= 1:
                return max(old.opened + policy.budget_window - now, 0.0)
        return math.inf

    def __repr__(self) -> str:
        return f"RetryBudget(attempts={self._attempts}, retries={self._retries})"

    def _expire(self, now: float) -> None:
        window = self._policy.budget_window
        while self._bins and self._bins[0].opened + window <= now:
            old = self._bins.popleft()
            self._attempts -= old.attempts
            self._retries -= old.retries

    def _bin(self, now: float) -> _Bin:
        self._expire(now)
        if self._bins and now - self._bins[-1].opened < self._bin_width:
            return self._bins[-1]
        self._bins.append(_Bin(now))
        return self._bins[-1]
