"""The actors on the test seams: ScriptedTransport answers, FakeClock keeps time. No sockets,
no wall time: every wait is a timer on the fake clock, moved by the test."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Sized
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from kimi_actors import (
    ConnectionFailedError,
    Limits,
    ResumeMode,
    ResumePolicy,
    RetryPolicy,
    ServerError,
    Supervisor,
)
from kimi_actors.testing import (
    Fail,
    FakeClock,
    Respond,
    ScriptedTransport,
    Then,
    chunk_events,
)

T = TypeVar("T")
MODEL = "kimi-k2.6"
QUESTION = [{"role": "user", "content": "Hello?"}]
SERVER_ERROR = Respond.json({"error": {"type": "server_error", "message": "boom"}},
                            status=500)
OVERLOADED = Respond.json({"error": {"type": "engine_overloaded_error",
                                     "message": "The engine is currently overloaded"}},
                          status=429)


def completion(content: str) -> Respond:
    return Respond.json(
        {"id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
        headers={"Msh-Request-Id": "req-scripted-1"})


@asynccontextmanager
async def supervisor(transport: ScriptedTransport, clock: FakeClock,
                     **options: Any) -> AsyncIterator[Supervisor]:
    options.setdefault("limits", Limits.unlimited())
    options.setdefault("rng", random.Random(7))
    async with Supervisor(transport=transport, clock=clock, **options) as sup:
        yield sup


async def settle() -> None:
    """Return once the loop has nothing ready to run but this task: every task is waiting (on
    the fake clock, a future, a transport's gap). Two quiet turns in a row, since a callback
    run in one turn may schedule the next. (``_ready`` is asyncio's run queue: a test harness
    may look, as trio's autojump clock looks at its own scheduler.)"""
    loop = asyncio.get_running_loop()
    ready: Sized = loop._ready  # type: ignore[attr-defined]
    quiet = 0
    while quiet < 2:
        await asyncio.sleep(0)
        quiet = quiet + 1 if not ready else 0


async def autojump(clock: FakeClock, awaitable: Awaitable[T], *, steps: int = 10_000) -> T:
    """Run ``awaitable``, jumping the clock to its next timer whenever nothing is ready to run
    (as trio's autojump clock does): backoffs pass at once, and in order."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(steps):
        await settle()  # time does not pass while work is ready
        if task.done():
            return task.result()
        deadline = clock.next_deadline()
        if deadline is not None:
            clock.advance(max(0.0, deadline - clock.now()))
    task.cancel()
    raise AssertionError(f"not finished after {steps} clock jumps")


async def read(sup: Supervisor, **body: Any) -> tuple[str, int]:
    clock = sup._clock
    assert isinstance(clock, FakeClock)
    return await autojump(clock, _read(sup, **body))


async def _read(sup: Supervisor, **body: Any) -> tuple[str, int]:
    text, restarts = "", 0
    async with sup.stream(model=MODEL, messages=QUESTION, **body) as stream:
        async for delta in stream:
            if delta.restart:
                text, restarts = "", restarts + 1
            text += delta.content
    return text, restarts


async def test_a_backoff_waits_on_the_clock_not_on_wall_time() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(OVERLOADED, completion("fine"))
    async with supervisor(transport, clock) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        assert len(transport.requests) == 1
        deadline = clock.next_deadline()
        assert deadline is not None
        assert 0 < deadline <= RetryPolicy().base
        clock.advance(deadline)
        result = await call
    assert result.content == "fine"
    assert len(transport.requests) == 2


async def test_the_server_named_wait_is_honoured_in_full() -> None:
    clock = FakeClock()
    limited = Respond.json({"error": {
        "type": "rate_limit_reached_error",
        "message": "Your account org-x<ak-y> request reached organization max RPM: 3, please "
                   "try again after 7 seconds"}}, status=429)
    transport = ScriptedTransport(limited, completion("after the wait"))
    async with supervisor(transport, clock) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        clock.advance(6.99)
        assert len(transport.requests) == 1
        assert not call.done()
        clock.advance(1.0)  # the wait, with its jitter of at most 10% (0.7 s)
        result = await call
    assert result.content == "after the wait"
    assert sup.statistics().rate_limited == 1


async def test_the_request_id_reaches_the_result() -> None:
    transport = ScriptedTransport(completion("x"))
    async with supervisor(transport, FakeClock()) as sup:
        result = await sup.chat(model=MODEL, messages=QUESTION)
    assert result.request_id == "req-scripted-1"


async def test_a_retry_budget_nothing_can_refill_fails_instead_of_retrying() -> None:
    transport = ScriptedTransport(SERVER_ERROR, completion("never sent"))
    retry = RetryPolicy(budget_floor=0, budget_ratio=0.0)
    async with supervisor(transport, FakeClock(), retry=retry) as sup:
        with pytest.raises(ServerError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert len(transport.requests) == 1
    assert any("retry budget is spent" in note for note in info.value.__notes__)


async def test_a_resume_sends_exactly_the_text_received_as_partial() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel", "lo"], done=False), then=Then.DROP),
        Respond.stream(chunk_events([" world"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock()) as sup:
        text, restarts = await read(sup)
    assert (text, restarts) == ("Hello world", 0)
    resumed = transport.requests[1].body["messages"]
    assert resumed[:-1] == QUESTION
    assert resumed[-1] == {"role": "assistant", "content": "Hello", "partial": True}
    assert sup.statistics().resumes == 1


@pytest.mark.parametrize("drops", [2, 3])
async def test_max_resumes_is_exactly_the_number_of_recoveries(drops: int) -> None:
    steps = [Respond.stream(chunk_events([f"p{i} "], done=False, role=i == 0), then=Then.DROP)
             for i in range(drops)]
    transport = ScriptedTransport(*steps,
                                  Respond.stream(chunk_events(["end"], finish="stop")))
    async with supervisor(transport, FakeClock(), resume=ResumePolicy(max_resumes=2)) as sup:
        if drops <= 2:
            text, _ = await read(sup)
            assert text == "".join(f"p{i} " for i in range(drops)) + "end"
        else:
            with pytest.raises(ConnectionFailedError) as info:
                await read(sup)
            assert any("gave up after 2 stream recoveries" in note
                       for note in info.value.__notes__)
    assert len(transport.requests) == min(drops, 2) + 1


async def test_several_choices_restart_instead_of_resuming() -> None:
    two = [b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]}'
           b"\n\n",
           b'data: {"choices": [{"index": 1, "delta": {"role": "assistant", "content": "b"}}]}'
           b"\n\n"]
    transport = ScriptedTransport(
        Respond.stream(two, then=Then.DROP),
        Respond.stream([*two, b'data: {"choices": [{"index": 0, "delta": {}, '
                              b'"finish_reason": "stop"}, {"index": 1, "delta": {}, '
                              b'"finish_reason": "stop"}]}\n\n', b"data: [DONE]\n\n"]))
    async with supervisor(transport, FakeClock()) as sup:
        text, restarts = await read(sup, n=2)
    assert restarts == 1
    assert text == "ab"  # after the restart delta: both choices of the second stream
    assert all(message.get("partial") is None
               for message in transport.requests[1].body["messages"])


async def test_resume_mode_fail_fails_the_stream_on_a_drop() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], done=False), then=Then.DROP))
    async with supervisor(transport, FakeClock(),
                          resume=ResumePolicy(mode=ResumeMode.FAIL)) as sup:
        with pytest.raises(ConnectionFailedError):
            await read(sup)
    assert len(transport.requests) == 1


async def test_a_stream_that_ends_cleanly_without_done_is_resumed() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["Hel"], finish="stop", done=False)),  # no [DONE]
        Respond.stream(chunk_events(["lo"], finish="stop", role=False)))
    async with supervisor(transport, FakeClock()) as sup:
        text, _ = await read(sup)
    assert text == "Hello"
    assert transport.requests[1].body["messages"][-1]["content"] == "Hel"


async def test_a_drop_after_the_whole_budget_finishes_locally() -> None:
    transport = ScriptedTransport(
        Respond.stream(chunk_events(["a", "b", "c"], done=False), then=Then.DROP))
    async with supervisor(transport, FakeClock()) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, max_completion_tokens=3) as stream:
        result = await stream.collect()  # no wait at all: it finished locally
    assert result.content == "abc"
    assert result.finish_reason == "length"
    assert len(transport.requests) == 1


async def test_a_connection_failure_before_any_answer_is_retried() -> None:
    transport = ScriptedTransport(Fail(ConnectionFailedError("refused", reason="refused")),
                                  completion("second time"))
    clock = FakeClock()
    async with supervisor(transport, clock) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
        clock.advance(RetryPolicy().base)
        result = await call
    assert result.content == "second time"
    assert sup.statistics().transport_errors == 1
