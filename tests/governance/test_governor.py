"""The governor on a FakeClock: admission order, windows, pauses, cancellation, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from kimi_actors import Dimension, FakeClock, LimitExceededError, Limits, SupervisorClosedError
from kimi_actors.governance.governor import DimensionStats, Governor
from kimi_actors.protocol.classify import server_limit


async def run_ready() -> None:
    """Let every ready task run up to its next await (no wall time involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def started(governor: Governor) -> AsyncIterator[Governor]:
    async with asyncio.TaskGroup() as group:
        dispatcher = group.create_task(governor.run())
        try:
            yield governor
        finally:
            dispatcher.cancel()


async def test_concurrency_is_held_until_release_and_served_in_order(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=2), clock=clock, window_margin=0)
    async with started(governor) as gov:
        first = await gov.admit(10)
        second = await gov.admit(10)
        waiters = [asyncio.create_task(gov.admit(10)) for _ in range(3)]
        await run_ready()
        assert not any(w.done() for w in waiters)
        assert gov.statistics().queued == 3
        gov.release(first)
        await run_ready()
        assert [w.done() for w in waiters] == [True, False, False]
        gov.release(second)
        gov.release(second)  # idempotent: must not free a second slot
        await run_ready()
        assert [w.done() for w in waiters] == [True, True, False]
        for w in waiters[:2]:
            gov.release(w.result())
        await run_ready()
        assert waiters[2].done()
        assert gov.statistics().in_flight == 1


async def test_rpm_window_blocks_until_the_oldest_request_expires(clock: FakeClock) -> None:
    governor = Governor(Limits(rpm=3, minute=10.0), clock=clock, window_margin=0.1)
    async with started(governor) as gov:
        for _ in range(3):
            gov.release(await gov.admit(1))
        clock.advance(4.0)
        late = asyncio.create_task(gov.admit(1))
        await clock.wait_for_sleepers(1)
        assert not late.done()
        # The window is 10 s stretched by the 10% margin: the first three expire at 11 s.
        clock.advance(6.9)
        await run_ready()
        assert not late.done()
        clock.advance(0.2)
        await run_ready()
        assert late.done()
        assert gov.statistics().dimensions["rpm"].used == 1


async def test_tokens_are_first_come_first_served(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=1000, minute=10.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        await gov.admit(900)
        big = asyncio.create_task(gov.admit(800))
        await run_ready()
        small = asyncio.create_task(gov.admit(50))  # would fit now, but must not overtake
        await run_ready()
        assert not big.done()
        assert not small.done()
        clock.advance(10.0)
        await run_ready()
        assert big.done()
        assert small.done()


async def test_lower_priority_number_goes_first(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=1), clock=clock)
    async with started(governor) as gov:
        holder = await gov.admit(1)
        order: list[str] = []

        async def ask(name: str, priority: int) -> None:
            permit = await gov.admit(1, priority=priority)
            order.append(name)
            gov.release(permit)

        tasks = [asyncio.create_task(ask("background", 5)), asyncio.create_task(ask("user", 0))]
        await run_ready()
        gov.release(holder)
        await asyncio.gather(*tasks)
        assert order == ["user", "background"]


async def test_a_cancelled_waiter_leaves_no_reservation(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=1, rpm=10, tpm=1000), clock=clock)
    async with started(governor) as gov:
        holder = await gov.admit(100)
        waiter = asyncio.create_task(gov.admit(500))
        await run_ready()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        stats = gov.statistics()
        assert stats.queued == 0
        assert stats.dimensions["rpm"].used == 1
        assert stats.dimensions["tpm"].used == 100
        gov.release(holder)
        assert gov.statistics().in_flight == 0


async def test_cancel_returns_every_unit_of_an_unsent_admission(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=1, rpm=10, tpm=1000), clock=clock)
    async with started(governor) as gov:
        permit = await gov.admit(300)
        gov.cancel(permit)
        stats = gov.statistics()
        assert (stats.in_flight, stats.dimensions["rpm"].used, stats.dimensions["tpm"].used) \
            == (0, 0, 0)


async def test_settle_corrects_the_token_reservation(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=1000, tpd=5000), clock=clock)
    async with started(governor) as gov:
        permit = await gov.admit(400)
        gov.settle(permit, 250)
        assert gov.statistics().dimensions["tpm"].used == 250
        assert gov.statistics().dimensions["tpd"].used == 250
        other = await gov.admit(100)
        gov.settle(other, 180)  # an under-estimate is charged on top
        assert gov.statistics().dimensions["tpm"].used == 430
        gov.settle(other, 10)  # settling twice changes nothing
        assert gov.statistics().dimensions["tpm"].used == 430
        assert gov.statistics().tokens_settled == 430


