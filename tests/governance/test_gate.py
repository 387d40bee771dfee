"""The admission gate on a FakeClock: tenants, priorities with aging, sub-limits, deadlines and
the working concurrency, in front of a real in-memory governor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from kimi_actors import (
    AdaptPolicy,
    DeadlineExceededError,
    FakeClock,
    LimitExceededError,
    Limits,
    SchedulePolicy,
    SupervisorClosedError,
    TenantPolicy,
)
from kimi_actors.governance.gate import Gate, Ticket
from kimi_actors.governance.governor import Governor

NO_RAMP = AdaptPolicy(start=None)


async def run_ready() -> None:
    """Let every ready task run up to its next await (no wall time involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


@asynccontextmanager
async def gate_on(limits: Limits, clock: FakeClock, *, adapt: AdaptPolicy = NO_RAMP,
                  schedule: SchedulePolicy | None = None,
                  pass_ahead: int = 1) -> AsyncIterator[Gate]:
    gate = Gate(Governor(limits, clock=clock, window_margin=0), clock=clock, adapt=adapt,
                schedule=schedule, window_margin=0, pass_ahead=pass_ahead)
    async with asyncio.TaskGroup() as group:
        dispatcher = group.create_task(gate.run())
        try:
            yield gate
        finally:
            dispatcher.cancel()


async def admitted_in_order(gate: Gate, waiters: dict[str, asyncio.Task[Ticket]],
                            count: int) -> list[str]:
    """Release one ticket at a time and say whose turn came, ``count`` times."""
    order: list[str] = []
    held = [task for task in waiters.values() if task.done()]
    for _ in range(count):
        await run_ready()
        done = [name for name, task in waiters.items()
                if task.done() and name not in order and task not in held]
        assert len(done) == 1, done
        order.append(done[0])
        gate.release(waiters[done[0]].result())
    return order


async def test_one_tenants_single_request_goes_before_anothers_long_queue() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=1), clock) as gate:
        first = await gate.admit(10, tenant="heavy")
        heavy = {f"heavy-{n}": asyncio.create_task(gate.admit(10, tenant="heavy"))
                 for n in range(50)}
        await run_ready()
        light = asyncio.create_task(gate.admit(10, tenant="light"))
        await run_ready()
        gate.release(first)
        order = await admitted_in_order(gate, {**heavy, "light": light}, 3)
        assert order == ["light", "heavy-0", "heavy-1"]
        assert gate.statistics().tenants["heavy"].queued == 48
        for task in heavy.values():
            task.cancel()


async def test_tenants_share_tokens_by_weight_while_both_wait() -> None:
    clock = FakeClock()
    schedule = SchedulePolicy(tenants={"gold": TenantPolicy(weight=3.0)})
    async with gate_on(Limits(concurrency=1), clock, schedule=schedule) as gate:
        blocker = await gate.admit(1)
        waiters = {f"{name}-{n}": asyncio.create_task(gate.admit(100, tenant=name))
                   for n in range(40) for name in ("gold", "bronze")}
        await run_ready()
        gate.release(blocker)
        order = await admitted_in_order(gate, waiters, 40)
        gold = sum(name.startswith("gold") for name in order)
        assert 29 <= gold <= 31, order  # three gold per bronze
        for task in waiters.values():
            task.cancel()


async def test_a_tenants_own_limit_holds_it_back_without_blocking_others() -> None:
    clock = FakeClock()
    schedule = SchedulePolicy(tenants={"free": TenantPolicy(limits=Limits(concurrency=1,
                                                                          rpm=2, minute=10))})
    async with gate_on(Limits(concurrency=10), clock, schedule=schedule) as gate:
        free = [await gate.admit(5, tenant="free")]
        more_free = asyncio.create_task(gate.admit(5, tenant="free"))
        paid = [await gate.admit(5, tenant="paid") for _ in range(5)]
        await run_ready()
        assert not more_free.done()  # at its own concurrency of one
        gate.release(free[0])
        await run_ready()
        assert more_free.done()  # the slot came back
        gate.release(more_free.result())
        third = asyncio.create_task(gate.admit(5, tenant="free"))
        await run_ready()
        assert not third.done()  # now its own RPM of 2 per 10 s holds it
        assert len(paid) == 5
        assert gate.out == 5
        clock.advance(10.0)
        await run_ready()
        assert third.done()
        stats = gate.statistics().tenants
        assert stats["free"].admitted == 3
        assert stats["paid"].admitted == 5


async def test_a_request_larger_than_its_tenants_token_limit_is_refused_at_once() -> None:
    clock = FakeClock()
    schedule = SchedulePolicy(tenant_default=TenantPolicy(limits=Limits(tpm=100)))
    async with gate_on(Limits(), clock, schedule=schedule) as gate:
        with pytest.raises(LimitExceededError, match="tenant 'anyone' has a TPM limit of 100"):
            await gate.admit(101, tenant="anyone")
        assert (await gate.admit(100, tenant="anyone")).tokens == 100


