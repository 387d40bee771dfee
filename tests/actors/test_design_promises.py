"""The promises of docs/design.md about retries, resumes, backpressure, redaction and the
breaker, each with a test named after it.

Most run on the test seams (ScriptedTransport, FakeClock): every wait is a timer the test
moves, so "it waited 5 s" and "it did not retry" are exact. ``PROMISES`` at the end lists each
promise as design.md words it, with the test that keeps it (here or elsewhere); a test checks
that every quoted sentence is still in design.md and every named test still exists, so the doc
and the tests cannot drift apart silently.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import email.utils
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from test_actors_scripted import (
    MODEL,
    OVERLOADED,
    QUESTION,
    _read,
    autojump,
    completion,
    read,
    supervisor,
)

from kimi_actors import (
    AuthenticationError,
    BadRequestError,
    BreakerPolicy,
    CircuitOpenError,
    ConnectionFailedError,
    ConnectTimeoutError,
    ContentFilterError,
    DeadlineExceededError,
    Delta,
    EngineOverloadedError,
    FatalMode,
    FatalPolicy,
    LimitExceededError,
    Limits,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    RedirectError,
    RequestTimeoutError,
    ResumeMode,
    ResumePolicy,
    RetryPolicy,
    ServerError,
    Supervisor,
    SupervisorClosedError,
    Timeouts,
    admission_tokens,
)
from kimi_actors.actors.stream import AwayCheck, DeltaChannel
from kimi_actors.protocol.classify import Action
from kimi_actors.protocol.tokens import requested_max_tokens
from kimi_actors.testing import Fail, FakeClock, Gap, Respond, ScriptedTransport, Then, chunk_events

ROOT = Path(__file__).resolve().parents[2]
NO_BUDGET = RetryPolicy(budget_floor=0, budget_ratio=0.0)
SERVER_ERROR = Respond.json({"error": {"type": "server_error", "message": "internal"}},
                            status=500)
AUTH = Respond.json({"error": {"type": "invalid_authentication_error",
                               "message": "Incorrect API key provided"}}, status=401)
AUTH_MESSAGE = "HTTP 401 invalid_authentication_error: Incorrect API key provided"


def rate_limited(seconds: int = 1) -> Respond:
    return Respond.json({"error": {
        "type": "rate_limit_reached_error",
        "message": f"Your account org-x<ak-y> request reached organization max RPM: 3, please "
                   f"try again after {seconds} seconds"}}, status=429)


def error(status: int, error_type: str, message: str) -> Respond:
    return Respond.json({"error": {"type": error_type, "message": message}}, status=status)


def event(delta: dict[str, Any]) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"

async def hold_a_stream(sup: Supervisor) -> None:
    """Open a stream and wait for its first delta (a stalled one holds its attempt)."""
    async with sup.stream(model=MODEL, messages=QUESTION) as stream:
        await anext(aiter(stream))

async def turns(count: int = 10) -> None:
    """Let ready tasks run ``count`` loop turns: synchronisation by the loop, not by time."""
    for _ in range(count):
        await asyncio.sleep(0)


async def read_rest(stream: Any, clock: FakeClock) -> list[str]:
    """The contents of a stream's remaining deltas, the clock jumping to each timer."""
    async def rest() -> list[str]:
        return [delta.content async for delta in stream]

    return await autojump(clock, rest())


async def queued_in_order(sup: Supervisor, *calls: Awaitable[Any]) -> None:
    """Hold the supervisor's only slot while ``calls`` reach its queue one after another,
    then let them all through."""
    governor = sup._runtime.gate
    permit = await governor.admit(1)
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call))
        await turns()
    governor.release(permit)
    await asyncio.gather(*tasks)




# -- retries -------------------------------------------------------------------------------


async def test_retry_delays_are_full_jitter_below_base_times_two_to_the_attempt() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(OVERLOADED, OVERLOADED, OVERLOADED, completion("ok"))
    retry = RetryPolicy(base=2.0, cap=5.0)
    async with supervisor(transport, clock, retry=retry) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        waits = []
        for _ in range(3):
            await clock.wait_for_sleepers(1)
            deadline = clock.next_deadline()
            assert deadline is not None
            waits.append(deadline - clock.now())
            clock.advance(deadline - clock.now())
        assert (await call).content == "ok"
    # uniform(0, min(cap, base * 2 ** (n - 1))): below 2, 4, then the cap of 5.
    assert 0 <= waits[0] <= 2.0
    assert 0 <= waits[1] <= 4.0
    assert 0 <= waits[2] <= 5.0
    # The draws are the injected source's: the same seed gives the same three waits.
    again = random.Random(7)
    assert waits == pytest.approx([again.uniform(0, 2.0), again.uniform(0, 4.0),
                                   again.uniform(0, 5.0)])


@pytest.mark.parametrize(("headers", "wait"), [
    ({"Retry-After": "4"}, 4.0),
    ({"retry-after-ms": "2500"}, 2.5),
])
async def test_a_server_named_wait_wins_over_the_backoff(headers: dict[str, str],
                                                         wait: float) -> None:
    clock = FakeClock()
    busy = Respond.json({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                        status=429, headers=headers)
    transport = ScriptedTransport(busy, completion("ok"))
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.01)) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        clock.advance(wait - 0.001)
        await asyncio.sleep(0)
        assert len(transport.requests) == 1  # the 0.01 s backoff did not win
        clock.advance(wait * 0.1 + 0.002)  # the wait plus its jitter of at most 10 %
        assert (await call).content == "ok"


async def test_a_crowd_told_the_same_wait_does_not_return_in_lockstep() -> None:
    clock = FakeClock()
    busy = Respond.json({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                        status=429, headers={"Retry-After": "10"})
    transport = ScriptedTransport(*[busy] * 5, *[completion("ok")] * 5)
    async with supervisor(transport, clock) as sup:
        calls = [asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
                 for _ in range(5)]
        await clock.wait_for_sleepers(5)
        deadlines = sorted(clock.pending_deadlines())
        await autojump(clock, asyncio.gather(*calls))
    assert len(set(deadlines)) == 5
    assert all(10.0 <= when <= 11.0 for when in deadlines)


async def test_a_spent_retry_budget_slows_the_next_retry_until_the_window_frees_one() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, completion("a"), SERVER_ERROR, completion("b"),
                                  SERVER_ERROR, completion("c"))
    retry = RetryPolicy(budget_floor=2, budget_ratio=0.0, budget_window=60.0)
    async with supervisor(transport, clock, retry=retry) as sup:
        assert (await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))).content == "a"
        assert (await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))).content == "b"
        first_retries_done = clock.now()
        assert first_retries_done < 2.0  # two backoffs of at most base (0.5 s) and 1 s
        assert (await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))).content == "c"
        stats = sup.statistics()
    # The third retry waited until the first one left the budget's 60 s window (to within one
    # of its 64 bins), instead of failing.
    assert clock.now() >= 60.0 - 60.0 / 64
    assert stats.retries == 3
    assert stats.budget_waits >= 1
    assert stats.failed == 0
    assert len(transport.requests) == 6


async def test_a_retry_the_budget_cannot_pay_before_the_deadline_fails_with_a_note() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, completion("a"), SERVER_ERROR)
    retry = RetryPolicy(budget_floor=1, budget_ratio=0.0, budget_window=60.0)
    async with supervisor(transport, clock, retry=retry) as sup:
        assert (await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))).content == "a"
        with pytest.raises(ServerError) as info:
            await autojump(clock, sup.chat(model=MODEL, messages=QUESTION, timeout=30.0))
        assert sup.statistics().retries == 1
    assert len(transport.requests) == 3
    note = info.value.__notes__[-1]
    assert note.startswith("kimi_actors: not retried: the next attempt would start after this "
                           "request's deadline (the retry budget is spent until then; wait ")


async def test_rate_limit_429s_do_not_spend_the_retry_budget() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(rate_limited(1), rate_limited(1), completion("paced"))
    async with supervisor(transport, clock, retry=NO_BUDGET) as sup:
        result = await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
    assert result.content == "paced"
    assert len(transport.requests) == 3


async def test_rate_limit_429s_are_still_bounded_by_max_attempts() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(rate_limited(1), rate_limited(1), completion("never"))
    async with supervisor(transport, clock, retry=RetryPolicy(max_attempts=2)) as sup:
        with pytest.raises(RateLimitError) as info:
            await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
    assert len(transport.requests) == 2
    assert "kimi_actors: gave up after 2 attempts" in info.value.__notes__


@pytest.mark.parametrize(("step", "kind"), [
    (error(400, "invalid_request_error", "Invalid request: bad field"), BadRequestError),
    (error(403, "permission_denied_error", "not allowed"), PermissionDeniedError),
    (error(404, "resource_not_found_error", "Not found the model kimi-x or Permission denied"),
     ModelNotFoundError),
    (error(400, "content_filter", "The request was rejected because it was considered high "
                                  "risk"), ContentFilterError),
    (Respond(status=302, headers={"Location": "https://elsewhere.example/"}), RedirectError),
])
async def test_errors_that_cannot_succeed_are_not_retried(step: Respond,
                                                          kind: type[Exception]) -> None:
    transport = ScriptedTransport(step, completion("never sent"))
    async with supervisor(transport, FakeClock()) as sup:
        with pytest.raises(kind):
            await sup.chat(model=MODEL, messages=QUESTION)
        assert sup.statistics().retries == 0
    assert len(transport.requests) == 1


async def test_a_run_fatal_error_fails_work_that_is_backing_off_at_once() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, AUTH)
    async with supervisor(transport, clock, retry=RetryPolicy(base=30.0)) as sup:
        backing_off = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        # No time passed: the backoff was cut short by the account's error.
        with pytest.raises(AuthenticationError):
            await backing_off
        assert clock.now() == 0.0
        assert sup.statistics().waiting == 0
    assert len(transport.requests) == 2


async def test_stream_recoveries_do_not_draw_on_the_retry_budget() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["one "], done=False), then=Then.DROP),
        Respond.stream(chunk_events(["two "], done=False, role=False), then=Then.DROP),
        Respond.stream(chunk_events(["three"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock(), retry=NO_BUDGET) as sup:
        text, restarts = await read(sup)
        assert sup.statistics().resumes == 2
    assert (text, restarts) == ("one two three", 0)  # with no retry budget at all
    assert len(transport.requests) == 3


# -- resumes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "model", "first"), [
    ({"response_format": {"type": "json_object"}}, MODEL, event({"role": "assistant",
                                                                 "content": '{"a": '})),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, MODEL,
     event({"role": "assistant", "tool_calls": [{"index": 0, "id": "functions.f:0",
                                                 "type": "function",
                                                 "function": {"name": "f",
                                                              "arguments": '{"x'}}]})),
    ({}, "kimi-k2-thinking", event({"role": "assistant", "reasoning_content": "Let me think"})),
], ids=["json mode", "tool call in progress", "reasoning with no content yet"])
async def test_restart_is_used_when_partial_mode_cannot_continue_the_answer(
        options: dict[str, Any], model: str, first: bytes) -> None:
    transport = ScriptedTransport(
        Respond.stream([first], then=Then.DROP),
        Respond.stream(chunk_events(["whole answer"], finish="stop")))
    async with supervisor(transport, FakeClock()) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)

        async def consume() -> list[Any]:
            async with sup.stream(model=model, messages=QUESTION, **options) as stream:
                return [delta async for delta in stream]

        deltas = await autojump(clock, consume())
        assert sup.statistics().restarts == 1
        assert sup.statistics().resumes == 0
    assert sum(delta.restart for delta in deltas) == 1
    after = deltas[[delta.restart for delta in deltas].index(True) + 1:]
    assert "".join(delta.content for delta in after) == "whole answer"
    assert transport.requests[1].body["messages"] == QUESTION  # no partial prefix


# -- backpressure --------------------------------------------------------------------------


async def test_a_consumer_that_does_not_read_blocks_the_actor() -> None:
    pieces = [f"w{i} " for i in range(500)]
    transport = ScriptedTransport(Respond.stream(chunk_events(pieces, finish="stop")))
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=8) as stream:
        first = await anext(aiter(stream))
        for _ in range(50):  # ample loop turns for an actor that would not stop
            await asyncio.sleep(0)
        assert first.content == "w0 "
        assert stream.buffered == 8
        # One event per read: the actor pulled the first, the 8 buffered and one it holds.
        assert transport.events_read <= 1 + 8 + 1
        rest = [delta.content async for delta in stream]
    assert "".join(rest) == "".join(pieces[1:])
    assert transport.events_read == len(pieces) + 2  # every event, the finish and [DONE]


# -- the breaker ---------------------------------------------------------------------------

TRIPPY = BreakerPolicy(min_calls=2, failure_rate=0.5, open_for=5.0)
ONCE = RetryPolicy(max_attempts=1)


async def trip(sup: Supervisor) -> None:
    """Two calls answered 500 (scripted), each failing at once (``ONCE``): ``TRIPPY`` opens."""
    for _ in range(2):
        with pytest.raises(ServerError):
            await sup.chat(model=MODEL, messages=QUESTION)