async def test_a_request_larger_than_the_tpm_limit_fails_clearly(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=1000), clock=clock)
    with pytest.raises(LimitExceededError, match="1001 tokens") as info:
        await governor.admit(1001)
    assert info.value.dimension is Dimension.TPM
    assert info.value.limit == 1000


async def test_rate_limit_pause_holds_everyone_and_server_limit_is_adopted(
        clock: FakeClock) -> None:
    governor = Governor(Limits(rpm=100, minute=60.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        gov.release(await gov.admit(1))
        adopted = gov.on_rate_limited(Dimension.RPM, retry_after=5.0, limit=40)
        assert adopted == 40
        assert gov.statistics().dimensions["rpm"].limit == 40
        waiter = asyncio.create_task(gov.admit(1))
        await clock.wait_for_sleepers(1)
        clock.advance(4.9)
        await run_ready()
        assert not waiter.done()
        clock.advance(0.2)
        await run_ready()
        assert waiter.done()
        assert gov.statistics().limit_adjustments == 1


async def test_concurrency_429_lowers_the_slot_count(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=10), clock=clock)
    async with started(governor) as gov:
        gov.on_rate_limited(Dimension.CONCURRENCY, retry_after=None, limit=2)
        permits = [await gov.admit(1), await gov.admit(1)]
        third = asyncio.create_task(gov.admit(1))
        await run_ready()
        assert not third.done()
        gov.release(permits[0])
        await run_ready()
        assert third.done()


async def test_close_fails_queued_waiters_and_refuses_new_ones(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=1), clock=clock)
    async with started(governor) as gov:
        await gov.admit(1)
        waiters = [asyncio.create_task(gov.admit(1)) for _ in range(3)]
        await run_ready()
        gov.close(SupervisorClosedError("closing"))
        for waiter in waiters:
            with pytest.raises(SupervisorClosedError):
                await waiter
        with pytest.raises(SupervisorClosedError):
            await gov.admit(1)


@pytest.mark.parametrize(
    ("dimension", "message", "expected"),
    [
        (Dimension.CONCURRENCY, "reached organization max concurrency: 1, please try", 1),
        (Dimension.RPM, "reached organization max RPM: 3, please try again after 20", 3),
        (Dimension.TPM, "reached organization TPM rate limit, current:123, limit:100", 100),
        (Dimension.TPD, "TPD rate limit, current: 1500001, limit: 1500000", 1500000),
        (Dimension.RPM, "The engine is currently overloaded", None),
    ],
)
def test_server_limit_is_read_from_kimi_messages(dimension: Dimension, message: str,
                                                 expected: int | None) -> None:
    assert server_limit(dimension, message) == expected


