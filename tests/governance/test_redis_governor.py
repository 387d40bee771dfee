"""The Redis governor against a real redis-server: several governors with their own clients
stand for several processes (tests/governance/test_redis_processes.py runs real ones).

Many tests come from other limiters' bug reports; each says which.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from kimi_actors import Dimension, LimitExceededError, Limits, MonotonicClock
from kimi_actors.errors import SharedGovernorError
from kimi_actors.governance.redis import RedisGovernor, _SharedPermit
from kimi_actors.governance.shared import RedisConfig, account_tag

ACCOUNT = "test-account"


@asynccontextmanager
async def governors(url: str, limits: Limits, count: int = 2,
                    **options: Any) -> AsyncIterator[list[RedisGovernor]]:
    """``count`` governors of one account, each with its own connection pool, running."""
    clock = MonotonicClock()
    config = RedisConfig(url=url, **options)
    govs = [RedisGovernor.from_config(config, limits, account=ACCOUNT, clock=clock)
            for _ in range(count)]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(gov.run()) for gov in govs]
        try:
            yield govs
        finally:
            for task in tasks:
                task.cancel()


@asynccontextmanager
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def key(name: str) -> str:
    return f"kimi_actors:{{{account_tag(ACCOUNT)}}}:{name}"


async def until(condition: Callable[[], Any], *, within: float = 10.0) -> None:
    """Wait for ``condition`` to hold (checked on every loop turn and every 5 ms)."""
    deadline = time.monotonic() + within
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.005)


async def _holds(condition: Callable[[], Any]) -> bool:
    value = condition()
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


async def window_sum(client: aioredis.Redis, dimension: str) -> int:
    """What the window holds by its own slots (not by its running sum)."""
    fields = await client.hgetall(key(dimension))
    return sum(int(units) for slot, units in fields.items()
               if isinstance(slot, str) and slot.lstrip("-").isdigit())


async def hash_int(client: aioredis.Redis, name: str, field: str) -> int:
    """A whole number field of a hash (the client decodes responses)."""
    value = await client.hget(name, field)
    assert isinstance(value, str), f"{name} has no {field}: {value!r}"
    return int(value)


def busiest_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for later in times[i:] if later < start + window)
               for i, start in enumerate(times))


async def test_governors_of_one_account_never_exceed_the_rpm_in_any_rolling_window(
        redis_server: RedisServer) -> None:
    # Bug report: limits multiplied by the number of replicas.
    limits = Limits(rpm=8, minute=0.5)
    granted: list[float] = []
    async with governors(redis_server.url, limits, count=3) as govs:
        async def one(gov: RedisGovernor) -> None:
            permit = await gov.admit(1)
            granted.append(time.monotonic())
            gov.release(permit)

        async with asyncio.TaskGroup() as group:
            for number in range(40):
                group.create_task(one(govs[number % 3]))
    assert len(granted) == 40
    # The times are taken when each waiting task resumes, a few ms after Redis admitted it:
    # the check allows 30 ms of that jitter (a governor per replica would put 24 in a window).
    assert busiest_window(granted, 0.5 - 0.03) <= 8
    # 40 requests at 8 per window need four more windows after the first.
    assert max(granted) - min(granted) >= 4 * 0.5


async def test_concurrency_is_shared_and_a_release_is_idempotent(
        redis_server: RedisServer) -> None:
    async with governors(redis_server.url, Limits(concurrency=2)) as (a, b), \
            raw(redis_server.url) as client:
        first = await a.admit(10)
        await a.admit(10)
        waiting = [asyncio.create_task(b.admit(10)) for _ in range(2)]
        await until(lambda: b.statistics().shared.round_trips >= 1)  # type: ignore[union-attr]
        assert not any(task.done() for task in waiting)
        a.release(first)
        a.release(first)  # must not free a second slot
        await a.sync()
        await until(lambda: waiting[0].done())
        assert not waiting[1].done()
        assert await client.zcard(key("leases")) == 2
        waiting[1].cancel()


async def test_a_request_refused_on_tpm_takes_nothing_from_rpm(
        redis_server: RedisServer) -> None:
    # Bug report: a request refused by one dimension still consumed another.
    limits = Limits(rpm=10, tpm=100, minute=30)
    async with governors(redis_server.url, limits) as (a, b), raw(redis_server.url) as client:
        await a.admit(100)
        waiter = asyncio.create_task(b.admit(50))
        await until(lambda: client.zscore(key("queue"), b._ticket))
        for _ in range(3):  # woken or not, every look it takes must leave RPM alone
            b._bell.ring()
            await until(lambda: b.statistics().shared.round_trips >= 1)  # type: ignore[union-attr]
        assert await window_sum(client, "rpm") == 1
        assert await window_sum(client, "tpm") == 100
        assert not waiter.done()
        waiter.cancel()


async def test_settling_refunds_and_charges_the_admissions_own_slot(
        redis_server: RedisServer) -> None:
    limits = Limits(tpm=1000, minute=30)
    async with governors(redis_server.url, limits, count=1) as (gov,), \
            raw(redis_server.url) as client:
        under = await gov.admit(300)
        over = await gov.admit(200)
        gov.settle(under, 120)   # 180 back
        gov.settle(over, 450)    # 250 more
        gov.settle(over, 1)      # settled once
        await gov.sync()
        assert await window_sum(client, "tpm") == 120 + 450
        assert await hash_int(client, key("tpm"), "sum") == 570
        assert gov.statistics().dimensions["tpm"].limit == 1000


async def test_a_cancelled_admission_gives_every_unit_back(redis_server: RedisServer) -> None:
    limits = Limits(concurrency=3, rpm=5, tpm=500, minute=30)
    async with governors(redis_server.url, limits, count=1) as (gov,), \
            raw(redis_server.url) as client:
        kept = await gov.admit(100)
        dropped = await gov.admit(200)
        gov.cancel(dropped)
        await gov.sync()
        assert await window_sum(client, "rpm") == 1
        assert await window_sum(client, "tpm") == 100
        assert await client.zrange(key("leases"), 0, -1) == [kept.lease]  # type: ignore[attr-defined]


async def test_a_refund_after_the_window_rolled_gives_nothing_back_twice(
        redis_server: RedisServer) -> None:
    # Bug report: counters stranded or negative when a window rolls.
    limits = Limits(tpm=100, minute=0.3)
    async with governors(redis_server.url, limits, count=1) as (gov,), \
            raw(redis_server.url) as client:
        old = await gov.admit(80)
        later = asyncio.create_task(gov.admit(80))  # fits only once the first has expired
        second = await later
        gov.settle(old, 0)  # its units expired already: refunding them would go negative
        await gov.sync()
        assert await window_sum(client, "tpm") == 80
        assert await hash_int(client, key("tpm"), "sum") == 80
        gov.settle(second, 30)
        await gov.sync()
        assert await hash_int(client, key("tpm"), "sum") == 30
        assert await window_sum(client, "tpm") == 30


async def test_every_key_expires_and_a_past_day_does_not_count_today(
        redis_server: RedisServer) -> None:
    # Bug reports: keys without TTL carried yesterday's counts into today; TTLs refreshed on
    # every write so windows never expired.
    limits = Limits(concurrency=5, rpm=50, tpm=10_000, tpd=1000, minute=0.2, day=0.6)
    async with governors(redis_server.url, limits, count=1, lease=1.0) as (gov,), \
            raw(redis_server.url) as client:
        full = await gov.admit(1000)
        gov.on_rate_limited(Dimension.RPM, retry_after=0.05, limit=40)
        await gov.sync()
        keys = await client.keys(f"kimi_actors:{{{gov.account}}}:*")
        assert set(keys) >= {key(name) for name in ("leases", "reactions", "rpm", "tpm", "tpd")}
        for name in keys:
            assert 0 < await client.pttl(name) <= 60_000 + 1000, name
        gov.release(full)
        started = time.monotonic()
        # Writes keep coming all "day" long; the day's first 1,000 tokens still stop counting.
        while time.monotonic() - started < 0.7:
            gov.release(await gov.admit(1))
        whole_day = await gov.admit(990)
        assert whole_day.tokens == 990
        assert await window_sum(client, "tpd") <= 1000


async def test_a_429s_wait_and_limit_reach_every_process(redis_server: RedisServer) -> None:
    limits = Limits(rpm=100, tpm=100_000, minute=30)
    async with governors(redis_server.url, limits) as (a, b):
        assert a.on_rate_limited(Dimension.RPM, retry_after=0.4, limit=3) == 3
        assert a.on_rate_limited(Dimension.RPM, retry_after=None, limit=5) is None  # only lower
        await a.sync()
        asked = time.monotonic()
        permits = [await b.admit(1) for _ in range(3)]
        assert time.monotonic() - asked >= 0.4
        assert b.statistics().dimensions["rpm"].limit == 3
        fourth = asyncio.create_task(b.admit(1))
        await until(lambda: b.statistics().shared.round_trips >= 5)  # type: ignore[union-attr]
        assert not fourth.done()
        fourth.cancel()
        assert len(permits) == 3


async def test_a_limit_adopted_elsewhere_fails_a_request_that_can_never_fit(
        redis_server: RedisServer) -> None:
    limits = Limits(tpm=10_000, minute=30)
    async with governors(redis_server.url, limits) as (a, b):
        a.on_rate_limited(Dimension.TPM, retry_after=None, limit=500)
        await a.sync()
        with pytest.raises(LimitExceededError) as caught:
            await b.admit(800)
        assert caught.value.limit == 500
        with pytest.raises(LimitExceededError):  # now known locally: refused before any call
            await b.admit(600)
        assert (await b.admit(400)).tokens == 400


async def test_queued_processes_take_turns(redis_server: RedisServer) -> None:
    limits = Limits(rpm=2, minute=0.25)
    order: list[str] = []
    async with governors(redis_server.url, limits) as (busy, quiet):
        async def one(gov: RedisGovernor, name: str) -> None:
            await gov.admit(1)
            order.append(name)

        async with asyncio.TaskGroup() as group:
            for _ in range(8):
                group.create_task(one(busy, "busy"))
            await until(lambda: len(order) >= 2)
            group.create_task(one(quiet, "quiet"))
    # The quiet process's one request waits at most one turn of the busy one's eight.
    assert order.index("quiet") <= 4, order


async def test_priority_orders_waiting_processes(redis_server: RedisServer) -> None:
    limits = Limits(concurrency=1)
    async with governors(redis_server.url, limits, count=3) as (holder, batch, urgent):
        held = await holder.admit(1)
        low = asyncio.create_task(batch.admit(1, priority=5))
        await until(lambda: low.done() or batch._ticketed)
        high = asyncio.create_task(urgent.admit(1, priority=0))
        await until(lambda: urgent._ticketed)
        holder.release(held)
        first = await asyncio.wait({low, high}, return_when=asyncio.FIRST_COMPLETED)
        assert first[0] == {high}
        urgent.release(high.result())
        await low


async def test_an_uncontended_admission_costs_one_round_trip(redis_server: RedisServer) -> None:
    limits = Limits(concurrency=4, rpm=1000, tpm=1_000_000, minute=30)
    async with governors(redis_server.url, limits, count=1) as (gov,):
        for _ in range(20):
            permit = await gov.admit(100)
            gov.release(permit)
            gov.settle(permit, 90)
            await gov.sync()
        stats = gov.statistics().shared
        assert stats is not None
        # One admission call and one call for the release and the settlement together.
        assert stats.round_trips == 40


async def test_admissions_queued_together_share_a_call(redis_server: RedisServer) -> None:
    limits = Limits(concurrency=100, rpm=1000, minute=30)
    async with governors(redis_server.url, limits, count=1) as (gov,):
        permits = await asyncio.gather(*(gov.admit(1) for _ in range(64)))
        stats = gov.statistics().shared
        assert stats is not None
        assert stats.round_trips <= 4
        assert gov.statistics().in_flight == len(permits) == 64


async def test_a_failing_script_fails_the_request_instead_of_limiting_locally(
        redis_server: RedisServer, events: list[dict[str, Any]]) -> None:
    # Bug report: a silent fallback to per-process limits when a script failed.
    async with raw(redis_server.url) as client:
        await client.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "noscripts", "on", ">secret-pw", "~*", "&*", "+@all", "-evalsha",
            "-eval")
    url = redis_server.url.replace("redis://", "redis://noscripts:secret-pw@")
    async with governors(url, Limits(concurrency=2), count=1,
                         unreachable="fallback") as (gov,):
        with pytest.raises(SharedGovernorError, match="script failed"):
            await gov.admit(1)
        assert gov.statistics().shared.fallback_admitted == 0  # type: ignore[union-attr]
    failed = [event for event in events if event["event"] == "redis_script_failed"]
    assert failed
    assert failed[0]["log_level"] == "error"
    assert "secret-pw" not in repr(events)


async def test_redis_unreachable_with_wait_admits_once_it_is_back(
        redis_server: RedisServer, events: list[dict[str, Any]]) -> None:
    redis_server.stop()
    async with governors(redis_server.url, Limits(concurrency=2), count=1,
                         timeout=0.2) as (gov,):
        waiting = asyncio.create_task(gov.admit(1))
        await until(lambda: gov.statistics().shared.state == "unreachable")  # type: ignore[union-attr]
        assert not waiting.done()
        redis_server.start()
        permit = await waiting
        assert gov.statistics().shared.state == "connected"  # type: ignore[union-attr]
        gov.release(permit)
    names = [event["event"] for event in events]
    assert names.count("redis_unreachable") == 1
    assert "redis_reachable_again" in names


async def test_redis_unreachable_with_fallback_admits_a_share_locally(
        redis_server: RedisServer, events: list[dict[str, Any]]) -> None:
    redis_server.stop()
    limits = Limits(concurrency=8)
    async with governors(redis_server.url, limits, count=1, unreachable="fallback",
                         fallback_share=0.25, timeout=0.2) as (gov,):
        local = [await gov.admit(1), await gov.admit(1)]
        third = asyncio.create_task(gov.admit(1))
        await until(lambda: gov.statistics().queued == 1)
        stats = gov.statistics()
        assert stats.shared is not None
        assert stats.shared.state == "fallback"
        assert stats.shared.fallback_admitted == 2
        assert stats.in_flight == 2
        assert not third.done()
        redis_server.start()
        await until(lambda: gov.statistics().shared.state == "connected")  # type: ignore[union-attr]
        gov.release(local[0])
        gov.release(await third)
        shared = await gov.admit(1)  # through Redis again
        assert isinstance(shared, _SharedPermit)
        assert shared.lease is not None
    unreachable = [event for event in events if event["event"] == "redis_unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["log_level"] == "error"
    assert "concurrency=2" in unreachable[0]["consequence"]


async def test_keys_are_named_by_a_hash_never_by_the_api_key(redis_server: RedisServer) -> None:
    from kimi_actors import Supervisor

    secret = "sk-never-in-redis-0123456789"
    url = redis_server.url.replace("redis://", "redis://:pw-in-url@")
    async with raw(redis_server.url) as client:
        await client.config_set("requirepass", "pw-in-url")
    sup = Supervisor(api_key=secret, base_url="http://127.0.0.1:9/v1", redis=url,
                     limits=Limits(concurrency=1))
    async with sup:
        await sup._runtime.governor.admit(1)
        names = await sup._runtime.governor._client.keys("*")  # type: ignore[attr-defined]
    assert names
    assert not any(secret.encode() in name for name in names)
    assert "pw-in-url" not in repr(RedisConfig(url=url))
    assert "pw-in-url" not in repr(sup)


async def test_in_flight_counts_this_processs_calls_without_a_concurrency_limit(
        redis_server: RedisServer) -> None:
    async with governors(redis_server.url, Limits(rpm=100, minute=30), count=1) as (gov,):
        permits = [await gov.admit(1) for _ in range(3)]
        assert gov.statistics().in_flight == 3
        gov.release(permits[0])
        gov.release(permits[0])
        assert gov.statistics().in_flight == 2


async def test_a_lease_that_lapsed_in_a_stall_is_reported_once_and_not_renewed(
        redis_server: RedisServer, events: list[dict[str, Any]]) -> None:
    async with governors(redis_server.url, Limits(concurrency=2), count=2, lease=0.3) as (a, b), \
            raw(redis_server.url) as client:
        stalled = await a.admit(1)
        time.sleep(0.5)  # noqa: ASYNC251 - the event loop stalls past the lease, on purpose
        taken = [await b.admit(1), await b.admit(1)]  # the lapsed slot is free for others
        await until(lambda: a.statistics().shared.leases_lost == 1)  # type: ignore[union-attr]
        assert stalled.lease is None  # type: ignore[attr-defined]  # no longer renewed
        a.release(stalled)  # a release of what it no longer holds frees nothing of b's
        await a.sync()
        assert sorted(await client.zrange(key("leases"), 0, -1)) == sorted(
            permit.lease for permit in taken)  # type: ignore[attr-defined]
    lapsed = [event for event in events if event["event"] == "redis_lease_lapsed"]
    assert len(lapsed) == 1


async def test_a_request_sent_late_counts_from_its_sending_and_settles_there(
        redis_server: RedisServer) -> None:
    limits = Limits(rpm=10, tpm=10_000, minute=30)  # a slot is 152 ms of a 30.45 s window
    async with governors(redis_server.url, limits, count=1) as (gov,), \
            raw(redis_server.url) as client:
        permit = await gov.admit(500)
        admitted = {slot for slot in await client.hgetall(key("rpm")) if slot.isdigit()}
        await asyncio.sleep(0.2)  # the connection takes 200 ms: longer than a slot
        gov.restamp(permit)
        gov.settle(permit, 300)
        gov.release(permit)
        await gov.sync()
        rpm = {slot: int(units) for slot, units in (await client.hgetall(key("rpm"))).items()
               if slot.isdigit() and int(units)}
        tpm = await window_sum(client, "tpm")
    [(slot, units)] = rpm.items()
    assert units == 1
    assert slot not in admitted  # moved to the slot of the sending
    assert tpm == 300  # the settlement refunded from the slot the units were moved to
