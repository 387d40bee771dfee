"""Who reads a stream's body: the actor until the consumer waits for it, then the consumer in
its own task (no task switch per delta), and the actor again while the consumer is away."""

from __future__ import annotations

import asyncio

from test_actors_scripted import MODEL, QUESTION, autojump, supervisor

from kimi_actors import RetryPolicy
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


async def test_a_consumer_that_keeps_up_reads_the_body_in_its_own_task() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(spaced(PIECES), clock=clock)
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
    # The actor read the first event and the one the consumer asked it to hand over...
    assert "the-consumer" not in readers[:2]
    # ... and every later one was read by the consumer itself.
    assert set(readers[2:]) == {"the-consumer"}


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


async def test_a_consumer_cancelled_mid_read_loses_and_repeats_nothing() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(
        spaced(PIECES),
        Respond.stream(chunk_events(PIECES[3:], finish="stop", role=False)), clock=clock)
    async with supervisor(transport, clock, retry=RetryPolicy(base=0.001)) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        got: list[str] = []

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
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        assert reading.cancelled()
        assert len(got) == 3
        # The read it broke is resumed; iterating again goes on exactly where it stopped.
        await autojump(clock, take(len(PIECES)))
        assert sup.statistics().resumes == 1
    assert "".join(got) == "".join(PIECES)
    assert transport.requests[1].body["messages"][-1] == {
        "role": "assistant", "content": "".join(PIECES[:3]), "partial": True}
