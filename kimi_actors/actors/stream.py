"""The stream actor: reads one SSE stream into a bounded channel and repairs it when it breaks.

A stream that drops, stalls or garbles mid-way is continued through Kimi's Partial Mode: the
next request ends with ``{"role": "assistant", "content": <text so far>, "partial": true}`` and
the reply holds only the continuation, so the consumer receives exactly the missing text. When
Partial Mode cannot continue it (several choices, a tool call or reasoning in progress, JSON
mode, an endpoint that ignores ``partial``) or the policy says so, the actor restarts from
scratch and first sends a ``restart`` delta telling the consumer to discard what it got.
Nothing reaches the consumer twice.

Servers that ignore Partial Mode answer a resume request from the start. The first characters
of every continuation are therefore held back until they show whether they repeat the text
already received (:class:`_ResumeProbe`); a repeat, or a 400 that names ``partial``, turns the
recovery into a restart and switches Partial Mode off for the endpoint.

The channel is bounded in deltas: a slow consumer blocks the actor, aiohttp stops reading the
socket, and TCP slows the server, so memory stays flat whatever the consumer's speed. A
consumer that keeps up reads the socket in its own task (:class:`_Reader`), so a delta costs
no task switch on its way from the socket to the consumer.

Time is watched per complete event, not per socket read (:class:`_Watchdog`): a server that
trickles bytes or keep-alive comments without completing an event times out after
``read_idle``, and every attempt ends after ``response`` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, overload

from ..clock import EMPTY_CONTEXT, Clock, TimerHandle
from ..errors import BadRequestError, IncompleteStreamError, KimiError, timeout_error
from ..governance.decide import AttemptState, Step
from ..observe import emit
from ..policy import Timeouts
from ..protocol.chunks import ChatResult, ChunkAssembler, Delta, Usage, parse_completion
from ..protocol.classify import (
    REQUEST_ID_HEADER,
    Action,
    Outcome,
    classify_error,
    classify_response,
)
from ..protocol.sse import DONE, SSEDecoder
from ..protocol.tokens import admission_tokens, budget_keys, completion_budget
from ..telemetry import CallTelemetry
from ..transport import (
    StreamLike,
    StreamResponse,
    current_task_of,
    json_body,
)
from .request import CHAT_PATH
from .runtime import Runtime

__all__ = ["AwayCheck", "DeltaChannel", "StreamActor"]

#: How many characters of a continuation must match the text already received before the
#: continuation is taken for a restart from scratch.
PROBE_CHARS = 16
_PARTIAL_REFUSED = re.compile(r"\bpartial\b", re.IGNORECASE)


class AwayCheck:
    """Asks, on the loop's next turn, each reader whose consumer took its last delta during
    this one whether the consumer came back for more: one loop callback per turn, however
    many streams drained in it (one per delta cost a Handle and a bound method each). The
    check runs after the consumer's task step, as a callback of its own would."""

    __slots__ = ("_readers",)

    def __init__(self) -> None:
        self._readers: list[_Reader] = []

    def add(self, reader: _Reader) -> None:
        readers = self._readers
        readers.append(reader)
        if len(readers) == 1:
            # An explicit context: the call copies none.
            asyncio.get_running_loop().call_soon(self._check, context=EMPTY_CONTEXT)

    def _check(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.consumer_away()


class DeltaChannel:
    """The hand-off from one stream actor to its consumer, bounded in deltas.

    While an attempt's body is open its :class:`_Reader` is attached: a consumer that finds
    the channel empty and nobody reading reads the next deltas itself, in its own task, with
    no hand-off. Otherwise the actor reads and puts the deltas of one network read as one
    batch (one hand-off per read, not per delta), waiting while the consumer has ``limit``
    deltas it has not taken; a read larger than the limit goes in pieces. ``close()`` marks
    the end.
    """

    __slots__ = ("_away", "_batches", "_buffered", "_closed", "_getter", "_limit",
                 "_position", "_putter", "_reader", "_wanted", "_woken")

    def __init__(self, limit: int, away: AwayCheck | None = None) -> None:
        if limit < 1:
            raise ValueError(f"a DeltaChannel's limit must be >= 1, got {limit}")
        self._limit = limit
        #: Shared by a supervisor's streams (see AwayCheck).
        self._away = away or AwayCheck()
        # A list, not a deque: a deque's first block is 760 bytes, per open stream, and this
        # holds one or two batches (a few hundred at most).
        self._batches: list[list[Delta]] = []
        self._position = 0
        self._buffered = 0
        self._wanted = 0
        self._closed = False
        self._getter: asyncio.Future[Delta | None] | None = None
        #: A hand-off woke the consumer, which has not yet come back with the channel empty.
        self._woken = False
        self._putter: asyncio.Future[None] | None = None
        self._reader: _Reader | None = None

    @property
    def buffered(self) -> int:
        """Deltas handed over and not yet taken by the consumer."""
        return self._buffered

    @property
    def limit(self) -> int:
        return self._limit

    def would_block(self, count: int) -> bool:
        return self._buffered + count > self._limit

    def attach(self, reader: _Reader | None) -> None:
        """Offer an open body to the consumer (``None`` withdraws it)."""
        self._reader = reader

    async def put(self, batch: list[Delta]) -> None:
        """Hand ``batch`` over, emptying it. Interrupted (cancelled, timed out), it keeps
        exactly the deltas not yet handed over, so nothing is lost or given twice."""
        limit = self._limit
        while batch:
            wanted = min(len(batch), limit)
            while self._buffered + wanted > limit:
                self._wanted = wanted
                self._putter = future = asyncio.get_running_loop().create_future()
                try:
                    await future
                finally:
                    self._putter = None
            if len(batch) == wanted:
                piece = batch.copy()
                batch.clear()
            else:
                piece = batch[:wanted]
                del batch[:wanted]
            self._batches.append(piece)
            self._buffered += wanted
            getter = self._getter
            if getter is not None and not getter.done():
                getter.set_result(None)
                self._woken = True

    def close(self) -> None:
        self._closed = True
        _wake(self._getter)

    def get_nowait(self) -> Delta | None:
        """The next delta, or ``None`` when none is waiting."""
        batches = self._batches
        if not batches:
            return None
        head = batches[0]
        delta = head[self._position]
        self._position += 1
        if self._position == len(head):
            del batches[0]
            self._position = 0
            if not batches:
                self._drained()
        self._buffered -= 1
        if self._putter is not None and self._buffered + self._wanted <= self._limit:
            _wake(self._putter)
        return delta

    def take_ready(self) -> list[Delta]:
        """Every delta waiting, at once (empty when none is)."""
        batches = self._batches
        if not batches:
            return []
        ready = batches[0][self._position:]
        for batch in batches[1:]:
            ready += batch
        batches.clear()
        self._position = 0
        self._buffered = 0
        self._drained()
        if self._putter is not None:
            _wake(self._putter)
        return ready

    def _drained(self) -> None:
        """The consumer took the last delta. If it does not come back for more by the next
        turn of the loop, the actor reads ahead."""
        self._woken = False
        reader = self._reader
        if reader is not None and reader.holder is None and not reader.ended:
            self._away.add(reader)

    @property
    def closed(self) -> bool:
        return self._closed

    async def get(self) -> Delta | None:
        """The next delta; ``None`` once the channel is closed and empty."""
        while (delta := self.get_nowait()) is None:
            if self._closed:
                return None
            if (delta := await self.refill()) is not None:
                break
        return delta

    def puller(self) -> _Reader | None:
        """The open body's reader when no delta waits and nobody reads: the consumer may read
        the next deltas itself."""
        reader = self._reader
        if reader is not None and not self._batches and reader.holder is None \
                and not reader.ended:
            return reader
        return None

    def refill(self) -> Awaitable[Delta | None]:
        """What a consumer that found nothing waiting awaits before it looks again: its own
        read of the open body when nobody reads it (which gives it the first delta read, the
        rest landing here, with no hand-off), else the actor's next hand-off (``None``: look
        again). ``Stream`` awaits it itself: a frame less per delta than awaiting
        :meth:`get`."""
        self._woken = False
        reader = self._reader
        if reader is not None and not reader.ended:
            if reader.holder is None:
                return reader.pull()
            # The actor is reading: it hands this read over, and the next to the consumer.
            reader.handoff = True
        self._getter = future = asyncio.get_running_loop().create_future()
        return future

    def takes_over(self, reader: _Reader) -> bool:
        """The actor's next read would wait for the network: whether the consumer waits for
        it instead, and then reads it in its own task (no hand-off between two tasks). It
        does when it waits for a delta (woken now to look again) or was woken for the ones
        just handed over (it comes back for more)."""
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
        elif self._woken:
            self._woken = False  # once: the check below decides for the consumer away
        else:
            return False
        # Checked after the consumer's step, scheduled first: should it not come back for
        # more (cancelled, or away with deltas left), the actor reads ahead as usual.
        asyncio.get_running_loop().call_soon(reader.consumer_away, context=EMPTY_CONTEXT)
        return True

    def take_first(self, batch: list[Delta]) -> Delta:
        """The first of the deltas the consumer read itself, keeping the rest (nobody to
        wake, no bound: it asked for them)."""
        if self._batches:  # the consumer reads only when it found none: defensive, in order
            self._batches.append(batch)
            self._buffered += len(batch)
            delta = self.get_nowait()
            assert delta is not None
            return delta
        if len(batch) == 1:
            self._drained()
        else:
            self._batches.append(batch)
            self._position = 1
            self._buffered += len(batch) - 1
        return batch[0]


def _wake(future: asyncio.Future[Any] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _Watchdog:
    """Ends a stream attempt when no complete data event arrived for ``idle`` seconds, or when
    the attempt has lasted ``total`` seconds, by calling ``expired`` with the phase (which
    says whether it took it; ``final`` when it must).

    Noting an event stores a time and pausing or resuming sets a flag, so the per-read cost is
    a clock read; the one timer re-arms itself lazily (every ``idle`` seconds while paused).
    Time spent waiting for the consumer (a full channel) does not count.
    """

    __slots__ = ("_clock", "_ends", "_expired", "_idle", "_last", "_paused", "_timer",
                 "expired_phase", "overdue")

    def __init__(self, clock: Clock, expired: Callable[[str, bool], bool], *, idle: float,
                 total: float) -> None:
        self._clock = clock
        self._expired: Callable[[str, bool], bool] | None = expired
        self._idle = idle
        now = clock.now()
        self._last = now
        self._ends = now + total
        self._paused = False
        self.expired_phase: str | None = None
        #: read_idle passed while nobody was reading: the next reader checks at once.
        self.overdue = False
        self._timer: TimerHandle = clock.call_later(min(idle, total), self._check)

    def saw_event(self) -> None:
        self._last = self._clock.now()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        # The pending timer fires within ``idle`` and re-arms for ``_last + idle``.
        self._paused = False
        self._last = self._clock.now()

    def recheck(self) -> None:
        """Check again as soon as the reading that just began waits."""
        self.overdue = False
        self._timer.cancel()
        self._timer = self._clock.call_later(0.0, self._check)

    def _check(self) -> None:
        now = self._clock.now()
        if now >= self._ends:
            self._fire("response", final=True)
            return
        # One sum decides both firing and re-arming: rounding cannot re-arm at zero forever.
        due = now + self._idle if self._paused else self._last + self._idle
        if now >= due:
            if self._fire("read_idle"):
                return
            self.overdue = True
            due = now + self._idle
        self._timer = self._clock.call_later(max(min(due, self._ends) - now, 0.0),
                                             self._check)

    def _fire(self, phase: str, *, final: bool = False) -> bool:
        if self._expired is not None and self._expired(phase, final):
            self.expired_phase = phase
            return True
        return False

    def cancel(self) -> None:
        """Stop for good, and let go of the callback: its owner holds this watchdog, and the
        cycle left each stream's whole object graph to the cyclic collector."""
        self._timer.cancel()
        self._expired = None


_CONSUMER = "consumer"
_ACTOR = "actor"
_NO_EVENTS: list[str] = []


class _Reader:
    """One attempt's SSE body, read by whichever task needs its deltas next.

    The actor reads first, into the channel: what has arrived, and what comes next unless a
    consumer waits for a delta (or was just woken for one), which then waits for the next
    bytes itself (a stream without ``read_nowait``: the actor waits). A consumer that finds
    the channel empty while the actor reads asks for the reading (``handoff``): the actor
    hands that read over and stops. From then on a consumer waiting for a delta reads it in
    its own task (:meth:`pull`): no hand-off and no task switch between the socket and the
    consumer. When the consumer took its last delta and has not come back by the next turn
    of the loop, the actor reads ahead again, up to the channel's bound. ``holder`` says who
    reads; two never do at once. The watchdog interrupts whichever task reads (cancel, then
    uncancel, as asyncio.timeout does, without a scope's cost on every read). The body's end
    (``[DONE]``, the connection's end, an error, the watchdog) sets ``ended`` and wakes the
    actor, which owns what follows: the outcome, a retry, a resume.
    """

    __slots__ = ("_actor", "_chunks", "_decoder", "_failure", "_interrupted", "_loop",
                 "_next", "_nowait", "_pending", "_position", "_pulled", "_raw_errors", "_reading",
                 "_wakeup", "aborted", "ahead", "cap", "ended", "error", "flowing", "handoff",
                 "holder", "leftover", "watchdog")

    def __init__(self, actor: StreamActor, response: StreamLike, clock: Clock,
                 timeouts: Timeouts, cap: int) -> None:
        self._actor = actor
        # One read at a time when the stream offers it (safe to cancel), else its generator;
        # our own transport's read without its wrapper. (getattr, not isinstance against the
        # runtime-checkable protocol: that check costs ~10 µs.)
        read_chunk: Callable[[], Awaitable[bytes]] | None = getattr(response, "read_chunk", None)
        self._chunks: AsyncGenerator[bytes, None] | None = None
        #: The errors ``_next`` raises that ``_failure`` maps (our transport's own read).
        self._raw_errors: tuple[type[Exception], ...] = ()
        self._failure: Callable[[BaseException], KimiError] | None = None
        self._next: Callable[[], Awaitable[bytes]]
        #: A read that never waits, if the stream offers one (with read_chunk only: never
        #: beside a generator's read).
        self._nowait: Callable[[], bytes | None] | None = None
        if read_chunk is None:
            self._chunks = response.chunks()
            self._next = functools.partial(anext, self._chunks, b"")
        elif isinstance(response, StreamResponse):
            self._next, self._raw_errors = response.direct_read()
            self._failure = response.read_failure
        else:
            self._next = read_chunk
        if read_chunk is not None:
            self._nowait = getattr(response, "read_nowait", None)
        self._loop = asyncio.get_running_loop()
        self._decoder = SSEDecoder()
        #: The data of the events decoded and not yet parsed.
        self._pending: list[str] = []
        self._position = 0
        #: The task inside a read, and whether the watchdog (or the actor leaving) cancelled it.
        self._reading: asyncio.Task[Any] | None = None
        self._interrupted = False
        #: The consumer read a delta: the stream's first chunk is told.
        self._pulled = False
        self._wakeup: asyncio.Future[bool] | None = None
        #: The actor should read ahead when it next waits.
        self.ahead = False
        #: The consumer waits for the actor's read in progress, and reads after it.
        self.handoff = False
        self.cap = cap
        self.holder: str | None = None
        self.ended = False
        self.aborted = False
        self.flowing = False
        self.error: BaseException | None = None
        #: Deltas read and not handed over when a read-ahead was interrupted.
        self.leftover: list[Delta] = []
        self.watchdog = _Watchdog(clock, self._expired, idle=timeouts.read_idle,
                                  total=timeouts.response)

    def _parse(self, batch: list[Delta]) -> bool:
        """Parse the events already decoded into ``batch`` (about ``cap`` at most; the rest
        wait here); whether the read is over: deltas to return, or the body ended."""
        actor = self._actor
        assembler = actor._assembler
        events = self._pending
        position = self._position
        cap = self.cap
        while position < len(events):
            data = events[position]
            position += 1
            self._position = position
            if actor._probe is None:  # StreamActor._feed's common case
                assembler.feed_data_into(data, batch)
            else:
                actor._feed(assembler, data, batch)
            if len(batch) >= cap or assembler.done:  # what follows [DONE] is ignored
                break
        else:
            # All parsed: the list is not kept alive across the wait.
            self._pending = _NO_EVENTS
            self._position = 0
        if assembler.done:
            self._end(None)
            return True
        return bool(batch) or self.ended

    def _must_read(self, batch: list[Delta]) -> bool:
        """Whether the read needs more bytes: nothing decoded is left to parse (the common
        case, told without calling :meth:`_parse`), or what is left gave no deltas."""
        if self._position == len(self._pending) and not self.ended:
            return True
        return not self._parse(batch)

    def _received(self, data: bytes, batch: list[Delta]) -> bool:
        """Decode and parse the next body bytes; whether the read is over (as :meth:`_parse`)."""
        if not data:
            for event in self._decoder.close():
                self._actor._feed(self._actor._assembler, event.data, batch)
            self._end(None)
            return True
        decoder = self._decoder
        events: str | list[str] | None = decoder.feed_simple(data)
        if events is None:
            events = decoder.feed_data(data)
            if not events:
                return False
        self.watchdog.saw_event()
        self.flowing = True
        actor = self._actor
        if type(events) is str and actor._probe is None:
            # One event per read (a stream sent token by token): _parse without its loop.
            # Nothing decoded waits in _pending (it is read only once that is exhausted).
            assembler = actor._assembler
            assembler.feed_data_into(events, batch)
            if assembler.done:
                self._end(None)
                return True
            return bool(batch) or self.ended
        self._pending = [events] if isinstance(events, str) else events
        self._position = 0
        return self._parse(batch)

    def _received_nowait(self, batch: list[Delta]) -> bool:
        """Decode and parse what has arrived, without waiting; whether the read is over (as
        :meth:`_received`: not when nothing more has arrived)."""
        nowait = self._nowait
        if nowait is None:
            return False
        while (data := nowait()) is not None:
            if self._received(data, batch):
                return True
        return False

    @overload
    async def pull(self) -> Delta | None: ...

    @overload
    async def pull(self, otherwise: Callable[[], Awaitable[Delta]]) -> Delta: ...

    async def pull(self, otherwise: Callable[[], Awaitable[Delta]] | None = None,
                   ) -> Delta | None:
        """One network read, in the consumer's task: the first delta read (the rest go into the
        channel); when the read gave none, what ``otherwise`` gives (``None`` without it).
        ``Stream.__anext__`` returns this coroutine itself: one coroutine per delta."""
        self.holder = _CONSUMER
        if self.watchdog.overdue:
            self.watchdog.recheck()
        task = self._reading = current_task_of(self._loop)
        batch: list[Delta] = []
        try:
            # _must_read, inline: the consumer's path, once per delta.
            if (self._position == len(self._pending) and not self.ended) \
                    or not self._parse(batch):
                while not self._received(await self._next(), batch):
                    pass
        except KimiError as exc:
            self._end(exc)
        except self._raw_errors as exc:
            self._end(self._mapped(exc))
        except asyncio.CancelledError:
            if not self._claim_interruption(task):
                if self._chunks is not None:
                    # The consumer was cancelled inside the stream's generator, which that
                    # ends: the actor resumes the body. A read_chunk() read loses nothing.
                    self._end(IncompleteStreamError("the consumer's read was cancelled "
                                                    "mid-stream"))
                raise
            self._timed_out()
            batch = []
        finally:
            self._reading = None
            self.holder = None
        if self._interrupted:
            await self._absorb_interruption(task)
        if not batch:
            return None if otherwise is None else await otherwise()
        if not self._pulled:
            self._pulled = True
            self._actor._call.first_chunk()
        channel = self._actor._channel
        assert channel is not None  # a consumer pulls from a channel
        return channel.take_first(batch)

    async def read_ahead(self) -> None:
        """Network reads in the actor's task, into the channel, until the consumer waits for
        them (or the body ends). (Each read inline: a coroutine less while the actor reads.)"""
        self.holder = _ACTOR
        if self.watchdog.overdue:
            self.watchdog.recheck()
        task = self._reading = current_task_of(self._loop)
        channel = self._actor._channel
        batch: list[Delta] = []
        try:
            while not self.ended:
                # One read's deltas (about ``cap`` at most; the rest wait in _pending), none
                # once the body ended; an error ends it after the deltas parsed before it.
                batch = []
                try:
                    if self._must_read(batch) and not self._received_nowait(batch):
                        if channel is not None and channel.takes_over(self):
                            break  # nothing read: the consumer waits for the next bytes
                        while not self._received(await self._next(), batch):
                            pass
                except KimiError as exc:
                    self._end(exc)
                except self._raw_errors as exc:
                    self._end(self._mapped(exc))
                await self._actor._deliver(batch, self.watchdog)
                if self.handoff:
                    self.handoff = False
                    break
        except asyncio.CancelledError:
            if not self._claim_interruption(task):
                raise  # the actor itself is cancelled
            self._timed_out()
        finally:
            self.leftover = batch
            self._reading = None
            self.holder = None
        if self._interrupted:
            await self._absorb_interruption(task)

    def _mapped(self, exc: Exception) -> KimiError:
        assert self._failure is not None  # only _failure's errors are caught raw
        return self._failure(exc)

    def _claim_interruption(self, task: asyncio.Task[Any] | None) -> bool:
        """A read ended in CancelledError: whether it was this reader's interruption (then
        taken back from the task), not somebody else's cancellation."""
        if not self._interrupted or task is None or task.uncancel() > 0:
            return False
        self._interrupted = False
        return True

    async def _absorb_interruption(self, task: asyncio.Task[Any] | None) -> None:
        """Interrupted as the read finished: take the cancellation here, not in the caller's
        next await, and end as the watchdog said."""
        self._interrupted = False
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
        self._timed_out()

    async def wait(self) -> bool:
        """Until the body ended (False) or the consumer is away and the actor should read
        ahead (True)."""
        if self.ended:
            return False
        if self.ahead:
            self.ahead = False
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._wakeup = future
        try:
            return await future
        finally:
            self._wakeup = None

    def abort(self) -> None:
        """The actor leaves (cancelled): a consumer inside a read leaves it too, quietly."""
        self.aborted = True
        self._end(None)
        self._interrupt()

    async def aclose(self) -> None:
        self.watchdog.cancel()
        # A consumer inside the generator leaves it on its own.
        if self._chunks is not None and self.holder is None:
            await self._chunks.aclose()

    def consumer_away(self) -> None:
        if self.holder is None and not self.ended:
            wakeup = self._wakeup
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(True)
            else:
                self.ahead = True

    def _end(self, error: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.error = error
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(False)

    def _interrupt(self) -> bool:
        task = self._reading
        if task is None:
            return False
        if not self._interrupted:
            self._interrupted = True
            task.cancel()
        return True

    def _expired(self, phase: str, final: bool) -> bool:
        if self._interrupt():
            return True
        if final:
            self._timed_out(phase)
            return True
        # Nobody is reading (the loop did not turn since the consumer left): no evidence of a
        # stall yet. The actor reads ahead, and the next check decides.
        self.consumer_away()
        return False

    def _timed_out(self, phase: str | None = None) -> None:
        """End with the timeout the watchdog fired (none: the actor left, a quiet end)."""
        phase = phase or self.watchdog.expired_phase
        if self.aborted or phase is None:
            return
        timeouts = self._actor._rt.transport.timeouts
        limit = timeouts.read_idle if phase == "read_idle" else timeouts.response
        what = "a complete stream event" if phase == "read_idle" else "the stream to end"
        self._end(timeout_error(phase, f"timed out waiting for {what} after "
                                f"{limit} s", timeout=limit))


class _ResumeProbe:
    """Holds back the start of a continuation until it shows whether the server continued the
    text (Partial Mode honoured) or started over (ignored)."""

    __slots__ = ("held", "need", "reference", "text")

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self.need = min(len(reference), PROBE_CHARS)
        self.text = ""
        self.held: list[Delta] = []

    def add(self, delta: Delta) -> None:
        self.held.append(delta)
        if delta.index == 0 and delta.content:
            self.text += delta.content

    @property
    def decided(self) -> bool:
        return len(self.text) >= self.need

    @property
    def repeats(self) -> bool:
        return self.decided and self.text[:self.need] == self.reference[:self.need]


class _PartialModeIgnored(IncompleteStreamError):
    """The continuation repeated the text already received: the server ignores ``partial``."""


class StreamActor:
    """Streams one chat body into ``channel`` (``None`` discards the deltas: the caller wants
    only the result) and returns the assembled result."""

    def __init__(self, rt: Runtime, body: Mapping[str, Any], channel: DeltaChannel | None, *,
                 priority: int = 0, deadline: float | None = None,
                 headers: Mapping[str, str] | None = None, tenant: str | None = None) -> None:
        self._rt = rt
        self._channel = channel
        self._priority = priority
        self._tenant = tenant
        self._deadline = deadline
        self._headers = headers
        messages = body.get("messages")
        if not isinstance(messages, list):
            messages = list(messages) if isinstance(messages, tuple) else messages
        self._original = {**body, "messages": messages, "stream": True}
        self._call = rt.trace_call(self._original, stream=True, tenant=tenant,
                                   priority=priority)
        self._attempts = 0
        self._prefix = ""
        self._base_messages: list[Any] = list(messages) if isinstance(messages, list) else []
        last = self._base_messages[-1] if self._base_messages else None
        if isinstance(last, Mapping) and last.get("role") == "assistant" and last.get("partial"):
            self._prefix = str(last.get("content") or "")
            self._base_messages.pop()
            self._partial_extra = {key: value for key, value in last.items()
                                   if key not in ("role", "content", "partial")}
        else:
            self._partial_extra = {}
        self._max_tokens = completion_budget(body)
        self._assembler = ChunkAssembler()
        self._allowance_start = 0
        self._probe: _ResumeProbe | None = None
        self.request_id: str | None = None

    # -- the attempt loop --------------------------------------------------------------------

    async def run(self) -> ChatResult:
        """The attempts, until one ends the stream. (One coroutine, and an attempt admitted and
        closed without a scope object: every open stream holds this frame.)"""
        with self._call as call:
            rt = self._rt
            policy = rt.resume
            body: dict[str, Any] = self._original
            attempts = retries = failures = recoveries = continuations = 0
            tokens = admission_tokens(body, rt.default_max_tokens)
            rt.check(tokens, self._tenant)
            counted = body  # the body ``tokens`` were estimated for (a resume sends another)
            since = rt.clock.now()
            while True:
                attempts += 1
                self._attempts = attempts
                chunks_before = self._assembler.chunks
                resuming = self._probe is not None
                payload = json_body(body)
                if body is not counted:
                    tokens = admission_tokens(body, rt.default_max_tokens)
                    counted = body
                attempt = await rt.admit_attempt(tokens, priority=self._priority,
                                                 first=attempts == 1, deadline=self._deadline,
                                                 tenant=self._tenant, since=since, call=call,
                                                 number=attempts)
                try:
                    outcome, usage = await self._attempt(payload, attempt.on_sent)
                    attempt.finish(outcome, usage=usage, body=body, payload_size=len(payload))
                except BaseException as exc:
                    attempt.close(type(exc), exc, exc.__traceback__)
                    raise
                attempt.close()
                if outcome.action is Action.SUCCESS:
                    result = self._assembler.result(request_id=self.request_id)
                    if (result.finish_reason == "length"
                            and continuations < policy.continue_on_length
                            and self._resumable(body)):
                        continuations += 1
                        rt.count("length_continuations")
                        self._allowance_start = self._assembler.chunks
                        body = self._continue_body()
                        self._assembler.begin_continuation()
                        continue
                    return self._succeeded(call, result)

                if resuming and self._refuses_partial(outcome):
                    outcome = Outcome(action=Action.RETRY, error=outcome.error)
                progressed = self._assembler.chunks > chunks_before
                failures = 1 if progressed else failures + 1
                delivered = self._assembler.chunks > 0
                if not delivered:
                    retries += 1
                # Before anything reached the consumer, only the attempts that delivered nothing
                # count toward max_attempts; after, every attempt does.
                number = attempts if delivered else retries
                verdict = rt.decide(outcome, AttemptState(
                    attempt=number, failures=failures, delivered=delivered, recoveries=recoveries,
                    resumable=self._resumable(body), allowance_spent=self._allowance_spent(body)),
                    self._deadline)
                if verdict.step is Step.FINISH_LOCALLY:
                    # Only the finish chunk was lost: asking for more would overshoot the budget.
                    await self._finish_locally("length")
                    return self._succeeded(
                        call, self._assembler.result(request_id=self.request_id))
                await rt.follow(verdict, outcome, attempts=number)
                if verdict.step is Step.RETRY:
                    self._assembler.begin_continuation()
                    continue
                recoveries += 1
                error = outcome.error
                if verdict.step is Step.RESUME:
                    rt.count("resumes")
                    emit("info", "stream_resumed", received_chars=len(self._assembler.content(0)),
                         error_type=type(error).__name__, request_id=self.request_id)
                    self._probe = _ResumeProbe(self._assembler.content(0))
                    body = self._continue_body()
                    self._assembler.begin_continuation()
                else:
                    rt.count("restarts")
                    emit("info", "stream_restarted", error_type=type(error).__name__,
                         request_id=self.request_id)
                    await self._deliver([Delta(restart=True)])
                    self._assembler = ChunkAssembler()
                    self._allowance_start = 0
                    self._probe = None
                    body = self._original

    def _succeeded(self, call: CallTelemetry, result: ChatResult) -> ChatResult:
        call.succeeded(result, self._attempts)
        return result

    def _refuses_partial(self, outcome: Outcome) -> bool:
        """A resume request that failed because of Partial Mode itself: the continuation
        repeated the text received, or a 400 names ``partial``. Partial Mode is switched off
        for this endpoint and the stream restarts instead."""
        error = outcome.error
        refused = isinstance(error, _PartialModeIgnored) or (
            type(error) is BadRequestError and _PARTIAL_REFUSED.search(error.message) is not None)
        if refused and self._rt.partial_mode:
            self._rt.partial_mode = False
            emit("warning", "partial_mode_unsupported", base_url=self._rt.transport.base_url,
                 reason=str(error), request_id=self.request_id)
        return refused

    def _resumable(self, body: Mapping[str, Any]) -> bool:
        assembler = self._assembler
        n = body.get("n")
        response_format = body.get("response_format")
        return (
            self._rt.partial_mode
            and (n is None or n == 1)
            and assembler.choice_indices() in ((), (0,))
            and not assembler.has_tool_calls(0)
            and not (assembler.has_reasoning(0) and not assembler.content(0))
            and not (isinstance(response_format, Mapping)
                     and response_format.get("type") == "json_object")
        )

    def _allowance_spent(self, body: Mapping[str, Any]) -> bool:
        return (self._max_tokens is not None and self._resumable(body)
                and self._assembler.chunks - self._allowance_start >= self._max_tokens)

    async def _finish_locally(self, finish_reason: str) -> None:
        chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}
        await self._deliver(self._assembler.feed(chunk))
        self._assembler.feed_data(DONE)

    def _continue_body(self) -> dict[str, Any]:
        partial = {"role": "assistant", "content": self._prefix + self._assembler.content(0),
                   "partial": True, **self._partial_extra}
        body = {**self._original, "messages": [*self._base_messages, partial]}
        if self._max_tokens is not None:
            remaining = max(1, self._max_tokens - (self._assembler.chunks - self._allowance_start))
            for key in budget_keys(self._original):  # the spellings the caller used
                body[key] = remaining
        return body

    # -- one HTTP attempt --------------------------------------------------------------------

    async def _attempt(self, payload: bytes,
                       on_sent: Callable[[], None]) -> tuple[Outcome, Usage | None]:
        """Read one response into the channel. Returns the outcome and this attempt's usage."""
        rt = self._rt
        usage: Usage | None = None
        batch: list[Delta] = []
        flowing = False
        try:
            async with rt.transport.stream(CHAT_PATH, payload, headers=self._headers,
                                           on_sent=on_sent) as response:
                self.request_id = response.headers.get(REQUEST_ID_HEADER) or self.request_id
                if response.status != 200 or "event-stream" not in response.content_type:
                    data = await response.read()
                    outcome = classify_response(response.status, response.headers, data,
                                                wall_now=self._rt.clock.wall())
                    if outcome.action is Action.SUCCESS:
                        usage = await self._deliver_completion(outcome.body)
                    return outcome, usage
                cap = self._channel.limit if self._channel is not None else 1 << 30
                reader = _Reader(self, response, rt.clock, rt.transport.timeouts, cap)
                channel = self._channel
                try:
                    # Until the body ends: the consumer reads it when it waits, the actor
                    # when it is away (or when nobody consumes the deltas).
                    if channel is None:
                        await reader.read_ahead()
                    else:
                        channel.attach(reader)
                        try:
                            await reader.read_ahead()
                            while await reader.wait():
                                if reader.holder is None:  # the consumer may be back already
                                    await reader.read_ahead()
                        except BaseException:
                            reader.abort()
                            raise
                        finally:
                            channel.attach(None)
                finally:
                    await reader.aclose()
                    batch = reader.leftover
                    flowing = reader.flowing
                    # Each attempt is a segment of the assembler's (see begin_continuation).
                    usage = self._assembler.segment_usage()
                if reader.error is not None:
                    raise reader.error
                self._settle_probe(batch, at_end=True)
                if batch:
                    await self._deliver(batch)
                    batch = []
                if not self._assembler.done:
                    raise IncompleteStreamError(
                        f"the stream ended without data: [DONE] after {self._assembler.chunks} "
                        f"chunks")
                return Outcome(action=Action.SUCCESS), usage
        except KimiError as exc:
            if not isinstance(exc, _PartialModeIgnored):
                self._settle_probe(batch, at_end=True)  # held text is received text
            if batch:
                # The assembler has counted these, and a resume continues after them: they
                # must reach the consumer before the error is handled.
                await self._deliver(batch)
            if exc.request_id is None:  # every error raised in here is this stream's
                exc.request_id = self.request_id
            return classify_error(exc, mid_stream=flowing), usage

    def _feed(self, assembler: ChunkAssembler, data: str, batch: list[Delta]) -> None:
        if assembler.done:
            return  # what follows [DONE] in the same read
        probe = self._probe
        if probe is None:
            batch += assembler.feed_data(data)
            return
        for delta in assembler.feed_data(data):
            probe.add(delta)
        if probe.decided:
            self._settle_probe(batch, at_end=False)

    def _settle_probe(self, batch: list[Delta], *, at_end: bool) -> None:
        """Release the held-back start of a continuation into ``batch``, or raise when it
        repeats the text already received."""
        probe = self._probe
        if probe is None or not (probe.decided or at_end):
            return
        self._probe = None
        if probe.repeats:
            raise _PartialModeIgnored(
                f"the server ignored Partial Mode: its continuation began again with the "
                f"{probe.need} characters already received")
        batch.extend(probe.held)

    async def _deliver(self, deltas: list[Delta], watchdog: _Watchdog | None = None) -> None:
        """Hand the deltas of one network read over as one batch, emptying ``deltas`` (an
        interrupted hand-off leaves what was not handed over); waiting for the consumer does
        not count as a stall."""
        if not deltas:
            return
        self._call.first_chunk()
        channel = self._channel
        if channel is None:
            return
        if watchdog is not None and channel.would_block(len(deltas)):
            watchdog.pause()
            try:
                await channel.put(deltas)
            finally:
                watchdog.resume()
        else:
            await channel.put(deltas)

    async def _deliver_completion(self, body: Any) -> Usage | None:
        """A 200 JSON answer to a stream request (some servers ignore ``stream``): hand it to
        the consumer as one delta per choice."""
        result: ChatResult = parse_completion(body, request_id=self.request_id)
        choices = [{"index": choice.index, "delta": choice.message.to_dict(),
                    "finish_reason": choice.finish_reason} for choice in result.choices]
        chunk: dict[str, Any] = {"id": result.id, "model": result.model, "choices": choices}
        if result.usage is not None:
            chunk["usage"] = result.usage.to_dict()
        deltas: list[Delta] = []
        probe = self._probe
        for delta in self._assembler.feed(chunk):
            if probe is None:
                deltas.append(delta)
            else:
                probe.add(delta)
        self._assembler.feed_data(DONE)
        self._settle_probe(deltas, at_end=True)
        await self._deliver(deltas)
        return result.usage
