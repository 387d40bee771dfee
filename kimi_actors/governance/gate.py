"""The admission gate: who goes next, and how many may be out at once, before the governor.

Every attempt passes the gate, then the account's governor (in memory or in Redis). The gate
owns what is local to this process:

- **Order.** Lower ``priority`` first; each ``SchedulePolicy.aging`` seconds of waiting is
  worth one level, up to the best level waiting, so batch work is never starved by
  interactive work. Within one level, tenants share by tokens: start-time fair queuing, each
  tenant's tag advancing by its requests' admission tokens divided by its weight. A tenant
  with a thousand requests queued therefore cannot hold back another tenant's one. Within a
  tenant, first come first served; a retry keeps the place its request first arrived at.
- **Tenant sub-limits** (``TenantPolicy.limits``): a tenant at its own limit waits without
  blocking the others.
- **Push-back** (governance/adapt.py): the working concurrency after overload and the
  working RPM after 429s that name nothing.
- **Deadlines.** A call whose admission alone must outlast its deadline (the rate windows
  cannot free enough for it and everything queued before it in time) fails at once.

The gate lets at most ``pass_ahead`` chosen attempts wait inside the governor at once (8, or
the governor's ``admit_batch``: 32 for Redis, whose script serves that many per round trip), so
the governor's own queue stays short and the order above holds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from dataclasses import replace
from typing import Final

from ..clock import Clock, Doorbell
from ..errors import DeadlineExceededError, KimiError, LimitExceededError
from ..limits import Dimension, Limits
from ..policy import AdaptPolicy, SchedulePolicy, TenantPolicy
from .adapt import ConcurrencyAdapter, RateLearner
from .bucket import Level, Reservation, RollingWindow
from .governor import DEFAULT_WINDOW_MARGIN, GovernorStats, Permit, TenantStats, rate_windows
from .interface import GovernorProtocol

__all__ = ["Gate", "Ticket"]

#: Chosen waiters let into the governor's own queue at once, unless it batches more.
_PASS_AHEAD: Final = 8
#: Idle tenants are forgotten once this many are known (then at twice the live ones).
_PRUNE_AT: Final = 1024


class Ticket:
    """One admission through the gate: the governor's permit and the gate's own units."""

    __slots__ = ("holds", "learned", "permit", "reservations", "sent", "seq", "tenant",
                 "tenant_slot", "tokens")

    def __init__(self, tenant: _Tenant, tokens: int,
                 reservations: list[tuple[RollingWindow, Reservation]]) -> None:
        self.tenant = tenant
        self.tokens = tokens
        self.reservations = reservations
        self.permit: Permit | None = None
        self.seq = 0
        #: It holds one of the governor's slots (admitted, not released).
        self.holds = False
        #: It holds one of its tenant's slots (from being let through until released).
        self.tenant_slot = True
        #: It was let through while a learned RPM was in force (counted in its window).
        self.learned = False
        self.sent: float | None = None

    def __repr__(self) -> str:
        return f"Ticket(tenant={self.tenant.name!r}, tokens={self.tokens}, holds={self.holds})"


class _Entry:
    __slots__ = ("counted", "future", "key", "priority", "seq", "since", "tokens")

    def __init__(self, tokens: int, priority: int, since: float, seq: int, aging: float,
                 future: asyncio.Future[Ticket]) -> None:
        self.tokens = tokens
        self.priority = priority
        self.since = since
        self.seq = seq
        self.key = since + priority * aging
        self.future = future
        #: Still in its tenant's queued counts (the deadline's bound reads them).
        self.counted = True


class _Tenant:
    """One tenant's queue, its place in the fair queue and its sub-limits."""

    __slots__ = ("admitted", "finish", "heap", "level", "name", "queued_at", "token_windows",
                 "tokens", "unlimited", "weight", "windows")

    def __init__(self, name: str | None, policy: TenantPolicy, margin: float) -> None:
        self.name = name
        self.weight = policy.weight
        #: ``(key, seq, entry)``: ordered by tuples, compared in C.
        self.heap: list[tuple[float, int, _Entry]] = []
        self.finish = 0.0
        self.admitted = 0
        self.tokens = 0
        limits = policy.limits or Limits.unlimited()
        self.level = Level(limits.concurrency)
        self.windows = rate_windows(limits, margin)
        self.token_windows = tuple((dimension, self.windows[dimension])
                                   for dimension in (Dimension.TPM, Dimension.TPD)
                                   if dimension in self.windows)
        #: No sub-limit of its own (every tenant of a policy without ``limits``).
        self.unlimited = not self.windows and limits.concurrency is None
        #: Queued requests and tokens by priority, for the deadline's lower bound.
        self.queued_at: dict[int, list[int]] = {}

    def head(self) -> _Entry | None:
        heap = self.heap
        while heap and heap[0][2].future.done():
            self.forget(heapq.heappop(heap)[2])
        return heap[0][2] if heap else None

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self.heap, (entry.key, entry.seq, entry))
        counts = self.queued_at.setdefault(entry.priority, [0, 0])
        counts[0] += 1
        counts[1] += entry.tokens

    def pop(self) -> _Entry:
        entry = heapq.heappop(self.heap)[2]
        self.forget(entry)
        return entry

    def forget(self, entry: _Entry) -> None:
        """Take ``entry`` out of the queued counts (once; it may stay in the heap until it
        reaches the head)."""
        if not entry.counted:
            return
        entry.counted = False
        counts = self.queued_at[entry.priority]
        counts[0] -= 1
        counts[1] -= entry.tokens
        if counts[0] == 0:
            del self.queued_at[entry.priority]

    def ahead(self, priority: float) -> tuple[int, int]:
        """Requests and tokens queued at ``priority`` or better: sure to go first."""
        requests = tokens = 0
        for level, (count, amount) in self.queued_at.items():
            if level <= priority:
                requests += count
                tokens += amount
        return requests, tokens

    def check(self, tokens: int) -> None:
        for dimension, window in self.token_windows:
            if tokens > window.limit:
                raise LimitExceededError(
                    f"the request needs {tokens} tokens at admission but tenant "
                    f"{self.name!r} has a {dimension.value.upper()} limit of {window.limit}",
                    dimension=dimension, amount=tokens, limit=window.limit)

    def delay(self, tokens: int, now: float) -> float | None:
        """Seconds until the tenant's own limits let ``tokens`` through; ``None`` while only
        a release (no clock) can."""
        delay = 0.0
        for dimension, window in self.windows.items():
            amount = 1 if dimension is Dimension.RPM else tokens
            delay = max(delay, window.delay(amount, now))
        limit = self.level.limit
        if delay == 0 and limit is not None and self.level.held >= limit:
            return None
        return delay

    def reserve(self, tokens: int, now: float,
                into: list[tuple[RollingWindow, Reservation]]) -> None:
        for dimension, window in self.windows.items():
            reservation = window.reserve(1 if dimension is Dimension.RPM else tokens, now)
            assert reservation is not None, "delay() said it fits"
            into.append((window, reservation))


