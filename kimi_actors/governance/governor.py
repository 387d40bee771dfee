"""The governor: one admission point for concurrency, RPM, TPM and TPD, shared by all actors.

Each attempt asks ``admit(tokens)`` and gets a :class:`Permit` once every dimension has room:
one concurrency slot (held until the response or stream ends, then ``release``), one request
in the RPM window, and ``tokens`` (prompt estimate + max_tokens, the way Kimi counts) in the
TPM and TPD windows. ``settle`` corrects the token reservation with the real prompt count.

Waiters are served first come, first served within a priority (a lower number goes first), by
one dispatcher task (``run()``, owned by the supervisor). When nobody is queued and everything
fits, ``admit`` grants at once without a task switch. A 429 that names a wait pauses that
dimension for every actor; a 429 that names the server's own limit lowers ours to it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ..clock import Clock, Doorbell
from ..errors import KimiError, LimitExceededError
from ..limits import Dimension, Limits
from .bucket import Level, Reservation, RollingWindow

__all__ = ["DEFAULT_WINDOW_MARGIN", "DimensionStats", "Governor", "GovernorStats", "Permit",
           "SharedStats", "TenantStats", "rate_windows"]

#: How much longer than the server's each rate window is kept, against network jitter (1.5%).
DEFAULT_WINDOW_MARGIN = 0.015

_RATE_DIMENSIONS: Final = (Dimension.RPM, Dimension.TPM, Dimension.TPD)
_TOKEN_DIMENSIONS: Final = (Dimension.TPM, Dimension.TPD)


@dataclass(frozen=True, slots=True, kw_only=True)
class DimensionStats:
    limit: int | None
    used: int
    paused_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStats:
    """A governor shared through a store (Redis): where it stands with it."""

    store: str
    #: The hash tag of the account's keys.
    account: str
    #: "connected"; "unreachable" (admissions wait); "fallback" (a local share admits).
    state: str
    round_trips: int
    errors: int
    #: Leases that lapsed before this process renewed them.
    leases_lost: int
    #: Admissions made by the local fallback while the store was away.
    fallback_admitted: int
    #: Seconds since the store last reported the account's use (``dimensions`` is that report).
    seen_ago: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantStats:
    """One tenant at the admission gate."""

    queued: int
    in_flight: int
    admitted: int
    #: Admission tokens (prompt estimate + max_tokens, settled) of its admitted attempts.
    tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernorStats:
    """One governor's view. With a shared governor, ``in_flight``, ``queued`` and the counts are
    this process's; ``dimensions`` is the whole account's, as of ``shared.seen_ago``."""

    in_flight: int
    queued: int
    admitted: int
    tokens_reserved: int
    tokens_settled: int
    limit_adjustments: int
    dimensions: dict[str, DimensionStats]
    shared: SharedStats | None = None
    #: The concurrency the runtime allows itself now (lowered by overload; ``None``: no bound).
    working_concurrency: int | None = None
    #: How often overload lowered it.
    concurrency_decreases: int = 0
    #: The RPM learned from 429s that named no limit (``None``: none learned).
    learned_rpm: int | None = None
    #: Per named tenant: queued, in flight, admitted and tokens admitted.
    tenants: Mapping[str, TenantStats] = field(default_factory=dict)


class Permit:
    """What one admission holds. Give the slot back with ``Governor.release``."""

    __slots__ = ("holds_slot", "reservations", "settled", "tokens")

    def __init__(self, tokens: int, reservations: dict[Dimension, Reservation]) -> None:
        self.tokens = tokens
        self.reservations = reservations
        self.holds_slot = True
        self.settled = False

    def __repr__(self) -> str:
        return f"Permit(tokens={self.tokens}, holds_slot={self.holds_slot})"


class _Waiter:
    __slots__ = ("future", "tokens")

    def __init__(self, tokens: int, future: asyncio.Future[Permit]) -> None:
        self.tokens = tokens
        self.future = future


def rate_windows(limits: Limits, margin: float) -> dict[Dimension, RollingWindow]:
    """One rolling window per rate dimension ``limits`` governs, ``margin`` longer than its
    limit's window."""
    return {dimension: RollingWindow(limit, limits.window(dimension) * (1 + margin))
            for dimension in _RATE_DIMENSIONS
            if (limit := limits.limit(dimension)) is not None}


