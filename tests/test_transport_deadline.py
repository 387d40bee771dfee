"""The transport's per-exchange deadline: one lazily moved timer that interrupts the task as
``asyncio.timeout`` does. (The phases' bounds end to end are tested against hostile servers
in tests/actors/test_hostile_streams.py and tests/actors/test_edges.py.)"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import web
from hostile import completion, serve

from kimi_actors import Timeouts
from kimi_actors.errors import FirstByteTimeoutError, ReadIdleTimeoutError
from kimi_actors.transport import Transport, _Deadline

KEY = "sk-deadline-test-000000000000"

SAFETY = 5.0  # every wait here ends long before this


async def _interrupted(deadline: _Deadline, during: asyncio.Future[None]) -> float:
    """Await ``during`` under ``deadline``; the loop time it took the deadline to interrupt."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline.start()
    try:
        await during
    except asyncio.CancelledError:
        assert deadline.stop(), "the cancellation must be the deadline's own"
        return loop.time() - started
    finally:
        deadline.stop()
    raise AssertionError("the deadline did not interrupt")


async def test_a_bound_moved_later_fires_at_the_new_bound_not_the_first_timer() -> None:
    # The first timer fires first_byte after the start; the request is sent later, which
    # moves the bound to first_byte from sending: the timer re-arms instead of ending early.
    loop = asyncio.get_running_loop()
    deadline = _Deadline(Timeouts(connect=5.0), first_byte=0.05, total=None, on_sent=None)
    sent_at = loop.create_future()

    def send() -> None:
        deadline.sent()
        sent_at.set_result(loop.time())

    loop.call_later(0.03, send)
    async with asyncio.timeout(SAFETY):
        took = await _interrupted(deadline, loop.create_future())
    assert took >= 0.03 + 0.05
    assert deadline.phase == "first_byte"
    assert type(deadline.timed_out()) is FirstByteTimeoutError


async def test_a_bound_moved_earlier_re_arms_the_timer_earlier() -> None:
    loop = asyncio.get_running_loop()
    deadline = _Deadline(Timeouts(read_idle=0.05), first_byte=600.0, total=None, on_sent=None)
    loop.call_soon(deadline.reading)
    async with asyncio.timeout(SAFETY):  # fails here if the 600 s timer stayed armed
        await _interrupted(deadline, loop.create_future())
    error = deadline.timed_out()
    assert type(error) is ReadIdleTimeoutError
    assert error.timeout == 0.05


async def test_the_total_bound_caps_every_phase() -> None:
    loop = asyncio.get_running_loop()
    deadline = _Deadline(Timeouts(read_idle=600.0), first_byte=600.0, total=0.05,
                         on_sent=None)
    loop.call_soon(deadline.reading)
    async with asyncio.timeout(SAFETY):
        await _interrupted(deadline, loop.create_future())
    assert deadline.phase == "response"
    assert deadline.limit == 0.05


async def test_an_outside_cancellation_is_not_taken_for_a_timeout() -> None:
    deadline = _Deadline(Timeouts(), first_byte=600.0, total=None, on_sent=None)
    started = asyncio.Event()

    async def exchange() -> None:
        deadline.start()
        try:
            started.set()
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            assert not deadline.stop()
            raise
        finally:
            deadline.stop()

    task = asyncio.create_task(exchange())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadline.expired
    assert task.cancelling() == 1  # the outside request stays counted


async def test_an_outside_cancellation_racing_the_timer_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    deadline = _Deadline(Timeouts(connect=1e-9), first_byte=1e-9, total=None, on_sent=None)
    armed = asyncio.Event()
    outcome: list[bool] = []

    async def exchange() -> None:
        deadline.start()
        armed.set()
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            outcome.append(deadline.stop())
            raise
        finally:
            deadline.stop()

    task = asyncio.create_task(exchange())
    await armed.wait()
    # The timer fires and somebody else cancels the task before it runs again.
    deadline._fire()
    assert deadline.expired
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == [False]
    assert task.cancelling() == 1  # the outside request stays counted


async def test_a_stopped_deadline_never_interrupts() -> None:
    loop = asyncio.get_running_loop()
    deadline = _Deadline(Timeouts(connect=0.01), first_byte=0.01, total=None, on_sent=None)
    deadline.start()
    assert not deadline.stop()
    later = loop.create_future()
    loop.call_later(0.05, later.set_result, None)  # well past the bound
    await later  # a CancelledError here would be the stopped deadline's
    assert not deadline.expired


async def test_a_deadline_needs_a_task() -> None:
    loop = asyncio.get_running_loop()
    deadline = _Deadline(Timeouts(), first_byte=1.0, total=None, on_sent=None)
    raised: asyncio.Future[BaseException | None] = loop.create_future()

    def outside_any_task() -> None:
        try:
            deadline.start()
        except RuntimeError as exc:
            raised.set_result(exc)
        else:
            raised.set_result(None)

    loop.call_soon(outside_any_task)
    assert "inside a task" in str(await raised)


async def test_a_pooled_connection_does_not_keep_the_finished_exchange_alive() -> None:
    # The connection's socket callback runs in a copy of the context the exchange ran in,
    # which held the deadline; the deadline must not hold the task or on_sent after it.
    async def answer(request: web.Request) -> web.Response:
        return web.json_response(completion("pooled"))

    class Sent:
        def __call__(self) -> None:
            pass

    async with serve(answer) as base_url:
        transport = Transport(base_url=base_url, api_key=KEY, timeouts=Timeouts())
        try:
            on_sent = Sent()
            task = asyncio.create_task(
                transport.post("/chat/completions", b"{}", on_sent=on_sent))
            raw = await task
            assert raw.status == 200
            finished, sent = weakref.ref(task), weakref.ref(on_sent)
            del task, on_sent
            await asyncio.sleep(0)  # the loop lets go of the callback that resumed this task
            gc.collect()
            assert finished() is None
            assert sent() is None
        finally:
            await transport.close()
