"""ScriptedTransport: the runtime's transport seam, answered from a script in memory.

As httpx's ``MockTransport`` does for httpx, it lets a test drive the actors without sockets or
wall time: each request the runtime sends takes the next step of the script, and the test
reads back what was sent. With a :class:`~kimi_actors.clock.FakeClock` the retries' backoff
and the breaker's cool-downs move only when the test advances time.

    transport = ScriptedTransport(
        Respond.json({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                     status=429),
        Respond.stream(chunk_events(["Hel", "lo"]), then=Then.DROP),
        Respond.stream(chunk_events([" world"], finish="stop")),
    )
    async with Supervisor(transport=transport, clock=FakeClock(), ...) as sup: ...
    transport.requests[-1].body["messages"][-1]  # the Partial Mode prefix that was sent

A step is a :class:`Respond` (an answer: status, headers, body or stream events and how the
stream ends) or a :class:`Fail` (the connection fails with the given error). A request with no
step left fails its test loudly. A :class:`Gap` among a stream's events is a silence of that
many seconds on the transport's clock (``ScriptedTransport(clock=...)``): a server that
sends, pauses, and sends again.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock, MonotonicClock
from ..errors import ConnectionFailedError, KimiError
from ..policy import Timeouts
from ..transport import RawResponse

__all__ = ["Fail", "Gap", "Respond", "ScriptedTransport", "SentRequest", "Then",
           "chunk_events"]


class Then(enum.StrEnum):
    """How a scripted stream ends after its events."""

    #: The connection ends cleanly (a complete stream includes its own ``data: [DONE]``).
    END = "end"
    #: The connection breaks: the reader gets ``ConnectionFailedError``.
    DROP = "drop"
    #: Nothing more ever comes, until the reader leaves (or times out).
    STALL = "stall"


@dataclass(frozen=True, slots=True)
class Gap:
    """Among a scripted stream's events: nothing arrives for ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Respond:
    """One scripted answer. ``events`` (byte strings, sent one network read each) make it a
    stream; otherwise ``body`` is the whole answer."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: tuple[bytes | Gap, ...] | None = None
    then: Then = Then.END

    @classmethod
    def json(cls, value: Any, *, status: int = 200,
             headers: Mapping[str, str] | None = None) -> Respond:
        return cls(status=status, body=json.dumps(value).encode(),
                   headers={"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def stream(cls, events: Iterable[bytes | Gap], *, then: Then = Then.END,
               headers: Mapping[str, str] | None = None) -> Respond:
        return cls(events=tuple(events), then=then,
                   headers={"Content-Type": "text/event-stream", **(headers or {})})

    @property
    def content_type(self) -> str:
        value = {key.lower(): item for key, item in self.headers.items()}.get("content-type", "")
        return value.split(";")[0].strip()


@dataclass(frozen=True, slots=True)
class Fail:
    """The request fails before any answer, with ``error`` (e.g. ``ConnectionFailedError``)."""

    error: KimiError


@dataclass(frozen=True, slots=True, kw_only=True)
class SentRequest:
    """What the runtime sent: method, path, the JSON body (``None`` for a GET), headers."""

    method: str
    path: str
    body: Any
    headers: Mapping[str, str]


def chunk_events(pieces: Sequence[str], *, finish: str | None = None, role: bool = True,
                 usage: Mapping[str, int] | None = None, done: bool = True,
                 model: str = "kimi-k2.6") -> list[bytes]:
    """Kimi's stream events for content ``pieces``: the first carries the role, a final one
    the ``finish`` reason and ``usage``, then ``data: [DONE]`` (each optional)."""
    events = []
    for number, piece in enumerate(pieces):
        delta: dict[str, Any] = {"content": piece}
        if role and number == 0:
            delta["role"] = "assistant"
        events.append(_event({"index": 0, "delta": delta, "finish_reason": None}, model))
    if finish is not None:
        choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish}
        if usage is not None:
            choice["usage"] = dict(usage)
        events.append(_event(choice, model))
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def _event(choice: Mapping[str, Any], model: str) -> bytes:
    chunk = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
             "model": model, "choices": [choice]}
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


class _ScriptedStream:
    __slots__ = ("_gap_ends", "_position", "_step", "_transport", "content_type", "headers",
                 "status")

    def __init__(self, step: Respond, transport: ScriptedTransport) -> None:
        self._step = step
        self._transport = transport
        self._position = 0
        self._gap_ends: float | None = None
        self.status = step.status
        self.headers: Mapping[str, str] = dict(step.headers)
        self.content_type = step.content_type

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The events as a generator (:meth:`read_chunk` until the end)."""
        while data := await self.read_chunk():
            yield data

    async def read_chunk(self) -> bytes:
        """The next event (``b""`` at the end). Cancelled, it loses nothing: a gap it was
        waiting out ends when it would have."""
        clock = self._transport.clock
        while (data := self.read_nowait()) is None:
            if self._gap_ends is None:  # a stall: the connection stays open and silent
                await asyncio.get_running_loop().create_future()
            else:
                await clock.sleep(max(0.0, self._gap_ends - clock.now()))
        return data

    def read_nowait(self) -> bytes | None:
        """The next event if it is due now, without waiting: ``b""`` at the end, ``None`` when
        a gap (which starts when a read first reaches it) or a stall is still to pass; a
        scripted drop is raised."""
        step = self._step
        events = step.events or (step.body,)
        clock = self._transport.clock
        while self._position < len(events):
            event = events[self._position]
            if isinstance(event, Gap):
                if self._gap_ends is None:
                    self._gap_ends = clock.now() + event.seconds
                if clock.now() < self._gap_ends:
                    return None
                self._gap_ends = None
                self._position += 1
                continue
            self._position += 1
            self._took()
            if event:  # an empty body is no read: b"" means the end
                return event
        if step.then is Then.DROP:
            raise ConnectionFailedError("the connection broke during the read idle (scripted)")
        return None if step.then is Then.STALL else b""

    def _took(self) -> None:
        self._transport.events_read += 1
        task = asyncio.current_task()
        self._transport.readers.append(task.get_name() if task is not None else "")

    async def read(self, limit: int = 1 << 20) -> bytes:
        step = self._step
        return _joined(step)[:limit]