class Governor:
    """Admission for one account's limits. ``window_margin`` stretches each rate window by that
    share, so that network jitter between our admission and the server's receipt can never put
    two requests in the same server window when they were a full window apart here."""

    def __init__(self, limits: Limits, *, clock: Clock,
                 window_margin: float = DEFAULT_WINDOW_MARGIN) -> None:
        if not 0 <= window_margin < 1:
            raise ValueError(f"window_margin must be in [0, 1), got {window_margin!r}")
        self._clock = clock
        self._limits = limits
        self._slots = Level(limits.concurrency)
        self._concurrency_paused_until = -math.inf
        self._windows = rate_windows(limits, window_margin)
        self._index_windows()
        self._queue: list[tuple[int, int, _Waiter]] = []
        self._seq = itertools.count()
        self._bell = Doorbell(clock)
        self._closed: KimiError | None = None
        self._admitted = 0
        self._tokens_reserved = 0
        self._tokens_settled = 0
        self._limit_adjustments = 0

    @property
    def limits(self) -> Limits:
        return self._limits

    # -- admission ---------------------------------------------------------------------------

    def _index_windows(self) -> None:
        """Tuples of the governed windows for the hot paths, which then hash no enum member
        per lookup: the token windows, and every rate window with the units one request
        takes in it (``None``: its tokens)."""
        windows = self._windows
        self._token_windows = tuple((dimension, windows[dimension])
                                    for dimension in _TOKEN_DIMENSIONS if dimension in windows)
        self._rate_windows = tuple((dimension, window, 1 if dimension is Dimension.RPM else None)
                                   for dimension, window in windows.items())

    def check(self, tokens: int) -> None:
        """Raise :class:`LimitExceededError` when ``tokens`` can never fit a window."""
        for dimension, window in self._token_windows:
            if tokens > window.limit:
                raise LimitExceededError(
                    f"the request needs {tokens} tokens at admission (prompt estimate + "
                    f"max_tokens) but the {dimension.value.upper()} limit is {window.limit}; "
                    f"lower max_tokens or the prompt",
                    dimension=dimension, amount=tokens, limit=window.limit)

    async def admit(self, tokens: int, *, priority: int = 0) -> Permit:
        """Wait until ``tokens`` (and one request, one slot) fit, then hold them."""
        if self._closed is not None:
            raise self._closed
        self.check(tokens)
        if not self._queue:
            permit = self._try_grant(tokens, self._clock.now())
            if permit is not None:
                return permit
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, next(self._seq), _Waiter(tokens, future)))
        self._bell.ring()
        try:
            return await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.cancel(future.result())
            else:
                future.cancel()
                self._bell.ring()
            raise

    def release(self, permit: Permit) -> None:
        """Give the concurrency slot back (the response or stream has ended). Idempotent."""
        if permit.holds_slot:
            permit.holds_slot = False
            self._slots.release()
            self._wake()

    def cancel(self, permit: Permit) -> None:
        """Undo an admission whose request was never sent: every unit goes back."""
        self.release(permit)
        for dimension, reservation in permit.reservations.items():
            self._windows[dimension].refund(reservation)
        self._tokens_reserved -= permit.tokens
        permit.reservations = {}
        self._wake()

    def restamp(self, permit: Permit) -> None:
        """The request has just been written to the connection: count its rate units from now.
        Admission may precede sending by a connection setup; the server counts arrival."""
        if permit.reservations:
            now = self._clock.now()
            for reservation in permit.reservations.values():
                reservation._owner.restamp(reservation, now)

    def wait_bound(self, requests: int, tokens: int) -> float:
        """Seconds before the rate windows (and pauses) could hold ``requests`` more requests
        and ``tokens`` more tokens: the least any admission of that much must wait."""
        now = self._clock.now()
        delay = max(0.0, self._concurrency_paused_until - now)
        for dimension, window in self._windows.items():
            amount = requests if dimension is Dimension.RPM else tokens
            delay = max(delay, window.delay(min(amount, window.limit), now))
        return delay

    @property
    def rate_limited(self) -> bool:
        """Whether any rate window (RPM, TPM, TPD) is governed."""
        return bool(self._windows)

    def settle(self, permit: Permit, actual_tokens: int | None) -> None:
        """Correct the token reservation with what the server counted (prompt + max_tokens).

        ``None`` keeps the estimate (a stream that broke before its usage arrived)."""
        if permit.settled or actual_tokens is None:
            return
        permit.settled = True
        difference = actual_tokens - permit.tokens
        self._tokens_settled += actual_tokens
        if difference == 0:
            return
        now = self._clock.now()
        reservations = permit.reservations
        for dimension, window in self._token_windows:
            reservation = reservations.get(dimension)
            if reservation is None:
                continue
            if difference < 0:
                window.refund(reservation, -difference)
            else:
                window.charge(reservation, difference, now)
        if difference < 0:
            self._wake()

    def on_rate_limited(self, dimension: Dimension | None, *, retry_after: float | None,
                        limit: int | None) -> int | None:
        """A 429 named ``dimension``: pause it for everyone for ``retry_after`` seconds, and
        adopt the server's ``limit`` when it is lower than ours. Returns the adopted limit."""
        if dimension is None:
            return None
        now = self._clock.now()
        adopted: int | None = None
        server_limit = limit
        if dimension is Dimension.CONCURRENCY:
            if retry_after:
                self._concurrency_paused_until = max(self._concurrency_paused_until,
                                                     now + retry_after)
            current = self._slots.limit
            if server_limit is not None and (current is None or server_limit < current):
                self._slots.set_limit(server_limit)
                adopted = server_limit
        else:
            window = self._windows.get(dimension)
            if window is None and server_limit is not None:
                span = self._limits.window(dimension)
                window = self._windows[dimension] = RollingWindow(server_limit, span)
                self._index_windows()
                adopted = server_limit
            if window is not None:
                if retry_after:
                    window.pause_until(now + retry_after)
                if server_limit is not None and server_limit < window.limit:
                    window.set_limit(server_limit)
                    adopted = server_limit
        if adopted is not None:
            self._limit_adjustments += 1
        self._bell.ring()  # the head's wait, or whether it can ever fit, has changed
        return adopted

    def close(self, error: KimiError) -> None:
        """Refuse every further admission and fail every queued waiter with ``error``."""
        if self._closed is None:
            self._closed = error
        self.fail_queued(self._closed)

    def fail_queued(self, error: KimiError) -> None:
        """Fail every waiter queued now with ``error``; later admissions are served as usual."""
        queue, self._queue = self._queue, []
        for _, _, waiter in queue:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._bell.ring()

    @property
    def closed(self) -> KimiError | None:
        return self._closed

    # -- the dispatcher ----------------------------------------------------------------------

    def _wake(self) -> None:
        """Ring the dispatcher when someone is queued: with nobody queued, what changed
        matters to the next arrival, which tries for itself (no task switch per release)."""
        if self._queue:
            self._bell.ring()

    async def run(self) -> None:
        """Serve queued waiters in order. Runs until cancelled (the supervisor owns it)."""
        while True:
            waiter = self._head()
            if waiter is None:
                await self._bell.wait(None)
                continue
            now = self._clock.now()
            try:
                self.check(waiter.tokens)  # a 429 may have lowered a limit below this request
                permit = self._try_grant(waiter.tokens, now)
                delay = None if permit is not None else self._delay(waiter.tokens, now)
            except Exception as exc:
                # Fail this waiter, never the dispatcher: every other actor depends on it.
                heapq.heappop(self._queue)
                waiter.future.set_exception(exc)
                continue
            if permit is not None:
                heapq.heappop(self._queue)
                waiter.future.set_result(permit)
                continue
            await self._bell.wait(delay)

    def _slot_free(self) -> bool:
        limit = self._slots.limit
        return limit is None or self._slots.held < limit

    def _head(self) -> _Waiter | None:
        while self._queue and self._queue[0][2].future.done():
            heapq.heappop(self._queue)
        return self._queue[0][2] if self._queue else None

    def _delay(self, tokens: int, now: float) -> float | None:
        """Seconds until ``tokens`` fit the rate windows; ``None`` when only a released slot
        (no clock) can unblock it."""
        delay = max(0.0, self._concurrency_paused_until - now)
        for dimension, window in self._windows.items():
            amount = 1 if dimension is Dimension.RPM else tokens
            delay = max(delay, window.delay(amount, now))
        if delay == 0 and not self._slot_free():
            return None
        return delay

    def _try_grant(self, tokens: int, now: float) -> Permit | None:
        if now < self._concurrency_paused_until or not self._slot_free():
            return None
        rate_windows = self._rate_windows
        for _, window, units in rate_windows:
            if not window.fits(units or tokens, now):
                return None
        reservations = {dimension: window._admit(units or tokens, now)
                        for dimension, window, units in rate_windows}
        acquired = self._slots.try_acquire()
        assert acquired
        self._admitted += 1
        self._tokens_reserved += tokens
        return Permit(tokens, reservations)

    # -- observation -------------------------------------------------------------------------

    def statistics(self) -> GovernorStats:
        now = self._clock.now()
        dimensions = {
            Dimension.CONCURRENCY.value: DimensionStats(
                limit=self._slots.limit, used=self._slots.held,
                paused_for=max(0.0, self._concurrency_paused_until - now)),
        }
        for dimension in _RATE_DIMENSIONS:
            window = self._windows.get(dimension)
            dimensions[dimension.value] = DimensionStats(
                limit=None if window is None else window.limit,
                used=0 if window is None else window.used(now),
                paused_for=0.0 if window is None else max(0.0, window.paused_until() - now))
        return GovernorStats(
            in_flight=self._slots.held,
            queued=sum(1 for _, _, waiter in self._queue if not waiter.future.done()),
            admitted=self._admitted,
            tokens_reserved=self._tokens_reserved,
            tokens_settled=self._tokens_settled,
            limit_adjustments=self._limit_adjustments,
            dimensions=dimensions,
        )
