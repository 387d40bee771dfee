"""FakeKimi: an aiohttp.web server that behaves like the Kimi API, limits and faults included.

Order of checks for a chat request (each rejection counts once, in ``rejected`` or ``faults``):
authentication, body validation, model, context length, quota, injected rejections (429
overloaded, 500, 502), the engine's ``capacity`` (past that many requests in flight it answers
429 overloaded, like a busy backend), then the account limits (with ``vague_rate_limits`` their
429s name nothing: "We're receiving too many requests at the moment"). Injected rejections
come before the limits on purpose: a request turned away by a fault was never admitted, so it
consumes no RPM, TPM or concurrency, just as a client's governor that releases its reservation
on such an error expects. Only admitted requests count in ``accepted`` and in the windows.

The pure part, validation and the bytes of every answer, is in ``wire.py``; this module is the
I-O: the aiohttp app, the account limits' state, faults and latency. It stays one module of
about 640 lines because every handler works on the same state (limiter, counters, faults,
clock) in the same order of checks, which reads best in one place.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from aiohttp import web

from ..clock import Clock, MonotonicClock
from ..limits import Limits
from .faults import NO_FAULTS, FaultPlan, Faults, Latency, plan_faults
from .limiter import FAKE_AK_ID, FAKE_UID, AccountLimiter
from .replies import (
    DEFAULT_MODELS,
    ToolCall,
    context_length,
    count_prompt_tokens,
    expected_tool_call,
    reply_parts,
    split_partial,
)
from .tokenizer import reserved_completion_tokens
from .wire import (
    DONE,
    Answer,
    BadRequest,
    Text,
    compact,
    completion_body,
    error_body,
    is_int,
    stream_events,
    validate,
)

__all__ = ["FAKE_API_KEY", "FakeKimi", "FakeStats"]

FAKE_API_KEY = "sk-fake-kimi-0000"

REJECTION_REASONS = ("auth", "not_found", "bad_request", "context_length", "concurrency", "rpm",
                     "tpm", "tpd", "quota", "overloaded")
#: Kimi's rate-limit 429 that names neither the limit nor a wait.
VAGUE_RATE_LIMIT = ("We're receiving too many requests at the moment. Please wait a moment and "
                    "try again.")
FAULT_NAMES = ("overload", "server_error", "html_error", "drop", "stall", "malformed",
               "invalid_utf8", "split_writes")
_JSON = "application/json; charset=utf-8"
_MALFORMED_EVENT = b'data: {"choices": [\n\n'
_INVALID_UTF8_EVENT = (b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe"},'
                       b'"finish_reason":null}]}\n\n')
_SHUTDOWN_TIMEOUT = 1.0
_HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
             b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
             b"</body>\r\n</html>\r\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeStats:
    """A snapshot of what FakeKimi saw since it started (or since ``reset_statistics``)."""

    #: Chat requests received.
    requests: int
    #: Chat requests admitted past auth, validation, injected rejections and limits.
    accepted: int
    #: Answered fully: the stream reached ``[DONE]`` or the non-stream 200 was sent.
    completed: int
    #: Rejections by reason: auth, not_found, bad_request, context_length, concurrency, rpm,
    #: tpm, tpd, quota, overloaded (past ``capacity``).
    rejected: Mapping[str, int]
    #: Faults injected, by name.
    faults: Mapping[str, int]
    #: Most admitted requests in flight at once (an open stream counts until it ends).
    peak_concurrency: int
    #: Most admitted requests in any rolling window of ``limits.minute`` seconds.
    peak_rpm: int
    #: Most admitted tokens (prompt + max_tokens) in any rolling window of ``limits.minute``.
    peak_tpm: int
    tokens_admitted: int
    prompt_tokens_billed: int
    #: Completion tokens actually sent.
    completion_tokens_billed: int
    #: Requests that used Partial Mode.
    partial_requests: int
    elapsed: float
    accepted_per_second: float

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {field.name: getattr(self, field.name) for field in fields(self)}
        data["rejected"] = dict(self.rejected)
        data["faults"] = dict(self.faults)
        return data


class _Counters:
    __slots__ = ("accepted", "completed", "completion_tokens", "faults", "partial",
                 "prompt_tokens", "rejected", "requests", "started", "tokens_admitted")

    def __init__(self, started: float) -> None:
        self.started = started
        self.requests = 0
        self.accepted = 0
        self.completed = 0
        self.rejected = dict.fromkeys(REJECTION_REASONS, 0)
        self.faults = dict.fromkeys(FAULT_NAMES, 0)
        self.tokens_admitted = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.partial = 0


class FakeKimi:
    """A Kimi API server on loopback for tests, demos and benchmarks.

    Use it as ``async with FakeKimi(...) as fake:`` and point a client at ``fake.base_url``
    with ``fake.api_key``. Replies are deterministic (see :func:`expected_reply`); ``limits``
    are enforced over exact rolling windows (shorten ``Limits.minute`` in tests); ``faults``
    and ``latency`` make it misbehave; ``capacity`` answers overloaded past that many requests
    in flight; ``vague_rate_limits`` makes limit 429s name nothing; ``statistics()`` says what
    it saw. ``clock`` drives the
    limit windows and the latency sleeps (pass a FakeClock to control time); ``wall_time``
    gives the ``created`` field of answers.
    """

    def __init__(
        self,
        *,
        api_key: str = FAKE_API_KEY,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
        faults: Faults = Faults(),  # noqa: B008
        latency: Latency = Latency(),  # noqa: B008
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        retry_after_header: bool = False,
        enforce_limits: bool = True,
        tool_calls: bool = True,
        models: Sequence[str] = DEFAULT_MODELS,
        balance: float = 100.0,
        capacity: int | None = None,
        vague_rate_limits: bool = False,
        clock: Clock | None = None,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("FakeKimi.api_key must be a non-empty string")
        if not isinstance(limits, Limits):
            raise ValueError(f"FakeKimi.limits must be a Limits, got {type(limits).__name__}")
        if not isinstance(faults, Faults):
            raise ValueError(f"FakeKimi.faults must be a Faults, got {type(faults).__name__}")
        if not isinstance(latency, Latency):
            raise ValueError(f"FakeKimi.latency must be a Latency, got {type(latency).__name__}")
        if not is_int(seed):
            raise ValueError(f"FakeKimi.seed must be an int, got {seed!r}")
        if capacity is not None and (not is_int(capacity) or capacity < 1):
            raise ValueError(f"FakeKimi.capacity must be an int >= 1 or None, got {capacity!r}")
        if not is_int(port) or not 0 <= port <= 65_535:
            raise ValueError(f"FakeKimi.port must be 0-65535, got {port!r}")
        if isinstance(models, str) or not models or not all(
                isinstance(model, str) and model for model in models):
            raise ValueError("FakeKimi.models must be a non-empty sequence of model names")
        self._api_key = api_key
        self._bearer = f"Bearer {api_key}"
        self._faults = faults
        self._random_faults = faults.any_random
        self._latency = latency
        self._seed = seed
        self._host = host
        self._port = port
        self._retry_after_header = retry_after_header
        self._tool_calls = tool_calls
        self._models = tuple(models)
        self._model_set = frozenset(models)
        self._balance = float(balance)
        self._capacity = capacity
        self._vague = bool(vague_rate_limits)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._wall_time = wall_time
        self._limiter = AccountLimiter(limits, enforce=enforce_limits)
        self._counters = _Counters(self._clock.now())
        self._chat_number = 0
        self._response_number = 0
        prefix_rng = random.Random(seed)
        self._id_prefix = f"{prefix_rng.getrandbits(64):016x}"
        self._request_id_prefix = f"{prefix_rng.getrandbits(64):016x}"
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()

    def __repr__(self) -> str:
        where = self._base_url or "not started"
        return (f"FakeKimi({where}, limits={self._limiter.limits!r}, faults={self._faults!r}, "
                f"latency={self._latency!r})")

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, once started."""
        if self._base_url is None:
            raise RuntimeError("FakeKimi is not started: use 'async with FakeKimi() as fake' "
                               "or await fake.start()")
        return self._base_url

    @property
    def api_key(self) -> str:
        return self._api_key

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeKimi is already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/tokenizers/estimate-token-count", self._estimate)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/users/me/balance", self._balance_endpoint)
        app.router.add_get("/_fake/stats", self._stats_endpoint)
        app.router.add_route("*", "/{path:.*}", self._unknown_path)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._closing = asyncio.Event()
        self._base_url = f"http://{host}:{port}/v1"
        self._counters = _Counters(self._clock.now())

    async def close(self) -> None:
        """Stop serving. Open streams, stalled ones included, are cut at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        for task in list(self._handlers):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> FakeKimi:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- run-time control --------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        if not isinstance(faults, Faults):
            raise ValueError(f"set_faults needs a Faults, got {type(faults).__name__}")
        self._faults = faults
        self._random_faults = faults.any_random

    @property
    def limits(self) -> Limits:
        """The account limits it enforces now."""
        return self._limiter.limits

    def set_limits(self, limits: Limits) -> None:
        if not isinstance(limits, Limits):
            raise ValueError(f"set_limits needs a Limits, got {type(limits).__name__}")
        self._limiter.set_limits(limits)

    def set_latency(self, latency: Latency) -> None:
        if not isinstance(latency, Latency):
            raise ValueError(f"set_latency needs a Latency, got {type(latency).__name__}")
        self._latency = latency

    def reset_statistics(self) -> None:
        self._counters = _Counters(self._clock.now())
        self._limiter.reset_peaks()

    def statistics(self) -> FakeStats:
        counters = self._counters
        elapsed = max(0.0, self._clock.now() - counters.started)
        limiter = self._limiter
        return FakeStats(
            requests=counters.requests,
            accepted=counters.accepted,
            completed=counters.completed,
            rejected=MappingProxyType(dict(counters.rejected)),
            faults=MappingProxyType(dict(counters.faults)),
            peak_concurrency=limiter.peak_concurrency,
            peak_rpm=limiter.peak_rpm,
            peak_tpm=limiter.peak_tpm,
            tokens_admitted=counters.tokens_admitted,
            prompt_tokens_billed=counters.prompt_tokens,
            completion_tokens_billed=counters.completion_tokens,
            partial_requests=counters.partial,
            elapsed=elapsed,
            accepted_per_second=counters.accepted / elapsed if elapsed > 0 else 0.0,
        )

    # -- HTTP --------------------------------------------------------------------------------

    def _headers(self, content_type: str = _JSON) -> dict[str, str]:
        """Headers of one response, with its own ``Msh-Request-Id``."""
        self._response_number += 1
        return {"Content-Type": content_type,
                "Msh-Request-Id": f"{self._request_id_prefix}{self._response_number:08x}"}

    def _error(self, status: int, message: str, error_type: str,
               retry_after: int | None = None) -> web.Response:
        headers = self._headers()
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.Response(status=status, body=error_body(message, error_type),
                            headers=headers)

    def _json(self, data: Any) -> web.Response:
        return web.Response(body=compact(data).encode(), headers=self._headers())

    async def _unknown_path(self, _: web.Request) -> web.Response:
        return self._error(404, "Not found", "resource_not_found_error")

    def _auth_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if header == self._bearer:
            return None
        if header is None or not header.startswith("Bearer ") or not header[7:].strip():
            return self._error(401, "Invalid Authentication", "invalid_authentication_error")
        return self._error(401, "Incorrect API key provided", "incorrect_api_key_error")

    def _reject(self, reason: str, response: web.Response) -> web.Response:
        self._counters.rejected[reason] += 1
        return response

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        counters = self._counters
        counters.requests += 1
        self._chat_number += 1
        number = self._chat_number
        denied = self._auth_error(request)
        if denied is not None:
            return self._reject("auth", denied)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._reject("bad_request", self._error(
                400, "Invalid request: the body is not valid JSON", "invalid_request_error"))
        try:
            validate(body)
        except BadRequest as exc:
            return self._reject("bad_request", self._error(
                400, f"Invalid request: {exc.detail}", "invalid_request_error"))
        model: str = body["model"]
        if model not in self._model_set:
            return self._reject("not_found", self._error(
                404, f"Not found the model {model} or Permission denied",
                "resource_not_found_error"))
        prompt_tokens = count_prompt_tokens(body)
        reserved = prompt_tokens + reserved_completion_tokens(body)
        limit = context_length(model)
        if reserved > limit:
            return self._reject("context_length", self._error(
                400, f"Invalid request: Your request exceeded model token limit: {limit}",
                "invalid_request_error"))
        if self._faults.quota_exhausted:
            return self._reject("quota", self._error(
                429, f"Your account {FAKE_UID}<{FAKE_AK_ID}> exceeded your current token "
                     f"quota, please check your account balance", "exceeded_current_quota_error"))
        plan = plan_faults(self._faults, self._seed, number) if self._random_faults \
            else NO_FAULTS
        if plan.reject is not None:
            counters.faults[plan.reject] += 1
            return self._fault_response(plan.reject)
        if self._capacity is not None and self._limiter.in_flight >= self._capacity:
            return self._reject("overloaded", self._error(
                429, "The engine is currently overloaded, please try again later",
                "engine_overloaded_error"))
        rejection = self._limiter.admit(reserved, self._clock.now())
        if rejection is not None:
            if self._vague:
                return self._reject(rejection.reason, self._error(
                    429, VAGUE_RATE_LIMIT, "rate_limit_reached_error"))
            return self._reject(rejection.reason, self._error(
                429, rejection.message, "rate_limit_reached_error",
                rejection.retry_after if self._retry_after_header else None))
        counters.accepted += 1
        counters.tokens_admitted += reserved
        counters.prompt_tokens += prompt_tokens
        task = asyncio.current_task()
        assert task is not None, "aiohttp runs every handler in a task"
        self._handlers.add(task)
        slot = _Slot(self._limiter)
        try:
            answer = self._answer(body, model, prompt_tokens)
            completion_id = f"chatcmpl-{self._id_prefix}{number:08x}"
            created = int(self._wall_time())
            if body.get("stream"):
                return await self._stream(request, body, answer, plan, number, completion_id,
                                          created, slot)
            return await self._complete(request, answer, plan, completion_id, created, model)
        finally:
            slot.release()
            self._handlers.discard(task)

    def _answer(self, body: dict[str, Any], model: str, prompt_tokens: int) -> Answer:
        messages = body["messages"]
        if split_partial(messages)[1] is not None:
            self._counters.partial += 1
        # Kimi's reference prefers max_completion_tokens; max_tokens is its deprecated name.
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        seed = body.get("seed")
        replies: list[Text | ToolCall] = []
        for choice in range(body.get("n", 1)):
            call = (expected_tool_call(model, messages, body.get("tools"),
                                       tool_choice=body.get("tool_choice"), seed=seed,
                                       choice=choice)
                    if self._tool_calls and body.get("tools") else None)
            replies.append(call if call is not None else
                           Text(*reply_parts(model, messages, seed=seed, max_tokens=max_tokens,
                                              choice=choice)))
        return Answer(tuple(replies), prompt_tokens)

    def _fault_response(self, fault: str) -> web.Response:
        if fault == "overload":
            return self._error(429, "The engine is currently overloaded, please try again later",
                          "engine_overloaded_error")
        if fault == "server_error":
            return self._error(500, "The server had an error while processing your request, "
                               "please try again later", "server_error")
        return web.Response(status=502, body=_HTML_502, headers=self._headers("text/html"))

    async def _hold_until_gone(self) -> None:
        """A stall: keep the connection open, sending nothing, until the client leaves
        (handler cancellation) or the server closes."""
        await self._closing.wait()

    async def _complete(self, request: web.Request, answer: Answer, plan: FaultPlan,
                        completion_id: str, created: int, model: str) -> web.StreamResponse:
        if self._latency.first_token > 0:
            await self._clock.sleep(self._latency.first_token)
        if plan.cut is not None:
            self._counters.faults[plan.cut] += 1
            if plan.cut == "stall":
                await self._hold_until_gone()
            _drop_connection(request)
            return web.Response()
        response = web.Response(body=completion_body(completion_id, created, model, answer),
                                headers=self._headers())
        self._counters.completion_tokens += answer.completion_tokens
        self._counters.completed += 1
        return response

    async def _stream(self, request: web.Request, body: dict[str, Any], answer: Answer,
                      plan: FaultPlan, number: int, completion_id: str, created: int,
                      slot: _Slot) -> web.StreamResponse:
        stream_options = body.get("stream_options") or {}
        texts, weights = stream_events(completion_id, created, body["model"], answer,
                                        stream_options.get("include_usage") is True)
        count = len(texts)
        events = [text.encode() for text in texts]
        cut_after = plan.cut_after(count) if plan.cut is not None else count
        malformed_at = plan.malformed_at(count)
        invalid_at = plan.invalid_utf8_at(count)
        if malformed_at is not None or invalid_at is not None:
            outgoing: list[bytes] = []
            tokens: list[int] = []
            for index, event in enumerate(events[:cut_after]):
                if index == malformed_at:
                    outgoing.append(_MALFORMED_EVENT)
                    tokens.append(0)
                    self._counters.faults["malformed"] += 1
                if index == invalid_at:
                    outgoing.append(_INVALID_UTF8_EVENT)
                    tokens.append(0)
                    self._counters.faults["invalid_utf8"] += 1
                outgoing.append(event)
                tokens.append(weights[index])
        else:
            outgoing, tokens = events[:cut_after], weights[:cut_after]
        counters = self._counters
        if self._faults.split_writes:
            counters.faults["split_writes"] += 1
        if plan.cut is not None:
            counters.faults[plan.cut] += 1
        if self._latency.first_token > 0:
            await self._clock.sleep(self._latency.first_token)
        headers = self._headers("text/event-stream")
        headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(headers=headers)
        try:
            await response.prepare(request)
            await self._send_events(request, response, outgoing, tokens, plan, number, slot)
        except ConnectionError:
            pass  # the client left mid-stream: nothing to answer, aiohttp closes quietly
        return response

    async def _send_events(self, request: web.Request, response: web.StreamResponse,
                           outgoing: list[bytes], tokens: list[int], plan: FaultPlan,
                           number: int, slot: _Slot) -> None:
        counters = self._counters
        latency = self._latency
        split = self._faults.split_writes
        if plan.cut is None and latency.per_token == 0 and not split:
            counters.completion_tokens += sum(tokens)
            self._finish(slot)
            await response.write(b"".join(outgoing) + DONE)
            return
        writer = _SplitWriter(response, random.Random(f"split:{self._seed}:{number}"),
                              whole_events=latency.per_token > 0) if split else None
        for index, event in enumerate(outgoing):
            if index and latency.per_token > 0:
                await self._clock.sleep(latency.per_token)
            if writer is not None:
                await writer.write(event)
            else:
                await response.write(event)
            counters.completion_tokens += tokens[index]
        if plan.cut is not None:
            if writer is not None:
                await writer.flush()
            if plan.cut == "stall":
                await self._hold_until_gone()
            _drop_connection(request)
            return
        if latency.per_token > 0:
            await self._clock.sleep(latency.per_token)
        self._finish(slot)
        if writer is not None:
            await writer.write(DONE)
            await writer.flush()
        else:
            await response.write(DONE)

    def _finish(self, slot: _Slot) -> None:
        """The answer is complete: free the concurrency slot before the last bytes go out, so
        a client that sees ``[DONE]`` and sends again at once is never over the limit."""
        slot.release()
        self._counters.completed += 1

    async def _estimate(self, request: web.Request) -> web.Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(400, "Invalid request: the body is not valid JSON",
                          "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(400, "Invalid request: messages must be a list",
                          "invalid_request_error")
        model = body.get("model")
        if model not in self._model_set:
            return self._error(404, f"Not found the model {model} or Permission denied",
                          "resource_not_found_error")
        return self._json({"code": 0, "data": {"total_tokens": count_prompt_tokens(body)},
                               "scode": "0x0", "status": True})

    async def _list_models(self, request: web.Request) -> web.Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        created = int(self._wall_time())
        return self._json({"object": "list", "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "moonshot",
             "root": model, "parent": None, "permission": [],
             "context_length": context_length(model)}
            for model in self._models]})

    async def _balance_endpoint(self, request: web.Request) -> web.Response:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        return self._json({"code": 0, "data": {"available_balance": self._balance,
                                                   "voucher_balance": 0.0,
                                                   "cash_balance": self._balance},
                               "scode": "0x0", "status": True})

    async def _stats_endpoint(self, _: web.Request) -> web.Response:
        return self._json(self.statistics().to_json())


class _Slot:
    """An admitted request's concurrency slot, released exactly once."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AccountLimiter) -> None:
        self._limiter: AccountLimiter | None = limiter

    def release(self) -> None:
        if self._limiter is not None:
            self._limiter.release()
            self._limiter = None


