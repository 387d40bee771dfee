"""The whole stack against FakeKimi over loopback: faults, limits, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import pytest

from kimi_actors import (
    AuthenticationError,
    BreakerPolicy,
    CircuitOpenError,
    EngineOverloadedError,
    Limits,
    ModelNotFoundError,
    ProtocolError,
    QuotaExhaustedError,
    ResumeMode,
    ResumePolicy,
    RetryPolicy,
    ServerError,
    Supervisor,
    SupervisorClosedError,
    Timeouts,
)
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply

MODEL = "kimi-k2-turbo-preview"
FAST_RETRY = RetryPolicy(base=0.02, cap=0.5, max_attempts=6, budget_ratio=0.5)


def messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Question {i}: 你好, what is {i} + {i}?"}]


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition (the thing under test exposes no event for it), failing loudly."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - no event exists for these conditions
            await asyncio.sleep(0.005)


async def read_stream(sup: Supervisor, i: int, **kwargs: Any) -> tuple[str, int]:
    """Collect a stream as a consumer would: returns the text and the number of restarts."""
    text, restarts = "", 0
    async with sup.stream(model=MODEL, messages=messages(i), **kwargs) as stream:
        async for delta in stream:
            if delta.restart:
                text, restarts = "", restarts + 1
            text += delta.content
        assert stream.result.content == text
    return text, restarts


async def test_thousand_requests_through_faults_arrive_exactly_once() -> None:
    limits = Limits(concurrency=40, rpm=900, tpm=90_000, minute=2.0)
    faults = Faults(drop=0.15, overload=0.05, server_error=0.03, split_writes=True)
    # A non-stream attempt fails with probability 0.18 (a drop or a 500; overload does not
    # count): with 6 attempts one of the 500 gave up in about 2% of runs (0.18**6 * 500), and
    # which request draws the faults depends on arrival order. 10 attempts make that 2e-5.
    retry = RetryPolicy(base=0.02, cap=0.5, max_attempts=10, budget_ratio=0.5)
    # A stream attempt fails with probability about 0.23 (a drop, an overload or a 500): with
    # the default 5 recoveries one of the 500 streams gave up in about 7% of runs
    # (0.23**6 * 500; seen once here). 12 recoveries make that 3e-6.
    resume = ResumePolicy(max_resumes=12)
    async with FakeKimi(limits=limits, faults=faults, seed=7) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, limits=limits,
                       retry=retry, resume=resume, window_margin=0.1) as sup:
        mismatches: list[int] = []
        restarts_seen = 0

        async def one(i: int) -> None:
            nonlocal restarts_seen
            if i % 2:
                text = (await sup.chat(model=MODEL, messages=messages(i), max_tokens=60)).content
            else:
                text, restarts = await read_stream(sup, i, max_tokens=60)
                restarts_seen += restarts
            if text != expected_reply(MODEL, messages(i), max_tokens=60).content:
                mismatches.append(i)

        await asyncio.gather(*(one(i) for i in range(1000)))
        stats, served = sup.statistics(), fake.statistics()
    assert mismatches == []
    assert restarts_seen == 0  # content-only streams always resume: nothing is sent twice
    assert stats.completed == 1000
    assert stats.failed == 0
    assert stats.resumes > 0
    assert served.faults["drop"] > 0
    assert served.faults["overload"] > 0
    assert served.partial_requests > 0  # resumes really went through Partial Mode
    assert served.rejected["concurrency"] == served.rejected["rpm"] == 0
    assert served.rejected["tpm"] == 0
    assert served.peak_concurrency <= 40
    assert served.peak_rpm <= 900
    assert served.peak_tpm <= 90_000
    assert stats.rate_limited == 0


async def test_a_cancelled_caller_leaves_no_reservation_and_closes_its_request() -> None:
    async with FakeKimi(latency=Latency(first_token=30.0)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       limits=Limits(concurrency=2, rpm=100)) as sup:
        calls = [asyncio.create_task(sup.chat(model=MODEL, messages=messages(i)))
                 for i in range(4)]
        await wait_until(lambda: sup.statistics().in_flight == 2
                         and sup.statistics().queued == 2)
        for call in calls:
            call.cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        await wait_until(lambda: sup.statistics().actors == 0)
        stats = sup.statistics()
        assert (stats.in_flight, stats.queued) == (0, 0)
        # The slots are free again: a new request goes straight through.
        fake.set_latency(Latency())
        result = await sup.chat(model=MODEL, messages=messages(9))
        assert result.content == expected_reply(MODEL, messages(9)).content


async def test_closing_fails_queued_work_at_once_and_lets_in_flight_finish() -> None:
    async with FakeKimi(latency=Latency(first_token=0.3)) as fake:
        sup = Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                         limits=Limits(concurrency=1, rpm=100))
        async with sup:
            calls = [asyncio.create_task(sup.chat(model=MODEL, messages=messages(i)))
                     for i in range(5)]
            await wait_until(lambda: sup.statistics().in_flight == 1)
            await sup.aclose(timeout=10)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert sup.statistics().actors == 0
        finished = [r for r in results if not isinstance(r, BaseException)]
        closed = [r for r in results if isinstance(r, SupervisorClosedError)]
        assert len(finished) == 1
        assert len(closed) == 4
        with pytest.raises(SupervisorClosedError):
            await sup.chat(model=MODEL, messages=messages(0))


async def test_drain_timeout_cancels_stragglers_with_a_clear_error() -> None:
    async with FakeKimi(latency=Latency(first_token=30.0)) as fake:
        sup = Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                         limits=Limits(concurrency=4))
        async with sup:
            call = asyncio.create_task(sup.chat(model=MODEL, messages=messages(1)))
            await wait_until(lambda: sup.statistics().in_flight == 1)
            await sup.aclose(timeout=0.05)
            with pytest.raises(SupervisorClosedError):
                await call
            assert sup.statistics().actors == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_wrong_key_stops_the_run_without_a_storm(stream: bool) -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key="sk-wrong-key-0123456789", base_url=fake.base_url,
                       limits=Limits(concurrency=3), retry=FAST_RETRY) as sup:
        bodies = [{"model": MODEL, "messages": messages(i)} for i in range(200)]
        items: list[Any] = []

        async def consume() -> None:
            async for item in sup.map(bodies, stream=stream):
                items.append(item)

        with pytest.raises(AuthenticationError):
            await consume()
        # What map() yielded before it raised is the same typed error (queued work included).
        assert items
        assert all(isinstance(item.error, AuthenticationError) for item in items)
        assert fake.statistics().requests <= 3 + 3  # at most the first wave in flight
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=messages(0))


async def test_quota_exhausted_fails_all_queued_work_at_once() -> None:
    async with FakeKimi(faults=Faults(quota_exhausted=True)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       limits=Limits(concurrency=2), retry=FAST_RETRY) as sup:
        results = await asyncio.gather(
            *(sup.chat(model=MODEL, messages=messages(i)) for i in range(100)),
            return_exceptions=True)
        assert all(isinstance(r, QuotaExhaustedError) for r in results)
        assert fake.statistics().requests <= 2 + 2
        assert sup.statistics().failures_by_type["QuotaExhaustedError"] == 100


async def test_unknown_model_fails_that_request_only_without_retry() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        bad = sup.chat(model="no-such-model", messages=messages(1))
        good = sup.chat(model=MODEL, messages=messages(2))
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], ModelNotFoundError)
        assert results[0].attempts == 1
        assert not isinstance(results[1], BaseException)
        assert fake.statistics().rejected["not_found"] == 1


async def test_a_slow_consumer_is_not_mistaken_for_a_stall() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       timeouts=Timeouts(read_idle=0.2), stream_buffer=2) as sup:
        got = ""
        buffered: list[int] = []
        async with sup.stream(model=MODEL, messages=messages(3)) as stream:
            async for delta in stream:
                got += delta.content
                if len(got) == len(delta.content):
                    await asyncio.sleep(0.5)  # the scenario: a consumer slower than read_idle
                buffered.append(stream.buffered)
        assert got == expected_reply(MODEL, messages(3)).content
        # During the pause the actor went on reading, up to the bound, and then waited.
        assert buffered[0] >= 1
        assert max(buffered) <= 2
        assert sup.statistics().resumes == 0


async def test_a_stalled_stream_is_resumed_without_gap_or_duplicate() -> None:
    async with FakeKimi(faults=Faults(stall=1.0), latency=Latency(per_token=0.001),
                        seed=3) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       timeouts=Timeouts(read_idle=0.3), retry=FAST_RETRY) as sup:
        reader = asyncio.create_task(read_stream(sup, 4))
        await wait_until(lambda: fake.statistics().faults["stall"] >= 1)
        fake.set_faults(Faults())
        text, restarts = await reader
    assert text == expected_reply(MODEL, messages(4)).content
    assert restarts == 0
    assert sup.statistics().transport_errors >= 1


async def test_restart_mode_tells_the_consumer_to_discard() -> None:
    async with FakeKimi(faults=Faults(drop=1.0), seed=5) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST_RETRY,
                       resume=ResumePolicy(mode=ResumeMode.RESTART)) as sup:
        reader = asyncio.create_task(read_stream(sup, 6))
        await wait_until(lambda: fake.statistics().faults["drop"] >= 1)
        fake.set_faults(Faults())
        text, restarts = await reader
    assert text == expected_reply(MODEL, messages(6)).content
    assert restarts >= 1  # the consumer was told to discard, and the text is still whole
    assert restarts == sup.statistics().restarts
    assert fake.statistics().partial_requests == 0


async def test_answers_cut_by_max_tokens_can_be_continued() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       resume=ResumePolicy(continue_on_length=1)) as sup:
        text, _ = await read_stream(sup, 7, max_tokens=4)
    assert text == expected_reply(MODEL, messages(7), max_tokens=8).content
    assert sup.statistics().length_continuations == 1


@pytest.mark.parametrize(
    ("faults", "error_type"),
    [(Faults(malformed=1.0), ProtocolError), (Faults(invalid_utf8=1.0), ProtocolError),
     (Faults(html_error=1.0), ServerError)],
)
async def test_bad_server_output_fails_that_stream_only_and_keeps_what_arrived(
        faults: Faults, error_type: type[Exception]) -> None:
    async with FakeKimi(faults=faults, seed=11) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       retry=RetryPolicy(base=0.01, cap=0.05, max_attempts=3),
                       resume=ResumePolicy(max_resumes=2)) as sup:
        received = ""
        with pytest.raises(error_type):
            async with sup.stream(model=MODEL, messages=messages(8)) as stream:
                async for delta in stream:
                    received += delta.content
        expected = expected_reply(MODEL, messages(8)).content
        assert expected.startswith(received)  # nothing received was lost or garbled
        # The rest of the run goes on: a non-stream request is unaffected by stream faults
        # except for the HTML page, which every request gets.
        if error_type is ProtocolError:
            result = await sup.chat(model=MODEL, messages=messages(9))
            assert result.content == expected_reply(MODEL, messages(9)).content


async def test_the_account_limit_named_by_a_429_is_adopted() -> None:
    server_limits = Limits(rpm=5, minute=1.0)
    async with FakeKimi(limits=server_limits) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       limits=Limits(rpm=100, minute=1.0), retry=FAST_RETRY,
                       # The claim is adoption, not the margin: at a 1 s window the default
                       # 15 ms is less than a loaded CI machine's (coverage on) arrival lag.
                       window_margin=0.2) as sup:
        results = await asyncio.gather(
            *(sup.chat(model=MODEL, messages=messages(i)) for i in range(15)))
        assert len(results) == 15
        stats = sup.statistics()
        assert stats.governor.dimensions["rpm"].limit == 5
        assert stats.governor.limit_adjustments >= 1
        # Once adopted, the limit holds: only the first wave can have been refused.
        assert fake.statistics().rejected["rpm"] <= 15 - 5


async def test_overload_opens_the_breaker_and_short_deadlines_fail_fast() -> None:
    async with FakeKimi(faults=Faults(overload=1.0)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       retry=RetryPolicy(base=0.01, cap=0.02, max_attempts=2),
                       breaker=BreakerPolicy(min_calls=5, open_for=30.0,
                                             max_open_for=60.0)) as sup:
        # A deadline shorter than the open time: callers fail fast instead of waiting it out.
        results = await asyncio.gather(
            *(sup.chat(model=MODEL, messages=messages(i), timeout=2.0) for i in range(6)),
            return_exceptions=True)
        assert all(isinstance(r, EngineOverloadedError | CircuitOpenError) for r in results)
        assert sup.statistics().breaker_state == "open"
        sent = fake.statistics().requests
        with pytest.raises(CircuitOpenError):
            await sup.chat(model=MODEL, messages=messages(0), timeout=1.0)
        assert fake.statistics().requests == sent  # nothing was sent while open


async def test_the_api_key_never_reaches_logs_reprs_or_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kimi_actors")
    secret = "sk-super-secret-key-do-not-print-42"
    async with FakeKimi(api_key=secret, faults=Faults(overload=0.3, server_error=0.2),
                        seed=2) as fake, \
            Supervisor(api_key=secret, base_url=fake.base_url, retry=FAST_RETRY,
                       breaker=BreakerPolicy(min_calls=1000)) as sup:
        texts = [repr(sup), repr(fake)]
        results = await asyncio.gather(
            *(sup.chat(model=MODEL, messages=messages(i)) for i in range(20)),
            return_exceptions=True)
        texts += [repr(r) + str(r) for r in results]
    async with FakeKimi() as fake, \
            Supervisor(api_key=secret, base_url=fake.base_url) as sup:
        with pytest.raises(AuthenticationError) as info:
            await sup.chat(model=MODEL, messages=messages(1))
        texts += [repr(info.value), str(info.value)]
    assert "retry" in caplog.text  # something was logged, so the check below means something
    assert secret not in caplog.text
    assert not [t for t in texts if secret in t]


async def test_an_actor_that_crashes_fails_only_its_own_call() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        unserialisable = [{"role": "user", "content": object()}]
        results = await asyncio.gather(
            sup.chat(model=MODEL, messages=unserialisable),
            *(sup.chat(model=MODEL, messages=messages(i)) for i in range(5)),
            return_exceptions=True)
        assert isinstance(results[0], TypeError)
        assert [r.content for r in results[1:]] == [  # type: ignore[union-attr]
            expected_reply(MODEL, messages(i)).content for i in range(5)]
        assert sup.statistics().failures_by_type == {"TypeError": 1}


async def test_map_pulls_requests_lazily_and_stops_cleanly() -> None:
    pulled = 0

    def bodies() -> Any:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield {"model": MODEL, "messages": messages(i)}

    async with FakeKimi(latency=Latency(first_token=0.01)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       limits=Limits(concurrency=4)) as sup:
        seen = []
        async with aclosing(sup.map(bodies(), window=8)) as results:
            async for item in results:
                seen.append(item)
                if len(seen) == 20:
                    break
        assert all(item.ok for item in seen)
        assert pulled <= 20 + 8  # never more than the window ahead of what was consumed
        await wait_until(lambda: sup.statistics().actors == 0)
        assert sup.statistics().in_flight == 0


async def test_map_reports_work_the_drain_cancelled_instead_of_hanging() -> None:
    async with FakeKimi(faults=Faults(stall=1.0)) as fake:
        sup = Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                         limits=Limits(concurrency=4))
        async with sup:
            items: list[Any] = []

            async def consume() -> None:
                bodies = [{"model": MODEL, "messages": messages(i)} for i in range(4)]
                async for item in sup.map(bodies, stream=True):
                    items.append(item)

            consumer = asyncio.create_task(consume())
            await wait_until(lambda: sup.statistics().in_flight == 4)
            await sup.aclose(timeout=0.05)
            await asyncio.wait_for(consumer, 10)
        assert len(items) == 4
        assert all(isinstance(item.error, SupervisorClosedError) for item in items)
        assert {str(item.error) for item in items} == {
            "the supervisor closed before the request finished"}
        assert sorted(item.index for item in items) == [0, 1, 2, 3]
        assert sorted(item.request["messages"][0]["content"] for item in items) == sorted(
            messages(i)[0]["content"] for i in range(4))


async def test_deltas_read_together_with_a_bad_event_are_kept_before_resuming() -> None:
    # Without latency, the good events before the malformed one arrive in the same reads:
    # they must reach the consumer before the resume continues after them.
    async with FakeKimi(faults=Faults(malformed=1.0), seed=13) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST_RETRY) as sup:
        reader = asyncio.create_task(read_stream(sup, 12))
        await wait_until(lambda: fake.statistics().faults["malformed"] >= 1)
        fake.set_faults(Faults())
        text, restarts = await reader
    assert text == expected_reply(MODEL, messages(12)).content
    assert restarts == 0
