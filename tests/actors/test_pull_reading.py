"""Who reads a stream's body: the consumer in its own task whenever it waits for a delta (no
task switch per delta), from the first event when it waited as the body opened; the actor
until a late consumer waits, and again while the consumer is away."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from test_actors_scripted import MODEL, QUESTION, autojump, settle, supervisor

from kimi_actors import RetryPolicy, Supervisor
from kimi_actors.testing import FakeClock, Gap, Respond, ScriptedTransport, Then, chunk_events

PIECES = [f"t{i} " for i in range(8)]


async def turns(count: int = 10) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def spaced(pieces: list[str], *, then: Then = Then.END, done: bool = True) -> Respond:
    """A stream whose events arrive one second apart: every read waits on the network."""
    events: list[bytes | Gap] = []
    for event in chunk_events(pieces, finish="stop" if done else None, done=done):
        events += [event, Gap(1.0)]
    return Respond.stream(events[:-1], then=then)


@pytest.mark.parametrize("first_event", ["with the headers", "a second later"])
async def test_a_consumer_that_keeps_up_reads_the_body_in_its_own_task(first_event: str,
                                                                     ) -> None:
    """An event there with the headers the actor reads (it has arrived), leaving the wait for
    the next to the consumer, waiting for its first delta: no hand-off asked for. An event
    still to come, the consumer reads too."""
    script = spaced(PIECES)
    by_actor = 1
    if first_event == "a second later":
        script, by_actor = Respond.stream([Gap(1.0), *(script.events or ())]), 0
    clock = FakeClock()
    transport = ScriptedTransport(script, clock=clock)
    async with supervisor(transport, clock) as sup:
        async def consume() -> str:
            async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                return "".join([delta.content async for delta in stream])

        consumer = asyncio.ensure_future(consume())
        consumer.set_name("the-consumer")
        text = await autojump(clock, consumer)
        assert sup.statistics().attempts == 1
    assert text == "".join(PIECES)
    readers = transport.readers
    assert len(readers) == len(PIECES) + 2  # the pieces, the finish and [DONE]
    assert "the-consumer" not in readers[:by_actor]
    assert set(readers[by_actor:]) == {"the-consumer"}


async def test_a_consumer_that_comes_late_takes_over_the_actors_read() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(spaced(PIECES), clock=clock)
    async with supervisor(transport, clock) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        await settle()  # the body opened with nobody waiting: the actor reads

        async def consume() -> str:
            return "".join([delta.content async for delta in stream])

        consumer = asyncio.ensure_future(consume())
        consumer.set_name("the-consumer")
        text = await autojump(clock, consumer)
    assert text == "".join(PIECES)
    readers = transport.readers
    assert len(readers) == len(PIECES) + 2
    # The actor read the first event and the one the consumer asked it to hand over...
    assert "the-consumer" not in readers[:2]
    # ... and every later one was read by the consumer itself.
    assert set(readers[2:]) == {"the-consumer"}


async def test_a_consumer_gone_before_it_read_the_body_it_was_offered_leaves_it_to_the_actor(
        ) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(spaced(PIECES), clock=clock, send_delay=1.0)
    async with supervisor(transport, clock) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=64) as stream:
        first = asyncio.ensure_future(anext(stream))
        await settle()  # the consumer waits for its first delta, the request to be sent
        clock.advance(1.0)  # the body opens on the next turn and is offered to the consumer,
        asyncio.get_running_loop().call_soon(first.cancel)  # which is cancelled before it reads
        await settle()
        assert first.cancelled()
        # Nobody consumes: the actor reads the body ahead, as for a consumer that went away
        # (not only when the watchdog's read_idle finds nobody reading).
        await autojump(clock, clock.sleep(len(PIECES) + 1.0))
        assert transport.events_read == len(PIECES) + 2
        assert stream.buffered >= len(PIECES)
        text = "".join([delta.content async for delta in stream])
    assert text == "".join(PIECES)


async def test_the_actor_reads_ahead_while_the_consumer_is_away() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(spaced(PIECES), clock=clock)
    async with supervisor(transport, clock) as sup, \
            sup.stream(model=MODEL, messages=QUESTION, buffer=64) as stream:
        async def consume() -> list[str]:
            got = []
            async for delta in stream:
                got.append(delta.content)
                if len(got) == 4:
                    # The consumer looks away; the actor goes on reading meanwhile.
                    before = transport.events_read
                    await clock.sleep(3.5)
                    assert transport.events_read == before + 3
                    assert stream.buffered == 3
            return got

        consumer = asyncio.ensure_future(consume())
        consumer.set_name("the-consumer")
        got = await autojump(clock, consumer)
    assert "".join(got) == "".join(PIECES)
    assert clock.now() == len(PIECES) + 1.0  # no read waited for the consumer's pause


class GeneratorOnly(ScriptedTransport):
    """Streams that offer only ``chunks()``, as a transport written before ``read_chunk``."""

    @asynccontextmanager
    async def stream(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                     on_sent: Callable[[], None] | None = None) -> AsyncIterator[Any]:
        async with super().stream(path, body, headers=headers, on_sent=on_sent) as inner:
            yield SimpleNamespace(status=inner.status, headers=inner.headers,
                                  content_type=inner.content_type, chunks=inner.chunks,
                                  read=inner.read)


async def cancel_mid_read(transport: ScriptedTransport, clock: FakeClock,
                          sup: Supervisor) -> list[str]:
    """Read three deltas, cancel the consumer while it waits inside the body's next read,
    then read the rest in another task."""
    got: list[str] = []
    async with sup.stream(model=MODEL, messages=QUESTION) as stream:
        async def take(count: int) -> None:
            while len(got) < count:
                got.append((await anext(stream)).content)

        reading = asyncio.ensure_future(take(len(PIECES)))
        await turns()
        while len(got) < 3:  # the events come a second apart
            clock.advance(1.0)
            await turns()
        # The consumer came straight back for the next delta and reads the body itself:
        # cancel it while it waits on the network.
        assert transport.readers[-1] == reading.get_name()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        assert reading.cancelled()
        assert len(got) == 3
        await autojump(clock, take(len(PIECES)))
    return got


async def test_a_consumer_cancelled_mid_read_loses_nothing_and_the_stream_goes_on() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(spaced(PIECES), clock=clock)
    async with supervisor(transport, clock) as sup:
        got = await cancel_mid_read(transport, clock, sup)
        assert sup.statistics().resumes == 0
    assert "".join(got) == "".join(PIECES)
    assert len(transport.requests) == 1  # the read was only interrupted, not broken
    # The gap the cancelled read waited in kept its end: piece i still came at i seconds.
    assert clock.now() == len(PIECES) - 1.0


async def test_through_a_generator_only_stream_the_broken_read_is_resumed() -> None:
    clock = FakeClock()
    transport = GeneratorOnly(
        spaced(PIECES),
        Respond.stream(chunk_events(PIECES[3:], finish="stop", role=False)), clock=clock)
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup:
        got = await cancel_mid_read(transport, clock, sup)
        assert sup.statistics().resumes == 1
    assert "".join(got) == "".join(PIECES)
    assert transport.requests[1].body["messages"][-1] == {
        "role": "assistant", "content": "".join(PIECES[:3]), "partial": True}


async def test_a_finished_stream_is_freed_by_reference_counting_alone() -> None:
    """No reference cycle holds a stream's objects (actor, reader, watchdog, response): once
    the stream is done they go at once, not at the cyclic collector's next pass."""
    clock = FakeClock()
    transport = ScriptedTransport(spaced(PIECES), clock=clock)
    async with supervisor(transport, clock) as sup:
        gc.disable()
        try:
            async def consume() -> weakref.ref[Any]:
                async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                    assert "".join([delta.content async for delta in stream]) == "".join(
                        PIECES)
                    return weakref.ref(stream._actor)

            actor = await autojump(clock, consume())
            await turns()
            assert actor() is None
        finally:
            gc.enable()