def _joined(step: Respond) -> bytes:
    if step.events is None:
        return step.body
    return b"".join(event for event in step.events if not isinstance(event, Gap))


class ScriptedTransport:
    """A transport that answers each request with the next step of its script."""

    def __init__(self, *steps: Respond | Fail, base_url: str = "http://scripted.invalid/v1",
                 timeouts: Timeouts | None = None, clock: Clock | None = None,
                 send_delay: float = 0.0) -> None:
        self._steps: deque[Respond | Fail] = deque(steps)
        #: What a :class:`Gap` and ``send_delay`` wait on: give the supervisor's ``FakeClock``.
        self.clock: Clock = clock or MonotonicClock()
        #: Seconds each request takes to reach the wire (a connection set-up), after which
        #: the runtime is told it was sent.
        self.send_delay = send_delay
        self._base_url = base_url
        self._timeouts = timeouts or Timeouts()
        #: Every request sent, in order.
        self.requests: list[SentRequest] = []
        #: Stream events the readers have taken so far (one network read each): what a
        #: consumer that stopped reading let the actor pull.
        self.events_read = 0
        #: The name of the task that took each of those events.
        self.readers: list[str] = []
        self.closed = False

    def add(self, *steps: Respond | Fail) -> None:
        """Append steps to the script (for answers that depend on what happened)."""
        self._steps.extend(steps)

    @property
    def remaining(self) -> int:
        return len(self._steps)

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    async def _next(self, method: str, path: str, body: bytes | None,
                    headers: Mapping[str, str] | None, on_sent: Callable[[], None] | None
                    ) -> Respond:
        self.requests.append(SentRequest(
            method=method, path=path, body=None if body is None else json.loads(body),
            headers=dict(headers or {})))
        if not self._steps:
            raise AssertionError(f"ScriptedTransport: no step left for request "
                                 f"{len(self.requests)} ({method} {path})")
        step = self._steps.popleft()
        if isinstance(step, Fail):
            raise step.error
        if self.send_delay:
            await self.clock.sleep(self.send_delay)
        if on_sent is not None:
            on_sent()
        return step

    async def post(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                   on_sent: Callable[[], None] | None = None) -> RawResponse:
        step = await self._next("POST", path, body, headers, on_sent)
        data = _joined(step)
        return RawResponse(status=step.status, headers=dict(step.headers), body=data,
                           content_type=step.content_type)

    async def get(self, path: str) -> RawResponse:
        step = await self._next("GET", path, None, None, None)
        return RawResponse(status=step.status, headers=dict(step.headers), body=step.body,
                           content_type=step.content_type)

    @asynccontextmanager
    async def stream(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                     on_sent: Callable[[], None] | None = None
                     ) -> AsyncIterator[_ScriptedStream]:
        yield _ScriptedStream(await self._next("POST", path, body, headers, on_sent), self)

    async def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return (f"ScriptedTransport({self._base_url!r}, sent={len(self.requests)}, "
                f"remaining={len(self._steps)})")