async def test_while_the_breaker_is_open_callers_wait_for_it() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR, completion("after the pause"))
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE) as sup:
        await trip(sup)
        assert sup.statistics().breaker_state == "open"
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        clock.advance(4.99)
        await asyncio.sleep(0)
        assert len(transport.requests) == 2  # still waiting for the breaker
        clock.advance(0.02)
        assert (await call).content == "after the pause"
        assert sup.statistics().breaker_trips == 1
    assert len(transport.requests) == 3


async def test_a_caller_whose_timeout_is_shorter_than_the_open_time_fails_at_once() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR)
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE) as sup:
        await trip(sup)
        with pytest.raises(CircuitOpenError) as info:
            await sup.chat(model=MODEL, messages=QUESTION, timeout=4.0)
    assert info.value.retry_in == pytest.approx(5.0)
    assert clock.now() == 0.0
    assert len(transport.requests) == 2


async def test_rate_limit_429s_do_not_count_toward_the_breaker() -> None:
    transport = ScriptedTransport(*[rate_limited(0)] * 4)
    async with supervisor(transport, FakeClock(), breaker=TRIPPY, retry=ONCE) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)
        for _ in range(4):  # the adopted RPM of 3 paces the fourth: the clock jumps for it
            with pytest.raises(RateLimitError):
                await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
        assert sup.statistics().breaker_state == "closed"
        assert sup.statistics().breaker_trips == 0


async def test_5xx_count_toward_the_breaker() -> None:
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR)
    async with supervisor(transport, FakeClock(), breaker=TRIPPY, retry=ONCE) as sup:
        with pytest.raises(ServerError):
            await sup.chat(model=MODEL, messages=QUESTION)
        assert sup.statistics().breaker_state == "closed"  # one outcome is below min_calls
        with pytest.raises(ServerError):
            await sup.chat(model=MODEL, messages=QUESTION)
        assert sup.statistics().breaker_state == "open"


async def test_overload_lowers_the_working_concurrency_and_leaves_the_breaker_closed() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(OVERLOADED, completion("waited"))
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE,
                          limits=Limits(concurrency=8)) as sup:
        result = await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
        stats = sup.statistics()
    # max_attempts=1 does not bound overload: the request waited and was answered.
    assert result.content == "waited"
    assert stats.breaker_trips == 0
    assert stats.overloaded == 1
    assert stats.failed == 0
    # 8, then the floor (the server held nothing else of ours), then one answer: 1 + 1/1.
    assert stats.governor.working_concurrency == 2
    assert stats.governor.concurrency_decreases == 1


async def test_at_the_floor_of_the_working_concurrency_overload_is_the_breakers() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(OVERLOADED, OVERLOADED, completion("after the breaker"))
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE,
                          limits=Limits(concurrency=1)) as sup:
        call = asyncio.ensure_future(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        while sup.statistics().breaker_trips == 0:
            clock.advance(clock.next_deadline() or 0.0)
            await asyncio.sleep(0)
        assert sup.statistics().breaker_state == "open"
        result = await autojump(clock, call)
    assert result.content == "after the breaker"


# -- the remaining seams: timeouts, bad bodies, options, statistics -----------------------


@contextmanager
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connection hangs in set-up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_the_connect_timeout_bounds_connection_set_up() -> None:
    with unaccepting_port() as port:
        async with Supervisor(api_key="sk-test-connect", base_url=f"http://127.0.0.1:{port}/v1",
                              timeouts=Timeouts(connect=0.2), retry=ONCE) as sup:
            with pytest.raises(ConnectTimeoutError) as info:
                await sup.chat(model=MODEL, messages=QUESTION)
    assert info.value.phase == "connect"
    assert info.value.timeout == pytest.approx(0.2)


async def test_a_malformed_200_body_fails_that_request_only() -> None:
    broken = Respond(status=200, headers={"Content-Type": "application/json"},
                     body=b'{"id": "c1", "choices": [{"index": 0, "message": {"cont')
    transport = ScriptedTransport(broken, completion("the next one"))
    async with supervisor(transport, FakeClock(), retry=ONCE) as sup:
        with pytest.raises(ProtocolError):
            await sup.chat(model=MODEL, messages=QUESTION)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "the next one"
        assert sup.statistics().failures_by_type == {"ProtocolError": 1}


async def test_extra_body_and_extra_headers_are_sent() -> None:
    transport = ScriptedTransport(completion("x"), Respond.stream(chunk_events(["y"],
                                                                               finish="stop")))
    async with supervisor(transport, FakeClock()) as sup:
        await sup.chat(model=MODEL, messages=QUESTION, extra_body={"safe_prompt": True},
                       extra_headers={"X-Trace": "t-1"})
        async with sup.stream(model=MODEL, messages=QUESTION, extra_body={"temperature": 0.2},
                              extra_headers={"X-Trace": "t-2"}) as stream:
            await stream.collect()
    first, second = transport.requests
    assert first.body["safe_prompt"] is True
    assert first.headers["X-Trace"] == "t-1"
    assert second.body["temperature"] == 0.2
    assert second.headers["X-Trace"] == "t-2"


async def test_a_lower_priority_number_is_admitted_first() -> None:
    transport = ScriptedTransport(*[completion(str(i)) for i in range(2)])
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        order: list[str] = []

        async def call(name: str, priority: int) -> None:
            await sup.chat(model=MODEL, messages=[{"role": "user", "content": name}],
                           priority=priority)
            order.append(name)

        governor = sup._runtime.gate
        permit = await governor.admit(1)  # the only slot, held while both calls queue
        low = asyncio.create_task(call("low", 5))
        high = asyncio.create_task(call("high", 0))
        await turns()  # loop turns, not time: both calls reach the queue
        assert sup.statistics().queued == 2
        governor.release(permit)
        await asyncio.gather(low, high)
    assert order == ["high", "low"]
    assert [r.body["messages"][0]["content"] for r in transport.requests] == ["high", "low"]


async def test_map_takes_an_async_iterable() -> None:
    transport = ScriptedTransport(*[completion(f"answer {i}") for i in range(4)])

    async def bodies() -> AsyncIterator[dict[str, Any]]:
        for i in range(4):
            yield {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}

    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        results = [item async for item in sup.map(bodies())]
    assert sorted(item.index for item in results) == [0, 1, 2, 3]
    assert all(item.error is None for item in results)
    assert sorted(item.request["messages"][0]["content"] for item in results) == [
        "q0", "q1", "q2", "q3"]


async def test_statistics_count_every_kind_of_outcome() -> None:
    clock = FakeClock()
    drop = ConnectionFailedError("refused", reason="refused")
    transport = ScriptedTransport(
        SERVER_ERROR, completion("a"),                       # a 5xx, retried
        OVERLOADED, completion("b"),                         # an overload 429, retried
        rate_limited(1), completion("c"),                    # a rate-limit 429, retried
        Fail(drop), completion("d"),                         # a refused connection, retried
        Respond.stream(chunk_events(["e"], done=False), then=Then.DROP),  # a drop, resumed
        Respond.stream(chunk_events(["f"], finish="stop", role=False,
                                    usage={"prompt_tokens": 5, "completion_tokens": 2,
                                           "total_tokens": 7})),
        error(400, "invalid_request_error", "Invalid request: nope"),     # a final failure
    )
    async with supervisor(transport, clock) as sup:
        for _ in range(4):
            await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
        assert await read(sup) == ("ef", 0)
        with pytest.raises(BadRequestError):
            await sup.chat(model=MODEL, messages=QUESTION)
        stats = sup.statistics()
    counted = {name: value for name, value in dataclasses.asdict(stats).items()
               if name not in ("governor", "last_transport_error")}
    assert counted == {
        "in_flight": 0, "queued": 0, "waiting": 0, "actors": 0,
        "submitted": 6, "completed": 5, "failed": 1,
        "attempts": 11, "retries": 5, "resumes": 1, "restarts": 0, "length_continuations": 0,
        "rate_limited": 1, "overloaded": 1, "server_errors": 1, "transport_errors": 2,
        "prompt_tokens": 25, "completion_tokens": 10, "usage_anomalies": 0, "budget_waits": 0,
        # Every attempt reserved its prompt estimate and its budget; each of the five answers
        # settled at what Kimi counts: the reported prompt (5) plus the budget.
        "tokens_reserved": sum(admission_tokens(sent.body) for sent in transport.requests),
        "tokens_settled": 5 * (5 + requested_max_tokens({"model": MODEL, "messages": QUESTION})),
        "failures_by_type": {"BadRequestError": 1},
        "breaker_state": "closed", "breaker_trips": 0, "closed": False,
        "account_refused": False,
    }
    assert isinstance(stats.last_transport_error, ConnectionFailedError)
    assert stats.governor.admitted == 11
    assert stats.governor.in_flight == 0


async def test_a_rate_limit_pause_is_shown_while_it_lasts() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(rate_limited(7), completion("ok"))
    async with supervisor(transport, clock, limits=Limits(rpm=100)) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        rpm = sup.statistics().governor.dimensions["rpm"]
        assert rpm.paused_for == pytest.approx(7.0)
        assert rpm.limit == 3  # the limit the 429 named is adopted
        clock.advance(7.7)
        await call
        assert sup.statistics().governor.dimensions["rpm"].paused_for == 0.0


# -- the register of promises ------------------------------------------------------------

#: (the sentence in docs/design.md, the test that keeps it: "module::test").
PROMISES: list[tuple[str, str]] = [
    # Retries
    ("Full jitter, `uniform(0, min(cap, base·2^(n-1)))`",
     "test_design_promises::test_retry_delays_are_full_jitter_below_base_times_two_to_the_attempt"),
    ("A server-named wait (`Retry-After` in seconds or as a date, `retry-after-ms`, or \"try again",
     "test_design_promises::test_a_server_named_wait_wins_over_the_backoff"),
    ("the same wait does not return in lockstep",
     "test_design_promises::test_a_crowd_told_the_same_wait_does_not_return_in_lockstep"),
    ("When the budget is spent, a retry waits until it\n  has one again",
     "test_design_promises::test_a_spent_retry_budget_slows_the_next_retry_until_the_window_frees_one"),
    ("A retry the budget cannot pay for before the caller's deadline fails",
     "test_design_promises::test_a_retry_the_budget_cannot_pay_before_the_deadline_fails_with_a_note"),
    ("**Rate-limit 429s do not spend the budget.**",
     "test_design_promises::test_rate_limit_429s_do_not_spend_the_retry_budget"),
    ("They are still bounded by `max_attempts`.",
     "test_design_promises::test_rate_limit_429s_are_still_bounded_by_max_attempts"),
    ("**What is not retried.** Errors that cannot succeed",
     "test_design_promises::test_errors_that_cannot_succeed_are_not_retried"),
    ("fail every queued and\n  backing-off request at once with that error.",
     "test_design_promises::test_a_run_fatal_error_fails_work_that_is_backing_off_at_once"),
    ("After `cool_down` (30 s) one call is let through as a probe",
     "test_hostile_accounts::test_a_rejected_key_fails_fast_then_a_probe_brings_the_service_back"),
    ("calls that arrive while it is out still fail fast",
     "test_hostile_accounts::test_only_one_probe_goes_while_the_account_is_known_bad"),
    ("the supervisor stops for good",
     "test_hostile_accounts::test_stop_mode_stops_for_good"),
    ("**Stream recoveries** are bounded by `ResumePolicy.max_resumes`, not by the retry budget.",
     "test_design_promises::test_stream_recoveries_do_not_draw_on_the_retry_budget"),
    ("**Stream recoveries** are bounded by `ResumePolicy.max_resumes`",
     "test_actors_scripted::test_max_resumes_is_exactly_the_number_of_recoveries"),
    # The circuit breaker
    ("It trips when failures reach `failure_rate` of at least `min_calls` outcomes.",
     "test_breaker::test_trips_exactly_at_the_failure_rate"),
    ("Only\n  outcomes that say something about server health count: 5xx",
     "test_design_promises::test_5xx_count_toward_the_breaker"),
    ("overload 429s (also as an error chunk inside a\n  stream) once the working concurrency is "
     "at its floor",
     "test_design_promises::test_at_the_floor_of_the_working_concurrency_overload_is_the_breakers"),
    ("longer than `give_up_after` (300 s), waiting work fails with `CircuitOpenError`",
     "test_pushback::test_an_outage_longer_than_give_up_after_fails_the_waiting_work"),
    # When the server pushes back
    ("**Overload lowers the offered load; it does not fail queued work.**",
     "test_pushback::test_overload_is_answered_by_waiting_not_failing"),
    ("The rest of a round's\n  overloads lower it only as far as the server holds fewer of ours",
     "test_adapt::test_one_overload_per_round_lowers_the_limit_once"),
    ("a slow start\n  begins at `start` (32) and doubles every `ramp` (0.5 s) in which it was "
     "reached",
     "test_gate::test_slow_start_lets_more_out_as_the_ramp_passes"),
    ("Its retries neither count toward `max_attempts` nor draw on the retry budget",
     "test_design_promises::test_overload_lowers_the_working_concurrency_and_leaves_the_breaker_closed"),
    ("makes\n  what the server accepted over the trailing minute the working RPM",
     "test_pushback::test_a_vague_rate_limit_is_learned_from_what_the_server_accepted"),
    ("It is probed upward at most once a minute, by 1, 2, 4, ... while\n  probes pass",
     "test_adapt::test_the_learned_limit_is_probed_upward_once_a_window_by_growing_steps"),
    ("each `SchedulePolicy.aging` seconds (30) of waiting\n  is worth one level",
     "test_gate::test_waiting_ages_a_low_priority_request_past_new_high_priority_ones"),
    ("A tenant\n  with a thousand requests queued cannot hold back another tenant's one.",
     "test_pushback::test_a_light_tenant_finishes_while_a_heavy_tenants_queue_is_long"),
    ("a retry keeps its first place",
     "test_gate::test_a_retry_keeps_the_place_its_request_first_arrived_at"),
    ("a tenant at its own limit waits without\n  blocking the others",
     "test_gate::test_a_tenants_own_limit_holds_it_back_without_blocking_others"),
    ("Idle tenants are forgotten",
     "test_gate::test_idle_tenants_are_forgotten"),
    ("A call whose admission alone must outlast its `timeout` fails at once",
     "test_pushback::test_a_call_whose_admission_must_outlast_its_timeout_fails_at_once"),
    ("connection failures and\n  timeouts before a stream flowed",
     "test_hostile_streams::test_connection_failures_before_a_response_still_trip_the_breaker"),
    ("A stream that drops or stalls after it has delivered events does not count.",
     "test_hostile_streams::test_dropped_streams_that_were_flowing_do_not_trip_the_breaker"),
    ("Rate-limit 429s, 408/425, and garbled or incomplete streams do not count either.",
     "test_design_promises::test_rate_limit_429s_do_not_count_toward_the_breaker"),
    ("While open, callers wait for it.",
     "test_design_promises::test_while_the_breaker_is_open_callers_wait_for_it"),
    ("A caller whose own `timeout` is shorter than the remaining\n  open time fails at once",
     "test_design_promises::test_a_caller_whose_timeout_is_shorter_than_the_open_time_fails_at_once"),
    ("growing on consecutive trips up to `max_open_for`",
     "test_breaker::test_open_time_grows_with_consecutive_trips_up_to_the_cap"),
    ("never\n  for less than a `Retry-After` the server named",
     "test_breaker::test_retry_after_shorter_than_the_cool_down_does_not_shorten_it"),
    ("results from before a trip cannot close the new episode",
     "test_breaker::test_calls_allowed_before_a_trip_do_not_close_it"),
    # Streams: backpressure and resumes
    ("A consumer that does\nnot read blocks the actor",
     "test_design_promises::test_a_consumer_that_does_not_read_blocks_the_actor"),
    ("so memory stays flat.",
     "test_hostile_streams::test_an_unread_stream_holds_its_buffer_in_deltas_and_pauses_the_server"),
    ("`read_idle` counts complete events, not bytes.",
     "test_hostile_streams::test_a_trickle_that_completes_no_event_times_out"),
    ("a slow consumer is never mistaken for a\nstall.",
     "test_hostile_streams::test_a_slow_consumer_does_not_count_against_read_idle"),
    ("A stream is complete only on `data: [DONE]`.",
     "test_actors_scripted::test_a_stream_that_ends_cleanly_without_done_is_resumed"),
    ("The reply is\n  only the continuation, so the consumer receives exactly the missing text.",
     "test_actors_scripted::test_a_resume_sends_exactly_the_text_received_as_partial"),
    ("in every\n  spelling the request used",
     "test_hostile_streams::test_resumed_streams_keep_the_budget_in_either_spelling"),
    ("A user's own partial prefix is kept in front.",
     "test_edges::test_a_users_own_partial_prefix_survives_resumes"),
    ("(`n > 1`, a tool call in\n  progress, reasoning with no content yet, JSON mode)",
     "test_design_promises::test_restart_is_used_when_partial_mode_cannot_continue_the_answer"),
    ("(`n > 1`",
     "test_actors_scripted::test_several_choices_restart_instead_of_resuming"),
    ("The\n  consumer first gets a `Delta(restart=True)` meaning \"discard what you have\".",
     "test_supervisor_integration::test_restart_mode_tells_the_consumer_to_discard"),
    ("**Finish locally:**",
     "test_actors_scripted::test_a_drop_after_the_whole_budget_finishes_locally"),
    ("`continue_on_length=N` uses the same Partial Mode path",
     "test_hostile_streams::test_continue_on_length_keeps_the_budget_in_either_spelling"),
    ("**Servers that ignore Partial Mode.**",
     "test_hostile_streams::test_a_server_that_ignores_partial_mode_is_detected_and_restarted"),
    ("A 400 `invalid_request_error` on a resume request whose message names `partial`",
     "test_hostile_streams::test_a_400_that_names_partial_turns_the_resume_into_a_restart"),
    ("A real continuation is\n  released as soon as it is known not to repeat",
     "test_hostile_streams::test_a_continuation_that_really_continues_is_not_mistaken_for_a_repeat"),
    # Secrets and redaction
    ("the message, notes, error type, body and repr are redacted",
     "test_hostile_secrets::test_the_key_echoed_in_an_error_body_is_masked_everywhere"),
    ("A transport failure is chained as\n    `__cause__` only when its text and chain hold no "
     "credential",
     "test_hostile_secrets::test_a_safe_transport_failure_keeps_its_cause"),
    ("log events (`observe.emit` and the `redact` structlog processor)",
     "test_hostile_secrets::test_logs_carry_no_key_when_a_server_echoes_it"),
    ("every line `kimi-actors run` writes to its output",
     "test_hostile_secrets::test_the_batch_output_file_carries_no_echoed_key"),
    ("the printed resume",
     "test_hostile_secrets::test_the_printed_resume_command_masks_a_key_in_base_url"),
    ("`repr(Supervisor)`, `repr(Transport)` and `repr(RunConfig)`",
     "test_hostile_secrets::test_a_key_pasted_into_base_url_is_masked_in_reprs_and_errors"),
    ("in an error chunk mid-stream, leaks nothing",
     "test_hostile_secrets::test_the_key_echoed_in_an_error_chunk_of_a_stream_is_masked"),
    ("Neither does\n  aiohttp's parser, which quotes raw status lines.",
     "test_hostile_secrets::test_the_key_quoted_by_aiohttps_parser_is_masked"),
    ("a `cleartext_api_key` warning once per host and process",
     "test_hostile_secrets::test_plain_http_to_a_remote_host_warns_once"),
    ("**Redirects are not followed.**",
     "test_hostile_secrets::test_a_redirect_to_another_origin_is_not_followed"),
    ("The\n  one exception is a 307/308 to the same origin",
     "test_hostile_secrets::test_a_same_origin_307_or_308_is_followed_with_method_and_body"),
]

_TEST_DIRS = [ROOT / "tests" / "actors", ROOT / "tests" / "governance"]


def _tests_in(module: str) -> set[str]:
    for directory in _TEST_DIRS:
        path = directory / f"{module}.py"
        if path.exists():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            return {node.name for node in tree.body
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    raise AssertionError(f"no test module {module}")


def test_every_promise_of_design_md_is_quoted_exactly_and_kept_by_a_test() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    missing_quotes = [quote for quote, _ in PROMISES if quote not in design]
    assert missing_quotes == [], "design.md no longer says these; update PROMISES"
    missing_tests = [name for _, name in PROMISES
                     if name.split("::")[1] not in _tests_in(name.split("::")[0])]
    assert missing_tests == []


# -- a JSON answer to a stream request (servers that ignore ``stream``) ------------------


async def test_a_json_answer_to_a_stream_request_keeps_every_field() -> None:
    answer = Respond.json({
        "id": "cmpl-9", "object": "chat.completion", "created": 3, "model": "m-x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "first"},
             "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "second"},
             "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
    transport = ScriptedTransport(answer)
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, n=2) as stream:
        deltas = [delta async for delta in stream]
    result = stream.result
    assert (result.id, result.model) == ("cmpl-9", "m-x")
    assert [(c.index, c.message.content, c.finish_reason) for c in result.choices] == [
        (0, "first", "stop"), (1, "second", "length")]
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens,
            result.usage.total_tokens) == (5, 3, 8)
    assert sorted((d.index, d.content, d.role) for d in deltas if d.content) == [
        (0, "first", "assistant"), (1, "second", "assistant")]
    assert sup.statistics().prompt_tokens == 5
    assert sup.statistics().completion_tokens == 3


async def test_a_json_answer_to_a_resume_continues_the_stream() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], done=False), then=Then.DROP),
        Respond.json({"id": "c2", "object": "chat.completion", "model": MODEL,
                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": "lo, world"},
                                   "finish_reason": "stop"}]}))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hello, world", 0)
        assert sup.statistics().resumes == 1