async def test_a_queued_request_over_a_newly_lowered_limit_fails_alone(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=1000, minute=10.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        await gov.admit(900)
        big = asyncio.create_task(gov.admit(600))
        await run_ready()
        gov.on_rate_limited(Dimension.TPM, retry_after=None, limit=500)
        with pytest.raises(LimitExceededError, match="limit is 500"):
            await big
        small = asyncio.create_task(gov.admit(100))
        await clock.wait_for_sleepers(1)
        clock.advance(10.0)
        await run_ready()
        assert small.done()
        assert gov.statistics().dimensions["tpm"].limit == 500


async def test_unlimited_dimensions_adopt_a_limit_the_server_names(clock: FakeClock) -> None:
    governor = Governor(Limits(), clock=clock)
    assert governor.on_rate_limited(Dimension.TPD, retry_after=30.0, limit=5000) == 5000
    assert governor.statistics().dimensions["tpd"].limit == 5000
    assert governor.on_rate_limited(None, retry_after=1.0, limit=None) is None


async def test_restamp_counts_units_from_when_the_request_was_sent(clock: FakeClock) -> None:
    governor = Governor(Limits(rpm=1, minute=10.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        permit = await gov.admit(1)
        clock.advance(3.0)  # e.g. a slow connection setup before the request went out
        gov.restamp(permit)
        gov.release(permit)
        waiter = asyncio.create_task(gov.admit(1))
        await clock.wait_for_sleepers(1)
        clock.advance(7.5)  # 10 s after admission, but only 7.5 s after sending
        await run_ready()
        assert not waiter.done()
        clock.advance(2.6)
        await run_ready()
        assert waiter.done()


async def test_cancel_takes_the_tokens_out_of_the_reserved_total(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=1000), clock=clock)
    async with started(governor) as gov:
        kept = await gov.admit(200)
        cancelled = await gov.admit(300)
        assert gov.statistics().tokens_reserved == 500
        gov.cancel(cancelled)
        assert gov.statistics().tokens_reserved == 200
        assert cancelled.reservations == {}
        gov.cancel(cancelled)  # nothing left to give back: a second cancel is harmless
        assert gov.statistics().dimensions["tpm"].used == 200
        gov.release(kept)


async def test_a_concurrency_429_with_a_wait_pauses_admission_for_that_long(
        clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=10), clock=clock)
    async with started(governor) as gov:
        clock.advance(100.0)
        assert gov.on_rate_limited(Dimension.CONCURRENCY, retry_after=3.0, limit=None) is None
        assert gov.statistics().dimensions["concurrency"].paused_for == pytest.approx(3.0)
        # A shorter wait named later does not cut the pause short.
        gov.on_rate_limited(Dimension.CONCURRENCY, retry_after=1.0, limit=None)
        assert gov.statistics().dimensions["concurrency"].paused_for == pytest.approx(3.0)
        waiter = asyncio.create_task(gov.admit(1))
        await clock.wait_for_sleepers(1)
        clock.advance(2.9)
        await run_ready()
        assert not waiter.done()
        clock.advance(0.2)
        await run_ready()
        gov.release(waiter.result())
        assert gov.statistics().limit_adjustments == 0


@pytest.mark.parametrize(("ours", "named", "adopted"), [
    (10, 4, 4), (10, 10, None), (10, 12, None), (None, 6, 6), (10, None, None)])
async def test_a_concurrency_limit_is_adopted_only_when_lower(
        clock: FakeClock, ours: int | None, named: int | None, adopted: int | None) -> None:
    governor = Governor(Limits(concurrency=ours), clock=clock)
    assert governor.on_rate_limited(Dimension.CONCURRENCY, retry_after=None,
                                    limit=named) == adopted
    expected = adopted if adopted is not None else ours
    assert governor.statistics().dimensions["concurrency"].limit == expected
    assert governor.statistics().limit_adjustments == (0 if adopted is None else 1)


@pytest.mark.parametrize(("ours", "named", "adopted"), [
    (100, 40, 40), (100, 100, None), (100, 150, None), (100, None, None)])
async def test_a_rate_limit_is_adopted_only_when_lower(
        clock: FakeClock, ours: int, named: int | None, adopted: int | None) -> None:
    governor = Governor(Limits(rpm=ours), clock=clock)
    assert governor.on_rate_limited(Dimension.RPM, retry_after=None, limit=named) == adopted
    assert governor.statistics().dimensions["rpm"].limit == (adopted or ours)


async def test_every_adopted_limit_counts_one_adjustment(clock: FakeClock) -> None:
    governor = Governor(Limits(rpm=100, tpm=10_000), clock=clock)
    governor.on_rate_limited(Dimension.RPM, retry_after=None, limit=50)
    governor.on_rate_limited(Dimension.TPM, retry_after=None, limit=5_000)
    governor.on_rate_limited(Dimension.RPM, retry_after=None, limit=20)
    assert governor.statistics().limit_adjustments == 3


async def test_an_adopted_day_limit_gets_a_day_window(clock: FakeClock) -> None:
    governor = Governor(Limits(day=1000.0, minute=10.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        assert gov.on_rate_limited(Dimension.TPD, retry_after=None, limit=100) == 100
        gov.release(await gov.admit(100))
        clock.advance(500.0)  # far past a minute, inside the day
        waiter = asyncio.create_task(gov.admit(1))
        await run_ready()
        assert not waiter.done()
        clock.advance(500.0)
        await run_ready()
        gov.release(waiter.result())


async def test_a_waiter_blocked_only_by_concurrency_sets_no_timer(clock: FakeClock) -> None:
    # Only a release can free a slot: the dispatcher waits for it instead of polling.
    governor = Governor(Limits(concurrency=1), clock=clock, window_margin=0)
    async with started(governor) as gov:
        held = await gov.admit(10)
        waiter = asyncio.create_task(gov.admit(10))
        await run_ready()
        assert clock.pending_deadlines() == []
        assert not waiter.done()
        gov.release(held)
        await run_ready()
        assert waiter.done()


async def test_a_waiter_blocked_by_tpm_sleeps_until_the_units_expire(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=100, minute=10.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        await gov.admit(80)
        waiter = asyncio.create_task(gov.admit(50))
        await run_ready()
        assert clock.pending_deadlines() == [10.0]
        clock.advance(10.0)
        await run_ready()
        assert waiter.done()


async def test_settling_one_token_more_charges_it(clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=1000, minute=10.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        permit = await gov.admit(100)
        gov.settle(permit, 101)
        assert gov.statistics().dimensions["tpm"].used == 101


async def test_statistics_of_ungoverned_dimensions_are_zero(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=3), clock=clock, window_margin=0)
    async with started(governor) as gov:
        await gov.admit(10)
        stats = gov.statistics()
    assert stats.dimensions == {
        "concurrency": DimensionStats(limit=3, used=1, paused_for=0.0),
        "rpm": DimensionStats(limit=None, used=0, paused_for=0.0),
        "tpm": DimensionStats(limit=None, used=0, paused_for=0.0),
        "tpd": DimensionStats(limit=None, used=0, paused_for=0.0),
    }


async def test_settling_reaches_tpd_when_tpm_is_not_governed(clock: FakeClock) -> None:
    governor = Governor(Limits(tpd=10_000, day=100.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        permit = await gov.admit(500)
        gov.settle(permit, 200)
        assert gov.statistics().dimensions["tpd"].used == 200


async def test_a_concurrency_pause_ends_exactly_at_its_time(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=5), clock=clock, window_margin=0)
    async with started(governor) as gov:
        gov.on_rate_limited(Dimension.CONCURRENCY, retry_after=5.0, limit=None)
        waiter = asyncio.create_task(gov.admit(1))
        await run_ready()
        assert clock.pending_deadlines() == [5.0]
        clock.advance(5.0)
        await run_ready()
        assert waiter.done()


async def test_admissions_without_a_priority_go_before_priority_one(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=1), clock=clock, window_margin=0)
    order: list[str] = []
    async with started(governor) as gov:
        held = await gov.admit(1)

        async def one(name: str, **priority: int) -> None:
            gov.release(await gov.admit(1, **priority))
            order.append(name)

        later = asyncio.create_task(one("later", priority=1))
        await run_ready()
        default = asyncio.create_task(one("default"))
        await run_ready()
        gov.release(held)
        await asyncio.gather(later, default)
    assert order == ["default", "later"]


async def test_a_cancelled_waiter_ends_cancelled_and_leaves_the_queue(clock: FakeClock) -> None:
    governor = Governor(Limits(concurrency=1), clock=clock, window_margin=0)
    async with started(governor) as gov:
        held = await gov.admit(1)
        waiter = asyncio.create_task(gov.admit(1))
        await run_ready()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gov.statistics().queued == 0
        gov.release(held)
        assert gov.statistics().in_flight == 0


def test_a_request_larger_than_a_token_limit_says_which_and_by_how_much(
        clock: FakeClock) -> None:
    governor = Governor(Limits(tpm=100), clock=clock, window_margin=0)
    with pytest.raises(LimitExceededError, match="but the TPM limit is 100") as caught:
        governor.check(150)
    assert (caught.value.dimension, caught.value.amount, caught.value.limit) == (
        Dimension.TPM, 150, 100)


@pytest.mark.parametrize(("margin", "accepted"), [(-0.01, False), (0.0, True), (0.99, True),
                                                  (1.0, False)])
def test_the_window_margin_is_a_share_below_one(clock: FakeClock, margin: float,
                                                accepted: bool) -> None:
    if accepted:
        Governor(Limits(rpm=1), clock=clock, window_margin=margin)
        return
    with pytest.raises(ValueError, match="window_margin must be in"):
        Governor(Limits(rpm=1), clock=clock, window_margin=margin)


async def test_tpd_is_counted_over_the_day_not_the_minute(clock: FakeClock) -> None:
    governor = Governor(Limits(tpd=1000, minute=10.0, day=100.0), clock=clock, window_margin=0)
    async with started(governor) as gov:
        await gov.admit(1000)
        waiter = asyncio.create_task(gov.admit(10))
        await run_ready()
        assert clock.pending_deadlines() == [100.0]
        waiter.cancel()


async def test_the_wait_bound_is_what_the_windows_and_pauses_need(clock: FakeClock) -> None:
    governor = Governor(Limits(rpm=2, tpm=100, minute=60), clock=clock, window_margin=0)
    assert governor.wait_bound(2, 100) == 0.0
    await governor.admit(60)
    clock.advance(10.0)
    await governor.admit(10)
    assert governor.wait_bound(1, 10) == 50.0  # one request: the first must expire
    assert governor.wait_bound(2, 10) == 60.0  # two: both must
    assert governor.wait_bound(1, 40) == 50.0  # 40 tokens fit once the 60 expire
    assert governor.wait_bound(1, 91) == 60.0  # 91 only once the 10 have too
    assert governor.wait_bound(5, 500) == 60.0  # more than a window holds: a whole window
    governor.on_rate_limited(Dimension.CONCURRENCY, retry_after=90.0, limit=None)
    assert governor.wait_bound(0, 0) == 90.0
