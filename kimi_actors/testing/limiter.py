"""FakeKimi's account limiter: concurrency, RPM, TPM and TPD over exact rolling windows.

Pure: time comes in as ``now``. A request admitted at ``t`` counts in every window
``(now - length, now]`` that contains ``t``, the stricter reading of Kimi's per-minute limits
(a client that stays within them is also within any fixed-window reading). Checks run in
Kimi's order: concurrency, RPM, TPM, TPD; the first that would be exceeded rejects the request,
which then counts nowhere.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..limits import Limits

__all__ = ["FAKE_AK_ID", "FAKE_UID", "AccountLimiter", "Rejection"]

FAKE_UID = "org-fakekimi0000"
FAKE_AK_ID = "ak-fakekimi0000"
#: Float noise tolerated at a window's edge, so a request at exactly ``t + length`` sees the
#: one admitted at ``t`` gone even when ``(t + length) - length != t`` in floating point.
_EDGE = 1e-9
_ACCOUNT = f"Your account {FAKE_UID}<{FAKE_AK_ID}> request reached organization"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """Why a request is over a limit: ``reason`` is the dimension ("concurrency", "rpm",
    "tpm" or "tpd"); ``retry_after`` the whole seconds until it would fit (at least 1)."""

    reason: str
    message: str
    retry_after: int


def _seconds_until(moment: float, now: float) -> int:
    return max(1, math.ceil(round(moment - now, 9)))


class _TokenWindow:
    """Token amounts admitted over a rolling window, with their running sum."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, horizon: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def add(self, now: float, tokens: int) -> None:
        self.entries.append((now, tokens))
        self.total += tokens

    def seconds_until_fits(self, tokens: int, limit: int, length: float, now: float) -> int:
        if tokens > limit:
            return _seconds_until(now + length, now)
        remaining = self.total
        for admitted_at, amount in self.entries:
            remaining -= amount
            if remaining + tokens <= limit:
                return _seconds_until(admitted_at + length, now)
        return _seconds_until(now + length, now)  # pragma: no cover - the loop always fits


class AccountLimiter:
    """One account's limits, enforced (or, with ``enforce=False``, only measured)."""

    __slots__ = ("_enforce", "_limits", "_requests", "_tpd", "_tpm", "in_flight",
                 "peak_concurrency", "peak_rpm", "peak_tpm")

    def __init__(self, limits: Limits, *, enforce: bool = True) -> None:
        self._limits = limits
        self._enforce = enforce
        self._requests: deque[float] = deque()
        self._tpm = _TokenWindow()
        self._tpd = _TokenWindow()
        self.in_flight = 0
        self.peak_concurrency = 0
        self.peak_rpm = 0
        self.peak_tpm = 0

    @property
    def limits(self) -> Limits:
        return self._limits

    def set_limits(self, limits: Limits) -> None:
        """Change the limits; what was admitted so far keeps counting in the windows."""
        if limits.tpd is None:
            self._tpd = _TokenWindow()
        self._limits = limits

    def reset_peaks(self) -> None:
        self.peak_concurrency = self.in_flight
        self.peak_rpm = len(self._requests)
        self.peak_tpm = self._tpm.total

    def admit(self, tokens: int, now: float) -> Rejection | None:
        """Admit a request reserving ``tokens`` (prompt + max_tokens) at ``now``, or say why
        not. An admitted request holds a concurrency slot until :meth:`release`."""
        limits = self._limits
        horizon = now - limits.minute + _EDGE
        requests = self._requests
        while requests and requests[0] <= horizon:
            requests.popleft()
        self._tpm.prune(horizon)
        track_tpd = limits.tpd is not None
        if track_tpd:
            self._tpd.prune(now - limits.day + _EDGE)
        if self._enforce:
            rejection = self._check(tokens, now)
            if rejection is not None:
                return rejection
        self.in_flight += 1
        requests.append(now)
        self._tpm.add(now, tokens)
        if track_tpd:
            self._tpd.add(now, tokens)
        if self.in_flight > self.peak_concurrency:
            self.peak_concurrency = self.in_flight
        if len(requests) > self.peak_rpm:
            self.peak_rpm = len(requests)
        if self._tpm.total > self.peak_tpm:
            self.peak_tpm = self._tpm.total
        return None

    def _check(self, tokens: int, now: float) -> Rejection | None:
        limits = self._limits
        if limits.concurrency is not None and self.in_flight >= limits.concurrency:
            return Rejection(
                reason="concurrency", retry_after=1,
                message=f"{_ACCOUNT} max concurrency: {limits.concurrency}, "
                        f"please try again after 1 seconds")
        requests = self._requests
        if limits.rpm is not None and len(requests) >= limits.rpm:
            oldest_to_expire = requests[len(requests) - limits.rpm]
            wait = _seconds_until(oldest_to_expire + limits.minute, now)
            return Rejection(
                reason="rpm", retry_after=wait,
                message=f"{_ACCOUNT} max RPM: {limits.rpm}, please try again after {wait} seconds")
        for reason, window, limit, length in (("tpm", self._tpm, limits.tpm, limits.minute),
                                              ("tpd", self._tpd, limits.tpd, limits.day)):
            if limit is not None and window.total + tokens > limit:
                return Rejection(
                    reason=reason,
                    retry_after=window.seconds_until_fits(tokens, limit, length, now),
                    message=f"{_ACCOUNT} {reason.upper()} rate limit, "
                            f"current:{window.total + tokens}, limit:{limit}")
        return None

    def release(self) -> None:
        """An admitted request ended (answered, stream finished or abandoned)."""
        if self.in_flight > 0:
            self.in_flight -= 1