async def test_a_json_answer_that_ignores_the_partial_prefix_restarts() -> None:
    whole = Respond.json({"id": "c3", "object": "chat.completion", "model": MODEL,
                          "choices": [{"index": 0, "message": {"role": "assistant",
                                                               "content": "Hello, world"},
                                       "finish_reason": "stop"}]})
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hello"], done=False), then=Then.DROP), whole, whole)
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hello, world", 1)
        assert sup.statistics().restarts == 1


# -- run-fatal errors: what a fast failure says --------------------------------------------


async def test_a_fast_failure_is_a_copy_that_says_since_when_and_when_the_next_probe_goes(
        ) -> None:
    clock = FakeClock(start=10.0)
    transport = ScriptedTransport(AUTH)
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0)) as sup:
        with pytest.raises(AuthenticationError) as first:
            await sup.chat(model=MODEL, messages=QUESTION)
        first.value.add_note("the caller's own note")
        clock.advance(12.0)
        with pytest.raises(AuthenticationError) as fast:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert fast.value is not first.value
    assert fast.value.__notes__ == [
        "the caller's own note",
        "kimi_actors: not sent: the account was refused 12 s ago; the next probe goes in 18 s"]
    assert len(transport.requests) == 1


# -- the supervisor's own surface ------------------------------------------------------------


async def test_the_supervisor_says_whether_it_is_open_closing_or_closed() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(Respond.stream(chunk_events(["a"], done=False),
                                                 then=Then.STALL))
    sup = Supervisor(transport=transport, clock=clock, limits=Limits.unlimited())
    async with sup:
        assert repr(sup).endswith(", open)")
        stalled = sup.stream(model=MODEL, messages=QUESTION)
        await stalled.__aenter__()
        await anext(aiter(stalled))
        closing = asyncio.create_task(sup.aclose(timeout=30.0))
        await turns()
        assert repr(sup).endswith(", closing)")  # draining the stalled stream
        await stalled.__aexit__(None, None, None)
        await closing
        assert repr(sup).endswith(", closed)")


async def test_map_sends_chat_calls_at_the_default_priority_in_order() -> None:
    transport = ScriptedTransport(*[completion(str(i)) for i in range(2)])
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        await queued_in_order(
            sup,
            anext(aiter(sup.map(
                [{"model": MODEL, "messages": [{"role": "user", "content": "mapped"}]}]))),
            sup.chat(model=MODEL, messages=[{"role": "user", "content": "direct"}]))
    # Same default priority as chat(): first come, first served; and not as a stream.
    assert [r.body["messages"][0]["content"] for r in transport.requests] == ["mapped",
                                                                               "direct"]
    assert "stream" not in transport.requests[0].body


