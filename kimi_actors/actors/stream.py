"""The stream actor: reads one SSE stream into a bounded queue and repairs it when it breaks.

A stream that drops, stalls or garbles mid-way is continued through Kimi's Partial Mode: the
next request ends with ``{"role": "assistant", "content": <text so far>, "partial": true}`` and
the reply holds only the continuation, so the consumer receives exactly the missing text. When
Partial Mode cannot continue it (several choices, a tool call or reasoning in progress, JSON
mode) or the policy says so, the actor restarts from scratch and first sends a ``restart``
delta telling the consumer to discard what it got. Nothing reaches the consumer twice.

The queue is bounded: a slow consumer blocks the actor, aiohttp stops reading the socket, and
TCP slows the server, so memory stays flat whatever the consumer's speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import aclosing
from typing import Any

from ..errors import IncompleteStreamError, KimiError
from ..observe import emit
from ..policy import ResumeMode
from ..protocol.chunks import ChatResult, ChunkAssembler, Delta, Usage, parse_completion
from ..protocol.classify import (
    REQUEST_ID_HEADER,
    Action,
    Outcome,
    classify_error,
    classify_response,
)
from ..protocol.sse import SSEDecoder, SSEEvent
from ..protocol.tokens import admission_tokens
from ..transport import json_body
from .request import CHAT_PATH, settled_tokens
from .runtime import Runtime

__all__ = ["END_OF_STREAM", "StreamActor"]

#: Put on the queue after the last batch of deltas (every other item is a list of deltas).
END_OF_STREAM: Any = object()
_DONE_EVENT = SSEEvent(data="[DONE]")


class StreamActor:
    """Streams one chat body into ``queue`` and returns the assembled result."""

    def __init__(self, rt: Runtime, body: Mapping[str, Any], queue: asyncio.Queue[Any], *,
                 priority: int = 0, deadline: float | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self._rt = rt
        self._queue = queue
        self._priority = priority
        self._deadline = deadline
        self._headers = headers
        messages = body.get("messages")
        if not isinstance(messages, list):
            messages = list(messages) if isinstance(messages, tuple) else messages
        self._original = {**body, "messages": messages, "stream": True}
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
        max_tokens = body.get("max_tokens")
        self._max_tokens = max_tokens if isinstance(max_tokens, int) else None
        self._assembler = ChunkAssembler()
        self._allowance_start = 0
        self.request_id: str | None = None

    # -- the attempt loop --------------------------------------------------------------------

    async def run(self) -> ChatResult:
        rt = self._rt
        policy = rt.resume
        body: dict[str, Any] = self._original
        attempts = retries = failures = recoveries = continuations = 0
        rt.governor.check(admission_tokens(body, rt.default_max_tokens))
        while True:
            attempts += 1
            ticket = await rt.admit(admission_tokens(body, rt.default_max_tokens),
                                    priority=self._priority, first=attempts == 1,
                                    deadline=self._deadline)
            chunks_before = self._assembler.chunks
            try:
                outcome, usage = await self._attempt(body, ticket.on_sent)
            except BaseException:
                rt.abandon(ticket)
                raise
            rt.governor.release(ticket.permit)
            rt.record(outcome, ticket)
            if outcome.action is Action.SUCCESS:
                rt.governor.settle(ticket.permit,
                                   settled_tokens(usage, body, rt.default_max_tokens))
                if usage is not None:
                    rt.usage_seen(usage.prompt_tokens, usage.completion_tokens)
                result = self._assembler.result(request_id=self.request_id)
                if (result.finish_reason == "length" and continuations < policy.continue_on_length
                        and self._resumable(body)):
                    continuations += 1
                    rt.counters.length_continuations += 1
                    self._allowance_start = self._assembler.chunks
                    body = self._continue_body()
                    self._assembler.begin_continuation()
                    continue
                return result

            progressed = self._assembler.chunks > chunks_before
            failures = 1 if progressed else failures + 1
            if self._assembler.chunks == 0:
                # Nothing reached the consumer: an ordinary retry of the same request.
                retries += 1
                await rt.before_retry(outcome, failures=failures, attempt=retries,
                                      spend_budget=True, deadline=self._deadline)
                self._assembler.begin_continuation()
                continue
            error = outcome.error
            assert error is not None
            if outcome.action is Action.RETRY and policy.mode is not ResumeMode.FAIL \
                    and recoveries >= policy.max_resumes:
                error.add_note(f"kimi_actors: gave up after {recoveries} stream recoveries")
                outcome = Outcome(action=Action.FAIL, error=error)
            elif policy.mode is ResumeMode.FAIL and outcome.action is Action.RETRY:
                outcome = Outcome(action=Action.FAIL, error=error)
            if outcome.action is Action.RETRY and self._allowance_spent(body):
                # Every token max_tokens allows has arrived (a chunk is at least one token):
                # only the finish chunk was lost, and asking for more would overshoot.
                await self._finish_locally("length")
                return self._assembler.result(request_id=self.request_id)
            # Recoveries are bounded by max_resumes, not by the retry budget: they finish work
            # already admitted and, in Partial Mode, cost only the remaining tokens.
            await rt.before_retry(outcome, failures=failures, attempt=attempts,
                                  spend_budget=False, deadline=self._deadline)
            recoveries += 1
            if policy.mode is ResumeMode.RESUME and self._resumable(body):
                rt.counters.resumes += 1
                emit("info", "stream_resumed", received_chars=len(self._assembler.content(0)),
                     error_type=type(error).__name__, request_id=self.request_id)
                body = self._continue_body()
                self._assembler.begin_continuation()
            else:
                rt.counters.restarts += 1
                emit("info", "stream_restarted", error_type=type(error).__name__,
                     request_id=self.request_id)
                await self._deliver([Delta(restart=True)])
                self._assembler = ChunkAssembler()
                self._allowance_start = 0
                body = self._original

    def _resumable(self, body: Mapping[str, Any]) -> bool:
        assembler = self._assembler
        n = body.get("n")
        response_format = body.get("response_format")
        return (
            (n is None or n == 1)
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
        self._assembler.feed_event(_DONE_EVENT)

    def _continue_body(self) -> dict[str, Any]:
        partial = {"role": "assistant", "content": self._prefix + self._assembler.content(0),
                   "partial": True, **self._partial_extra}
        body = {**self._original, "messages": [*self._base_messages, partial]}
        if self._max_tokens is not None:
            used = self._assembler.chunks - self._allowance_start
            body["max_tokens"] = max(1, self._max_tokens - used)
        return body

    # -- one HTTP attempt --------------------------------------------------------------------

    async def _attempt(self, body: Mapping[str, Any],
                       on_sent: Callable[[], None]) -> tuple[Outcome, Usage | None]:
        """Read one response into the queue. Returns the outcome and this attempt's usage."""
        rt = self._rt
        usage: Usage | None = None
        batch: list[Delta] = []
        try:
            async with rt.transport.stream(CHAT_PATH, json_body(body), headers=self._headers,
                                           on_sent=on_sent) as response:
                self.request_id = response.headers.get(REQUEST_ID_HEADER) or self.request_id
                if response.status != 200 or "event-stream" not in response.content_type:
                    data = await response.read()
                    outcome = classify_response(response.status, response.headers, data,
                                                wall_now=time.time())
                    if outcome.action is Action.SUCCESS:
                        usage = await self._deliver_completion(outcome.body)
                    return outcome, usage
                decoder = SSEDecoder()
                assembler = self._assembler
                async with aclosing(response.chunks()) as chunks:
                    async for data in chunks:
                        for event in decoder.feed(data):
                            usage = self._feed(assembler, event, batch) or usage
                        if batch:
                            await self._deliver(batch)
                            batch = []
                        if assembler.done:
                            break
                    else:
                        for event in decoder.close():
                            usage = self._feed(assembler, event, batch) or usage
                if batch:
                    await self._deliver(batch)
                    batch = []
                if not assembler.done:
                    raise IncompleteStreamError(
                        f"the stream ended without data: [DONE] after {assembler.chunks} "
                        f"chunks", request_id=self.request_id)
                return Outcome(action=Action.SUCCESS), usage
        except KimiError as exc:
            if batch:
                # The assembler has counted these, and a resume continues after them: they
                # must reach the consumer before the error is handled.
                await self._deliver(batch)
            if exc.request_id is None:
                exc.request_id = self.request_id
            return classify_error(exc), usage

    @staticmethod
    def _feed(assembler: ChunkAssembler, event: SSEEvent, batch: list[Delta]) -> Usage | None:
        if assembler.done:
            return None
        usage = None
        for delta in assembler.feed_event(event):
            if delta.usage is not None:
                usage = delta.usage
            batch.append(delta)
        return usage

    async def _deliver(self, deltas: list[Delta]) -> None:
        """Queue the deltas of one network read as one item: one hand-off per read, not per
        delta. The queue's bound still caps memory (a read is at most one socket buffer)."""
        queue = self._queue
        if queue.full():
            await queue.put(deltas)
        else:
            queue.put_nowait(deltas)

    async def _deliver_completion(self, body: Any) -> Usage | None:
        """A 200 JSON answer to a stream request (some servers ignore ``stream``): hand it to
        the consumer as one delta per choice."""
        result: ChatResult = parse_completion(body, request_id=self.request_id)
        choices = [{"index": choice.index, "delta": choice.message(),
                    "finish_reason": choice.finish_reason} for choice in result.choices]
        chunk: dict[str, Any] = {"id": result.id, "model": result.model, "choices": choices}
        if result.usage is not None:
            chunk["usage"] = dict(result.usage.raw) or {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens}
        await self._deliver(self._assembler.feed(chunk))
        self._assembler.feed_event(_DONE_EVENT)
        return result.usage