async def test_waiting_ages_a_low_priority_request_past_new_high_priority_ones() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=1), clock,
                       schedule=SchedulePolicy(aging=10.0)) as gate:
        holder = await gate.admit(1)
        low = asyncio.create_task(gate.admit(1, priority=1, tenant="batch"))
        await run_ready()
        clock.advance(5.0)
        early = asyncio.create_task(gate.admit(1, priority=0, tenant="web"))
        await run_ready()
        gate.release(holder)
        await run_ready()
        assert early.done()
        assert not low.done()
        gate.release(early.result())
        clock.advance(6.0)  # low has waited 11 s: one level up, level with priority 0
        late = asyncio.create_task(gate.admit(1, priority=0, tenant="web"))
        await run_ready()
        assert low.done()
        assert not late.done()
        gate.release(low.result())
        await run_ready()
        assert late.done()


async def test_a_retry_keeps_the_place_its_request_first_arrived_at() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=1), clock) as gate:
        holder = await gate.admit(1)
        fresh = asyncio.create_task(gate.admit(1))
        await run_ready()
        clock.advance(3.0)
        retry = asyncio.create_task(gate.admit(1, since=0.0))
        newer = asyncio.create_task(gate.admit(1))
        await run_ready()
        gate.release(holder)
        order = await admitted_in_order(gate, {"fresh": fresh, "retry": retry,
                                               "newer": newer}, 3)
        # fresh was already inside the governor; the retry comes before the newer arrival
        assert order == ["fresh", "retry", "newer"]


async def test_a_deadline_the_rate_windows_cannot_meet_fails_at_once() -> None:
    clock = FakeClock()
    async with gate_on(Limits(rpm=2, minute=60), clock) as gate:
        await gate.admit(1)
        await gate.admit(1)
        with pytest.raises(DeadlineExceededError,
                           match=r"admission alone needs at least 60\.0 s") as info:
            await gate.admit(1, deadline=clock.now() + 30.0)
        assert info.value.phase == "deadline"
        queued = asyncio.create_task(gate.admit(1, deadline=clock.now() + 90.0))
        await run_ready()
        assert not queued.done()  # 60 s fits within 90: it waits
        # A second one must wait for the queued one too: the windows free one per minute
        # here, so 60 s is still the bound and it waits as well.
        clock.advance(60.0)
        await run_ready()
        assert queued.done()


async def test_a_deadline_counts_the_tenants_requests_queued_before_it() -> None:
    clock = FakeClock()
    async with gate_on(Limits(tpm=100, minute=60), clock) as gate:
        await gate.admit(100)
        ahead = asyncio.create_task(gate.admit(100))
        await run_ready()
        # 100 tokens queued ahead and 100 of its own: more than one window ever holds, so
        # the bound is a whole window even though its own 100 would fit after 60 s.
        with pytest.raises(DeadlineExceededError):
            await gate.admit(100, deadline=clock.now() + 59.0)
        other = asyncio.create_task(gate.admit(100, tenant="other",
                                               deadline=clock.now() + 61.0))
        await run_ready()
        assert not other.done()
        assert not other.cancelled()
        ahead.cancel()
        other.cancel()


async def test_the_working_concurrency_bounds_what_is_out() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=100), clock,
                       adapt=AdaptPolicy(start=None, decrease=0.5)) as gate:
        tickets = [await gate.admit(1) for _ in range(21)]
        gate.release(tickets[0])  # answered overloaded: 20 others still out
        assert gate.overloaded(tickets[0]) is False
        assert gate.statistics().working_concurrency == 10
        waiting = asyncio.create_task(gate.admit(1))
        await run_ready()
        assert not waiting.done()  # 20 out, 10 allowed
        for ticket in tickets[1:11]:
            gate.release(ticket)
        await run_ready()
        assert not waiting.done()  # still 10 out
        gate.release(tickets[11])
        await run_ready()
        assert waiting.done()


async def test_slow_start_lets_more_out_as_the_ramp_passes() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=100), clock,
                       adapt=AdaptPolicy(start=4, ramp=1.0), pass_ahead=100) as gate:
        waiters = [asyncio.create_task(gate.admit(1)) for _ in range(20)]
        await run_ready()
        counts = [sum(task.done() for task in waiters)]
        for _ in range(3):
            clock.advance(1.0)
            await run_ready()
            counts.append(sum(task.done() for task in waiters))
        assert counts == [8, 16, 20, 20]  # 4, doubled at once (reached), then each second


async def test_closing_fails_the_gates_waiters_too() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=1), clock) as gate:
        await gate.admit(1)
        waiters = [asyncio.create_task(gate.admit(1, tenant=f"t{n}")) for n in range(3)]
        await run_ready()
        gate.close(SupervisorClosedError("closed"))
        await run_ready()
        for task in waiters:
            with pytest.raises(SupervisorClosedError):
                task.result()
        with pytest.raises(SupervisorClosedError):
            await gate.admit(1)