async def test_map_reads_ahead_sixteen_requests_at_a_concurrency_of_one() -> None:
    pulled = 0

    def bodies() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}

    transport = ScriptedTransport(Respond.stream([], then=Then.STALL))
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        items = sup.map(bodies(), stream=True)
        first = asyncio.ensure_future(anext(aiter(items)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert pulled == 16  # the window: max(16, twice the concurrency)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await items.aclose()


async def test_a_refused_account_is_logged_once_and_its_recovery_too(
        events: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(AUTH, AUTH, completion("back"))
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(31.0)
        with pytest.raises(AuthenticationError):  # the probe, refused again: no new event
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(31.0)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "back"
    refused = [e for e in events if e["event"] == "account_refused"]
    assert refused == [{"event": "account_refused", "log_level": "error",
                        "error_type": "AuthenticationError", "message": AUTH_MESSAGE,
                        "probe_in": 30.0}]
    recovered = [e for e in events if e["event"] == "account_recovered"]
    assert recovered == [{"event": "account_recovered", "log_level": "info",
                          "refused_for": 62.0}]


async def test_stop_mode_logs_the_stop_with_the_error(events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(AUTH)
    async with supervisor(transport, FakeClock(),
                          fatal=FatalPolicy(mode=FatalMode.STOP)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
    assert [e for e in events if e["event"] == "run_stopped"] == [
        {"event": "run_stopped", "log_level": "error", "error_type": "AuthenticationError",
         "message": AUTH_MESSAGE}]


async def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(AUTH, Respond.stream([], then=Then.STALL), completion("ok"))
    async with supervisor(transport, clock) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(31.0)
        probe = asyncio.create_task(hold_a_stream(sup))
        await turns()  # loop turns, not time: the probe is sent and stalls
        assert len(transport.requests) == 2
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        # The abandoned probe gave its turn back: this call is sent, not failed fast.
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "ok"
    assert len(transport.requests) == 3


async def test_map_applies_its_timeout_and_priority_to_every_item() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(Respond.stream([], then=Then.STALL), completion("direct"))
    async with supervisor(transport, clock, limits=Limits(concurrency=1)) as sup:
        mapped = asyncio.ensure_future(anext(aiter(sup.map(
            [{"model": MODEL, "messages": QUESTION}], stream=True, timeout=5.0,
            priority=3))))
        await clock.wait_for_sleepers(1)
        clock.advance(5.0)
        item = await mapped
        assert isinstance(item.error, DeadlineExceededError)
        assert item.index == 0
        assert item.request["messages"] == QUESTION


async def test_a_retry_that_would_start_after_the_deadline_fails_now() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, completion("too late"))
    async with supervisor(transport, clock, retry=RetryPolicy(base=10.0, cap=10.0),
                          rng=random.Random(1)) as sup:
        with pytest.raises(ServerError) as info:
            await sup.chat(model=MODEL, messages=QUESTION, timeout=0.5)
    wait = random.Random(1).uniform(0, 10.0)
    assert wait > 0.5  # the scenario: the backoff drawn is longer than the time left
    assert info.value.__notes__[-1] == (
        f"kimi_actors: not retried: the next attempt would start after this request's "
        f"deadline (wait {wait:.1f} s)")
    assert clock.now() == 0.0
    assert len(transport.requests) == 1


async def test_an_abandoned_half_open_probe_frees_its_probe_slot() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR, Respond.stream([], then=Then.STALL),
                                  completion("closed again"))
    breaker = BreakerPolicy(min_calls=2, failure_rate=0.5, open_for=5.0, half_open_probes=1)
    async with supervisor(transport, clock, breaker=breaker, retry=ONCE) as sup:
        await trip(sup)
        clock.advance(5.0)
        probe = asyncio.create_task(hold_a_stream(sup))
        await turns()  # loop turns: the one probe is let through and stalls
        assert len(transport.requests) == 3
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        # Its slot is free: the next call probes at once instead of waiting.
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "closed again"
        assert clock.now() == 5.0


# -- the watchdog, on the clock ------------------------------------------------------------


def stalling(timeouts: Timeouts) -> ScriptedTransport:
    return ScriptedTransport(
        Respond.stream(chunk_events(["a"], done=False), then=Then.STALL),
        Respond.stream(chunk_events(["b"], finish="stop", role=False)), timeouts=timeouts)


async def _read_two(sup: Supervisor, clock: FakeClock, step: float) -> tuple[list[str], float]:
    """Read a stream that stalls after "a"; move the clock by ``step`` until it resumes."""
    texts: list[str] = []
    resumed_at: float | None = None
    async with sup.stream(model=MODEL, messages=QUESTION) as stream:
        async for delta in stream:
            texts.append(delta.content)
            if delta.content == "a":
                while resumed_at is None:
                    await clock.wait_for_sleepers(1)
                    clock.advance(step)
                    await turns()
                    if len(sup._runtime.transport.requests) == 2:  # type: ignore[attr-defined]
                        resumed_at = clock.now()
    assert resumed_at is not None, f"the stream never resumed: {texts}"
    return texts, resumed_at


async def test_read_idle_fires_exactly_when_no_event_came_for_that_long() -> None:
    clock = FakeClock()
    transport = stalling(Timeouts(read_idle=5.0, response=100.0))
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup:
        texts, resumed_at = await _read_two(sup, clock, 0.5)
        error = sup.statistics().last_transport_error
    assert "".join(texts) == "ab"
    assert 5.0 <= resumed_at <= 5.5 + 0.01
    assert type(error).__name__ == "ReadIdleTimeoutError"


async def test_the_response_bound_ends_an_attempt_that_lasts_too_long() -> None:
    clock = FakeClock()
    transport = stalling(Timeouts(read_idle=50.0, response=8.0))
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup:
        texts, resumed_at = await _read_two(sup, clock, 1.0)
        error = sup.statistics().last_transport_error
    assert "".join(texts) == "ab"
    assert 8.0 <= resumed_at <= 9.01
    assert type(error).__name__ == "ResponseTimeoutError"


async def test_time_spent_waiting_for_the_consumer_is_not_a_stall() -> None:
    clock = FakeClock()
    pieces = [f"p{i} " for i in range(6)]
    transport = ScriptedTransport(
        Respond.stream(chunk_events(pieces, done=False), then=Then.STALL),
        Respond.stream(chunk_events(["end"], finish="stop", role=False)),
        timeouts=Timeouts(read_idle=5.0, response=1000.0))
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=1) as stream:
        got = [(await anext(aiter(stream))).content]
        for _ in range(4):  # the consumer looks away for 40 s; the actor waits on it
            clock.advance(10.0)
            await turns(5)
        assert len(transport.requests) == 1  # not taken for a stall
        while len(got) < len(pieces):
            got.append((await anext(aiter(stream))).content)
        # Now the server really stalls: read_idle counts again from the last event.
        stalled_at = clock.now()
        got += await read_rest(stream, clock)
        assert sup.statistics().resumes == 1
        assert 5.0 <= clock.now() - stalled_at <= 5.1
    assert "".join(got) == "".join(pieces) + "end"


async def test_a_declared_single_choice_stream_is_resumed_and_two_choices_restart() -> None:
    for n, step in ((1, "resumes"), (2, "restarts")):
        transport = ScriptedTransport(
            Respond.stream(chunk_events(["Hel"], done=False), then=Then.DROP),
            Respond.stream(chunk_events(["lo"], finish="stop", role=n == 2)))
        async with supervisor(transport, FakeClock()) as sup:
            await read(sup, n=n)
            stats = sup.statistics()
        assert (stats.resumes, stats.restarts) == ((1, 0) if step == "resumes" else (0, 1)), n


async def test_only_a_400_naming_partial_switches_partial_mode_off(
        events: list[dict[str, Any]]) -> None:
    refused = Respond.json({"error": {
        "type": "invalid_request_error",
        "message": "Invalid request: Extra inputs are not permitted: messages.1.partial"}},
        status=400, headers={"Msh-Request-Id": "req-refused"})
    busy = error(500, "server_error", "partial outage")
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], done=False), then=Then.DROP), busy,
        Respond.stream(chunk_events(["lo"], finish="stop", role=False)),
        Respond.stream(chunk_events(["X"], done=False), then=Then.DROP), refused,
        Respond.stream(chunk_events(["Xyz"], finish="stop")))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hello", 0)  # a 500 that says "partial" is just a 500
        assert sup._runtime.partial_mode is True
        assert await read(sup) == ("Xyz", 1)
        assert sup._runtime.partial_mode is False
    warned = [e for e in events if e["event"] == "partial_mode_unsupported"]
    assert warned == [{"event": "partial_mode_unsupported", "log_level": "warning",
                       "base_url": "http://scripted.invalid/v1",
                       "reason": "HTTP 400 invalid_request_error: Invalid request: Extra inputs "
                                 "are not permitted: messages.1.partial (request id "
                                 "req-refused)",
                       "request_id": "req-refused"}]


async def test_a_json_answer_routes_choices_by_their_index_and_keeps_its_request_id() -> None:
    answer = Respond.json({
        "id": "cmpl-10", "object": "chat.completion", "model": MODEL,
        "choices": [  # listed out of order: the index, not the position, says which is which
            {"index": 1, "message": {"role": "assistant", "content": "second"},
             "finish_reason": "stop"},
            {"index": 0, "message": {"role": "assistant", "content": "first"},
             "finish_reason": "length"}]},
        headers={"Msh-Request-Id": "req-json-10"})
    transport = ScriptedTransport(answer)
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, n=2) as stream:
        await stream.collect()
    result = stream.result
    assert result.request_id == "req-json-10"
    assert [(c.index, c.message.content, c.finish_reason) for c in result.choices] == [
        (0, "first", "length"), (1, "second", "stop")]


async def test_a_json_answer_with_an_empty_usage_object_has_no_usage() -> None:
    answer = Respond.json({
        "id": "cmpl-11", "object": "chat.completion", "model": MODEL, "usage": {},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                     "finish_reason": "stop"}]})
    transport = ScriptedTransport(answer)
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        await stream.collect()
    assert stream.result.usage is None
    assert stream.result.content == "x"


async def test_a_short_json_continuation_is_released_at_its_end() -> None:
    # Shorter than the 16 characters a continuation is held back for: the end of the answer
    # is what shows it did not start over.
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hello there, my friend"], done=False), then=Then.DROP),
        Respond.json({"id": "c4", "object": "chat.completion", "model": MODEL,
                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": " ok"},
                                   "finish_reason": "stop"}]}))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hello there, my friend ok", 0)


# -- side calls and the caller's timeout ----------------------------------------------------


async def test_side_calls_send_the_right_method_and_read_kimis_shapes() -> None:
    transport = ScriptedTransport(
        Respond.json({"data": {"total_tokens": 42}}),
        Respond.json({"data": {"available_balance": 1.5, "voucher_balance": 0,
                               "cash_balance": 1.5}}),
        Respond.json({"data": [{"id": "kimi-k2.6"}, {"id": "kimi-k3"}]}))
    async with supervisor(transport, FakeClock()) as sup:
        assert await sup.estimate_tokens(model=MODEL, messages=QUESTION, tools=[]) == 42
        assert (await sup.balance())["available_balance"] == 1.5
        assert await sup.models() == ["kimi-k2.6", "kimi-k3"]
    sent = [(r.method, r.path, r.body) for r in transport.requests]
    assert sent == [
        ("POST", "tokenizers/estimate-token-count",
         {"model": MODEL, "messages": QUESTION, "tools": []}),
        ("GET", "users/me/balance", None),
        ("GET", "models", None)]


@pytest.mark.parametrize(("call", "answer", "message"), [
    ("estimate", {"data": {}}, "unexpected estimate-token-count answer: {'data': {}}"),
    ("balance", {"data": [1]}, "unexpected balance answer: {'data': [1]}"),
    ("balance", [1, 2], "unexpected balance answer: [1, 2]"),
    ("models", {"data": [{"name": "x"}]}, "unexpected models answer: {'data': [{'name': 'x'}]}"),
])
async def test_a_side_call_answered_in_another_shape_says_what_came(
        call: str, answer: Any, message: str) -> None:
    transport = ScriptedTransport(Respond.json(answer))
    async with supervisor(transport, FakeClock()) as sup:
        calls = {"estimate": lambda: sup.estimate_tokens(model=MODEL, messages=QUESTION),
                 "balance": sup.balance, "models": sup.models}
        with pytest.raises(ProtocolError) as info:
            await calls[call]()
    assert str(info.value) == message


async def test_a_side_call_refused_for_the_account_halts_the_supervisor() -> None:
    transport = ScriptedTransport(error(404, "resource_not_found_error", "no such path"), AUTH)
    async with supervisor(transport, FakeClock()) as sup:
        with pytest.raises(NotFoundError):
            await sup.models()
        assert not sup.statistics().account_refused  # a 404 says nothing of the account
        with pytest.raises(AuthenticationError):
            await sup.balance()
        assert sup.statistics().account_refused
        with pytest.raises(AuthenticationError):  # failed fast: nothing more is sent
            await sup.chat(model=MODEL, messages=QUESTION)
    assert len(transport.requests) == 2


async def test_a_side_calls_retry_after_date_is_read_on_the_injected_wall_clock() -> None:
    clock = FakeClock(wall_start=1_800_000_000.0)
    date = email.utils.formatdate(1_800_000_030.0, usegmt=True)
    transport = ScriptedTransport(Respond.json(
        {"error": {"type": "engine_overloaded_error", "message": "busy"}}, status=429,
        headers={"Retry-After": date}))
    async with supervisor(transport, clock) as sup:
        with pytest.raises(EngineOverloadedError) as info:
            await sup.models()
    assert info.value.retry_after == pytest.approx(30.0)