class Gate:
    """In front of ``governor``: see the module docstring. ``run()`` serves the queue (and
    runs the governor's own dispatcher); the supervisor owns it."""

    def __init__(self, governor: GovernorProtocol, *, clock: Clock,
                 adapt: AdaptPolicy | None = None, schedule: SchedulePolicy | None = None,
                 window_margin: float = DEFAULT_WINDOW_MARGIN,
                 pass_ahead: int | None = None) -> None:
        self.governor = governor
        self._clock = clock
        self._adapt = adapt or AdaptPolicy()
        self._schedule = schedule or SchedulePolicy()
        self._margin = window_margin
        # A governor that serves waiters in batches (Redis) says how many: a smaller number
        # would cost it round trips.
        batch = getattr(governor, "admit_batch", _PASS_AHEAD)
        self._pass_ahead: int = pass_ahead or (batch if isinstance(batch, int) else _PASS_AHEAD)
        limits = governor.limits
        self.adapter = ConcurrencyAdapter(self._adapt, limits.concurrency)
        self.learner = RateLearner(limits.minute, limits.rpm)
        #: The learned RPM's window, while a vague 429 has set one (``None`` otherwise).
        self._rpm: RollingWindow | None = None
        self._tenants: dict[str | None, _Tenant] = {}
        self._prune_at = _PRUNE_AT
        self._waiting: dict[str | None, _Tenant] = {}
        self._seq = itertools.count()
        self._virtual = 0.0
        self._queued = 0
        self._passing = 0
        self._out = 0
        self._bell = Doorbell(clock)

    @property
    def limits(self) -> Limits:
        return self.governor.limits

    @property
    def out(self) -> int:
        """Attempts admitted and not yet released."""
        return self._out

    # -- admission ---------------------------------------------------------------------------

    def check(self, tokens: int, tenant: str | None = None) -> None:
        """Raise :class:`LimitExceededError` when ``tokens`` can never be admitted."""
        self.governor.check(tokens)
        self._tenant(tenant).check(tokens)

    async def admit(self, tokens: int, *, priority: int = 0, tenant: str | None = None,
                    since: float | None = None, deadline: float | None = None) -> Ticket:
        """Wait for this attempt's turn and room, then for the governor; hold them.
        ``since`` is when the request first arrived (a retry keeps its place)."""
        closed = self.governor.closed
        if closed is not None:
            raise closed
        owner = self._tenant(tenant)
        owner.check(tokens)
        self.governor.check(tokens)
        now = self._clock.now()
        if deadline is not None:
            self._check_deadline(owner, tokens, priority, now, deadline)
        ticket: Ticket | None = None
        if not self._waiting and self._room():
            ticket = self._let_through(owner, tokens, now)
        if ticket is None:
            ticket = await self._queue(owner, tokens, priority, now if since is None else since)
        try:
            permit = await self.governor.admit(tokens, priority=priority)
        except BaseException:
            self._passing -= 1
            self._drop(ticket)
            raise
        self._passing -= 1
        self._out += 1
        self._wake()  # a place to pass ahead is free again; the ramp may start counting
        ticket.permit = permit
        ticket.holds = True
        ticket.seq = self.adapter.admitted()
        owner.admitted += 1
        owner.tokens += tokens
        return ticket

    async def _queue(self, owner: _Tenant, tokens: int, priority: int,
                     since: float) -> Ticket:
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        entry = _Entry(tokens, priority, since, next(self._seq), self._schedule.aging, future)
        owner.push(entry)
        self._waiting[owner.name] = owner
        self._queued += 1
        self._bell.ring()
        try:
            return await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._passing -= 1
                self._drop(future.result())
            else:
                future.cancel()
                owner.forget(entry)
                self._wake()
            raise
        finally:
            self._queued -= 1

    def _wake(self) -> None:
        """Ring the dispatcher when someone waits here: with nobody queued, what changed
        matters to the next arrival, which rings itself (no task switch per request)."""
        if self._waiting:
            self._bell.ring()

    def _room(self) -> bool:
        if self._passing >= self._pass_ahead:
            return False
        limit = self.adapter.limit
        return limit is None or self._out + self._passing < limit

    def _let_through(self, owner: _Tenant, tokens: int, now: float) -> Ticket | None:
        """Reserve the gate's units for one attempt of ``owner`` if they fit now."""
        rpm = self._rpm
        held: list[tuple[RollingWindow, Reservation]] = []
        if not owner.unlimited or rpm is not None:  # else nothing of the gate's own can wait
            if owner.delay(tokens, now) != 0 or (rpm is not None and rpm.delay(1, now) > 0):
                return None
            owner.reserve(tokens, now, held)
            if rpm is not None:
                reservation = rpm.reserve(1, now)
                assert reservation is not None
                held.append((rpm, reservation))
        taken = owner.level.try_acquire()
        assert taken, "delay() said its tenant has a slot"
        self._passing += 1
        start = max(self._virtual, owner.finish)
        self._virtual = start
        owner.finish = start + tokens / owner.weight
        ticket = Ticket(owner, tokens, held)
        ticket.learned = rpm is not None
        return ticket

    def _check_deadline(self, owner: _Tenant, tokens: int, priority: int, now: float,
                        deadline: float) -> None:
        requests, queued_tokens = owner.ahead(priority)
        bound = self.governor.wait_bound(requests + 1, queued_tokens + tokens)
        for dimension, window in owner.windows.items():
            amount = requests + 1 if dimension is Dimension.RPM else queued_tokens + tokens
            bound = max(bound, window.delay(min(amount, window.limit), now))
        if self._rpm is not None:
            bound = max(bound, self._rpm.delay(min(requests + 1, self._rpm.limit), now))
        if now + bound > deadline:
            raise DeadlineExceededError(
                f"not sent: admission alone needs at least {bound:.1f} s (the rate windows "
                f"and {requests} requests queued before this one), more than the "
                f"{max(0.0, deadline - now):.1f} s left before this request's deadline",
                phase="deadline", timeout=deadline - now)

    # -- after admission ---------------------------------------------------------------------

    def release(self, ticket: Ticket) -> None:
        """The response or stream ended: its slots go back (idempotent)."""
        if ticket.holds:
            ticket.holds = False
            assert ticket.permit is not None
            self.governor.release(ticket.permit)
            self._out -= 1
        if ticket.tenant_slot:
            ticket.tenant_slot = False
            ticket.tenant.level.release()
            self._wake()

    def cancel(self, ticket: Ticket) -> None:
        """The request was never sent: every unit goes back."""
        self.release(ticket)
        if ticket.permit is not None:
            self.governor.cancel(ticket.permit)
        self._refund(ticket)
        self._wake()

    def restamp(self, ticket: Ticket) -> None:
        """The request reached the wire: its rate units count from now."""
        now = self._clock.now()
        ticket.sent = now
        self.learner.sent(now)
        if ticket.permit is not None:
            self.governor.restamp(ticket.permit)
        for window, reservation in ticket.reservations:
            window.restamp(reservation, now)
        if self._rpm is not None and not ticket.learned:
            self._rpm.count(1, now)  # let through before a limit was learned: count it now

    def settle(self, ticket: Ticket, actual_tokens: int | None) -> None:
        """Correct the token reservations with what the server counted."""
        if ticket.permit is not None:
            self.governor.settle(ticket.permit, actual_tokens)
        windows = ticket.tenant.windows
        if actual_tokens is None or actual_tokens == ticket.tokens or not windows:
            return  # the tenant counts no tokens of its own: the governor has settled
        difference = actual_tokens - ticket.tokens
        now = self._clock.now()
        token_windows = ticket.tenant.token_windows
        for window, reservation in ticket.reservations:
            if any(window is counted for _, counted in token_windows):
                if difference < 0:
                    window.refund(reservation, -difference)
                else:
                    window.charge(reservation, difference, now)
        ticket.tokens = actual_tokens
        self._wake()

    def _refund(self, ticket: Ticket) -> None:
        for window, reservation in ticket.reservations:
            window.refund(reservation)
        ticket.reservations = []

    def _drop(self, ticket: Ticket) -> None:
        """A ticket let through but never admitted: everything back."""
        self._refund(ticket)
        self.release(ticket)
        self._wake()

    # -- what the server said ----------------------------------------------------------------

    def overloaded(self, ticket: Ticket) -> bool:
        """The attempt was answered overloaded: lower the working concurrency. True when it
        is at its floor already (the breaker's turn)."""
        out = self._out - (1 if ticket.holds else 0)
        at_floor = self.adapter.overloaded(ticket.seq, out)
        self._wake()
        return at_floor

    def succeeded(self) -> None:
        self.adapter.succeeded()
        self._wake()

    def refused_vaguely(self, ticket: Ticket) -> int:
        """A rate-limit 429 named nothing: what the server accepted over the trailing window
        becomes the working RPM. Returns it."""
        now = self._clock.now()
        learned = self.learner.refused(now if ticket.sent is None else ticket.sent, now)
        if self._rpm is None:
            # The window starts with the trailing minute's sends: admission waits until
            # enough of them expire.
            self._rpm = RollingWindow(learned, self.limits.minute * (1 + self._margin))
            for sent in self.learner.sends(now):
                self._rpm.count(1, sent)
        else:
            self._rpm.set_limit(learned)
        self._wake()
        return learned

    def on_rate_limited(self, dimension: Dimension | None, *, retry_after: float | None,
                        limit: int | None) -> int | None:
        return self.governor.on_rate_limited(dimension, retry_after=retry_after, limit=limit)

    def fail_queued(self, error: KimiError) -> None:
        """Fail every waiter queued now, here and in the governor."""
        for owner in list(self._waiting.values()):
            while owner.heap:
                entry = owner.pop()
                if not entry.future.done():
                    entry.future.set_exception(error)
        self._waiting.clear()
        self.governor.fail_queued(error)
        self._wake()

    def close(self, error: KimiError) -> None:
        self.governor.close(error)
        self.fail_queued(error)

    # -- the dispatcher ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the queue, and the governor's own dispatcher, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.governor.run(), name="kimi_actors.governor")
            group.create_task(self._dispatch(), name="kimi_actors.gate")

    async def _dispatch(self) -> None:
        while True:
            now = self._clock.now()
            wake = self._serve(now)
            await self._bell.wait(None if wake is None else max(0.0, wake - now))

    def _serve(self, now: float) -> float | None:
        """Let through every waiter there is room for; returns when to look again (``None``:
        when the bell rings)."""
        wake = self._tick(now)
        while self._waiting and self._room():
            owner, delay = self._choose(now)
            if owner is None:
                if delay is not None:
                    wake = now + delay if wake is None else min(wake, now + delay)
                break
            entry = owner.pop()
            if not owner.heap:
                del self._waiting[owner.name]
            ticket = self._let_through(owner, entry.tokens, now)
            assert ticket is not None, "_choose() said it fits"
            entry.future.set_result(ticket)
        return wake

    def _tick(self, now: float) -> float | None:
        """The adapter's ramp and the learner's probe: when either is next due."""
        wake = self.adapter.ramp(self._out + self._passing, now)
        probe = self.learner.probe(now)
        learned = self.learner.limit
        if learned is None:
            self._rpm = None  # back at the configured RPM: the governor's own
        elif self._rpm is not None and self._rpm.limit != learned:
            self._rpm.set_limit(learned)
        if probe is not None:
            wake = probe if wake is None else min(wake, probe)
        return wake

    def _choose(self, now: float) -> tuple[_Tenant | None, float | None]:
        """The tenant whose head goes next, or the delay until one could."""
        if self._rpm is not None:
            rpm_delay = self._rpm.delay(1, now)
            if rpm_delay > 0:
                return None, rpm_delay
        candidates: list[tuple[_Tenant, _Entry]] = []
        soonest: float | None = None
        for owner in list(self._waiting.values()):
            head = owner.head()
            if head is None:
                del self._waiting[owner.name]
                continue
            delay = owner.delay(head.tokens, now)
            if delay == 0:
                candidates.append((owner, head))
            elif delay is not None:
                soonest = delay if soonest is None else min(soonest, delay)
        if not candidates:
            return None, soonest
        if len(candidates) == 1:
            return candidates[0][0], None
        best_own = min(head.priority for _, head in candidates)
        aging = self._schedule.aging

        def rank(candidate: tuple[_Tenant, _Entry]) -> tuple[int, float, float, int]:
            owner, head = candidate
            level = max(best_own, head.priority - math.floor((now - head.since) / aging))
            return level, max(self._virtual, owner.finish), head.key, head.seq

        return min(candidates, key=rank)[0], None

    def _tenant(self, name: str | None) -> _Tenant:
        owner = self._tenants.get(name)
        if owner is None:
            if len(self._tenants) >= self._prune_at:
                self._prune(self._clock.now())
            owner = self._tenants[name] = _Tenant(name, self._schedule.tenant(name),
                                                  self._margin)
        return owner

    def _prune(self, now: float) -> None:
        """Forget tenants with nothing queued, held or counted (one per web user adds up), so
        memory follows the active tenants, not all ever seen. A forgotten tenant's fair-queue
        tag goes with it: at most its last request's worth of head start when it returns."""
        for name, owner in list(self._tenants.items()):
            if (not owner.heap and owner.level.held == 0
                    and all(window.used(now) == 0 for window in owner.windows.values())):
                del self._tenants[name]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._tenants))

    # -- observation -------------------------------------------------------------------------

    def statistics(self) -> GovernorStats:
        inner = self.governor.statistics()
        tenants = {name: TenantStats(queued=owner.ahead(math.inf)[0], in_flight=owner.level.held,
                                     admitted=owner.admitted, tokens=owner.tokens)
                   for name, owner in self._tenants.items() if name is not None}
        return replace(inner, queued=inner.queued + self._queued,
                       working_concurrency=self.adapter.limit,
                       concurrency_decreases=self.adapter.decreases,
                       learned_rpm=self.learner.limit, tenants=tenants)