async def test_a_cancelled_waiter_gives_back_what_it_was_let_through_with() -> None:
    clock = FakeClock()
    schedule = SchedulePolicy(tenant_default=TenantPolicy(limits=Limits(rpm=1, minute=60)))
    async with gate_on(Limits(concurrency=1), clock, schedule=schedule) as gate:
        holder = await gate.admit(1, tenant="a")
        waiter = asyncio.create_task(gate.admit(1, tenant="b"))
        await run_ready()  # let through to the governor, which waits for the slot
        waiter.cancel()
        await run_ready()
        gate.release(holder)
        # b's RPM unit came back with the cancellation: b is admitted at once
        assert (await gate.admit(1, tenant="b")).tenant.name == "b"


async def test_idle_tenants_are_forgotten() -> None:
    clock = FakeClock()
    async with gate_on(Limits(), clock) as gate:
        for n in range(3000):
            gate.release(await gate.admit(1, tenant=f"user-{n}"))
        assert len(gate.statistics().tenants) < 2100


async def test_a_request_let_through_holds_its_tenants_slot_while_the_governor_waits() -> None:
    clock = FakeClock()
    schedule = SchedulePolicy(tenant_default=TenantPolicy(limits=Limits(concurrency=1)))
    async with gate_on(Limits(tpm=10, minute=60), clock, schedule=schedule,
                       pass_ahead=8) as gate:
        gate.release(await gate.admit(10, tenant="a"))  # the governor's TPM is full now
        first = asyncio.create_task(gate.admit(1, tenant="a"))
        second = asyncio.create_task(gate.admit(1, tenant="a"))
        other = asyncio.create_task(gate.admit(1, tenant="b"))
        await run_ready()
        tenants = gate.statistics().tenants
        assert tenants["a"].in_flight == 1  # first, let through, waiting in the governor
        assert tenants["a"].queued == 1  # second waits for a's one slot
        assert tenants["b"].in_flight == 1
        clock.advance(60.0)
        await run_ready()
        assert first.done()
        assert other.done()
        assert not second.done()
        gate.release(first.result())
        await run_ready()
        assert second.done()
        gate.release(second.result())
        gate.release(other.result())
        assert gate.statistics().tenants["a"].in_flight == 0


async def test_a_learned_rpm_counts_the_minutes_sends_and_ends_at_the_ceiling() -> None:
    clock = FakeClock()
    async with gate_on(Limits(rpm=100, minute=10), clock) as gate:
        sent = []
        for _ in range(6):
            ticket = await gate.admit(1)
            gate.restamp(ticket)  # on the wire
            gate.release(ticket)
            sent.append(ticket)
            clock.advance(1.0)
        # 6 sent in the last 10 s, the last one refused: 5 accepted is the working RPM, and
        # the minute's 6 sends already fill it.
        assert gate.refused_vaguely(sent[-1]) == 5
        waiting = asyncio.create_task(gate.admit(1))
        await run_ready()
        assert not waiting.done()
        clock.advance(5.0)  # the first two sends (at 0 s and 1 s) have left the window
        await run_ready()
        assert waiting.done()
        assert gate.statistics().learned_rpm == 5
        for _ in range(8):  # probes of +1, +2, +4, ... once a window, up to the ceiling
            clock.advance(10.0)
            await run_ready()
        assert gate.statistics().learned_rpm is None  # back at the configured 100
        assert [await gate.admit(1) for _ in range(20)]  # nothing learned holds them back


async def test_a_cancelled_waiter_no_longer_counts_toward_anothers_deadline() -> None:
    clock = FakeClock()
    async with gate_on(Limits(concurrency=1, rpm=2, minute=60), clock) as gate:
        holder = await gate.admit(1)  # the one slot, and one of the minute's two requests
        ahead = asyncio.create_task(gate.admit(1))
        await run_ready()
        ahead.cancel()
        await run_ready()
        # Counted, the cancelled one would make two requests ahead of the minute's one left.
        alone = asyncio.create_task(gate.admit(1, deadline=clock.now() + 1.0))
        await run_ready()
        assert not alone.done()  # waiting for the slot, not failed for its deadline
        gate.release(holder)
        await run_ready()
        assert alone.done()
        assert alone.exception() is None


async def test_a_tenants_token_window_is_settled_against_what_the_server_counted() -> None:
    clock = FakeClock()
    schedule = SchedulePolicy(tenant_default=TenantPolicy(limits=Limits(tpm=100, minute=60)))
    async with gate_on(Limits(), clock, schedule=schedule) as gate:
        first = await gate.admit(80, tenant="t")
        gate.settle(first, 30)  # 50 back
        second = await gate.admit(70, tenant="t")  # 30 + 70: fits at once
        gate.settle(second, 100)  # 30 more than reserved: 130 counted, over the limit
        late = asyncio.create_task(gate.admit(1, tenant="t"))
        await run_ready()
        assert not late.done()
        other = await gate.admit(100, tenant="u")  # another tenant's window is its own
        assert other.tokens == 100
        clock.advance(60.0)
        await run_ready()
        assert late.done()