async def test_the_callers_timeout_names_itself_and_only_its_own_expiry_counts() -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    async with supervisor(transport, clock, limits=Limits(concurrency=1)) as sup:
        await sup._runtime.gate.admit(1)  # the only slot: both calls wait in the queue
        timed = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION, timeout=5.0))
        await clock.wait_for_sleepers(1)
        clock.advance(5.0)
        with pytest.raises(DeadlineExceededError) as info:
            await timed
        assert info.value.timeout == 5.0
        assert str(info.value).startswith("the request did not finish within its timeout of 5.0")
        # A cancellation that is not the timeout's stays a cancellation.
        cancelled = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION, timeout=5.0))
        await clock.wait_for_sleepers(1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    assert transport.requests == []


async def test_cancelled_attempts_free_the_slot_of_their_own_breaker_episode() -> None:
    clock = FakeClock()
    stall = Respond.stream([], then=Then.STALL)
    transport = ScriptedTransport(stall, stall, SERVER_ERROR, SERVER_ERROR, stall,
                                  completion("after"))
    breaker = BreakerPolicy(min_calls=2, failure_rate=0.5, open_for=5.0, half_open_probes=1)

    async with supervisor(transport, clock, breaker=breaker, retry=ONCE) as sup:
        # Two attempts let through while closed: after the trip they belong to an old episode.
        old = [asyncio.create_task(hold_a_stream(sup)) for _ in range(2)]
        await turns()
        await trip(sup)
        old[0].cancel()  # cancelled while the breaker is open
        with pytest.raises(asyncio.CancelledError):
            await old[0]
        clock.advance(5.0)
        probe = asyncio.create_task(hold_a_stream(sup))  # the one probe of the half-open episode
        await turns()
        assert len(transport.requests) == 5
        probe.cancel()  # while an old attempt is still out: the probe's slot is what frees
        with pytest.raises(asyncio.CancelledError):
            await probe
        after = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
        assert len(transport.requests) == 6  # sent at once as the next probe
        assert (await after).content == "after"
        old[1].cancel()
        await asyncio.gather(old[1], return_exceptions=True)


@pytest.mark.parametrize("stream", [False, True])
async def test_map_items_fail_a_retry_that_would_start_after_their_timeout_at_once(
        stream: bool) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR)
    async with supervisor(transport, clock, retry=RetryPolicy(base=10.0, cap=10.0),
                          rng=random.Random(1)) as sup:
        items = [item async for item in sup.map([{"model": MODEL, "messages": QUESTION}],
                                                stream=stream, timeout=0.5)]
    assert isinstance(items[0].error, ServerError)  # not a DeadlineExceededError 0.5 s later
    assert "would start after this request's deadline" in items[0].error.__notes__[-1]
    assert clock.now() == 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_map_items_queue_at_the_priority_given(stream: bool) -> None:
    mapped_answer = (Respond.stream(chunk_events(["mapped"], finish="stop")) if stream
                     else completion("mapped"))
    transport = ScriptedTransport(completion("direct"), mapped_answer)
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        await queued_in_order(
            sup,
            anext(aiter(sup.map(
                [{"model": MODEL, "messages": [{"role": "user", "content": "mapped"}]}],
                stream=stream, priority=5))),
            sup.chat(model=MODEL, messages=[{"role": "user", "content": "direct"}]))
    # The map item queued first, but at priority 5 the later priority-0 call goes first.
    assert [r.body["messages"][0]["content"] for r in transport.requests] == ["direct",
                                                                               "mapped"]


async def test_a_call_that_fails_fast_while_the_probe_is_out_says_the_probe_is_due() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(AUTH, Respond.stream([], then=Then.STALL))
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(31.0)
        probe = asyncio.create_task(hold_a_stream(sup))
        await turns()  # loop turns: the probe is sent and stalls
        with pytest.raises(AuthenticationError) as fast:
            await sup.chat(model=MODEL, messages=QUESTION)
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
    assert fast.value.__notes__[-1] == (
        "kimi_actors: not sent: the account was refused 31 s ago; the next probe goes in 0 s")


async def test_a_clean_end_without_done_is_an_incomplete_stream_and_is_logged_as_resumed(
        events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], done=False),
                       headers={"Msh-Request-Id": "req-incomplete"}),
        Respond.stream(chunk_events(["lo"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hello", 0)
    resumed = [e for e in events if e["event"] == "stream_resumed"]
    assert resumed == [{"event": "stream_resumed", "log_level": "info", "received_chars": 3,
                        "error_type": "IncompleteStreamError",
                        "request_id": "req-incomplete"}]
    retry = [e for e in events if e["event"] == "retry"]
    assert len(retry) == 1
    assert {key: retry[0][key] for key in ("log_level", "attempt", "step", "error_type",
                                           "status", "request_id")} == {
        "log_level": "info", "attempt": 1, "step": "resume",
        "error_type": "IncompleteStreamError", "status": None, "request_id": "req-incomplete"}
    assert 0 <= retry[0]["delay"] <= RetryPolicy().base


async def test_a_restart_is_logged_with_its_cause(events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a"], done=False), then=Then.DROP),
        Respond.stream(chunk_events(["ab"], finish="stop")))
    async with supervisor(transport, FakeClock(),
                          resume=ResumePolicy(mode=ResumeMode.RESTART)) as sup:
        assert await read(sup) == ("ab", 1)
    assert [e for e in events if e["event"] == "stream_restarted"] == [
        {"event": "stream_restarted", "log_level": "info",
         "error_type": "ConnectionFailedError", "request_id": None}]


async def test_a_resume_with_one_token_left_asks_for_exactly_one() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a", "b"], done=False), then=Then.DROP),
        Respond.stream(chunk_events(["c"], finish="length", role=False)))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup, max_completion_tokens=3) == ("abc", 0)
    assert transport.requests[1].body["max_completion_tokens"] == 1


@pytest.mark.parametrize(("concurrency", "window"), [(1, 16), (10, 20), (None, 512)])
async def test_map_reads_ahead_twice_the_concurrency_and_at_least_sixteen(
        concurrency: int | None, window: int) -> None:
    pulled = 0

    def bodies() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}

    stall = Respond.stream([], then=Then.STALL)
    transport = ScriptedTransport(*[stall] * window)
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=concurrency)) as sup:
        items = sup.map(bodies(), stream=True)
        first = asyncio.ensure_future(anext(aiter(items)))
        for _ in range(30):
            await asyncio.sleep(0)
        assert pulled == window
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await items.aclose()


async def test_map_refills_its_window_as_results_are_taken() -> None:
    transport = ScriptedTransport(*[completion(f"a{i}") for i in range(40)])
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        items = [item async for item in sup.map(
            {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
            for i in range(40))]
    assert sorted(item.index for item in items) == list(range(40))
    assert all(item.error is None for item in items)


async def test_the_response_bound_still_holds_after_a_consumer_pause() -> None:
    clock = FakeClock()
    pieces = [f"p{i} " for i in range(4)]
    transport = ScriptedTransport(
        Respond.stream(chunk_events(pieces, done=False), then=Then.STALL),
        Respond.stream(chunk_events(["end"], finish="stop", role=False)),
        timeouts=Timeouts(read_idle=50.0, response=45.0))
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=1) as stream:
        got = [(await anext(aiter(stream))).content]
        clock.advance(44.5)  # the consumer looks away; the actor waits on it
        await turns(5)
        while len(got) < len(pieces):
            got.append((await anext(aiter(stream))).content)
        got += await read_rest(stream, clock)
        error = sup.statistics().last_transport_error
    assert "".join(got) == "".join(pieces) + "end"
    assert type(error).__name__ == "ResponseTimeoutError"
    assert 45.0 <= clock.now() <= 45.01  # the bound, not half a second or a read_idle later


@pytest.mark.parametrize(("idle", "gap"), [(5.0, 3.0), (1.0, 0.2)])
async def test_read_idle_counts_from_the_last_event_not_from_the_start(idle: float,
                                                                         gap: float) -> None:
    clock = FakeClock()
    first, second = chunk_events(["a", "b"], done=False)
    transport = ScriptedTransport(
        Respond.stream([first, Gap(gap), second], then=Then.STALL),
        Respond.stream(chunk_events(["c"], finish="stop", role=False)),
        timeouts=Timeouts(read_idle=idle, response=1000.0), clock=clock)
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup:
        text, restarts = await read(sup)
        error = sup.statistics().last_transport_error
    assert (text, restarts) == ("abc", 0)
    assert type(error).__name__ == "ReadIdleTimeoutError"
    # "b" came after the gap: the stall is seen read_idle after it (the first check, at
    # read_idle, found an event since and re-armed for exactly then).
    assert gap + idle <= clock.now() <= gap + idle + 0.01


async def test_a_gap_shorter_than_read_idle_is_no_stall() -> None:
    clock = FakeClock()
    events = chunk_events(["a", "b", "c"], finish="stop")
    transport = ScriptedTransport(
        Respond.stream([events[0], Gap(4.0), events[1], Gap(4.0), *events[2:]]),
        timeouts=Timeouts(read_idle=5.0, response=1000.0), clock=clock)
    async with supervisor(transport, clock) as sup:
        assert await read(sup) == ("abc", 0)
        assert sup.statistics().resumes == 0
    assert len(transport.requests) == 1
    assert clock.now() == 8.0


# -- streams: their own options, and the channel to the consumer ----------------------------


async def test_a_stream_keeps_its_timeout_on_the_clock() -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    async with supervisor(transport, clock, limits=Limits(concurrency=1)) as sup:
        await sup._runtime.gate.admit(1)  # the only slot, never given back

        async def consume() -> None:
            async with sup.stream(model=MODEL, messages=QUESTION, timeout=5.0) as stream:
                await stream.collect()

        waiting = asyncio.create_task(consume())
        await clock.wait_for_sleepers(1)
        clock.advance(5.0)
        with pytest.raises(DeadlineExceededError):
            await waiting


async def test_a_stream_fails_a_retry_that_would_start_after_its_timeout_at_once() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR)
    async with supervisor(transport, clock, retry=RetryPolicy(base=10.0, cap=10.0),
                          rng=random.Random(1)) as sup:
        with pytest.raises(ServerError) as info:
            async with sup.stream(model=MODEL, messages=QUESTION, timeout=0.5) as stream:
                await stream.collect()
    assert "would start after this request's deadline" in info.value.__notes__[-1]
    assert clock.now() == 0.0


async def test_a_stream_queues_at_its_priority() -> None:
    transport = ScriptedTransport(completion("direct"),
                                  Respond.stream(chunk_events(["s"], finish="stop")))
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        async def low() -> None:
            async with sup.stream(model=MODEL, messages=QUESTION, priority=5) as stream:
                await stream.collect()

        await queued_in_order(sup, low(), sup.chat(model=MODEL, messages=QUESTION))
    assert [r.body.get("stream", False) for r in transport.requests] == [False, True]


async def test_a_stream_used_outside_async_with_says_how_to_use_it() -> None:
    async with supervisor(ScriptedTransport(), FakeClock()) as sup:
        stream = sup.stream(model=MODEL, messages=QUESTION)
        with pytest.raises(RuntimeError) as info:
            await anext(aiter(stream))
    assert str(info.value) == "use the stream as `async with sup.stream(...) as stream:`"


async def test_a_stream_cut_by_closing_the_supervisor_says_so() -> None:
    transport = ScriptedTransport(Respond.stream(chunk_events(["a"], done=False),
                                                 then=Then.STALL))
    sup = Supervisor(transport=transport, clock=FakeClock(), limits=Limits.unlimited())
    async with sup:
        stream = sup.stream(model=MODEL, messages=QUESTION)
        await stream.__aenter__()
        assert (await anext(aiter(stream))).content == "a"
        await sup.aclose(timeout=0.0)
        with pytest.raises(SupervisorClosedError) as info:
            await anext(aiter(stream))
        await stream.__aexit__(None, None, None)
    assert str(info.value) == "the supervisor closed before the stream ended"


async def test_a_zero_wait_retries_without_waiting_for_the_clock() -> None:
    transport = ScriptedTransport(rate_limited(0), completion("at once"))
    async with supervisor(transport, FakeClock()) as sup:
        # No clock advance anywhere: a zero wait must not become a timer.
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "at once"


async def test_every_failure_is_counted() -> None:
    bad = error(400, "invalid_request_error", "Invalid request: nope")
    transport = ScriptedTransport(bad, bad, bad)
    async with supervisor(transport, FakeClock()) as sup:
        for _ in range(3):
            with pytest.raises(BadRequestError):
                await sup.chat(model=MODEL, messages=QUESTION)
        assert sup.statistics().failed == 3
        assert sup.statistics().failures_by_type == {"BadRequestError": 3}


def _deltas(*texts: str) -> list[Delta]:
    return [Delta(content=text) for text in texts]


async def test_the_delta_channel_blocks_only_above_its_limit_and_keeps_order() -> None:
    with pytest.raises(ValueError, match="a DeltaChannel's limit must be >= 1, got 0"):
        DeltaChannel(0)
    channel = DeltaChannel(3)
    assert not channel.would_block(3)
    assert channel.would_block(4)
    await channel.put(_deltas("a", "b"))
    assert (channel.buffered, channel.would_block(1), channel.would_block(2)) == (2, False, True)
    # A batch larger than the room left goes in pieces, each when the consumer made room.
    batch = _deltas("c", "d", "e", "f", "g")
    putter = asyncio.create_task(channel.put(batch))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not putter.done()
    taken = []
    while not putter.done() or channel.buffered:
        delta = channel.get_nowait()
        if delta is None:
            await asyncio.sleep(0)
            continue
        taken.append(delta.content)
        assert channel.buffered <= 3
    assert taken == ["a", "b", "c", "d", "e", "f", "g"]
    assert batch == []
    channel.close()
    assert await channel.get() is None


