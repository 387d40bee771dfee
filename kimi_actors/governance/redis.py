"""The governor kept in Redis: one account's limits shared by every process on every host.

Same promise as the in-memory :class:`~kimi_actors.governance.governor.Governor`: no rolling
window of a limit's length ever holds more than the limit, across all processes. The state is
a slotted rolling log per dimension and a sorted set of concurrency leases, changed only by two
Lua scripts (``lua/``) that read the Redis server's clock:

- ``admit`` checks every dimension and then commits all of them, for as many of this
  process's waiters as fit, in one round trip. A refusal returns the wait, and the process
  sleeps for it (or until the script that frees capacity publishes its name).
- ``ops`` applies everything else in one batched call per event-loop turn: releases,
  settlements, refunds and charges against the admission's own slot, restamps, the pauses and
  limits a 429 named, lease renewals.

Between processes, queued work is served in turns: each process with waiters holds one ticket
in a queue ordered by priority, then arrival; the head is served, and a served process goes
behind the others. A ticket lapses when its process does not come back within the wait it was
given plus ``grace``, and a lease when it is not renewed within ``lease`` seconds: a killed
process holds nothing for longer.

Redis unreachable: ``unreachable="wait"`` makes admissions wait (every call is bounded by
``timeout``, so nothing hangs); ``"fallback"`` admits through a local governor at
``fallback_share`` of the limits until Redis answers again. Either way it is logged as an error
and shown in ``statistics().governor.shared``.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import importlib.resources
import itertools
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..clock import Clock, Doorbell
from ..errors import KimiError, LimitExceededError, SharedGovernorError
from ..limits import Dimension, Limits
from ..observe import emit
from .governor import (
    DEFAULT_WINDOW_MARGIN,
    DimensionStats,
    Governor,
    GovernorStats,
    Permit,
    SharedStats,
)
from .shared import RedisConfig, Unreachable, account_tag

__all__ = ["RedisGovernor"]

_DIMENSIONS: Final = (Dimension.CONCURRENCY, Dimension.RPM, Dimension.TPM, Dimension.TPD)
_INDEX: Final = {dimension: index for index, dimension in enumerate(_DIMENSIONS)}
_KEY_NAMES: Final = ("queue", "tickets", "leases", "reactions", "rpm", "tpm", "tpd", "arrivals")
#: Waiters one admission call may serve at once (the script grants them in order).
_BATCH: Final = 32
#: The script orders tickets by priority in 20 bits.
_PRIORITY_RANGE: Final = 2 ** 19
#: Back-off between calls while Redis does not answer.
_RETRY_FIRST: Final = 0.05
_RETRY_MAX: Final = 1.0
_OUTAGE_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def _script(name: str) -> str:
    folder = importlib.resources.files("kimi_actors.governance") / "lua"
    common = (folder / "common.lua").read_text("utf-8")
    return common + "\n" + (folder / name).read_text("utf-8")


_ADMIT: Final = _script("admit.lua")
_OPS: Final = _script("ops.lua")


class _SharedPermit(Permit):
    """A permit from Redis (``lease`` and the slots of its units) or from the fallback."""

    __slots__ = ("admitted_at", "fallback", "lease", "moving", "parts", "pending")

    def __init__(self, tokens: int, *, lease: str | None, parts: dict[int, list[list[int]]],
                 admitted_at: float, fallback: Permit | None = None) -> None:
        super().__init__(tokens, {})
        self.lease = lease
        self.parts = parts  # dimension index -> [slot, units] pairs, oldest first
        self.admitted_at = admitted_at
        self.fallback = fallback
        self.moving = False  # a restamp is on its way: slot numbers are about to change
        self.pending: list[Callable[[], None]] = []


class _Waiter:
    __slots__ = ("future", "priority", "seq", "tokens")

    def __init__(self, tokens: int, priority: int, seq: int,
                 future: asyncio.Future[Permit | None]) -> None:
        self.tokens = tokens
        self.priority = priority
        self.seq = seq
        self.future = future

    def __lt__(self, other: _Waiter) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


class _Op:
    __slots__ = ("fields", "on_result")

    def __init__(self, fields: tuple[str, str, int, int],
                 on_result: Callable[[int], None] | None = None) -> None:
        self.fields = fields
        self.on_result = on_result


class RedisGovernor:
    """Admission for one account's limits, shared through Redis by every process that names
    the same account. Build it with :meth:`from_config` (``Supervisor(redis=...)`` does)."""

    def __init__(self, limits: Limits, *, client: aioredis.Redis, account: str, clock: Clock,
                 lease: float = 6.0, grace: float = 2.0, unreachable: Unreachable = "wait",
                 fallback_share: float = 0.25, timeout: float = 1.0, slots: int = 200,
                 window_margin: float = DEFAULT_WINDOW_MARGIN,
                 owns_client: bool = False) -> None:
        if not 0 <= window_margin < 1:
            raise ValueError(f"window_margin must be in [0, 1), got {window_margin!r}")
        self._limits = limits
        self._client = client
        self._owns_client = owns_client
        self._clock = clock
        self._tag = account_tag(account)
        prefix = f"kimi_actors:{{{self._tag}}}:"
        self._keys = [prefix + name for name in _KEY_NAMES]
        self._channel = prefix + "wake"
        self._ticket = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._lease_ms = math.ceil(lease * 1000)
        self._lease = lease
        self._grace_ms = math.ceil(grace * 1000)
        self._timeout = timeout
        self._unreachable: Unreachable = unreachable
        self._window_args: list[int | float] = []
        for dimension in _DIMENSIONS[1:]:
            span = limits.window(dimension) * (1 + window_margin) * 1000
            self._window_args += [limits.limit(dimension) or 0, span, slots]
        self._keep_ms = max(10 * self._lease_ms, 60_000)
        self._reactions_ms = math.ceil(limits.day * 1000)
        # A restamp is worth a round trip only when sending came late against the margin.
        self._restamp_after = 0.25 * window_margin * limits.minute
        self._fallback = (Governor(_share(limits, fallback_share), clock=clock,
                                   window_margin=window_margin)
                          if unreachable == "fallback" else None)
        self._admit_script = client.register_script(_ADMIT)
        self._ops_script = client.register_script(_OPS)
        self._queue: list[_Waiter] = []
        self._calling: list[_Waiter] = []
        self._seq = itertools.count()
        self._bell = Doorbell(clock, latch=True)
        self._ticketed = False
        self._closed: KimiError | None = None
        self._outbox: list[_Op] = []
        self._outbox_ready = asyncio.Event()
        self._ops_queued = 0
        self._ops_done = 0
        self._synced: list[tuple[int, asyncio.Future[None]]] = []
        self._leases: dict[str, _SharedPermit] = {}
        self._lease_ids = itertools.count()
        # What the last reply said of the account (every process's use, adopted limits).
        self._seen_limits: dict[Dimension, int | None] = {
            dimension: limits.limit(dimension) for dimension in _DIMENSIONS}
        self._seen_used = dict.fromkeys(_DIMENSIONS, 0)
        self._seen_pause = dict.fromkeys(_DIMENSIONS, 0.0)
        self._seen_at = clock.now()
        self._state: Literal["connected", "unreachable", "fallback"] = "connected"
        self._down_since: float | None = None
        self._fallback_active = False
        self._admitted = 0
        self._tokens_reserved = 0
        self._tokens_settled = 0
        self._limit_adjustments = 0
        self._round_trips = 0
        self._errors = 0
        self._leases_lost = 0
        self._held = 0  # permits granted through Redis and not yet released
        self._fallback_admitted = 0

    @classmethod
    def from_config(cls, config: RedisConfig, limits: Limits, *, account: str, clock: Clock,
                    window_margin: float = DEFAULT_WINDOW_MARGIN) -> RedisGovernor:
        return cls(limits, client=config.connect(), account=config.account or account,
                   clock=clock, lease=config.lease, grace=config.grace,
                   unreachable=config.unreachable, fallback_share=config.fallback_share,
                   timeout=config.timeout, slots=config.slots, window_margin=window_margin,
                   owns_client=config.client is None)

    def __repr__(self) -> str:
        return f"RedisGovernor(account={self._tag}, {self._state}, limits={self._limits!r})"

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def account(self) -> str:
        """The hash tag every key of the account carries."""
        return self._tag

    #: Waiters one admit script serves at once: the gate in front lets this many in.
    admit_batch: Final = _BATCH

    def wait_bound(self, requests: int, tokens: int) -> float:
        """None known: the account's windows are in Redis, and asking costs a round trip."""
        return 0.0

    @property
    def rate_limited(self) -> bool:
        return any(self._limits.limit(dimension) is not None for dimension in _DIMENSIONS[1:])

    # -- admission ---------------------------------------------------------------------------

    def check(self, tokens: int) -> None:
        for dimension in (Dimension.TPM, Dimension.TPD):
            limit = self._seen_limits[dimension]
            if limit is not None and tokens > limit:
                raise LimitExceededError(
                    f"the request needs {tokens} tokens at admission (prompt estimate + "
                    f"max_tokens) but the {dimension.value.upper()} limit is {limit}; "
                    f"lower max_tokens or the prompt",
                    dimension=dimension, amount=tokens, limit=limit)

    async def admit(self, tokens: int, *, priority: int = 0) -> Permit:
        if self._closed is not None:
            raise self._closed
        self.check(tokens)
        if self._fallback_active:
            return await self._admit_fallback(tokens, priority)
        priority = max(-_PRIORITY_RANGE, min(_PRIORITY_RANGE - 1, priority))
        future: asyncio.Future[Permit | None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(tokens, priority, next(self._seq), future)
        heapq.heappush(self._queue, waiter)
        if self._queue[0] is waiter:
            self._bell.ring()
        try:
            permit = await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                granted = future.result()
                if granted is not None:
                    self.cancel(granted)
            else:
                future.cancel()
                self._bell.ring()
            raise
        if permit is None:  # Redis went away while it waited: the fallback serves it
            return await self._admit_fallback(tokens, priority)
        return permit

    async def _admit_fallback(self, tokens: int, priority: int) -> Permit:
        assert self._fallback is not None
        local = await self._fallback.admit(tokens, priority=priority)
        self._fallback_admitted += 1
        self._admitted += 1
        self._tokens_reserved += tokens
        return _SharedPermit(tokens, lease=None, parts={}, admitted_at=self._clock.now(),
                             fallback=local)

    def release(self, permit: Permit) -> None:
        if not permit.holds_slot:
            return
        permit.holds_slot = False
        shared = _shared(permit)
        if shared.fallback is not None:
            self._fallback_call().release(shared.fallback)
            return
        self._held -= 1
        if shared.lease is not None:
            self._leases.pop(shared.lease, None)
            self._send(("R", shared.lease, 0, 0))

    def cancel(self, permit: Permit) -> None:
        self.release(permit)
        shared = _shared(permit)
        self._tokens_reserved -= permit.tokens
        if shared.fallback is not None:
            self._fallback_call().cancel(shared.fallback)
            return
        self._when_placed(shared, lambda: self._refund_all(shared))

    def restamp(self, permit: Permit) -> None:
        shared = _shared(permit)
        if shared.fallback is not None:
            self._fallback_call().restamp(shared.fallback)
            return
        if not shared.parts or shared.moving \
                or self._clock.now() - shared.admitted_at < self._restamp_after:
            return
        shared.moving = True
        moves = [(index, slot, units) for index, parts in shared.parts.items()
                 for slot, units in parts]
        for number, (index, slot, units) in enumerate(moves):
            last = number == len(moves) - 1

            def moved(new_slot: int, index: int = index, units: int = units,
                      last: bool = last) -> None:
                placed = shared.parts.setdefault(index, [])
                if placed and placed[0][0] != new_slot:
                    placed.clear()
                if placed:
                    placed[0][1] += units
                else:
                    placed.append([new_slot, units])
                if last:
                    self._placed(shared)

            shared.parts[index] = []
            self._send(("M", str(index), slot, units), moved)

    def settle(self, permit: Permit, actual_tokens: int | None) -> None:
        if permit.settled or actual_tokens is None:
            return
        permit.settled = True
        self._tokens_settled += actual_tokens
        shared = _shared(permit)
        if shared.fallback is not None:
            self._fallback_call().settle(shared.fallback, actual_tokens)
            return
        difference = actual_tokens - permit.tokens
        if difference:
            self._when_placed(shared, lambda: self._correct(shared, difference))

    def on_rate_limited(self, dimension: Dimension | None, *, retry_after: float | None,
                        limit: int | None) -> int | None:
        if dimension is None:
            return None
        index = str(_INDEX[dimension])
        if self._fallback is not None:
            self._fallback.on_rate_limited(dimension, retry_after=retry_after, limit=limit)
        if retry_after:
            self._send(("P", index, math.ceil(retry_after * 1000), 0))
            self._seen_pause[dimension] = max(self._seen_pause[dimension],
                                              self._clock.now() + retry_after)
        adopted: int | None = None
        current = self._seen_limits[dimension]
        if limit is not None and (current is None or limit < current):
            self._send(("L", index, limit, 0))
            self._seen_limits[dimension] = adopted = limit
            self._limit_adjustments += 1
        self._bell.ring()
        return adopted

    def close(self, error: KimiError) -> None:
        if self._closed is None:
            self._closed = error
        if self._fallback is not None:
            self._fallback.close(error)
        self.fail_queued(self._closed)

    def fail_queued(self, error: KimiError) -> None:
        queue, self._queue = self._queue, []
        for waiter in queue + self._calling:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        if self._fallback is not None:
            self._fallback.fail_queued(error)
        self._bell.ring()

    @property
    def closed(self) -> KimiError | None:
        return self._closed

    # -- bookkeeping sent in batches ---------------------------------------------------------

    def _send(self, fields: tuple[str, str, int, int],
              on_result: Callable[[int], None] | None = None) -> None:
        self._outbox.append(_Op(fields, on_result))
        self._ops_queued += 1
        self._outbox_ready.set()

    async def sync(self) -> None:
        """Wait until the bookkeeping queued so far (releases, settlements, a 429's pause or
        limit) has reached Redis: then every other process sees it."""
        # Bookkeeping a reply queued (a settlement held back by a restamp) counts too.
        while self._ops_done < self._ops_queued:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._synced.append((self._ops_queued, future))
            await future

    def _when_placed(self, permit: _SharedPermit, action: Callable[[], None]) -> None:
        """Run ``action`` once the permit's slot numbers are final (no restamp on its way)."""
        if permit.moving:
            permit.pending.append(action)
        else:
            action()

    def _placed(self, permit: _SharedPermit) -> None:
        permit.moving = False
        pending, permit.pending = permit.pending, []
        for action in pending:
            action()

    def _refund_all(self, permit: _SharedPermit) -> None:
        for index, parts in permit.parts.items():
            for slot, units in parts:
                if units:
                    self._send(("F", str(index), slot, units))
        permit.parts = {}

    def _correct(self, permit: _SharedPermit, difference: int) -> None:
        """Settle the token dimensions: refund from the newest slots, or charge now."""
        for index in (_INDEX[Dimension.TPM], _INDEX[Dimension.TPD]):
            parts = permit.parts.get(index)
            if parts is None:
                continue
            if difference < 0:
                remaining = -difference
                for part in reversed(parts):
                    taken = min(part[1], remaining)
                    if taken:
                        part[1] -= taken
                        remaining -= taken
                        self._send(("F", str(index), part[0], taken))
            else:
                def charged(slot: int, parts: list[list[int]] = parts) -> None:
                    parts.append([slot, difference])

                self._send(("C", str(index), difference, 0), charged)

    # -- the tasks (run() owns them) ---------------------------------------------------------

    async def run(self) -> None:
        """Serve this process's waiters, flush its bookkeeping, renew its leases and listen
        for wake-ups, until cancelled (the supervisor owns this task)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._listen(), name="kimi_actors.redis.listen")
                group.create_task(self._flush_loop(), name="kimi_actors.redis.flush")
                group.create_task(self._renew_loop(), name="kimi_actors.redis.renew")
                if self._fallback is not None:
                    group.create_task(self._fallback.run(), name="kimi_actors.redis.fallback")
                await self._dispatch_loop()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Give back what this process still holds, in one bounded call."""
        ops = self._outbox
        self._outbox = []
        if self._ticketed:
            ops.append(_Op(("W", self._ticket, 0, 0)))
        ops += [_Op(("R", lease, 0, 0)) for lease in self._leases]
        try:
            if ops:
                async with asyncio.timeout(self._timeout):
                    await self._call_ops(ops)
        except (RedisError, *_OUTAGE_ERRORS):
            pass  # leases lapse by themselves within the lease time
        finally:
            if self._owns_client:
                await self._client.aclose()

    async def _dispatch_loop(self) -> None:
        failures = 0
        while True:
            batch = self._take_batch()
            if not batch:
                if self._ticketed:
                    self._ticketed = False
                    self._send(("W", self._ticket, 0, 0))
                await self._bell.wait(None)
                continue
            self._bell.clear()  # a wake-up from now on ends the sleep after this call
            args, leases = self._admit_args(batch)
            try:
                reply = await self._call(self._admit_script, args)
            except _OUTAGE_ERRORS as exc:
                self._put_back(batch)
                failures += 1
                self._outage(exc)
                if self._fallback is not None:
                    self._hand_to_fallback()
                    await self._probe_until_back()
                else:
                    await self._clock.sleep(_retry_delay(failures))
                continue
            except RedisError as exc:
                self._put_back(batch)
                self._script_failed(exc, batch[0])
                continue
            failures = 0
            self._back()
            wait = self._apply(batch, leases, reply)
            if wait is not None:
                await self._bell.wait(wait)

    def _take_batch(self) -> list[_Waiter]:
        batch: list[_Waiter] = []
        while self._queue and len(batch) < _BATCH:
            waiter = heapq.heappop(self._queue)
            if not waiter.future.done():
                batch.append(waiter)
        self._calling = batch
        return batch

    def _put_back(self, batch: list[_Waiter]) -> None:
        self._calling = []
        for waiter in batch:
            if not waiter.future.done():
                heapq.heappush(self._queue, waiter)

    def _admit_args(self, batch: list[_Waiter]) -> tuple[list[Any], list[str]]:
        """The script's arguments, and the lease id each waiter gets if granted."""
        climit = self._limits.concurrency or 0
        args: list[Any] = [self._ticket, self._channel, self._lease_ms, self._grace_ms,
                           self._keep_ms, climit, *self._window_args, len(batch)]
        leases = [f"{self._ticket}:{next(self._lease_ids)}" for _ in batch]
        for lease, waiter in zip(leases, batch, strict=True):
            args += [lease, waiter.tokens, waiter.priority]
        return args, leases

    def _apply(self, batch: list[_Waiter], leases: list[str],
               reply: list[int]) -> float | None:
        """Hand out what the script granted; returns how long to sleep (None: go on)."""
        code, value, granted = int(reply[0]), int(reply[1]), int(reply[2])
        slots = reply[3:3 + 3 * granted]
        self._see(reply[3 + 3 * granted:])
        now = self._clock.now()
        for number in range(granted):
            waiter = batch[number]
            parts = {index + 1: [[int(slot), 1 if index == 0 else waiter.tokens]]
                     for index, slot in enumerate(slots[3 * number:3 * number + 3])
                     if int(slot) >= 0}
            leased = self._seen_limits[Dimension.CONCURRENCY] is not None
            lease = leases[number] if leased else None
            permit = _SharedPermit(waiter.tokens, lease=lease, parts=parts, admitted_at=now)
            self._admitted += 1
            self._held += 1
            self._tokens_reserved += waiter.tokens
            if lease is not None:
                self._leases[lease] = permit
            if waiter.future.done():  # cancelled while the call was on its way
                self.cancel(permit)
            else:
                waiter.future.set_result(permit)
        rest = batch[granted:]
        if code == 2 and rest:
            dimension = _DIMENSIONS[value]
            limit = self._seen_limits[dimension] or 0
            if not rest[0].future.done():
                rest[0].future.set_exception(LimitExceededError(
                    f"the request needs {rest[0].tokens} tokens at admission but the "
                    f"account's {dimension.value.upper()} limit is now {limit}",
                    dimension=dimension, amount=rest[0].tokens, limit=limit))
            rest = rest[1:]
        self._put_back(rest)
        self._ticketed = code == 1
        if code == 1:
            return value / 1000
        return None

    def _hand_to_fallback(self) -> None:
        """Redis is away: every waiter queued now goes to the local fallback governor."""
        self._fallback_active = True
        self._state = "fallback"
        queue, self._queue = self._queue, []
        for waiter in queue:
            if not waiter.future.done():
                waiter.future.set_result(None)

    async def _probe_until_back(self) -> None:
        failures = 0
        while True:
            failures += 1
            await self._clock.sleep(_retry_delay(failures))
            try:
                await self._call_ops([])
            except _OUTAGE_ERRORS:
                continue
            except RedisError:
                continue
            self._fallback_active = False
            self._back()
            return

    async def _flush_loop(self) -> None:
        failures = 0
        while True:
            await self._outbox_ready.wait()
            await asyncio.sleep(0)  # let the ops of this loop turn join the batch
            self._outbox_ready.clear()
            ops, self._outbox = self._outbox, []
            if not ops:
                continue
            try:
                results = await self._call_ops(ops)
            except (RedisError, *_OUTAGE_ERRORS) as exc:
                failures += 1
                if isinstance(exc, _OUTAGE_ERRORS):
                    self._outage(exc)
                else:
                    self._errors += 1
                    emit("error", "redis_ops_failed", error=type(exc).__name__,
                         message=str(exc))
                self._outbox[:0] = ops
                self._outbox_ready.set()
                await self._clock.sleep(_retry_delay(failures))
                continue
            failures = 0
            for op, result in zip(ops, results, strict=True):
                if op.on_result is not None:
                    op.on_result(int(result))
            self._ops_done += len(ops)
            waiting, self._synced = self._synced, []
            for target, future in waiting:
                if self._ops_done < target:
                    self._synced.append((target, future))
                elif not future.done():
                    future.set_result(None)

    async def _renew_loop(self) -> None:
        while True:
            await self._clock.sleep(self._lease / 3)
            for lease in list(self._leases):
                self._send(("N", lease, 0, 0), functools.partial(self._renewed, lease))

    def _renewed(self, lease: str, lapsed: int) -> None:
        permit = self._leases.get(lease)
        if lapsed and permit is not None:
            # Counted once: the slot is no longer this process's to renew or release.
            del self._leases[lease]
            permit.lease = None
            self._leases_lost += 1
            emit("warning", "redis_lease_lapsed", account=self._tag,
                 hint="a concurrency lease was not renewed in time (a stalled event loop, or "
                      "Redis lost it); another process may have taken the slot")

    async def _listen(self) -> None:
        failures = 0
        ticket = self._ticket.encode()
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=None)
                    _cancel_swallowed()
                    if message is None or message.get("type") != "message":
                        continue
                    data = message.get("data")
                    if data == ticket or data == self._ticket:
                        self._bell.ring()
            except (RedisError, *_OUTAGE_ERRORS):
                failures += 1
            finally:
                try:
                    # Untyped before redis-py 8.2, typed since: either passes.
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                except (RedisError, *_OUTAGE_ERRORS):
                    pass
            await self._clock.sleep(_retry_delay(failures))

    # -- Redis calls -------------------------------------------------------------------------

    async def _call(self, script: Any, args: list[Any]) -> list[int]:
        self._round_trips += 1
        async with asyncio.timeout(self._timeout):
            reply = await script(keys=self._keys, args=args, client=self._client)
        _cancel_swallowed()
        return list(reply)

    async def _call_ops(self, ops: list[_Op]) -> list[int]:
        args: list[Any] = [self._channel, self._lease_ms, self._reactions_ms, self._keep_ms,
                           *self._window_args]
        for op in ops:
            args += op.fields
        return await self._call(self._ops_script, args)

    def _see(self, stats: list[int]) -> None:
        now = self._clock.now()
        self._seen_at = now
        for index, dimension in enumerate(_DIMENSIONS):
            limit, used, pause_ms = (int(value) for value in stats[3 * index:3 * index + 3])
            self._seen_limits[dimension] = limit or None
            self._seen_used[dimension] = used
            self._seen_pause[dimension] = now + pause_ms / 1000 if pause_ms else 0.0

    def _outage(self, error: BaseException) -> None:
        self._errors += 1
        if self._down_since is not None:
            return
        self._down_since = self._clock.now()
        self._state = "fallback" if self._fallback is not None else "unreachable"
        what = (f"admitting through a local governor with {self._fallback.limits!r}"
                if self._fallback is not None
                else "admissions wait until it answers")
        emit("error", "redis_unreachable", account=self._tag, policy=self._unreachable,
             error=type(error).__name__, message=str(error), consequence=what)

    def _back(self) -> None:
        if self._down_since is None:
            return
        emit("warning", "redis_reachable_again", account=self._tag,
             after=round(self._clock.now() - self._down_since, 3))
        self._down_since = None
        self._state = "connected"

    def _script_failed(self, error: RedisError, waiter: _Waiter) -> None:
        """A script error is a bug or a misconfigured server, not an outage: the waiter fails
        with it instead of being admitted under limits nobody shares."""
        self._errors += 1
        emit("error", "redis_script_failed", account=self._tag, error=type(error).__name__,
             message=str(error))
        if not waiter.future.done():
            waiter.future.set_exception(SharedGovernorError(
                f"the shared governor's Redis script failed ({type(error).__name__}: {error}); "
                f"the request was not admitted"))

    def _fallback_call(self) -> Governor:
        assert self._fallback is not None
        return self._fallback

    # -- waiting -----------------------------------------------------------------------------

    # -- observation -------------------------------------------------------------------------

    def statistics(self) -> GovernorStats:
        now = self._clock.now()
        local = self._fallback.statistics() if self._fallback is not None else None
        dimensions = {
            dimension.value: DimensionStats(
                limit=self._seen_limits[dimension], used=self._seen_used[dimension],
                paused_for=max(0.0, self._seen_pause[dimension] - now))
            for dimension in _DIMENSIONS}
        queued = sum(1 for waiter in self._queue + self._calling if not waiter.future.done())
        return GovernorStats(
            in_flight=self._held + (local.in_flight if local else 0),
            queued=queued + (local.queued if local else 0),
            admitted=self._admitted,
            tokens_reserved=self._tokens_reserved,
            tokens_settled=self._tokens_settled,
            limit_adjustments=self._limit_adjustments,
            dimensions=dimensions,
            shared=SharedStats(
                store="redis", account=self._tag, state=self._state,
                round_trips=self._round_trips, errors=self._errors,
                leases_lost=self._leases_lost, fallback_admitted=self._fallback_admitted,
                seen_ago=max(0.0, now - self._seen_at)),
        )


def _shared(permit: Permit) -> _SharedPermit:
    if not isinstance(permit, _SharedPermit):
        raise TypeError("this permit was not made by a RedisGovernor")
    return permit


def _share(limits: Limits, share: float) -> Limits:
    def part(value: int | None) -> int | None:
        return None if value is None else max(1, math.floor(value * share))

    return replace(limits, concurrency=part(limits.concurrency), rpm=part(limits.rpm),
                   tpm=part(limits.tpm), tpd=part(limits.tpd))


def _cancel_swallowed() -> None:
    """Raise the cancellation redis-py returned from instead (measured with redis-py 8.1: a
    cancel that arrives mid-command is swallowed nine times in ten, and the command returns)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _retry_delay(failures: int) -> float:
    return min(_RETRY_MAX, _RETRY_FIRST * 2.0 ** min(failures - 1, 10))