def _drop_connection(request: web.Request) -> None:
    """Close the connection after what was written is flushed, without the chunked
    terminator: the client sees the body end mid-stream (aiohttp then finds the transport
    closing and abandons the response quietly)."""
    transport = request.transport
    if transport is not None:
        transport.close()


class _SplitWriter:
    """Writes bytes in pieces of 1-7 bytes, each its own HTTP chunk and TCP write, yielding
    to the loop between them so the client receives them separately. Pieces run across event
    boundaries (a tail is held back for the next write) unless ``whole_events`` is set, as it
    is when events are spaced in time, so that every event arrives in its own time."""

    __slots__ = ("_pending", "_response", "_rng", "_whole_events")

    def __init__(self, response: web.StreamResponse, rng: random.Random, *,
                 whole_events: bool) -> None:
        self._response = response
        self._rng = rng
        self._whole_events = whole_events
        self._pending = b""

    async def write(self, data: bytes) -> None:
        data = self._pending + data
        start = 0
        while True:
            end = start + self._rng.randint(1, 7)
            if end > len(data):
                break
            await self._send(data[start:end])
            start = end
        self._pending = data[start:]
        if self._whole_events:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, b""
            await self._send(pending)

    async def _send(self, piece: bytes) -> None:
        await self._response.write(piece)
        await asyncio.sleep(0)