async def test_the_away_check_asks_every_drained_reader_once_on_the_next_turn() -> None:
    asked: list[str] = []

    class Reader:
        def __init__(self, name: str) -> None:
            self.name = name

        def consumer_away(self) -> None:
            asked.append(self.name)

    check = AwayCheck()
    for name in ("a", "b", "a"):
        check.add(Reader(name))  # type: ignore[arg-type]
    assert asked == []  # not during the consumer's own step
    await asyncio.sleep(0)
    assert asked == ["a", "b", "a"]
    check.add(Reader("c"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert asked == ["a", "b", "a", "c"]  # a later turn schedules its own check


async def test_the_delta_channel_wakes_a_putter_only_when_its_piece_fits() -> None:
    channel = DeltaChannel(4)
    await channel.put(_deltas("a", "b", "c"))
    putter = asyncio.create_task(channel.put(_deltas("d", "e", "f")))
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.get_nowait() is not None  # room for 2: the putter's 3 do not fit yet
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.buffered == 2
    assert not putter.done()
    assert channel.get_nowait() is not None  # room for 3: now it fits
    for _ in range(5):
        await asyncio.sleep(0)
    assert putter.done()
    assert channel.buffered == 4


async def test_a_users_partial_prefix_keeps_its_other_keys_through_a_resume() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["upon"], done=False), then=Then.DROP),
        Respond.stream(chunk_events([" a time"], finish="stop", role=False)))
    prefix = {"role": "assistant", "content": "Once ", "partial": True, "name": "narrator"}
    async with supervisor(transport, FakeClock()) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)

        async def consume() -> str:
            async with sup.stream(model=MODEL, messages=(*QUESTION, prefix)) as stream:
                return "".join([delta.content async for delta in stream])

        assert await autojump(clock, consume()) == "upon a time"
    first, resumed = (r.body["messages"] for r in transport.requests)
    assert set(transport.requests[0].body) == {"model", "messages", "stream"}
    assert first == [*QUESTION, prefix]  # a tuple of messages is sent as a list
    assert resumed == [*QUESTION, {"role": "assistant", "content": "Once upon", "partial": True,
                                   "name": "narrator"}]


async def test_a_partial_message_that_is_not_the_assistants_is_not_a_prefix() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], done=False), then=Then.DROP),
        Respond.stream(chunk_events(["lo"], finish="stop", role=False)))
    odd = {"role": "user", "content": "ask", "partial": True}
    async with supervisor(transport, FakeClock()) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)

        async def consume() -> str:
            async with sup.stream(model=MODEL, messages=[odd]) as stream:
                return "".join([delta.content async for delta in stream])

        assert await autojump(clock, consume()) == "Hello"
    assert transport.requests[1].body["messages"] == [
        odd, {"role": "assistant", "content": "Hel", "partial": True}]


async def test_only_a_streams_first_attempt_feeds_the_retry_budget() -> None:
    # Budget: 0.34 retries per first attempt. With three first attempts (two streams answered
    # at once, and the third's) there is room for one retry; the fourth stream's first attempt
    # adds only 0.34 more, so its retry finds the budget spent.
    answer = Respond.stream(chunk_events(["ok"], finish="stop"))
    transport = ScriptedTransport(answer, answer, SERVER_ERROR, answer, SERVER_ERROR)
    retry = RetryPolicy(budget_floor=0, budget_ratio=0.34)
    async with supervisor(transport, FakeClock(), retry=retry) as sup:
        for _ in range(3):
            assert await read(sup) == ("ok", 0)
        with pytest.raises(ServerError) as info:
            await read(sup)
    assert "retry budget is spent" in info.value.__notes__[-1]


async def test_an_empty_partial_prefix_and_an_empty_conversation() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], done=False), then=Then.DROP),
        Respond.stream(chunk_events(["lo"], finish="stop", role=False)),
        Respond.stream(chunk_events(["x"], finish="stop")))
    empty = {"role": "assistant", "content": "", "partial": True}
    async with supervisor(transport, FakeClock()) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)

        async def consume(messages: list[dict[str, Any]]) -> str:
            async with sup.stream(model=MODEL, messages=messages) as stream:
                return "".join([delta.content async for delta in stream])

        assert await autojump(clock, consume([*QUESTION, empty])) == "Hello"
        assert await autojump(clock, consume([])) == "x"  # the server judges an empty list
    assert transport.requests[1].body["messages"][-1] == {
        "role": "assistant", "content": "Hel", "partial": True}


async def test_a_streams_admission_counts_the_supervisors_default_max_tokens() -> None:
    transport = ScriptedTransport()
    async with Supervisor(transport=transport, clock=FakeClock(), limits=Limits(tpm=50_000),
                          default_max_tokens=60_000) as sup:
        with pytest.raises(LimitExceededError):
            async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                await stream.collect()
    assert transport.requests == []


async def test_a_stream_waits_for_an_open_breaker_only_within_its_timeout() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR)
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE) as sup:
        await trip(sup)
        with pytest.raises(CircuitOpenError):
            async with sup.stream(model=MODEL, messages=QUESTION, timeout=4.0) as stream:
                await stream.collect()
    assert clock.now() == 0.0


async def test_stream_retries_and_recoveries_back_off_from_the_right_count(
        events: list[dict[str, Any]]) -> None:
    def drop(text: str) -> Respond:
        return Respond.stream(chunk_events([text], done=False, role=False), then=Then.DROP)

    transport = ScriptedTransport(
        SERVER_ERROR, SERVER_ERROR,                # two failures before any text: 1, then 2
        drop("a"), drop("b"), drop("c"),           # three recoveries, each after progress
        Respond.stream(chunk_events(["d"], finish="stop", role=False)))
    retry = RetryPolicy(base=1.0, cap=60.0)
    async with supervisor(transport, FakeClock(), retry=retry) as sup:
        assert await read(sup) == ("abcd", 0)
    retries = [e for e in events if e["event"] == "retry"]
    draws = random.Random(7)
    expected = [round(draws.uniform(0, 1.0), 3), round(draws.uniform(0, 2.0), 3)]
    expected += [round(draws.uniform(0, 1.0), 3) for _ in range(3)]  # progress resets it
    assert [e["delay"] for e in retries] == expected
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4, 5]
    assert [e["step"] for e in retries] == ["retry", "retry", "resume", "resume", "resume"]


async def test_a_restart_starts_the_token_allowance_over() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a"], done=False), then=Then.DROP,
                       headers={"Msh-Request-Id": "req-restart"}),
        Respond.stream(chunk_events(["x", "y"], done=False), then=Then.DROP))
    async with supervisor(transport, FakeClock(),
                          resume=ResumePolicy(mode=ResumeMode.RESTART)) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)

        async def consume() -> Any:
            async with sup.stream(model=MODEL, messages=QUESTION,
                                  max_completion_tokens=2) as stream:
                return await stream.collect()

        result = await autojump(clock, consume())
    # After the restart, the two chunks of the new answer are its whole allowance: finished
    # locally, not restarted again.
    assert (result.content, result.finish_reason) == ("xy", "length")
    assert result.request_id == "req-restart"
    assert len(transport.requests) == 2


# -- the request actor -----------------------------------------------------------------------


async def test_a_chat_call_never_sends_stream_options() -> None:
    transport = ScriptedTransport(completion("x"))
    async with supervisor(transport, FakeClock()) as sup:
        await sup.chat(model=MODEL, messages=QUESTION,
                       extra_body={"stream": True, "stream_options": {"include_usage": True}})
    assert set(transport.requests[0].body) == {"model", "messages"}


async def test_a_chats_admission_counts_the_supervisors_default_max_tokens() -> None:
    transport = ScriptedTransport()
    async with Supervisor(transport=transport, clock=FakeClock(), limits=Limits(tpm=50_000),
                          default_max_tokens=60_000) as sup:
        with pytest.raises(LimitExceededError):
            await sup.chat(model=MODEL, messages=QUESTION)
    assert transport.requests == []


async def test_only_a_chats_first_attempt_feeds_the_retry_budget() -> None:
    transport = ScriptedTransport(completion("a"), completion("b"), SERVER_ERROR,
                                  completion("c"), SERVER_ERROR)
    retry = RetryPolicy(budget_floor=0, budget_ratio=0.34)
    async with supervisor(transport, FakeClock(), retry=retry) as sup:
        clock = sup._clock
        assert isinstance(clock, FakeClock)
        for _ in range(3):  # the third is retried once: 3 first attempts allow 1.02 retries
            await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
        with pytest.raises(ServerError) as info:  # 4 allow 1.36: the one retry is spent
            await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))
    assert "retry budget is spent" in info.value.__notes__[-1]
    assert len(transport.requests) == 5


async def test_a_chats_retry_after_date_is_read_on_the_injected_wall_clock() -> None:
    clock = FakeClock(wall_start=1_800_000_000.0)
    date = email.utils.formatdate(1_800_000_030.0, usegmt=True)
    busy = Respond.json({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                        status=429, headers={"Retry-After": date})
    transport = ScriptedTransport(busy, completion("after 30 s"))
    async with supervisor(transport, clock) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        deadline = clock.next_deadline()
        assert deadline is not None
        assert 30.0 <= deadline <= 31.0  # the wait the date names, plus its jitter
        clock.advance(deadline)
        assert (await call).content == "after 30 s"


# -- found by the complete mutation run (issue 16) -----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_rate_units_count_from_when_the_request_reached_the_wire(stream: bool) -> None:
    # The server counts arrival: a request that took 3 s to reach the wire holds its RPM
    # unit until 3 s after a window from its admission.
    clock = FakeClock()
    answer = (Respond.stream(chunk_events(["x"], finish="stop")) if stream
              else completion("x"))
    transport = ScriptedTransport(answer, answer, clock=clock, send_delay=3.0)
    async with supervisor(transport, clock, limits=Limits(rpm=1, minute=10.0),
                          window_margin=0.0) as sup:
        async def call() -> None:
            if stream:
                async with sup.stream(model=MODEL, messages=QUESTION) as reading:
                    await reading.collect()
            else:
                await sup.chat(model=MODEL, messages=QUESTION)

        await autojump(clock, call())
        assert clock.now() == 3.0
        await autojump(clock, call())
    assert clock.now() == 3.0 + 10.0 + 3.0  # admitted at 13 (not 10), sent at 16


async def test_a_streams_retry_after_date_is_read_on_the_injected_wall_clock() -> None:
    clock = FakeClock(wall_start=1_800_000_000.0)
    date = email.utils.formatdate(1_800_000_030.0, usegmt=True)
    busy = Respond.json({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                        status=429, headers={"Retry-After": date})
    transport = ScriptedTransport(busy, Respond.stream(chunk_events(["late"], finish="stop")))
    async with supervisor(transport, clock) as sup:
        reading = asyncio.create_task(_read(sup))
        await clock.wait_for_sleepers(1)
        deadline = clock.next_deadline()
        assert deadline is not None
        assert 30.0 <= deadline <= 31.0
        clock.advance(deadline)
        assert await reading == ("late", 0)


async def test_a_last_event_without_its_blank_line_still_counts() -> None:
    events = chunk_events(["a", "b"], finish="stop", usage={"prompt_tokens": 3,
                                                            "completion_tokens": 2,
                                                            "total_tokens": 5}, done=False)
    events.append(b"data: [DONE]\n")  # the connection ends before the event's blank line
    transport = ScriptedTransport(Respond.stream(events))
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        result = await autojump(sup._clock, stream.collect())  # type: ignore[arg-type]
    assert result.content == "ab"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 2)
    assert len(transport.requests) == 1
    assert sup.statistics().prompt_tokens == 3  # the attempt's usage survived the last event


async def test_a_content_event_cut_before_its_blank_line_is_kept_and_the_rest_resumed() -> None:
    events = chunk_events(["a"], done=False)
    events.append(chunk_events(["b"], role=False, done=False)[0][:-1])  # its line, no blank
    transport = ScriptedTransport(Respond.stream(events),
                                  Respond.stream(chunk_events(["c"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("abc", 0)


def one_read(pieces: list[str], *, then: Then = Then.END, finish: str | None = "stop") -> Respond:
    """A stream whose events all arrive in a single network read."""
    return Respond.stream([b"".join(chunk_events(pieces, finish=finish, done=then is Then.END))],
                          then=then)


async def test_a_large_read_is_parsed_only_as_fast_as_the_consumer_takes_it() -> None:
    pieces = [f"w{i} " for i in range(200)]
    transport = ScriptedTransport(one_read(pieces))
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=8) as stream:
        first = await anext(aiter(stream))
        await turns()
        # The read held 200 events; the actor has turned no more into deltas than the
        # consumer's buffer and the piece it is waiting to hand over.
        assert stream._actor._assembler.chunks <= 1 + 2 * 8
        rest = [delta.content async for delta in stream]
    assert first.content + "".join(rest) == "".join(pieces)


@pytest.mark.parametrize(("timeouts", "phase", "words"), [
    (Timeouts(read_idle=5.0, response=100.0), "read_idle", "a complete stream event"),
    (Timeouts(read_idle=50.0, response=8.0), "response", "the stream to end"),
])
async def test_a_stream_timeout_names_its_phase_and_its_limit(
        timeouts: Timeouts, phase: str, words: str) -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a"], done=False), then=Then.STALL,
                       headers={"Msh-Request-Id": "req-slow"}), timeouts=timeouts)
    async with supervisor(transport, FakeClock(), retry=ONCE,
                          resume=ResumePolicy(max_resumes=0)) as sup:
        with pytest.raises(RequestTimeoutError) as caught:
            await read(sup)
    error = caught.value
    assert error.phase == phase
    limit = timeouts.read_idle if phase == "read_idle" else timeouts.response
    assert error.timeout == limit
    assert f"timed out waiting for {words} after {limit} s" in str(error)
    assert error.request_id == "req-slow"


async def test_a_connection_lost_mid_stream_carries_the_streams_request_id() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a"], done=False), then=Then.DROP,
                       headers={"Msh-Request-Id": "req-dropped"}))
    async with supervisor(transport, FakeClock(), retry=ONCE,
                          resume=ResumePolicy(max_resumes=0)) as sup:
        with pytest.raises(ConnectionFailedError) as caught:
            await read(sup)
    assert caught.value.request_id == "req-dropped"


async def test_a_retry_is_logged_with_the_status_it_answered(
        events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(SERVER_ERROR, completion("ok"))
    async with supervisor(transport, FakeClock()) as sup:
        await autojump(sup._clock, sup.chat(model=MODEL, messages=QUESTION))  # type: ignore[arg-type]
    [retry] = [e for e in events if e["event"] == "retry"]
    assert retry["status"] == 500
    assert retry["error_type"] == "ServerError"


async def test_waiting_counts_every_actor_in_a_backoff_and_forgets_each_wait() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR, completion("a"), completion("b"))
    async with supervisor(transport, clock) as sup:
        calls = [asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION)) for _ in range(2)]
        await clock.wait_for_sleepers(2)
        assert sup.statistics().waiting == 2
        clock.advance(RetryPolicy().cap)
        await asyncio.gather(*calls)
        assert sup.statistics().waiting == 0
        assert sup._runtime._waits == set()


async def test_a_call_cancelled_while_the_breaker_is_open_ends_cancelled() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(Respond.stream([], then=Then.STALL), SERVER_ERROR, SERVER_ERROR)
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE) as sup:
        held = asyncio.create_task(hold_a_stream(sup))
        await turns()
        await trip(sup)
        assert sup.statistics().breaker_state == "open"
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held


async def test_a_continuation_that_drops_is_resumed_within_its_own_allowance() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a", "b"], finish="length")),          # cut by max_tokens
        Respond.stream(chunk_events(["c"], done=False, role=False), then=Then.DROP),
        Respond.stream(chunk_events(["d"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock(),
                          resume=ResumePolicy(continue_on_length=1)) as sup:
        assert await read(sup, max_tokens=2) == ("abcd", 0)
    # The continuation had 2 tokens of its own; 1 came before the drop, so the resume asks
    # for the 1 left instead of finishing at the start's count.
    assert [request.body.get("max_tokens") for request in transport.requests] == [2, 2, 1]


def thinking(reasoning: str) -> bytes:
    return event({"role": "assistant", "reasoning_content": reasoning})


async def test_a_thinking_stream_resumes_once_its_answer_has_begun() -> None:
    transport = ScriptedTransport(
        Respond.stream([thinking("hmm"), event({"content": "Hel"})], then=Then.DROP),
        Respond.stream(chunk_events(["lo"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hello", 0)
    assert transport.requests[1].body["messages"][-1]["partial"] is True


async def test_a_stream_that_dropped_before_any_text_resumes_from_nothing() -> None:
    transport = ScriptedTransport(
        Respond.stream([event({"role": "assistant"})], then=Then.DROP),
        Respond.stream(chunk_events(["Hi"], finish="stop")))
    async with supervisor(transport, FakeClock()) as sup:
        assert await read(sup) == ("Hi", 0)
    assert sup.statistics().restarts == 0


async def test_attempts_after_a_restart_count_only_those_that_delivered_nothing() -> None:
    json_mode = {"type": "json_object"}
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["{"], done=False), then=Then.DROP),   # restart (JSON)
        SERVER_ERROR, SERVER_ERROR,                                        # retries 1 and 2
        Respond.stream(chunk_events(["{}"], finish="stop")))
    async with supervisor(transport, FakeClock(), retry=RetryPolicy(max_attempts=3)) as sup:
        assert await read(sup, response_format=json_mode) == ("{}", 1)
    assert len(transport.requests) == 4


async def test_a_stream_restart_is_logged_with_the_request_id(
        events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a"], done=False), then=Then.DROP,
                       headers={"Msh-Request-Id": "req-first"}),
        Respond.stream(chunk_events(["ab"], finish="stop")))
    async with supervisor(transport, FakeClock(),
                          resume=ResumePolicy(mode=ResumeMode.RESTART)) as sup:
        await read(sup)
    [restarted] = [e for e in events if e["event"] == "stream_restarted"]
    assert restarted["request_id"] == "req-first"


async def test_a_long_prompts_usage_is_plausible_for_a_stream() -> None:
    prompt = "word " * 2000  # 10,000 bytes: a prompt of up to about 10,000 tokens
    usage = {"prompt_tokens": 4000, "completion_tokens": 1, "total_tokens": 4001}
    transport = ScriptedTransport(Respond.stream(chunk_events(["x"], finish="stop",
                                                              usage=usage)))
    async with supervisor(transport, FakeClock()) as sup:
        async with sup.stream(model=MODEL,
                              messages=[{"role": "user", "content": prompt}]) as stream:
            await autojump(sup._clock, stream.collect())  # type: ignore[arg-type]
        stats = sup.statistics()
    assert stats.usage_anomalies == 0
    assert stats.prompt_tokens == 4000


async def test_a_stream_says_whether_it_is_done_and_has_no_result_before() -> None:
    transport = ScriptedTransport(Respond.stream(chunk_events(["a", "b"], finish="stop")))
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=1) as stream:
        assert stream.done is False
        await anext(aiter(stream))
        with pytest.raises(RuntimeError, match="has not finished"):
            stream.result  # noqa: B018 - the property raises
        rest = [delta async for delta in stream]
        assert stream.done is True
        assert stream.result.content == "ab"
        assert rest


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_calls_without_a_priority_go_before_priority_one(stream: bool) -> None:
    order: list[str] = []
    step = (Respond.stream(chunk_events(["x"], finish="stop")) if stream else completion("x"))
    transport = ScriptedTransport(step, step)
    async with supervisor(transport, FakeClock(), limits=Limits(concurrency=1)) as sup:
        async def call(name: str, **priority: Any) -> None:
            if stream:
                async with sup.stream(model=MODEL, messages=QUESTION, **priority) as reading:
                    await reading.collect()
            else:
                await sup.chat(model=MODEL, messages=QUESTION, **priority)
            order.append(name)

        await queued_in_order(sup, call("later", priority=1), call("default"))
    assert order == ["default", "later"]


async def test_a_chat_cut_by_closing_the_supervisor_says_so() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(completion("never sent"), clock=clock, send_delay=1000.0)
    sup = Supervisor(transport=transport, clock=clock, limits=Limits.unlimited(),
                     drain_timeout=0.0)
    async with sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
    with pytest.raises(SupervisorClosedError,
                       match=r"^the supervisor closed before the request finished"):
        await call


def usage_reply(prompt: int, completion: int) -> Respond:
    return Respond.json(
        {"id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                   "total_tokens": prompt + completion, "cached_tokens": prompt}})


def prompt_ceiling(**body: Any) -> int:
    from kimi_actors.protocol.tokens import prompt_token_ceiling
    from kimi_actors.transport import json_body

    return prompt_token_ceiling(body, len(json_body(body)))


async def test_an_implausible_usage_is_capped_counted_and_logged_with_both_ceilings(
        events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(usage_reply(10**9, 10**9))
    async with supervisor(transport, FakeClock(), limits=Limits(tpm=10**6)) as sup:
        await sup.chat(model=MODEL, messages=QUESTION, max_tokens=50)
        stats = sup.statistics()
    ceiling = prompt_ceiling(model=MODEL, messages=QUESTION, max_tokens=50)
    assert (stats.usage_anomalies, stats.prompt_tokens, stats.completion_tokens) == (
        1, ceiling, 50)
    assert stats.tokens_settled == ceiling + 50
    [warning] = [e for e in events if e["event"] == "usage_implausible"]
    assert warning == {"event": "usage_implausible", "log_level": "warning",
                       "prompt_tokens": 10**9, "completion_tokens": 10**9,
                       "prompt_ceiling": ceiling, "completion_ceiling": 50}


@pytest.mark.parametrize(("prompt_over", "completion_over"), [(0, 0), (1, 0), (0, 1)])
async def test_usage_is_implausible_only_above_a_ceiling(prompt_over: int,
                                                        completion_over: int) -> None:
    ceiling = prompt_ceiling(model=MODEL, messages=QUESTION, max_tokens=50)
    transport = ScriptedTransport(usage_reply(ceiling + prompt_over, 50 + completion_over))
    async with supervisor(transport, FakeClock()) as sup:
        await sup.chat(model=MODEL, messages=QUESTION, max_tokens=50)
        stats = sup.statistics()
    assert stats.usage_anomalies == (1 if prompt_over or completion_over else 0)
    assert (stats.prompt_tokens, stats.completion_tokens) == (ceiling, 50)


async def test_without_a_budget_any_completion_up_to_the_context_is_plausible() -> None:
    transport = ScriptedTransport(usage_reply(5, 5000))
    async with supervisor(transport, FakeClock(), default_max_tokens=100) as sup:
        await sup.chat(model=MODEL, messages=QUESTION)
        stats = sup.statistics()
    assert (stats.usage_anomalies, stats.completion_tokens) == (0, 5000)


async def test_a_long_prompts_usage_is_plausible_for_a_chat() -> None:
    prompt = "word " * 2000
    transport = ScriptedTransport(usage_reply(4000, 1))
    async with supervisor(transport, FakeClock()) as sup:
        await sup.chat(model=MODEL, messages=[{"role": "user", "content": prompt}])
        stats = sup.statistics()
    assert (stats.usage_anomalies, stats.prompt_tokens) == (0, 4000)


@pytest.mark.parametrize(("prompt", "settled"), [(0, 0), (1, 1 + 100), (7, 7 + 100)])
async def test_the_reservation_is_settled_at_the_reported_prompt_plus_the_default_budget(
        prompt: int, settled: int) -> None:
    # A reported prompt of no tokens is no count: the estimate stands (nothing settled).
    transport = ScriptedTransport(usage_reply(prompt, 1))
    async with supervisor(transport, FakeClock(), limits=Limits(tpm=10**6),
                          default_max_tokens=100) as sup:
        await sup.chat(model=MODEL, messages=QUESTION)
        assert sup.statistics().tokens_settled == settled


async def test_a_rate_limit_is_logged_with_its_dimension_wait_request_and_message(
        events: list[dict[str, Any]]) -> None:
    limited = Respond.json({"error": {
        "type": "rate_limit_reached_error",
        "message": "Your account org-x<ak-y> request reached organization max RPM: 3, please "
                   "try again after 2 seconds"}}, status=429, headers={"Msh-Request-Id": "req-429"})
    transport = ScriptedTransport(limited, completion("ok"))
    async with supervisor(transport, FakeClock(), limits=Limits(rpm=100)) as sup:
        await autojump(sup._clock, sup.chat(model=MODEL, messages=QUESTION))  # type: ignore[arg-type]
    [limited_event] = [e for e in events if e["event"] == "rate_limited"]
    assert limited_event["dimension"] == "rpm"
    assert limited_event["retry_after"] == 2.0
    assert limited_event["request_id"] == "req-429"
    assert "organization max RPM: 3" in limited_event["message"]
    [lowered] = [e for e in events if e["event"] == "limit_lowered_to_server_limit"]
    assert (lowered["dimension"], lowered["limit"], lowered["log_level"]) == ("rpm", 3, "warning")


async def test_an_attempt_is_finished_exactly_once() -> None:
    transport = ScriptedTransport()
    async with supervisor(transport, FakeClock()) as sup:
        from kimi_actors.protocol.classify import Outcome

        rt = sup._runtime
        async with rt.attempt(1, priority=0, first=True, deadline=None) as attempt:
            attempt.finish(Outcome(action=Action.SUCCESS))
            assert attempt.finished is True
            with pytest.raises(RuntimeError, match=r"^an attempt is finished once$"):
                attempt.finish(Outcome(action=Action.SUCCESS))


async def test_a_recovered_account_says_exactly_how_long_it_was_refused(
        events: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(AUTH, completion("back"), clock=clock)
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0)) as sup:
        clock.advance(0.25)
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(30.0)  # exactly the cool-down: the probe goes now, not a tick later
        transport.send_delay = 0.2504
        assert (await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))).content == "back"
    [recovered] = [e for e in events if e["event"] == "account_recovered"]
    assert recovered["refused_for"] == 30.25  # 30.2504 s, to the millisecond


async def test_an_account_refused_again_after_recovering_is_probed_again() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(AUTH, completion("back"), AUTH, completion("back again"))
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(30.0)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "back"
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(30.0)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "back again"
    assert len(transport.requests) == 4


def slow(respond_after: float, *, then: Then) -> Respond:
    """A stream that sends nothing for ``respond_after`` seconds, then ends with ``then``."""
    events: list[bytes | Gap] = [Gap(respond_after)]
    if then is Then.END:
        events += chunk_events(["late"], finish="stop")
    return Respond.stream(events, then=then)


async def _trip_then_probe(sup: Supervisor, clock: FakeClock) -> tuple[asyncio.Task[Any],
                                                                       asyncio.Task[Any]]:
    """A slow stream admitted while CLOSED, two 500s that trip the breaker, the cool-down,
    then one probe that stalls: returns the slow reader and the probe."""
    early = asyncio.create_task(_read(sup))
    await turns()
    await trip(sup)
    assert sup.statistics().breaker_state == "open"
    clock.advance(5.0)
    probe = asyncio.create_task(hold_a_stream(sup))
    await turns()
    assert sup.statistics().breaker_state == "half_open"
    return early, probe


@pytest.mark.parametrize("then", [Then.END, Then.DROP], ids=["success", "failure"])
async def test_an_answer_from_before_a_trip_neither_closes_nor_trips_the_new_episode(
        then: Then) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(slow(8.0, then=then), SERVER_ERROR, SERVER_ERROR,
                                  Respond.stream([], then=Then.STALL), clock=clock)
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE,
                          resume=ResumePolicy(max_resumes=0)) as sup:
        early, probe = await _trip_then_probe(sup, clock)
        clock.advance(3.0)  # the early stream answers now, from the episode before the trip
        await asyncio.wait([early])
        assert sup.statistics().breaker_state == "half_open"  # only the probe decides
        probe.cancel()
        await asyncio.wait([probe])


async def test_an_ignored_answer_from_before_a_trip_leaves_the_probe_slot_taken() -> None:
    clock = FakeClock()
    bad_request = Respond.json({"error": {"type": "invalid_request_error", "message": "no"}},
                               status=400)
    transport = ScriptedTransport(bad_request, SERVER_ERROR, SERVER_ERROR,
                                  Respond.stream([], then=Then.STALL), clock=clock,
                                  send_delay=0.0)
    breaker = BreakerPolicy(min_calls=2, failure_rate=0.5, open_for=5.0, half_open_probes=1)
    async with supervisor(transport, clock, breaker=breaker, retry=ONCE) as sup:
        transport.send_delay = 8.0  # the 400 takes 8 s to come back
        early = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
        transport.send_delay = 0.0
        await trip(sup)
        clock.advance(5.0)
        probe = asyncio.create_task(hold_a_stream(sup))
        await turns()
        clock.advance(3.0)
        with pytest.raises(BadRequestError):
            await early
        sent = len(transport.requests)
        another = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
        assert len(transport.requests) == sent  # the probe's slot is still the probe's
        another.cancel()
        probe.cancel()
        await asyncio.wait([another, probe])


async def test_a_trip_is_logged_with_its_states_open_time_and_reason(
        events: list[dict[str, Any]]) -> None:
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR)
    async with supervisor(transport, FakeClock(), breaker=TRIPPY, retry=ONCE) as sup:
        await trip(sup)
    [opened] = [e for e in events if e["event"] == "breaker_transition"]
    assert (opened["log_level"], opened["before"], opened["after"], opened["open_for"]) == (
        "warning", "closed", "open", 5.0)
    assert opened["reason"]


async def test_an_overload_that_names_a_wait_keeps_the_breaker_open_that_long(
        events: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    busy = Respond.json({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                        status=429, headers={"Retry-After": "20"})
    transport = ScriptedTransport(busy, busy, completion("after"))
    # One slot: the working concurrency is at its floor, so overload is the breaker's.
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE,
                          limits=Limits(concurrency=1)) as sup:
        assert (await autojump(clock, sup.chat(model=MODEL, messages=QUESTION))).content \
            == "after"
    [opened] = [e for e in events if e["event"] == "breaker_transition" and e["after"] == "open"]
    assert opened["open_for"] == 20.0  # TRIPPY's own open_for is shorter


async def test_a_plain_http_base_url_is_warned_about_with_its_host(
        events: list[dict[str, Any]]) -> None:
    from kimi_actors.actors import supervisor as module

    module._warned_cleartext.discard("kimi.example.internal")
    Supervisor(api_key="sk-cleartext-test-0123456789", base_url="http://kimi.example.internal/v1")
    [warning] = [e for e in events if e["event"] == "cleartext_api_key"]
    assert warning["host"] == "kimi.example.internal"
    assert warning["base_url"] == "http://kimi.example.internal/v1"
    assert warning["message"] == ("base_url is plain http:// to kimi.example.internal: the API "
                                  "key is sent unencrypted; use https://")


async def test_an_answer_to_a_call_sent_before_the_refusal_does_not_lift_it() -> None:
    # Only the probe decides that the account is back.
    clock = FakeClock()
    early = Respond.stream([Gap(5.0), *chunk_events(["fine"], finish="stop")])
    transport = ScriptedTransport(early, AUTH, clock=clock)
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0)) as sup:
        reading = asyncio.create_task(_read(sup))
        await turns()
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(5.0)
        assert await reading == ("fine", 0)
        with pytest.raises(AuthenticationError):  # still refused: failed fast, not sent
            await sup.chat(model=MODEL, messages=QUESTION)
    assert len(transport.requests) == 2


async def test_a_call_waits_out_even_the_last_second_of_an_open_breaker() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR, completion("after"))
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE) as sup:
        await trip(sup)
        clock.advance(4.5)  # half a second of the five left
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
        assert len(transport.requests) == 2  # not sent while the breaker is open
        clock.advance(0.5)
        assert (await call).content == "after"


async def test_breaker_transitions_other_than_opening_are_logged_at_info(
        events: list[dict[str, Any]]) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, SERVER_ERROR, completion("probe"))
    breaker = BreakerPolicy(min_calls=2, failure_rate=0.5, open_for=5.0, half_open_probes=1)
    async with supervisor(transport, clock, breaker=breaker, retry=ONCE) as sup:
        assert sup.statistics().last_transport_error is None
        await trip(sup)
        clock.advance(5.0)
        await sup.chat(model=MODEL, messages=QUESTION)
    transitions = [(e["log_level"], e["before"], e["after"]) for e in events
                   if e["event"] == "breaker_transition"]
    assert transitions == [("warning", "closed", "open"), ("info", "open", "half_open"),
                           ("info", "half_open", "closed")]


async def test_a_call_cancelled_in_the_admission_queue_while_the_breaker_opened() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(Respond.stream([], then=Then.STALL))
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE,
                          limits=Limits(concurrency=1)) as sup:
        held = asyncio.create_task(hold_a_stream(sup))
        await turns()
        queued = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()  # through the breaker, waiting for the governor's one slot
        breaker = sup._runtime.breaker
        for _ in range(2):  # other processes' failures, say: the breaker opens meanwhile
            breaker.record_failure(clock.now(), epoch=breaker.epoch)
        assert sup.statistics().breaker_state == "open"
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        held.cancel()
        await asyncio.wait([held])


async def test_a_200_json_that_is_not_a_completion_fails_that_request_only() -> None:
    not_a_completion = Respond.json({"id": "c1", "object": "chat.completion",
                                     "choices": [{"index": 0, "message": 5}]})
    transport = ScriptedTransport(not_a_completion, completion("the next one"))
    async with supervisor(transport, FakeClock(), retry=ONCE) as sup:
        with pytest.raises(ProtocolError):
            await sup.chat(model=MODEL, messages=QUESTION)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "the next one"


async def test_the_usage_of_a_segment_that_broke_is_not_counted() -> None:
    usage = {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41}
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a"], finish="stop", usage=usage, done=False),
                       then=Then.DROP),                      # usage came, then [DONE] did not
        Respond.stream(chunk_events([], finish="stop", role=False,
                                    usage={"prompt_tokens": 7, "completion_tokens": 0,
                                           "total_tokens": 7})))
    async with supervisor(transport, FakeClock()) as sup:
        await read(sup)
        stats = sup.statistics()
    assert stats.prompt_tokens == 7


async def test_a_stream_of_two_choices_settles_the_usage_its_result_reports() -> None:
    def event(*choices: dict[str, Any]) -> bytes:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                 "choices": list(choices)}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def usage(completion: int) -> dict[str, int]:
        return {"prompt_tokens": 10, "completion_tokens": completion,
                "total_tokens": 10 + completion}

    transport = ScriptedTransport(Respond.stream([
        event({"index": 0, "delta": {"role": "assistant", "content": "a"}},
              {"index": 1, "delta": {"role": "assistant", "content": "b"}}),
        event({"index": 0, "delta": {}, "finish_reason": "stop", "usage": usage(3)}),
        event({"index": 1, "delta": {}, "finish_reason": "stop", "usage": usage(5)}),
        b"data: [DONE]\n\n"]))
    async with supervisor(transport, FakeClock()) as sup:
        async with sup.stream(model=MODEL, messages=QUESTION, n=2) as stream:
            result = await autojump(sup._clock, stream.collect())  # type: ignore[arg-type]
        stats = sup.statistics()
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (10, 8)
    assert (stats.prompt_tokens, stats.completion_tokens) == (10, 8)


async def test_a_probe_cancelled_while_queued_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(AUTH, completion("back"))
    async with supervisor(transport, clock, fatal=FatalPolicy(cool_down=30.0),
                          limits=Limits(concurrency=1)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(30.0)
        governor = sup._runtime.gate
        slot = await governor.admit(1)  # the one slot is taken: the probe has to queue
        probe = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
        probe.cancel()
        await asyncio.wait([probe])
        governor.release(slot)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "back"


async def _look_away_then_read(stream: Any, clock: FakeClock, transport: ScriptedTransport,
                               total: int) -> list[str]:
    """Take one delta, look away for 40 s of the clock while the actor waits on the consumer,
    check nothing was taken for a stall, then read to the end."""
    got = [(await anext(aiter(stream))).content]
    await turns()
    for _ in range(4):
        clock.advance(10.0)
        await turns(5)
    assert len(transport.requests) == 1
    while len(got) < total:
        got.append((await anext(aiter(stream))).content)

    return got + await read_rest(stream, clock)


@pytest.mark.parametrize(("one_read", "buffer"), [(True, 2), (False, 4)],
                         ids=["a read larger than the buffer", "reads smaller than it"])
async def test_waiting_for_the_consumer_in_either_hand_off_is_not_a_stall(
        one_read: bool, buffer: int) -> None:
    # A large read hands over in pieces inside the read; small ones after it: both waits
    # must pause the read-idle clock.
    clock = FakeClock()
    pieces = [f"q{i} " for i in range(12)]
    events = chunk_events(pieces, done=False)
    transport = ScriptedTransport(
        Respond.stream([b"".join(events)] if one_read else events, then=Then.STALL),
        Respond.stream(chunk_events(["end"], finish="stop", role=False)),
        timeouts=Timeouts(read_idle=5.0, response=1000.0))
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=buffer) as stream:
        got = await _look_away_then_read(stream, clock, transport, len(pieces))
    assert "".join(got) == "".join(pieces) + "end"
    assert sup.statistics().resumes == 1



async def test_an_ignored_answer_arriving_while_the_breaker_is_open_is_that_error() -> None:
    clock = FakeClock()
    bad_request = Respond.json({"error": {"type": "invalid_request_error", "message": "no"}},
                               status=400)
    transport = ScriptedTransport(bad_request, SERVER_ERROR, SERVER_ERROR, clock=clock)
    async with supervisor(transport, clock, breaker=TRIPPY, retry=ONCE) as sup:
        transport.send_delay = 3.0
        early = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await turns()
        transport.send_delay = 0.0
        await trip(sup)
        assert sup.statistics().breaker_state == "open"
        clock.advance(3.0)  # the 400 comes back while the breaker is still open
        with pytest.raises(BadRequestError):
            await early


async def test_closing_a_supervisor_that_never_ran_does_nothing() -> None:
    sup = Supervisor(transport=ScriptedTransport(), clock=FakeClock())
    await sup.aclose()
    await sup.aclose()
    assert not sup.closed
